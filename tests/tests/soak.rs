//! The IDE daemon does not leak per session: 100 cycles of `startSession` → one request through
//! the session → `stopSession` against one daemon leave its descriptors and memory flat after
//! warm-up. The long version (1,000 cycles) is `soak_daemon` run by hand.

use mirrord_tests::{output_within, target_dir_bin};
use std::process::Command;
use std::time::Duration;

#[test]
fn daemon_sessions_leak_no_descriptor_and_no_memory() {
    let mut cmd = Command::new(target_dir_bin("soak_daemon"));
    // A leak of one descriptor per cycle, or of 64 KiB per cycle, fails these bounds.
    cmd.args([
        "--cycles",
        "100",
        "--warmup",
        "20",
        "--check",
        "--max-fd-growth",
        "8",
        "--max-rss-growth-kib",
        "4096",
    ]);
    let out = output_within(&mut cmd, Duration::from_secs(300)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains("\"summary\":true"), "{summary}");
}
