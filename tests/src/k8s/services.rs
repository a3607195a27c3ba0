//! Services at runtime: their names in the cluster DNS (an `addn-hosts` file dnsmasq re-reads on
//! SIGHUP) and their ClusterIP answered by a pod the selector matches (there is no kube-proxy:
//! the first running matching pod gets the address on its interface).

use std::fs;
use std::sync::Arc;

use serde_json::Value;

use super::Sim;

/// The hosts file dnsmasq serves the services' names from, in the workdir.
pub(crate) const HOSTS_FILE: &str = "services.hosts";

/// One hosts line per service with a ClusterIP, sorted (stable content: rewriting the same set
/// changes nothing).
pub(crate) fn hosts_lines(services: &[(String, String, String)]) -> String {
    let mut lines: Vec<String> = services
        .iter()
        .filter(|(_, _, ip)| !ip.is_empty() && ip != "None")
        .map(|(ns, name, ip)| format!("{ip} {name}.{ns}.svc.cluster.local\n"))
        .collect();
    lines.sort();
    lines.concat()
}

/// Rewrites the hosts file from the stored services and, when it changed, tells dnsmasq.
pub(crate) fn sync_dns(sim: &Sim) {
    let services: Vec<(String, String, String)> = sim
        .store
        .list("services", None)
        .0
        .iter()
        .map(|s| {
            let get = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                get(&s["metadata"]["namespace"]),
                get(&s["metadata"]["name"]),
                get(&s["spec"]["clusterIP"]),
            )
        })
        .collect();
    let text = hosts_lines(&services);
    let path = sim.workdir.join(HOSTS_FILE);
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return;
    }
    if let Err(e) = fs::write(&path, text) {
        tracing::warn!("writing {}: {e}", path.display());
        return;
    }
    let pid = fs::read_to_string(sim.workdir.join("dnsmasq.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| *p > 1) {
        // SAFETY: kill(2) on dnsmasq's pid (it re-reads addn-hosts on SIGHUP).
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
}

/// Gives the service's ClusterIP to the first running pod its selector matches (once).
pub(crate) async fn back_with_pod(sim: &Arc<Sim>, ns: &str, name: &str) {
    let Some(svc) = sim.store.get("services", ns, name) else {
        return;
    };
    let Some(ip) = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|i| i.parse::<std::net::Ipv4Addr>().ok())
    else {
        return;
    };
    let Some(selector) = svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())
    else {
        return;
    };
    let pod = sim.store.list("pods", Some(ns)).0.into_iter().find(|p| {
        p["status"]["phase"] == "Running"
            && selector
                .iter()
                .all(|(k, v)| &p["metadata"]["labels"][k.as_str()] == v)
    });
    let Some(netns) = pod
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .and_then(|p| sim.kubelet.netns(ns, &p))
    else {
        return;
    };
    let net_sim = sim.clone();
    match tokio::task::spawn_blocking(move || net_sim.net.add_address(&netns, ip)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("service {ns}/{name}: {e:#}"),
        Err(e) => tracing::warn!("service {ns}/{name}: {e}"),
    }
}
