//! The Job controller: a Job gets one pod, its status follows that pod, and
//! `ttlSecondsAfterFinished` deletes it (and its pod) once it has finished. Retries
//! (`backoffLimit` > 0) are not simulated: the first failed pod fails the Job.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{kubelet, util, Sim};

/// Fills what the API server and the Job controller add to a new Job (selector, labels of the
/// pod template, status) before it is stored.
pub(crate) fn prepare(job: &mut Value) {
    let uid = util::uid();
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    job["metadata"]["uid"] = json!(uid);
    job["metadata"]["generation"] = json!(1);
    let spec = &mut job["spec"];
    if spec["backoffLimit"].is_null() {
        spec["backoffLimit"] = json!(6);
    }
    if spec["completions"].is_null() {
        spec["completions"] = json!(1);
    }
    if spec["parallelism"].is_null() {
        spec["parallelism"] = json!(1);
    }
    if spec["selector"].is_null() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[k] = json!(v);
    }
    job["status"] = json!({"startTime": util::now(), "active": 0, "ready": 0,
                           "terminating": 0, "uncountedTerminatedPods": {}});
}

/// The pod a Job runs: `<job>-<5 random>`, labels of its template, owned by the Job.
pub(crate) fn pod_for(job: &Value) -> Value {
    let name = job["metadata"]["name"].as_str().unwrap_or_default();
    let ns = job["metadata"]["namespace"].as_str().unwrap_or_default();
    let template = &job["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["name"] = json!(format!("{name}-{}", util::random_suffix(5)));
    metadata["namespace"] = json!(ns);
    metadata["generateName"] = json!(format!("{name}-"));
    metadata["ownerReferences"] = json!([{
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": job["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let mut spec = template["spec"].clone();
    if spec["nodeName"].is_null() {
        spec["nodeName"] = json!(kubelet::NODE_NAME);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
           "status": {"phase": "Pending"}})
}

/// Recomputes a Job's status from its pods; schedules its TTL deletion once it finished.
pub(crate) fn sync_status(sim: &Arc<Sim>, ns: &str, job_name: &str) {
    let Some(job) = sim.store.get("jobs", ns, job_name) else {
        return;
    };
    let uid = job["metadata"]["uid"].clone();
    let (pods, _) = sim.store.list("pods", Some(ns));
    let owned: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["uid"] == uid))
        })
        .collect();
    let phase = |p: &&Value| p["status"]["phase"].as_str().unwrap_or("").to_string();
    let active = owned
        .iter()
        .filter(|p| matches!(phase(p).as_str(), "Pending" | "Running"))
        .count();
    let ready = owned
        .iter()
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count();
    let failed = owned.iter().filter(|p| phase(p) == "Failed").count();
    let already_finished = job["status"]["completionTime"].is_string()
        || job["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Failed"));
    let mut finished_now = false;
    let updated = sim.store.update("jobs", ns, job_name, |j| {
        let st = &mut j["status"];
        st["active"] = json!(active);
        st["ready"] = json!(ready);
        if succeeded > 0 {
            st["succeeded"] = json!(succeeded);
        }
        if failed > 0 {
            st["failed"] = json!(failed);
        }
        if already_finished {
            return;
        }
        let now = util::now();
        let cond = |t: &str, reason: &str, message: &str| {
            json!({"type": t, "status": "True", "reason": reason, "message": message,
                   "lastProbeTime": now, "lastTransitionTime": now})
        };
        if succeeded > 0 {
            st["conditions"] = json!([
                cond(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
                cond(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods"
                ),
            ]);
            st["completionTime"] = json!(now);
            finished_now = true;
        } else if failed > 0 {
            st["conditions"] = json!([
                cond(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
                cond(
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit"
                ),
            ]);
            finished_now = true;
        }
    });
    if let (true, Some(job)) = (finished_now, updated) {
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
            let (sim, ns, name) = (sim.clone(), ns.to_string(), job_name.to_string());
            sim.handle().clone().spawn(async move {
                tokio::time::sleep(Duration::from_secs(ttl)).await;
                // Only the Job that finished: one made later under the same name keeps going.
                if sim
                    .store
                    .get("jobs", &ns, &name)
                    .is_some_and(|j| j["metadata"]["uid"] == uid)
                {
                    delete(&sim, &ns, &name, true).await;
                }
            });
        }
    }
}

/// Deletes a Job; with `cascade` its pods go too.
pub(crate) async fn delete(sim: &Arc<Sim>, ns: &str, name: &str, cascade: bool) -> Option<Value> {
    let job = sim.store.delete("jobs", ns, name)?;
    if cascade {
        let uid = job["metadata"]["uid"].clone();
        let (pods, _) = sim.store.list("pods", Some(ns));
        for p in pods {
            let owned = p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["uid"] == uid));
            if let (true, Some(pod)) = (owned, p["metadata"]["name"].as_str()) {
                kubelet::delete_pod(sim, ns, pod).await;
            }
        }
    }
    Some(job)
}
