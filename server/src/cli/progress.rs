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

    /// Reports the steps of a session's start: the spinner shows each step, and notices are
    /// printed whether or not there is a terminal.
    pub fn reporter(&self) -> std::sync::Arc<crate::kube::ProgressFn> {
        let bar = self.0.clone();
        std::sync::Arc::new(move |note: crate::kube::StartNote<'_>| match note {
            crate::kube::StartNote::Step(m) => {
                if let Some(bar) = &bar {
                    bar.set_message(m.to_owned());
                }
            }
            crate::kube::StartNote::Notice(m) => match &bar {
                Some(bar) => bar.println(format!("mirrord: {m}")),
                None => eprintln!("mirrord: {m}"),
            },
        })
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
