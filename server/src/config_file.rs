//! Reading configuration files with errors that name file, line and column, and warnings (with
//! their position too) for keys of mirrord's schema this product accepts and ignores.

use mirrord_protocol::config::compat;
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

/// A key of mirrord's schema that this product accepts and ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: PathBuf,
    /// 1-based position of the key (its opening quote in JSON); 0 when it cannot be located.
    pub line: usize,
    pub column: usize,
    /// Length of the key as written (quotes included in JSON), in characters.
    pub len: usize,
    /// The key's dotted path, e.g. `feature.fs`.
    pub key: String,
}

impl ConfigWarning {
    pub fn message(&self) -> String {
        format!(
            "`{}` is accepted for compatibility with mirrord and ignored: this product does not \
             have that feature",
            self.key
        )
    }
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message()
        )
    }
}

/// A configuration that passed every check, with the warnings about ignored keys.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: MirrordConfig,
    pub warnings: Vec<ConfigWarning>,
}

/// Reads and checks a configuration file: JSON, or TOML / YAML by extension.
pub fn load(path: &Path) -> Result<MirrordConfig, ConfigError> {
    load_with_warnings(path).map(|l| l.config)
}

/// [`load`], keeping the warnings.
pub fn load_with_warnings(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read the file: {e}"),
    })?;
    parse_with_warnings(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<MirrordConfig, ConfigError> {
    parse_with_warnings(path, text).map(|l| l.config)
}

/// Checks a document; the ignored keys it holds come back as warnings with their positions.
pub fn parse_with_warnings(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let format = Format::of(path);
    let config = match format {
        Format::Toml => parse_toml(path, text),
        Format::Yaml => parse_yaml(path, text),
        Format::Json => MirrordConfig::from_json(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            // serde_json appends " at line L column C"; the position is reported separately.
            message: strip_position(&e.to_string()),
        }),
    }
    .map_err(|mut e| {
        e.message = compat::explain_unknown_field(&e.message);
        e
    })?;
    let warnings = warnings(path, text, format);
    Ok(Loaded { config, warnings })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Toml,
    Yaml,
}

impl Format {
    fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Format::Toml,
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Json,
        }
    }
}

/// The ignored keys of a document that already deserialized, located in its text.
fn warnings(path: &Path, text: &str, format: Format) -> Vec<ConfigWarning> {
    // The document deserialized, so it is well-formed in its format.
    let doc: Option<serde_json::Value> = match format {
        Format::Json => serde_json::from_str(text).ok(),
        Format::Toml => toml::from_str::<toml::Value>(text)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok()),
        Format::Yaml => serde_yaml::from_str(text).ok(),
    };
    let Some(doc) = doc else {
        return Vec::new();
    };
    let json_keys = (format == Format::Json).then(|| json_key_positions(text));
    let mut found: Vec<ConfigWarning> = compat::ignored_keys_in(&doc)
        .into_iter()
        .map(|key_path| {
            let found = match &json_keys {
                Some(keys) => keys
                    .iter()
                    .find(|k| k.path == key_path)
                    .map(|k| (k.line, k.column, k.len)),
                None => locate_key(text, &key_path),
            };
            let (line, column, len) = found.unwrap_or((0, 0, 0));
            ConfigWarning {
                path: path.to_path_buf(),
                line,
                column,
                len,
                key: key_path.join("."),
            }
        })
        .collect();
    // In the order the file has them (unlocated ones first).
    found.sort_by_key(|w| (w.line, w.column));
    found
}

/// A key of a JSON document and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPosition {
    pub path: Vec<String>,
    /// 1-based line and column (characters) of the key's opening quote.
    pub line: usize,
    pub column: usize,
    /// Characters from the opening to the closing quote, both included.
    pub len: usize,
}

/// Every object key of a well-formed JSON document with its path and position.
pub fn json_key_positions(text: &str) -> Vec<KeyPosition> {
    enum Frame {
        Object {
            key: Option<String>,
            expecting_value: bool,
        },
        Array,
    }
    let mut out = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let (mut line, mut column) = (1usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            column = 0;
            continue;
        }
        column += 1;
        match c {
            '"' => {
                let (start_line, start_column) = (line, column);
                let mut s = String::new();
                let mut len = 1;
                while let Some(c) = chars.next() {
                    len += 1;
                    column += 1;
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                len += 1;
                                column += 1;
                                s.push(escaped);
                            }
                        }
                        '"' => break,
                        other => s.push(other),
                    }
                }
                if let Some(Frame::Object {
                    key,
                    expecting_value: false,
                }) = stack.last_mut()
                {
                    *key = Some(s);
                    // Each enclosing object's current key, the innermost being this one.
                    let path: Vec<String> = stack
                        .iter()
                        .filter_map(|f| match f {
                            Frame::Object { key: Some(k), .. } => Some(k.clone()),
                            _ => None,
                        })
                        .collect();
                    out.push(KeyPosition {
                        path,
                        line: start_line,
                        column: start_column,
                        len,
                    });
                }
            }
            '{' => stack.push(Frame::Object {
                key: None,
                expecting_value: false,
            }),
            '[' => stack.push(Frame::Array),
            '}' | ']' => {
                stack.pop();
            }
            ':' => {
                if let Some(Frame::Object {
                    expecting_value, ..
                }) = stack.last_mut()
                {
                    *expecting_value = true;
                }
            }
            ',' => {
                if let Some(Frame::Object {
                    key,
                    expecting_value,
                }) = stack.last_mut()
                {
                    *key = None;
                    *expecting_value = false;
                }
            }
            _ => {}
        }
    }
    out
}

/// Where a key path is written in a TOML or YAML document: each segment is looked for as a key
/// (`name =`, `name:`, `[a.name]`, `a.name.b`, optionally quoted) after the previous one. A
/// heuristic for formats without a position-keeping value parser; `None` if not found.
fn locate_key(text: &str, key_path: &[String]) -> Option<(usize, usize, usize)> {
    let mut from = 0;
    let mut last = None;
    for segment in key_path {
        let at = find_key_token(text, segment, from)?;
        last = Some(at);
        from = at + segment.len();
    }
    let at = last?;
    let (line, column) = line_column(text, at);
    Some((line, column, key_path.last()?.chars().count()))
}

fn find_key_token(text: &str, key: &str, from: usize) -> Option<usize> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut search = from;
    while let Some(rel) = text.get(search..)?.find(key) {
        let at = search + rel;
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].trim_start_matches(['"', '\'']);
        let after = after.trim_start_matches([' ', '\t']);
        let starts_ok = before.is_none_or(|c| !is_word(c));
        let ends_ok = after
            .chars()
            .next()
            .is_some_and(|c| matches!(c, '=' | ':' | '.' | ']'));
        if starts_ok && ends_ok {
            return Some(at);
        }
        search = at + key.len();
    }
    None
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
    fn warnings_locate_keys_in_every_format() {
        let yaml =
            "target: pid/3\nfeature:\n  network:\n    dns: true\n  fs: read\noperator: false\n";
        let l = parse_with_warnings(Path::new("m.yaml"), yaml).unwrap();
        let at: Vec<(String, usize, usize)> = l
            .warnings
            .iter()
            .map(|w| (w.key.clone(), w.line, w.column))
            .collect();
        assert_eq!(
            at,
            vec![("feature.fs".into(), 5, 3), ("operator".into(), 6, 1)]
        );
        // JSON: a key of the same name elsewhere (a value, a deeper object) is not confused
        // with the ignored one.
        let json = "{\"agent\": {\"labels\": {\"fs\": \"x\"}}, \"kube_context\": \"fs\",\n \"feature\": {\"fs\": \"read\"}}";
        let l = parse_with_warnings(Path::new("m.json"), json).unwrap();
        assert_eq!(l.warnings.len(), 1);
        assert_eq!((l.warnings[0].line, l.warnings[0].column), (2, 14));
        assert_eq!(l.warnings[0].len, 4);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse(
            Path::new("/w/.mirrord/mirrord.json"),
            "{\n  \"feature\": {\n    \"nope\": 1\n  }\n}",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (3, 10));
        assert!(
            e.to_string()
                .starts_with("/w/.mirrord/mirrord.json:3:10: unknown field `nope`"),
            "{e}"
        );
        assert!(!e.message.contains("did you mean"), "{e}");
    }
}
