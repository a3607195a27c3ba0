//! The benchmark suite (`cargo run --release -p mirrord-tests --bin bench`, or `./scripts/bench`):
//! side-by-side figures of mirrord and the direct path (and socat / proxychains as the usual
//! alternatives) on the simulated cluster. See `run` for what runs where, `kube` for the
//! Kubernetes section (port-forward transport, on the simulated Kubernetes API), `report` for
//! the statistics, and BENCHMARKS.md for the latest table.
//!
//! This is a benchmark, not a test: nothing here asserts a timing.

pub mod kube;
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

/// The markers of BENCHMARKS.md's main results.
pub const RESULTS_MARKERS: (&str, &str) =
    ("<!-- bench:results:begin -->", "<!-- bench:results:end -->");
/// The markers of the Kubernetes section's results (a run of that section alone).
pub const KUBE_MARKERS: (&str, &str) = (
    "<!-- bench:kubernetes:begin -->",
    "<!-- bench:kubernetes:end -->",
);

/// BENCHMARKS.md with a run's Markdown put in its place: a run of the `kubernetes` section
/// alone replaces the Kubernetes results only (so the other sections' latest full run stays);
/// any other run replaces the main results, and when it measured Kubernetes too, the
/// Kubernetes markers then point at it. `None` when the markers are missing.
pub fn update_benchmarks_md(doc: &str, sections: &[&str], md: &str) -> Option<String> {
    if sections == ["kubernetes"] {
        return replace_between(doc, KUBE_MARKERS.0, KUBE_MARKERS.1, md);
    }
    let doc = replace_between(doc, RESULTS_MARKERS.0, RESULTS_MARKERS.1, md)?;
    if sections.contains(&"kubernetes") {
        if let Some(d) = replace_between(
            &doc,
            KUBE_MARKERS.0,
            KUBE_MARKERS.1,
            "The Kubernetes figures of the latest run are in the results above.",
        ) {
            return Some(d);
        }
    }
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubernetes_only_run_keeps_the_other_results() {
        let (rb, re) = RESULTS_MARKERS;
        let (kb, ke) = KUBE_MARKERS;
        let doc = format!("a\n{rb}\nfull\n{re}\nb\n{kb}\nold k8s\n{ke}\n");
        let out = update_benchmarks_md(&doc, &["kubernetes"], "new k8s").unwrap();
        assert!(out.contains(&format!("{rb}\nfull\n{re}")), "{out}");
        assert!(out.contains(&format!("{kb}\nnew k8s\n{ke}")), "{out}");
        let out = update_benchmarks_md(&doc, &["outgoing"], "new full").unwrap();
        assert!(out.contains(&format!("{rb}\nnew full\n{re}")), "{out}");
        assert!(out.contains("old k8s"), "{out}");
        let out = update_benchmarks_md(&doc, &["outgoing", "kubernetes"], "all").unwrap();
        assert!(out.contains(&format!("{rb}\nall\n{re}")), "{out}");
        assert!(!out.contains("old k8s"), "{out}");
        // No Kubernetes markers: a full run still writes its results; a Kubernetes-only one
        // has nowhere to go.
        let plain = format!("{rb}\nx\n{re}\n");
        assert!(update_benchmarks_md(&plain, &["outgoing", "kubernetes"], "y").is_some());
        assert!(update_benchmarks_md(&plain, &["kubernetes"], "y").is_none());
    }

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
