//! The daemon's enums that cross into other languages (session states, error kinds) are spelled
//! the same in the VS Code extension (TypeScript unions) and the JetBrains core (Java), so a
//! variant added or renamed on one side fails here, not in a user's IDE.

use mirrord_protocol::api::{ErrorKind, SessionState};
use std::path::Path;

fn repo_file(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v).expect("a unit variant serialises") {
        serde_json::Value::String(s) => s,
        other => panic!("not a string: {other}"),
    }
}

/// Every variant; the match makes a new variant a compile error here until it is listed.
fn error_kinds() -> Vec<ErrorKind> {
    use ErrorKind::*;
    let all = vec![
        NoTarget,
        BadTarget,
        Config,
        SessionStart,
        NoSession,
        Cluster,
        Internal,
    ];
    for k in &all {
        match k {
            NoTarget | BadTarget | Config | SessionStart | NoSession | Cluster | Internal => {}
        }
    }
    all
}

fn session_states() -> Vec<SessionState> {
    use SessionState::*;
    let all = vec![Starting, Ready, Reconnecting, Error, Stopped];
    for s in &all {
        match s {
            Starting | Ready | Reconnecting | Error | Stopped => {}
        }
    }
    all
}

/// The quoted members of `export type NAME = 'a' | 'b';` in a TypeScript file.
fn ts_union(ts: &str, name: &str) -> Vec<String> {
    let decl = format!("export type {name} =");
    let start = ts.find(&decl).unwrap_or_else(|| panic!("no `{decl}`"));
    let rest = &ts[start + decl.len()..];
    let end = rest.find(';').expect("the union ends with ;");
    rest[..end]
        .split('|')
        .map(|m| m.trim().trim_matches('\'').to_owned())
        .collect()
}

#[test]
fn error_kinds_are_spelled_alike_in_rust_typescript_and_java() {
    let rust: Vec<String> = error_kinds().iter().map(wire_name).collect();
    let mut ts = ts_union(&repo_file("vscode-extension/src/logic/api.ts"), "ErrorKind");
    ts.sort();
    let mut sorted = rust.clone();
    sorted.sort();
    assert_eq!(ts, sorted, "vscode-extension/src/logic/api.ts ErrorKind");

    let java =
        repo_file("jetbrains-plugin/core/src/main/java/io/mirrord/jetbrains/core/ErrorKind.java");
    for k in &rust {
        let constant = format!("    {},", k.to_uppercase());
        assert!(
            java.contains(&constant),
            "ErrorKind.java lacks {constant:?}"
        );
    }
}

#[test]
fn session_states_are_spelled_alike_in_rust_typescript_and_java() {
    let rust: Vec<String> = session_states().iter().map(wire_name).collect();
    let mut ts = ts_union(
        &repo_file("vscode-extension/src/logic/api.ts"),
        "SessionState",
    );
    ts.sort();
    let mut sorted = rust.clone();
    sorted.sort();
    assert_eq!(ts, sorted, "vscode-extension/src/logic/api.ts SessionState");

    let java = repo_file(
        "jetbrains-plugin/core/src/main/java/io/mirrord/jetbrains/core/SessionsModel.java",
    );
    for s in &rust {
        let constant = format!("public static final String {} = \"{s}\";", s.to_uppercase());
        assert!(
            java.contains(&constant),
            "SessionsModel.java lacks {constant:?}"
        );
    }
}
