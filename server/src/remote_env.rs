//! `feature.env`: which of the target process's environment variables a launched program gets.
//!
//! Order of precedence, lowest first: the target's variables (filtered by `include` /
//! `exclude`), the `env_file`, `override`. Whatever that gives never replaces `MIRRORD_*`,
//! `LD_PRELOAD` or a variable the launch configuration sets itself ([`is_protected`] plus the
//! caller's `launch_keeps`); names left out keep their values on the developer's machine.

use anyhow::{Context, Result};
use mirrord_protocol::config::EnvConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// What a launch must change in the program's environment for `feature.env`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramEnv {
    /// Variables to set, sorted by name.
    pub set: Vec<(String, String)>,
    /// Names to remove (`unset`), as the user wrote them; match them case-insensitively.
    pub unset: Vec<String>,
}

/// Names no configuration may replace: the session's own variables and the layer's preload.
pub fn is_protected(name: &str) -> bool {
    name.starts_with("MIRRORD_") || name == "LD_PRELOAD"
}

/// The program's variables from the target's environment and the configuration.
/// `launch_keeps(name)` says a name belongs to the launch configuration (never replaced);
/// `env_file` is the content of the configured env file, already read.
pub fn program_env(
    config: &EnvConfig,
    target: &[(String, String)],
    env_file: Option<&str>,
    launch_keeps: &dyn Fn(&str) -> bool,
) -> ProgramEnv {
    if !config.enabled {
        return ProgramEnv::default();
    }
    let wanted = |name: &str| {
        let included = match &config.include {
            Some(patterns) => patterns.iter().any(|p| wildcard_match(p, name)),
            None => !EnvConfig::DEFAULT_EXCLUDED.contains(&name),
        };
        included && !config.exclude.iter().any(|p| wildcard_match(p, name))
    };
    let mut vars: BTreeMap<String, String> = target
        .iter()
        .filter(|(name, _)| wanted(name))
        .cloned()
        .collect();
    vars.extend(env_file.map(parse_dotenv).unwrap_or_default());
    vars.extend(config.overrides.clone());
    // Invariant: the session's variables, the preload and the launch's own choices win over
    // anything the target or the configuration says.
    vars.retain(|name, _| !is_protected(name) && !launch_keeps(name));
    ProgramEnv {
        set: vars.into_iter().collect(),
        unset: config.unset.clone(),
    }
}

/// Reads the configured env file, relative to `cwd` (the program's working directory).
pub fn read_env_file(config: &EnvConfig, cwd: Option<&Path>) -> Result<Option<String>> {
    let Some(file) = config.env_file.as_deref().filter(|_| config.enabled) else {
        return Ok(None);
    };
    let path = match cwd {
        Some(dir) if Path::new(file).is_relative() => dir.join(file),
        _ => Path::new(file).to_path_buf(),
    };
    std::fs::read_to_string(&path)
        .map(Some)
        .with_context(|| format!("reading feature.env.env_file {}", path.display()))
}

/// `*` matches any run of characters (none included), `?` exactly one; everything else itself.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with backtracking to the last `*`: linear in practice, no recursion.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `NAME=value` lines of a dotenv file: `#` comments, an optional `export `, values in single
/// quotes (literal) or double quotes (`\n`, `\"`, `\\` escapes); lines that are not
/// assignments are skipped.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return None;
            }
            Some((name.to_owned(), dotenv_value(value.trim())))
        })
        .collect()
}

fn dotenv_value(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.split_once('\'')) {
        return inner.0.to_owned();
    }
    if let Some(rest) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => break,
                },
                other => out.push(other),
            }
        }
        return out;
    }
    // An unquoted value ends at a comment that follows whitespace.
    match raw.find(" #") {
        Some(i) => raw[..i].trim_end().to_owned(),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Vec<(String, String)> {
        [
            ("DATABASE_URL", "postgres://db/app"),
            ("PAYMENT_SERVICE_HOST", "10.96.0.10"),
            ("PAYMENT_SERVICE_PORT", "8080"),
            ("SECRET_TOKEN", "s3cret"),
            ("PATH", "/pod/bin"),
            ("HOME", "/root"),
            ("LD_PRELOAD", "/pod/lib.so"),
            ("MIRRORD_SESSION", "pod's"),
            ("REGION", "eu"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    fn names(env: &ProgramEnv) -> Vec<&str> {
        env.set.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*_SERVICE_*", "PAYMENT_SERVICE_HOST"));
        assert!(wildcard_match("A?C", "ABC"));
        assert!(!wildcard_match("A?C", "AC"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("DB", "DB2"));
        assert!(wildcard_match("DB*", "DB"));
    }

    #[test]
    fn off_gives_nothing_and_on_gives_all_but_defaults_and_protected() {
        let none = program_env(&EnvConfig::default(), &target(), None, &|_| false);
        assert_eq!(none, ProgramEnv::default());
        let on = EnvConfig {
            enabled: true,
            ..Default::default()
        };
        let env = program_env(&on, &target(), None, &|n| n == "REGION");
        assert_eq!(
            names(&env),
            [
                "DATABASE_URL",
                "PAYMENT_SERVICE_HOST",
                "PAYMENT_SERVICE_PORT",
                "SECRET_TOKEN"
            ]
        );
    }

    #[test]
    fn include_exclude_file_and_override() {
        let cfg = EnvConfig {
            enabled: true,
            include: Some(vec![
                "*_SERVICE_*".into(),
                "DATABASE_URL".into(),
                "PATH".into(),
            ]),
            exclude: vec!["*_PORT".into()],
            overrides: [("DATABASE_URL".to_string(), "db://localhost".to_string())].into(),
            env_file: None,
            unset: vec!["AWS_PROFILE".into()],
        };
        let file = "# comment\nexport FROM_FILE='a b'\nPAYMENT_SERVICE_HOST=\"x\\ny\"\nDATABASE_URL=file # c\nMIRRORD_X=1\n";
        let env = program_env(&cfg, &target(), Some(file), &|_| false);
        assert_eq!(
            env.set,
            vec![
                ("DATABASE_URL".to_string(), "db://localhost".to_string()),
                ("FROM_FILE".to_string(), "a b".to_string()),
                ("PATH".to_string(), "/pod/bin".to_string()),
                ("PAYMENT_SERVICE_HOST".to_string(), "x\ny".to_string()),
            ]
        );
        assert_eq!(env.unset, vec!["AWS_PROFILE".to_string()]);
    }
}
