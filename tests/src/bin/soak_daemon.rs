//! Soak of the IDE daemon: `startSession` → one request through the session → `stopSession`,
//! many times against ONE `mirrord-server --stdio`, printing the daemon's open descriptors and
//! resident memory as it goes.
//!
//! ```text
//! soak_daemon [--cycles N] [--warmup W] [--check] [--max-fd-growth F] [--max-rss-growth-kib K]
//! ```
//!
//! It builds its own simulated cluster (needs root). The request of each cycle is what an IDE's
//! debuggee does: a program launched with the session's environment (curl in the `dev`
//! namespace) fetches `payment-service:8080` through the session. Every `--every` cycles it
//! prints one JSON line `{"cycle", "fds", "rss_kib"}`; at the end a summary line with the
//! values after warm-up and at the end. With `--check` it exits 1 when descriptors grew by more
//! than `--max-fd-growth` or memory by more than `--max-rss-growth-kib` after warm-up (the
//! defaults fail a leak of one descriptor, or of 64 KiB, per cycle over 100 cycles).

use anyhow::{bail, Context, Result};
use mirrord_tests::lsp_client::{Framing, RpcClient};
use mirrord_tests::{no_proxy, output_within, target_dir_bin, Cluster};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Options {
    cycles: usize,
    warmup: usize,
    every: usize,
    check: bool,
    max_fd_growth: i64,
    max_rss_growth_kib: i64,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        cycles: 1000,
        warmup: 20,
        every: 10,
        check: false,
        max_fd_growth: 8,
        max_rss_growth_kib: 4096,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<i64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse::<i64>()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--cycles" => o.cycles = value("--cycles")?.max(1) as usize,
            "--warmup" => o.warmup = value("--warmup")?.max(0) as usize,
            "--every" => o.every = value("--every")?.max(1) as usize,
            "--check" => o.check = true,
            "--max-fd-growth" => o.max_fd_growth = value("--max-fd-growth")?,
            "--max-rss-growth-kib" => o.max_rss_growth_kib = value("--max-rss-growth-kib")?,
            "-h" | "--help" => {
                println!(
                    "usage: soak_daemon [--cycles N] [--warmup W] [--every E] [--check] \
                     [--max-fd-growth F] [--max-rss-growth-kib K]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if o.warmup >= o.cycles {
        bail!("--warmup must be smaller than --cycles");
    }
    Ok(o)
}

/// Open descriptors of `pid`.
fn fds(pid: u32) -> Result<i64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("the daemon (pid {pid}) is gone"))?
        .count() as i64)
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// One cycle: start a session, fetch payment-service through it, stop it.
fn cycle(c: &Cluster, daemon: &RpcClient) -> Result<()> {
    let session = daemon
        .request(
            "mirrord/startSession",
            json!({"target": format!("pid/{}", c.pod_pid())}),
        )
        .map_err(|e| anyhow::anyhow!("startSession failed: {e}"))?;
    let id = session["sessionId"].clone();
    let mut cmd = c.dev("/usr/bin/env");
    for var in session["envToUnset"].as_array().into_iter().flatten() {
        cmd.arg("-u").arg(var.as_str().unwrap_or_default());
    }
    for (k, v) in session["env"].as_object().into_iter().flatten() {
        cmd.arg(format!("{k}={}", v.as_str().unwrap_or_default()));
    }
    cmd.args([
        "curl",
        "-sS",
        "-f",
        "--max-time",
        "20",
        "http://payment-service:8080/",
    ]);
    no_proxy(&mut cmd);
    let out = output_within(&mut cmd, Duration::from_secs(30))?;
    let stopped = daemon.request("mirrord/stopSession", json!({"sessionId": id}));
    if !out.status.success() {
        bail!(
            "the request through the session failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stopped.map_err(|e| anyhow::anyhow!("stopSession failed: {e}"))?;
    Ok(())
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let c = Cluster::start()?;
    let mut cmd = c.dev(target_dir_bin("mirrord-server"));
    cmd.arg("--stdio")
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    let daemon = RpcClient::spawn(
        "soak-daemon",
        cmd,
        Framing::ContentLength,
        &c.workdir().join("daemon.stderr"),
    )?;
    daemon.call(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {}}),
    );
    daemon.notify("initialized", json!({}));
    let pid = daemon.pid();
    let started = Instant::now();
    let mut base: Option<(i64, i64)> = None;
    let mut last = (0, 0);
    for i in 1..=o.cycles {
        cycle(&c, &daemon).with_context(|| format!("cycle {i}"))?;
        last = (fds(pid)?, rss_kib(pid)?);
        if i == o.warmup.max(1) {
            base = Some(last);
        }
        if i % o.every == 0 || i == o.cycles {
            println!(
                "{}",
                json!({"cycle": i, "fds": last.0, "rss_kib": last.1,
                       "elapsed_s": started.elapsed().as_secs_f64()})
            );
        }
    }
    // Set at cycle `warmup` (< cycles, checked in parse_args).
    let (fd0, rss0) = base.unwrap_or(last);
    let summary: Value = json!({
        "summary": true,
        "cycles": o.cycles,
        "warmup": o.warmup,
        "fds_after_warmup": fd0,
        "fds_end": last.0,
        "rss_kib_after_warmup": rss0,
        "rss_kib_end": last.1,
        "fd_growth": last.0 - fd0,
        "rss_growth_kib": last.1 - rss0,
    });
    println!("{summary}");
    if o.check {
        if last.0 - fd0 > o.max_fd_growth {
            bail!(
                "descriptors grew from {fd0} to {} after warm-up (allowed: {})",
                last.0,
                o.max_fd_growth
            );
        }
        if last.1 - rss0 > o.max_rss_growth_kib {
            bail!(
                "memory grew from {rss0} KiB to {} KiB after warm-up (allowed: {} KiB)",
                last.1,
                o.max_rss_growth_kib
            );
        }
    }
    Ok(())
}
