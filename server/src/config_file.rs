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

/// Reads and checks a configuration file: JSON, or TOML / YAML by extension.
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
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => return parse_toml(path, text),
        Some("yaml" | "yml") => return parse_yaml(path, text),
        _ => {}
    }
    MirrordConfig::from_json(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        // serde_json appends " at line L column C"; the position is reported separately.
        message: strip_position(&e.to_string()),
    })
}

fn parse_toml(path: &Path, text: &str) -> Result<MirrordConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_column(text, s.start))
            .unwrap_or((0, 0));
        ConfigError {
            path: path.to_path_buf(),
            line,
            column,
            // The toml crate leaves some syntax errors (a stray carriage return) without a
            // message; the position still says where.
            message: match e.message().trim() {
                "" => "invalid TOML syntax".to_owned(),
                m => m.to_owned(),
            },
        }
    })
}

fn parse_yaml(path: &Path, text: &str) -> Result<MirrordConfig, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError {
            path: path.to_path_buf(),
            line,
            column,
            message: strip_position(&e.to_string()),
        }
    })
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

fn strip_position(msg: &str) -> String {
    match msg
        .rfind(" at line ")
        .or_else(|| msg.rfind(" at position "))
    {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_yaml_files_parse_and_report_positions() {
        let ok = parse(
            Path::new("a.toml"),
            "target = \"pid/3\"\n[feature.network]\nincoming = \"steal\"\n",
        )
        .unwrap();
        assert_eq!(ok.target.unwrap().path.as_deref(), Some("pid/3"));
        let e = parse(
            Path::new("a.toml"),
            "[feature.network]\nincoming = \"stael\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("stael"), "{e}");
        let ok = parse(
            Path::new("a.yaml"),
            "feature:\n  network:\n    outgoing: false\n",
        )
        .unwrap();
        assert!(!ok.feature.network.outgoing.tcp);
        let e = parse(
            Path::new("a.yaml"),
            "feature:\n  network:\n    incomin: steal\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("incomin"), "{e}");
    }

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
