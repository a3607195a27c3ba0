//! The benchmark suite (`cargo run --release -p mirrord-tests --bin bench`, or `./scripts/bench`):
//! side-by-side figures of mirrord and the direct path (and socat / proxychains as the usual
//! alternatives) on the simulated cluster. See `run` for what runs where, `report` for the
//! statistics, and BENCHMARKS.md for the latest table.
//!
//! This is a benchmark, not a test: nothing here asserts a timing.

pub mod report;
pub mod run;

use std::fs;
use std::process::Command;

/// What the figures were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub nproc: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub cpu: String,
    pub loadavg: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_gib: mem_kb / 1024.0 / 1024.0,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu,
            loadavg: loadavg(),
        }
    }
}

/// The 1/5/15-minute load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Output of a small command, trimmed (empty on failure).
pub fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Replaces the text between `begin` and `end` markers of `doc` (markers kept); `None` when
/// the markers are missing.
pub fn replace_between(doc: &str, begin: &str, end: &str, with: &str) -> Option<String> {
    let b = doc.find(begin)? + begin.len();
    let e = b + doc[b..].find(end)?;
    Some(format!("{}\n{}\n{}", &doc[..b], with.trim_end(), &doc[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_between_markers() {
        let doc = "head\n<!-- b -->\nold\n<!-- e -->\ntail\n";
        let out = replace_between(doc, "<!-- b -->", "<!-- e -->", "new\n").unwrap();
        assert_eq!(out, "head\n<!-- b -->\nnew\n<!-- e -->\ntail\n");
        assert!(replace_between("x", "<!-- b -->", "<!-- e -->", "y").is_none());
    }

    #[test]
    fn machine_probe_reads_proc() {
        let m = Machine::probe();
        assert!(m.nproc >= 1);
        assert!(m.mem_gib > 0.0);
        assert!(!m.kernel.is_empty());
    }
}
