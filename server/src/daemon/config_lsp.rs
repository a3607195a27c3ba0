//! Language features for configuration files, independent of the LSP transport: diagnostics,
//! completion of keys and enum values, and hover documentation, all driven by the JSON Schema
//! generated from the Rust configuration types (so they cannot drift apart).

use crate::config_file;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

/// Whether a document is a mirrord configuration file: `**/.mirrord/*.json` or `*mirrord.json`.
pub fn is_config_document(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_dot_mirrord = path
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|d| d == ".mirrord");
    (in_dot_mirrord && name.ends_with(".json")) || name.ends_with("mirrord.json")
}

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file is rejected: no session starts with it.
    Error,
    /// A key of mirrord's schema this product accepts and ignores.
    Warning,
}

/// A problem with a 0-based position range on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: u32,
    pub start: u32,
    pub end: u32,
    pub message: String,
    pub severity: Severity,
}

/// The configuration's problems: its first error (serde stops there), or a warning for each key
/// that is accepted for compatibility with mirrord and ignored.
pub fn diagnostics(path: &Path, text: &str) -> Vec<Problem> {
    match config_file::parse_with_warnings(path, text) {
        Ok(loaded) => loaded
            .warnings
            .into_iter()
            .map(|w| {
                let line = w.line.saturating_sub(1) as u32;
                let start = w.column.saturating_sub(1) as u32;
                Problem {
                    line,
                    start,
                    end: start + w.len.max(1) as u32,
                    message: w.message(),
                    severity: Severity::Warning,
                }
            })
            .collect(),
        Err(e) => {
            let line = e.line.saturating_sub(1) as u32;
            // serde_json points just past the offending token; underline that token.
            let col = e.column.saturating_sub(1) as u32;
            let line_text = text.lines().nth(line as usize).unwrap_or("");
            let (start, end) = token_around(line_text, col as usize);
            vec![Problem {
                line,
                start: start as u32,
                end: end as u32,
                message: e.message,
                severity: Severity::Error,
            }]
        }
    }
}

/// The extent of the JSON token that ends at (or contains) `col`.
fn token_around(line: &str, col: usize) -> (usize, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.is_empty() {
        return (0, 0);
    }
    let col = col.min(chars.len() - 1);
    // A string token: find its quotes.
    if let Some(close) = (0..=col).rev().find(|&i| chars[i] == '"') {
        if let Some(open) = (0..close)
            .rev()
            .find(|&i| chars[i] == '"' && (i == 0 || chars[i - 1] != '\\'))
        {
            if close >= col.saturating_sub(1) {
                return (open, close + 1);
            }
        }
    }
    let is_word = |c: char| c.is_alphanumeric() || matches!(c, '-' | '+' | '.' | '_');
    let mut start = col;
    while start > 0 && is_word(chars[start - 1]) {
        start -= 1;
    }
    let mut end = col;
    while end < chars.len() && is_word(chars[end]) {
        end += 1;
    }
    if start == end {
        end = (col + 1).min(chars.len());
    }
    (start, end)
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(mirrord_protocol::config::json_schema)
}

/// Follows `$ref`s and collects the object schemas a node may be (through `anyOf`/`allOf`).
fn objects_of<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        if let Some(name) = r.strip_prefix("#/definitions/") {
            if let Some(def) = schema().get("definitions").and_then(|d| d.get(name)) {
                objects_of(def, out);
            }
        }
        return;
    }
    if node.get("properties").is_some() {
        out.push(node);
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(list) = node.get(key).and_then(Value::as_array) {
            for n in list {
                objects_of(n, out);
            }
        }
    }
}

/// The schema node of the value at `path` (keys from the root).
fn node_at(path: &[String]) -> Option<&'static Value> {
    let mut node = schema();
    for key in path {
        let mut objects = Vec::new();
        objects_of(node, &mut objects);
        node = objects
            .iter()
            .find_map(|o| o.get("properties").and_then(|p| p.get(key.as_str())))?;
    }
    Some(node)
}

/// A node's documentation: its own `description`, else that of what it refers to (`$ref`, and
/// the `allOf`/`anyOf`/`oneOf` wrappers schemars puts around references to documented types).
fn description(node: &Value) -> Option<String> {
    description_within(node, 8)
}

fn description_within(node: &Value, depth: u32) -> Option<String> {
    if let Some(d) = node.get("description").and_then(Value::as_str) {
        return Some(d.to_owned());
    }
    if depth == 0 {
        return None;
    }
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let def = schema()
            .get("definitions")?
            .get(r.strip_prefix("#/definitions/")?)?;
        return description_within(def, depth - 1);
    }
    ["allOf", "anyOf", "oneOf"]
        .iter()
        .filter_map(|k| node.get(*k).and_then(Value::as_array))
        .flatten()
        .find_map(|n| description_within(n, depth - 1))
}

/// Enum values a node accepts (through refs and anyOf).
fn enum_values(node: &Value, out: &mut Vec<String>) {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        if let Some(def) = r
            .strip_prefix("#/definitions/")
            .and_then(|n| schema().get("definitions").and_then(|d| d.get(n)))
        {
            enum_values(def, out);
        }
        return;
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        out.extend(values.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = node.get(key).and_then(Value::as_array) {
            for n in list {
                enum_values(n, out);
            }
        }
    }
}

/// Where the cursor is in the document's JSON structure.
#[derive(Debug, PartialEq)]
pub enum Place {
    /// Typing a key of the object at this path.
    Key { path: Vec<String> },
    /// Typing the value of this key (path includes the key).
    Value { path: Vec<String> },
}

/// A tolerant scan of `text` up to `offset` (characters): the document may be half-typed.
pub fn place_at(text: &str, offset: usize) -> Place {
    #[derive(Clone)]
    struct Frame {
        object: bool,
        key: Option<String>,
        expecting_value: bool,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut current = String::new();
    for c in text.chars().take(offset) {
        if in_string {
            if escaped {
                escaped = false;
                current.push(c);
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                if let Some(top) = stack.last_mut() {
                    if top.object && !top.expecting_value {
                        top.key = Some(std::mem::take(&mut current));
                    }
                }
                current.clear();
            } else {
                current.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                current.clear();
            }
            '{' | '[' => stack.push(Frame {
                object: c == '{',
                key: None,
                expecting_value: false,
            }),
            '}' | ']' => {
                stack.pop();
            }
            ':' => {
                if let Some(top) = stack.last_mut() {
                    top.expecting_value = true;
                }
            }
            ',' => {
                if let Some(top) = stack.last_mut() {
                    if top.object {
                        top.expecting_value = false;
                        top.key = None;
                    }
                }
            }
            _ => {}
        }
    }
    // Path of the objects enclosing the top frame: each parent object's current key.
    let mut path: Vec<String> = Vec::new();
    let depth = stack.len();
    for (i, f) in stack.iter().enumerate() {
        if i + 1 < depth && f.object {
            if let Some(k) = &f.key {
                path.push(k.clone());
            }
        }
    }
    match stack.last() {
        Some(top) if top.object && top.expecting_value => {
            let mut p = path;
            if let Some(k) = &top.key {
                p.push(k.clone());
            }
            Place::Value { path: p }
        }
        Some(top) if top.object => Place::Key { path },
        // Inside an array: values of the array's key.
        _ => Place::Value { path },
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub label: String,
    pub detail: Option<String>,
    /// Whether the label is a key (insert `"label": `) or a value.
    pub is_key: bool,
}

pub fn completions(text: &str, offset: usize) -> Vec<Completion> {
    match place_at(text, offset) {
        Place::Key { path } => {
            let Some(node) = node_at(&path) else {
                return Vec::new();
            };
            let mut objects = Vec::new();
            objects_of(node, &mut objects);
            let mut out: Vec<Completion> = Vec::new();
            for o in objects {
                if let Some(props) = o.get("properties").and_then(Value::as_object) {
                    for (k, v) in props {
                        if !out.iter().any(|c| &c.label == k) {
                            out.push(Completion {
                                label: k.clone(),
                                detail: description(v),
                                is_key: true,
                            });
                        }
                    }
                }
            }
            out
        }
        Place::Value { path } => {
            let Some(node) = node_at(&path) else {
                return Vec::new();
            };
            let mut values = Vec::new();
            enum_values(node, &mut values);
            values.dedup();
            values
                .into_iter()
                .map(|v| Completion {
                    label: v,
                    detail: description(node),
                    is_key: false,
                })
                .collect()
        }
    }
}

/// Documentation of the key under the cursor.
pub fn hover(text: &str, offset: usize) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    if offset > chars.len() {
        return None;
    }
    // Find the quoted word around the cursor.
    let open = (0..offset.min(chars.len()))
        .rev()
        .find(|&i| chars[i] == '"')?;
    let close = (offset..chars.len()).find(|&i| chars[i] == '"')?;
    let word: String = chars[open + 1..close].iter().collect();
    // It is a key if a ':' follows.
    let after = chars[close + 1..].iter().find(|c| !c.is_whitespace())?;
    if *after != ':' {
        return None;
    }
    let Place::Key { mut path } = place_at(text, open) else {
        return None;
    };
    path.push(word.clone());
    let node = node_at(&path)?;
    let doc = description(node).unwrap_or_default();
    Some(format!("**{}**\n\n{doc}", path.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_selection() {
        assert!(is_config_document(Path::new("/w/.mirrord/mirrord.json")));
        assert!(is_config_document(Path::new("/w/.mirrord/other.json")));
        assert!(is_config_document(Path::new("/w/staging.mirrord.json")));
        assert!(!is_config_document(Path::new("/w/package.json")));
    }

    #[test]
    fn place_detection() {
        let t = r#"{"feature": {"network": {"incoming": {"mode": "#;
        assert_eq!(
            place_at(t, t.len()),
            Place::Value {
                path: vec![
                    "feature".into(),
                    "network".into(),
                    "incoming".into(),
                    "mode".into()
                ]
            }
        );
        let t = r#"{"feature": {"network": {"#;
        assert_eq!(
            place_at(t, t.len()),
            Place::Key {
                path: vec!["feature".into(), "network".into()]
            }
        );
        let t = r#"{"target": "pod/x", "#;
        assert_eq!(place_at(t, t.len()), Place::Key { path: vec![] });
    }

    #[test]
    fn completes_keys_and_mode_values() {
        let t = r#"{"feature": {"network": {"incoming": {"mode": ""#;
        let labels: Vec<String> = completions(t, t.len())
            .into_iter()
            .map(|c| c.label)
            .collect();
        for v in ["mirror", "steal", "off"] {
            assert!(labels.contains(&v.to_string()), "{labels:?}");
        }
        let t = r#"{"feature": {"network": {"#;
        let labels: Vec<String> = completions(t, t.len())
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(labels.len(), 4, "{labels:?}");
        for k in ["incoming", "outgoing", "dns", "ipv6"] {
            assert!(labels.contains(&k.to_string()), "{labels:?}");
        }
        let t = r#"{"feature": {"network": {"incoming": {"#;
        let labels: Vec<String> = completions(t, t.len())
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert!(
            labels.contains(&"http_filter".to_string()) && labels.contains(&"mode".to_string()),
            "{labels:?}"
        );
    }

    #[test]
    fn hover_shows_docs() {
        let t = r#"{"feature": {"network": {"outgoing": {"ignore_localhost": true}}}}"#;
        let at = t.find("ignore_localhost").unwrap() + 3;
        let h = hover(t, at).unwrap();
        assert!(
            h.contains("feature.network.outgoing.ignore_localhost"),
            "{h}"
        );
        assert!(h.contains("loopback"), "{h}");
        // Keys whose type is a documented struct or enum (behind `allOf: [$ref]`).
        let t = r#"{"feature": {"network": {"incoming": "steal"}}}"#;
        let h = hover(t, t.find("incoming").unwrap() + 2).unwrap();
        assert!(h.contains("feature.network.incoming"), "{h}");
        assert!(h.contains("\"steal\""), "{h}");
        let t = r#"{"target": "pod/x"}"#;
        let h = hover(t, 3).unwrap();
        assert!(h.contains("pid/PID"), "{h}");
    }

    #[test]
    fn diagnostics_have_ranges() {
        let text = "{\n  \"feature\": {\n    \"netwrk\": {}\n  }\n}\n";
        let d = diagnostics(Path::new("/x/.mirrord/mirrord.json"), text);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, 2);
        assert_eq!(
            &text.lines().nth(2).unwrap()[d[0].start as usize..d[0].end as usize],
            "\"netwrk\""
        );
        assert!(d[0].message.contains("unknown field `netwrk`"));
        assert!(
            d[0].message.contains("did you mean `network`?"),
            "{}",
            d[0].message
        );
        assert_eq!(d[0].severity, Severity::Error);
    }

    #[test]
    fn ignored_keys_are_warnings_on_the_key() {
        let text =
            "{\n  \"operator\": false,\n  \"feature\": {\"env\": true, \"fs\": \"read\"}\n}\n";
        let d = diagnostics(Path::new("/x/.mirrord/mirrord.json"), text);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|p| p.severity == Severity::Warning));
        let fs = d
            .iter()
            .find(|p| p.message.contains("`feature.fs`"))
            .unwrap();
        assert_eq!(fs.line, 2);
        assert_eq!(
            &text.lines().nth(2).unwrap()[fs.start as usize..fs.end as usize],
            "\"fs\""
        );
        assert!(fs.message.contains("ignored"), "{}", fs.message);
    }

    /// Every key the schema documents as ignored, by dotted path.
    fn ignored_in_schema(node: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        if path.len() > 6 {
            return;
        }
        let mut objects = Vec::new();
        objects_of(node, &mut objects);
        for o in objects {
            let Some(props) = o.get("properties").and_then(Value::as_object) else {
                continue;
            };
            for (k, v) in props {
                path.push(k.clone());
                let joined = path.join(".");
                if description(v)
                    .is_some_and(|d| d == mirrord_protocol::config::compat::IGNORED_DOC)
                {
                    if !out.contains(&joined) {
                        out.push(joined);
                    }
                } else {
                    ignored_in_schema(v, path, out);
                }
                path.pop();
            }
        }
    }

    #[test]
    fn the_ignored_key_list_and_the_types_agree() {
        let mut in_schema = Vec::new();
        ignored_in_schema(schema(), &mut Vec::new(), &mut in_schema);
        in_schema.sort();
        let mut listed: Vec<String> = mirrord_protocol::config::compat::IGNORED_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect();
        listed.sort();
        assert_eq!(in_schema, listed);
    }

    #[test]
    fn every_ignored_key_completes_and_hovers_as_ignored() {
        for key in mirrord_protocol::config::compat::IGNORED_KEYS {
            let parts: Vec<String> = key.split('.').map(str::to_owned).collect();
            let node = node_at(&parts).unwrap_or_else(|| panic!("{key} not in the schema"));
            let doc = description(node).unwrap_or_default();
            assert!(doc.contains("ignored by this product"), "{key}: {doc}");
        }
        let t = r#"{"feature": {"#;
        let labels: Vec<String> = completions(t, t.len())
            .into_iter()
            .map(|c| c.label)
            .collect();
        for k in ["network", "env", "fs", "copy_target", "hostname"] {
            assert!(labels.contains(&k.to_string()), "{labels:?}");
        }
        let t = r#"{"feature": {"fs": "read"}}"#;
        let h = hover(t, t.find("fs").unwrap() + 1).unwrap();
        assert!(
            h.contains("feature.fs") && h.contains("ignored by this product"),
            "{h}"
        );
        let t = r#"{"feature": {"env": {"include": "A;B"}}}"#;
        let h = hover(t, t.find("include").unwrap() + 1).unwrap();
        assert!(h.contains("feature.env.include"), "{h}");
    }

    #[test]
    fn kubernetes_keys_complete_hover_and_diagnose() {
        let labels = |t: &str| -> Vec<String> {
            completions(t, t.len())
                .into_iter()
                .map(|c| c.label)
                .collect()
        };
        let top = labels("{");
        for k in [
            "kubeconfig",
            "kube_context",
            "accept_invalid_certificates",
            "agent",
        ] {
            assert!(top.contains(&k.to_string()), "{top:?}");
        }
        let agent = labels(r#"{"agent": {"#);
        for k in [
            "namespace",
            "image",
            "image_pull_policy",
            "image_pull_secrets",
            "ttl",
            "ephemeral",
            "startup_timeout",
            "communication_timeout",
            "privileged",
            "disabled_capabilities",
            "tolerations",
            "resources",
            "labels",
            "annotations",
            "node_selector",
            "service_account",
            "log_level",
        ] {
            assert!(agent.contains(&k.to_string()), "{k} not in {agent:?}");
        }
        let t = r#"{"agent": {"communication_timeout": 5}}"#;
        let h = hover(t, t.find("communication_timeout").unwrap() + 2).unwrap();
        assert!(h.contains("no session"), "{h}");
        let t = r#"{"target": "rollout/x"}"#;
        let h = hover(t, 3).unwrap();
        assert!(h.contains("rollout/NAME"), "{h}");
        let d = diagnostics(
            Path::new("/x/.mirrord/mirrord.json"),
            "{\"agent\": {\"ttl\": \"soon\"}}",
        );
        assert_eq!(
            d.len(),
            1,
            "{:?}",
            d.iter().map(|p| &p.message).collect::<Vec<_>>()
        );
        let d = diagnostics(
            Path::new("/x/.mirrord/mirrord.json"),
            "{\"target\": \"daemonset/x\"}",
        );
        assert!(d[0].message.contains("invalid target"), "{}", d[0].message);
    }
}
