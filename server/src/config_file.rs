//! Reading configuration files with errors that name file, line and column.

use mirrord_protocol::config::MirrordConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 when the error has no position (e.g. the file cannot be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Reads and checks a JSON configuration file.
pub fn load(path: &Path) -> Result<MirrordConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<MirrordConfig, ConfigError> {
    MirrordConfig::from_json(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        // serde_json appends " at line L column C"; the position is reported separately.
        message: strip_position(&e.to_string()),
    })
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse(
            Path::new("/w/.mirrord/mirrord.json"),
            "{\n  \"feature\": {\n    \"nope\": 1\n  }\n}",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (3, 10));
        assert_eq!(
            e.to_string(),
            "/w/.mirrord/mirrord.json:3:10: unknown field `nope`, expected `network`"
        );
    }
}
