//! A minimal workload controller: the status of deployments, replicasets and statefulsets
//! follows their pods (no pods are created or replaced: there is no scheduling here).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{util, Sim};

/// Sets `status` of the deployments, replicasets and statefulsets of namespace `ns` from their
/// pods (when the counts changed: no MODIFIED event otherwise).
pub(crate) fn refresh_status(sim: &Arc<Sim>, ns: &str) {
    let pods = sim.store.list("pods", Some(ns)).0;
    for plural in ["deployments", "replicasets", "statefulsets"] {
        for w in sim.store.list(plural, Some(ns)).0 {
            let Some(name) = w["metadata"]["name"].as_str() else {
                continue;
            };
            let Some(selector) = w["spec"]["selector"]["matchLabels"].as_object() else {
                continue;
            };
            let mine: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    selector
                        .iter()
                        .all(|(k, v)| &p["metadata"]["labels"][k.as_str()] == v)
                })
                .collect();
            let ready = mine
                .iter()
                .filter(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            let total = mine.len();
            if w["status"]["replicas"].as_u64() == Some(total as u64)
                && w["status"]["readyReplicas"].as_u64() == Some(ready as u64)
            {
                continue;
            }
            let now = util::now();
            let status = match plural {
                "deployments" => json!({
                    "observedGeneration": 1, "replicas": total, "updatedReplicas": total,
                    "readyReplicas": ready, "availableReplicas": ready,
                    "unavailableReplicas": total - ready,
                    "conditions": [
                        {"type": "Available", "status": if ready > 0 { "True" } else { "False" },
                         "reason": "MinimumReplicasAvailable",
                         "message": "Deployment has minimum availability.",
                         "lastUpdateTime": now, "lastTransitionTime": now},
                        {"type": "Progressing", "status": "True",
                         "reason": "NewReplicaSetAvailable",
                         "message": format!("ReplicaSet \"{name}\" has successfully progressed."),
                         "lastUpdateTime": now, "lastTransitionTime": now}]
                }),
                "replicasets" => json!({
                    "observedGeneration": 1, "replicas": total, "fullyLabeledReplicas": total,
                    "readyReplicas": ready, "availableReplicas": ready,
                }),
                _ => json!({
                    "observedGeneration": 1, "replicas": total, "readyReplicas": ready,
                    "currentReplicas": total, "updatedReplicas": total,
                    "availableReplicas": ready, "currentRevision": format!("{name}-1"),
                    "updateRevision": format!("{name}-1"), "collisionCount": 0,
                }),
            };
            sim.store.update(plural, ns, name, |o| o["status"] = status);
        }
    }
}
