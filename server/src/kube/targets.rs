//! The targets of a namespace, for the IDE's target picker: pods, deployments, statefulsets,
//! rollouts and services, each `available` when a ready pod stands behind it.

use super::resolve::{describe_kube_error, pick_pod, rollout_resource};
use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;
use mirrord_protocol::api::TargetInfo;
use std::collections::BTreeMap;

/// Whether a map selector matches a pod's labels.
fn matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn ready(pod: &Pod) -> bool {
    pick_pod(std::slice::from_ref(pod), None, "", "").is_ok()
}

/// Every target in `namespace`, then `targetless`.
pub async fn list(client: &Client, namespace: &str) -> Result<Vec<TargetInfo>> {
    let lp = ListParams::default();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e)))
        .with_context(|| format!("listing pods in namespace {namespace}"))?
        .items;
    let mut targets = Vec::new();
    for pod in &pods {
        let Some(name) = &pod.metadata.name else {
            continue;
        };
        targets.push(TargetInfo {
            path: format!("pod/{name}"),
            available: ready(pod),
        });
    }
    // A ready pod behind a workload's selector makes it available.
    let any_ready = |sel: Option<&BTreeMap<String, String>>| {
        sel.is_some_and(|sel| pods.iter().any(|p| matches(sel, p) && ready(p)))
    };
    // The other kinds are optional: a user may be allowed to list pods only, and a cluster
    // without Argo has no rollouts. What cannot be listed is left out.
    match Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
    {
        Ok(list) => {
            for d in list.items {
                let Some(name) = d.metadata.name.clone() else {
                    continue;
                };
                let sel = d.spec.selector.match_labels.as_ref();
                targets.push(TargetInfo {
                    path: format!("deployment/{name}"),
                    available: any_ready(sel),
                });
            }
        }
        Err(e) => tracing::debug!("listing deployments: {}", describe_kube_error(&e)),
    }
    match Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
    {
        Ok(list) => {
            for s in list.items {
                let Some(name) = s.metadata.name.clone() else {
                    continue;
                };
                let sel = s.spec.selector.match_labels.as_ref();
                targets.push(TargetInfo {
                    path: format!("statefulset/{name}"),
                    available: any_ready(sel),
                });
            }
        }
        Err(e) => tracing::debug!("listing statefulsets: {}", describe_kube_error(&e)),
    }
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &rollout_resource());
    match rollouts.list(&lp).await {
        Ok(list) => {
            for r in list.items {
                let Some(name) = r.metadata.name.clone() else {
                    continue;
                };
                let sel: Option<BTreeMap<String, String>> = r
                    .data
                    .pointer("/spec/selector/matchLabels")
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                let ready_replicas = r
                    .data
                    .pointer("/status/readyReplicas")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0);
                targets.push(TargetInfo {
                    path: format!("rollout/{name}"),
                    available: any_ready(sel.as_ref()) || ready_replicas > 0,
                });
            }
        }
        Err(e) => tracing::debug!("listing rollouts: {}", describe_kube_error(&e)),
    }
    match Api::<Service>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
    {
        Ok(list) => {
            for s in list.items {
                let Some(name) = s.metadata.name.clone() else {
                    continue;
                };
                let sel = s.spec.as_ref().and_then(|s| s.selector.as_ref());
                // A service without a selector has no pods to target.
                if sel.is_none_or(|s| s.is_empty()) {
                    continue;
                }
                targets.push(TargetInfo {
                    path: format!("service/{name}"),
                    available: any_ready(sel),
                });
            }
        }
        Err(e) => tracing::debug!("listing services: {}", describe_kube_error(&e)),
    }
    targets.push(TargetInfo {
        path: "targetless".into(),
        available: true,
    });
    Ok(targets)
}

/// The namespaces the user may list; `None` when listing them is not allowed.
pub async fn namespaces(client: &Client) -> Option<Vec<String>> {
    match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let mut names: Vec<String> = list
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            names.sort();
            Some(names)
        }
        Err(e) => {
            tracing::debug!("listing namespaces: {}", describe_kube_error(&e));
            None
        }
    }
}
