//! Running iptables/nft: argument vectors only, errors that name the command and quote stderr.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where the firewall tools live when `PATH` does not say (an agent may run with a minimal
/// environment).
const FALLBACK_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
];

/// A program found on disk, with the name it is invoked by (multi-call binaries such as
/// xtables-nft-multi decide what to be from that name, so the name is kept as `argv[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: String,
    pub path: PathBuf,
}

impl Program {
    /// Looks `name` up in `PATH`, then in the usual sbin/bin directories.
    pub fn find(name: &str) -> Option<Program> {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let candidates = path_dirs
            .into_iter()
            .chain(FALLBACK_DIRS.iter().map(PathBuf::from));
        for dir in candidates {
            let path = dir.join(name);
            if is_executable(&path) {
                return Some(Program {
                    name: name.to_owned(),
                    path,
                });
            }
        }
        None
    }

    /// Runs the program with `args`, returns its stdout.
    pub fn run(&self, args: &[String]) -> Result<String> {
        self.run_with_input(args, None)
    }

    /// Runs the program with `args` and `input` on its stdin, returns its stdout.
    ///
    /// Transient failures of concurrent rule changes (the kernel's "try again" when another
    /// process committed between our read and our write) are retried a few times.
    pub fn run_with_input(&self, args: &[String], input: Option<&str>) -> Result<String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_once(args, input) {
                Err(RunError::Failed { stderr, message }) if attempt < 5 && transient(&stderr) => {
                    tracing::debug!("{message}; retrying");
                    std::thread::sleep(Duration::from_millis(10 * attempt));
                }
                Err(RunError::Failed { message, .. }) => bail!(message),
                Err(RunError::Spawn(e)) => return Err(e),
                Ok(out) => return Ok(out),
            }
        }
    }

    fn run_once(&self, args: &[String], input: Option<&str>) -> Result<String, RunError> {
        let described = describe(&self.name, args);
        let mut cmd = Command::new(&self.path);
        cmd.arg0(&self.name)
            .args(args)
            // Stable, parseable output and messages.
            .env("LC_ALL", "C")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run `{described}` ({})", self.path.display()))
            .map_err(RunError::Spawn)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // nft reads the whole script before doing anything; a write error shows up as the
            // command's failure below.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{described}`"))
            .map_err(RunError::Spawn)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let mut message = format!("`{described}` failed ({})", out.status);
        if !stderr.is_empty() {
            message.push_str(": ");
            message.push_str(&stderr);
        }
        if let Some(input) = input {
            message.push_str(&format!("\ninput was:\n{}", input.trim_end()));
        }
        Err(RunError::Failed { stderr, message })
    }
}

enum RunError {
    Spawn(anyhow::Error),
    Failed { stderr: String, message: String },
}

use std::os::unix::process::CommandExt;

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Errors that mean "somebody else changed the ruleset at the same moment, try again".
fn transient(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("resource temporarily unavailable")
        || s.contains("try again")
        || s.contains("holding the xtables lock")
}

/// The command line as a human reads it (for error messages only; nothing is ever run through a
/// shell).
pub fn describe(name: &str, args: &[String]) -> String {
    let mut s = name.to_owned();
    for a in args {
        s.push(' ');
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/=,!+@%".contains(c))
        {
            s.push_str(a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        }
    }
    s
}

/// `["a", "b"]` as owned strings.
pub fn args<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_only_what_needs_it() {
        assert_eq!(
            describe(
                "iptables",
                &args(["-w", "5", "-t", "nat", "-N", "MIRRORD_a"])
            ),
            "iptables -w 5 -t nat -N MIRRORD_a"
        );
        assert_eq!(
            describe("nft", &args(["-f", "-", "a b", ""])),
            "nft -f - 'a b' ''"
        );
        assert_eq!(describe("x", &args(["it's"])), r"x 'it'\''s'");
    }

    #[test]
    fn errors_name_the_command_and_its_stderr() {
        let sh = Program::find("sh").expect("sh");
        let err = sh
            .run(&args(["-c", "echo oops >&2; exit 3", "ignored"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`sh -c"), "{err}");
        assert!(err.contains("oops"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        let out = sh.run(&args(["-c", "echo fine"])).unwrap();
        assert_eq!(out, "fine\n");
        let out = sh
            .run_with_input(&args(["-c", "cat"]), Some("script\n"))
            .unwrap();
        assert_eq!(out, "script\n");
    }

    #[test]
    fn missing_programs_are_not_found() {
        assert!(Program::find("definitely-not-a-program-mrdr").is_none());
    }

    #[test]
    fn transient_errors() {
        assert!(transient("iptables: Resource temporarily unavailable."));
        assert!(transient(
            "Another app is currently holding the xtables lock. Perhaps you want to use the -w option?"
        ));
        assert!(!transient("iptables: Chain already exists."));
    }
}
