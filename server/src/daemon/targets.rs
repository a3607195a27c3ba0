//! Targets on this machine: named network namespaces, and processes that live in a network
//! namespace other than the daemon's (containers, pods, the simulated cluster's services).

use mirrord_protocol::api::TargetInfo;
use std::collections::HashSet;

/// Every `netns/NAME` and, per foreign network namespace, the first process in it as `pid/PID`.
pub fn local_targets() -> Vec<TargetInfo> {
    let mut targets = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            targets.push(TargetInfo {
                path: format!("netns/{name}"),
                available: true,
            });
        }
    }
    let own = std::fs::read_link("/proc/self/ns/net").ok();
    let mut seen = HashSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            if Some(&ns) == own.as_ref() || !seen.insert(ns) {
                continue;
            }
            targets.push(TargetInfo {
                path: format!("pid/{pid}"),
                available: true,
            });
        }
    }
    targets
}
