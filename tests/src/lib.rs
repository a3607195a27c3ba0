//! End-to-end test support for mirrord: the simulated cluster ([`Cluster`]) and small helpers
//! shared by the end-to-end tests in `tests/tests/`.
//!
//! Everything here needs root (network namespaces, bridges, `ip netns exec`).

pub mod bench;
pub mod cluster;
pub mod k8s;
pub mod lsp_client;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use cluster::{Cluster, ManagedChild};

/// Path of a workspace binary (or `libmirrord_layer.so`) in the target dir the running test
/// executable was built into: `target/<profile>/deps/<test>` → `target/<profile>/<name>`.
///
/// # Panics
/// When the file does not exist: an end-to-end test cannot do anything useful without it, and
/// `cargo test -p mirrord-tests` does not build the other crates' binaries.
pub fn target_dir_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe() of the test binary");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace` first (same profile as the tests)",
        path.display()
    );
    path
}

/// Reads lines from `reader` until one contains `needle` and returns that line (without the
/// newline). Fails when `timeout` passes first or the stream ends (the child exited).
///
/// The reading happens on a thread that keeps draining `reader` after the match (until EOF),
/// so a child writing more output later never blocks on a full pipe or dies of SIGPIPE.
pub fn wait_line<R: Read + Send + 'static>(
    reader: R,
    needle: &str,
    timeout: Duration,
) -> Result<String> {
    let lines = tee_lines(reader, None);
    let mut seen = Vec::new();
    wait_line_on(&lines, needle, timeout, &mut seen)
}

/// Starts a thread that forwards the lines of `reader` to the returned channel (and appends
/// them to the file `log`, when given), and keeps draining `reader` after the receiver is gone.
pub(crate) fn tee_lines<R: Read + Send + 'static>(
    reader: R,
    log: Option<&Path>,
) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    // A missing log file only loses the copy, never the lines.
    let mut file = log.and_then(|p| File::create(p).ok());
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(f) = file.as_mut() {
                        let _ = f.write_all(&buf);
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    // A dropped receiver is fine: keep draining.
                    let _ = tx.send(line);
                }
            }
        }
    });
    rx
}

/// Receives lines from `lines` until one contains `needle`; every line received is also
/// appended to `seen` (for error messages and later inspection).
pub(crate) fn wait_line_on(
    lines: &Receiver<String>,
    needle: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "no line containing {needle:?} within {timeout:?}; output so far: {:?}",
                    tail(seen, 20)
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!(
                    "output ended before a line containing {needle:?}; output: {:?}",
                    tail(seen, 20)
                )
            }
        }
    }
}

fn tail(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an error that carries
/// the command line and its stderr.
pub fn run_ok(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion and returns its output, killing its whole process group if it takes
/// longer than `timeout` (then the error says so). Output is read concurrently, so a chatty child
/// never blocks.
pub fn output_within(
    cmd: &mut std::process::Command,
    timeout: Duration,
) -> Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let mut out = child.stdout.take().context("stdout is piped")?;
    let mut err = child.stderr.take().context("stderr is piped")?;
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling the process group we created above.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            let stderr = err_t.join().unwrap_or_default();
            bail!(
                "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Starts `cmd` as a terminal starts a foreground command: Ctrl-C and Ctrl-\\ at their default
/// actions, even when the caller runs with them ignored (a background job of a non-interactive
/// shell, as CI runners start scripts). `mirrord exec` hands its command the disposition it
/// was given, so a test that ends a session with Ctrl-C needs this.
pub fn as_from_a_terminal(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only `signal`, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// Removes proxy settings inherited from the caller's environment: HTTP clients in the tests
/// must connect themselves.
pub fn no_proxy(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_line_finds_the_needle_and_reports_eof() {
        let input = std::io::Cursor::new(b"starting\nlistening on 1234\nmore\n".to_vec());
        let line = wait_line(input, "listening", Duration::from_secs(5)).unwrap();
        assert_eq!(line, "listening on 1234");

        let input = std::io::Cursor::new(b"starting\n".to_vec());
        let err = wait_line(input, "ready", Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("output ended"), "{err}");
    }

    #[test]
    fn wait_line_times_out() {
        // A pipe whose writer stays open: nothing ever arrives.
        let (reader, _writer) = std::io::pipe().unwrap();
        let t = Instant::now();
        let err = wait_line(reader, "ready", Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("within"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
