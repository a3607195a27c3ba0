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
    let mut push = |kind: &str, name: Option<&String>, available: bool| {
        if let Some(name) = name {
            targets.push(TargetInfo {
                path: format!("{kind}/{name}"),
                available,
            });
        }
    };
    for d in list_optional(
        Api::<Deployment>::namespaced(client.clone(), namespace),
        "deployment",
        &lp,
    )
    .await
    {
        let sel = d.spec.selector.match_labels.as_ref();
        push("deployment", d.metadata.name.as_ref(), any_ready(sel));
    }
    for s in list_optional(
        Api::<StatefulSet>::namespaced(client.clone(), namespace),
        "statefulset",
        &lp,
    )
    .await
    {
        let sel = s.spec.selector.match_labels.as_ref();
        push("statefulset", s.metadata.name.as_ref(), any_ready(sel));
    }
    let rollouts = Api::namespaced_with(client.clone(), namespace, &rollout_resource());
    for r in list_optional::<DynamicObject>(rollouts, "rollout", &lp).await {
        let sel: Option<BTreeMap<String, String>> = r
            .data
            .pointer("/spec/selector/matchLabels")
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let ready_replicas = r
            .data
            .pointer("/status/readyReplicas")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let available = any_ready(sel.as_ref()) || ready_replicas > 0;
        push("rollout", r.metadata.name.as_ref(), available);
    }
    for s in list_optional(
        Api::<Service>::namespaced(client.clone(), namespace),
        "service",
        &lp,
    )
    .await
    {
        let sel = s.spec.as_ref().and_then(|s| s.selector.as_ref());
        // A service without a selector has no pods to target.
        if sel.is_some_and(|s| !s.is_empty()) {
            push("service", s.metadata.name.as_ref(), any_ready(sel));
        }
    }
    targets.push(TargetInfo {
        path: "targetless".into(),
        available: true,
    });
    Ok(targets)
}

/// The objects of one kind, or none when they cannot be listed (said at debug level).
async fn list_optional<K>(api: Api<K>, kind: &str, lp: &ListParams) -> Vec<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!("listing {kind}s: {}", describe_kube_error(&e));
            Vec::new()
        }
    }
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
