//! Progress for long steps: a spinner on a terminal, nothing otherwise (so scripts and logs stay
//! clean).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub struct Step(Option<ProgressBar>);

impl Step {
    pub fn start(message: &str) -> Step {
        if !std::io::stderr().is_terminal() {
            return Step(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Step(Some(bar))
    }

    pub fn done(self, message: &str) {
        if let Some(bar) = self.0 {
            bar.finish_with_message(message.to_owned());
        }
    }

    pub fn fail(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}
