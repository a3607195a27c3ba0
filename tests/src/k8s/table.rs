//! Server-side printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): the columns
//! `kubectl get` shows for the kinds the simulated API serves.

use serde_json::{json, Value};

use super::resources::Resource;

/// Whether the client asked for a `meta.k8s.io/v1` Table.
pub(crate) fn wanted(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && params.contains(&"v=v1")
    })
}

/// kubectl's short age: `45s`, `12m`, `5h`, `3d`.
fn age(created: &Value) -> String {
    let Some(t) = created
        .as_str()
        .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let secs = (now - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn column(name: &str, kind: &str) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" },
           "description": "",
           // Shown with `-o wide` only.
           "priority": if matches!(name, "IP" | "Node") { 1 } else { 0 }})
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn cells(r: &Resource, o: &Value) -> Vec<Value> {
    let name = o["metadata"]["name"].clone();
    let created = age(&o["metadata"]["creationTimestamp"]);
    let st = &o["status"];
    match r.plural {
        "pods" => {
            let statuses = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let waiting = statuses
                .iter()
                .find_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_string));
            let terminated = statuses.iter().find_map(|c| {
                c["state"]["terminated"]["reason"]
                    .as_str()
                    .map(str::to_string)
            });
            let status = if o["metadata"]["deletionTimestamp"].is_string() {
                "Terminating".to_string()
            } else {
                waiting
                    .or(terminated)
                    .or_else(|| st["phase"].as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(0),
                json!(created),
                json!(st["podIP"].as_str().unwrap_or("<none>")),
                json!(o["spec"]["nodeName"].as_str().unwrap_or("<none>")),
            ]
        }
        "deployments" => vec![
            name,
            json!(format!(
                "{}/{}",
                num(&st["readyReplicas"]),
                num(&o["spec"]["replicas"])
            )),
            json!(num(&st["updatedReplicas"])),
            json!(num(&st["availableReplicas"])),
            json!(created),
        ],
        "statefulsets" => vec![
            name,
            json!(format!(
                "{}/{}",
                num(&st["readyReplicas"]),
                num(&o["spec"]["replicas"])
            )),
            json!(created),
        ],
        "replicasets" => vec![
            name,
            json!(num(&o["spec"]["replicas"])),
            json!(num(&st["replicas"])),
            json!(num(&st["readyReplicas"])),
            json!(created),
        ],
        "jobs" => vec![
            name,
            json!(format!(
                "{}/{}",
                num(&st["succeeded"]),
                o["spec"]["completions"].as_u64().unwrap_or(1)
            )),
            json!(created),
        ],
        "services" => vec![
            name,
            json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
            json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
            json!(o["spec"]["ports"]
                .as_array()
                .map(|ps| ps
                    .iter()
                    .map(|p| format!(
                        "{}/{}",
                        num(&p["port"]),
                        p["protocol"].as_str().unwrap_or("TCP")
                    ))
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()),
            json!(created),
        ],
        "namespaces" => vec![
            name,
            json!(st["phase"].as_str().unwrap_or("Active")),
            json!(created),
        ],
        _ => vec![name, json!(created)],
    }
}

fn columns(r: &Resource) -> Vec<Value> {
    let cols: &[(&str, &str)] = match r.plural {
        "pods" => &[
            ("Name", "string"),
            ("Ready", "string"),
            ("Status", "string"),
            ("Restarts", "integer"),
            ("Age", "string"),
            ("IP", "string"),
            ("Node", "string"),
        ],
        "deployments" => &[
            ("Name", "string"),
            ("Ready", "string"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
            ("Age", "string"),
        ],
        "statefulsets" => &[("Name", "string"), ("Ready", "string"), ("Age", "string")],
        "replicasets" => &[
            ("Name", "string"),
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Age", "string"),
        ],
        "jobs" => &[
            ("Name", "string"),
            ("Completions", "string"),
            ("Age", "string"),
        ],
        "services" => &[
            ("Name", "string"),
            ("Type", "string"),
            ("Cluster-IP", "string"),
            ("Port(s)", "string"),
            ("Age", "string"),
        ],
        "namespaces" => &[("Name", "string"), ("Status", "string"), ("Age", "string")],
        _ => &[("Name", "string"), ("Age", "string")],
    };
    cols.iter().map(|(n, t)| column(n, t)).collect()
}

/// The Table of `items` (rows carry the objects' metadata, as `includeObject=Metadata`).
pub(crate) fn table(r: &Resource, items: &[Value], rv: u64) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": cells(r, o),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": o["metadata"]},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns(r),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted("application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
    }
}
