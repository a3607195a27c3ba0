//! Target resolution: from a target path (`deployment/api`, `service/web`, ...) to one pod and
//! one container of it, with the container id the agent looks the process up by.
//!
//! The choice itself ([`pick_pod`], [`pick_container`]) is a pure function over the objects, so
//! every rule is unit-tested; [`resolve`] fetches the objects a kind needs.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind, Selector};
use kube::Client;
use mirrord_protocol::config::TargetPath;

/// Mesh and helper sidecars: never the target unless named.
pub const SIDECARS: &[&str] = &[
    "istio-proxy",
    "istio-init",
    "linkerd-proxy",
    "linkerd-init",
    "kuma-sidecar",
    "kuma-init",
    "vault-agent",
    "vault-agent-init",
    "queue-proxy",
];

/// The annotation that names a pod's default container (as `kubectl` reads it).
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// One pod and container to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTarget {
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    pub container: String,
    /// `containerd://ID`, `cri-o://ID`, `docker://ID`.
    pub container_id: String,
    /// Says which container was picked when there was a choice, for the user.
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResolveError {
    #[error(
        "{target} was not found in namespace {namespace}: check the name, and the namespace \
         (-n NAMESPACE, target.namespace in the configuration, or MIRRORD_TARGET_NAMESPACE)"
    )]
    NotFound { target: String, namespace: String },
    #[error(
        "{target} selects pods with {selector}, and no pod in namespace {namespace} matches: is \
         it scaled to zero? (kubectl get pods -n {namespace} -l {selector})"
    )]
    SelectorMatchesNothing {
        target: String,
        selector: String,
        namespace: String,
    },
    #[error(
        "{target} has no pod selector ({why}), so it has no pods to target: target one of its \
         pods (-t pod/NAME)"
    )]
    NoSelector { target: String, why: String },
    #[error(
        "{target} has no ready pod ({details}): wait until one is Running and ready \
         (kubectl get pods -n {namespace}), or target a pod directly (-t pod/NAME)"
    )]
    NoReadyPod {
        target: String,
        namespace: String,
        details: String,
    },
    #[error(
        "pod {pod} has no container {container} (its containers: {available}): use \
         .../container/NAME with one of those"
    )]
    ContainerNotFound {
        pod: String,
        container: String,
        available: String,
    },
    #[error(
        "pod {pod} has no container to target (only sidecars: {available}): name one with \
         .../container/NAME"
    )]
    OnlySidecars { pod: String, available: String },
    #[error(
        "cronjob/{name} has no job with a running pod in namespace {namespace}: a cron job has \
         pods only while a run is in progress; wait for its next run, or target a job \
         (-t job/NAME)"
    )]
    CronJobIdle { name: String, namespace: String },
    #[error("the Kubernetes API refused to {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: ApiFailure,
    },
}

/// A Kubernetes API error, kept comparable for tests.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ApiFailure(pub String);

fn api_error(action: impl Into<String>, e: kube::Error) -> ResolveError {
    ResolveError::Api {
        action: action.into(),
        source: ApiFailure(describe_kube_error(&e)),
    }
}

/// A readable one-line form of a kube error (the API's own message when it sent a Status).
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The container to serve in `pod`: the one named, else the pod's default-container
/// annotation, else the first that is not a mesh or helper sidecar. The second value says
/// which one was picked when there was a choice.
pub fn pick_container(
    pod: &Pod,
    wanted: Option<&str>,
) -> Result<(String, Option<String>), ResolveError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let names: Vec<&str> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let available = || names.join(", ");
    if let Some(wanted) = wanted {
        return if names.contains(&wanted) {
            Ok((wanted.to_owned(), None))
        } else {
            Err(ResolveError::ContainerNotFound {
                pod: pod_name,
                container: wanted.to_owned(),
                available: available(),
            })
        };
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .filter(|c| names.contains(&c.as_str()));
    if let Some(c) = annotated {
        let note = (names.len() > 1).then(|| {
            format!(
                "picked container {c} of pod {pod_name} (its {DEFAULT_CONTAINER_ANNOTATION} \
                 annotation; containers: {})",
                available()
            )
        });
        return Ok((c.clone(), note));
    }
    let Some(first) = names.iter().find(|n| !SIDECARS.contains(n)) else {
        return Err(ResolveError::OnlySidecars {
            pod: pod_name,
            available: available(),
        });
    };
    let note = (names.len() > 1).then(|| {
        let skipped: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| SIDECARS.contains(n))
            .collect();
        let why = if skipped.is_empty() {
            "the first".to_owned()
        } else {
            format!("skipping sidecar {}", skipped.join(", "))
        };
        format!(
            "picked container {first} of pod {pod_name} ({why}; containers: {}; choose another \
             with .../container/NAME)",
            available()
        )
    });
    Ok(((*first).to_owned(), note))
}

/// Why `pod` cannot be the target (with `container`), or its container id.
fn pod_readiness(pod: &Pod, container: &str) -> Result<String, String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Err("being deleted".into());
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    if phase != "Running" {
        return Err(phase.to_owned());
    }
    let cs = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container));
    match cs {
        Some(c) if c.ready => c
            .container_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| format!("container {container} has no container id yet")),
        Some(_) => Err(format!("container {container} not ready")),
        None => Err(format!("container {container} not started")),
    }
}

/// The first pod that is Running, not being deleted, and whose chosen container is ready.
/// `target` names what was asked for, for messages.
pub fn pick_pod(
    pods: &[Pod],
    wanted_container: Option<&str>,
    target: &str,
    namespace: &str,
) -> Result<ResolvedTarget, ResolveError> {
    let mut details = Vec::new();
    let mut container_errors = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (container, note) = match pick_container(pod, wanted_container) {
            Ok(c) => c,
            Err(e) => {
                details.push(format!("{name}: {e}"));
                container_errors.push(e);
                continue;
            }
        };
        match pod_readiness(pod, &container) {
            Ok(container_id) => {
                return Ok(ResolvedTarget {
                    namespace: pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| namespace.to_owned()),
                    pod: name,
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    container,
                    container_id,
                    note,
                })
            }
            Err(why) => details.push(format!("{name}: {why}")),
        }
    }
    // When no pod has the container, that (not readiness) is what the user must fix.
    if !pods.is_empty() && container_errors.len() == pods.len() {
        return Err(container_errors.swap_remove(0));
    }
    Err(ResolveError::NoReadyPod {
        target: target.to_owned(),
        namespace: namespace.to_owned(),
        details: if details.is_empty() {
            "no pods".into()
        } else {
            details.join("; ")
        },
    })
}

/// A label selector as the API's `labelSelector` parameter writes it.
pub fn selector_string(selector: &LabelSelector) -> Result<String, String> {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if empty {
        // An empty selector matches every pod: never what the user means by a workload.
        return Err("its selector is empty".into());
    }
    Selector::try_from(selector.clone())
        .map(|s| s.to_string())
        .map_err(|e| format!("its selector cannot be used: {e}"))
}

/// The Argo Rollout resource (a custom resource, read as a dynamic object).
pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"))
}

/// What a rollout's pods are selected by: its own `spec.selector`, else the selector of the
/// workload its `spec.workloadRef` points at.
pub enum RolloutPods {
    Selector(LabelSelector),
    WorkloadRef { kind: String, name: String },
}

/// Reads a rollout's pod selection out of its JSON.
pub fn rollout_pods(rollout: &DynamicObject) -> Option<RolloutPods> {
    let spec = rollout.data.get("spec")?;
    if let Some(sel) = spec.get("selector") {
        if let Ok(sel) = serde_json::from_value::<LabelSelector>(sel.clone()) {
            if sel.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || sel
                    .match_expressions
                    .as_ref()
                    .is_some_and(|e| !e.is_empty())
            {
                return Some(RolloutPods::Selector(sel));
            }
        }
    }
    let wref = spec.get("workloadRef")?;
    Some(RolloutPods::WorkloadRef {
        kind: wref.get("kind")?.as_str()?.to_owned(),
        name: wref.get("name")?.as_str()?.to_owned(),
    })
}

/// Resolves a Kubernetes workload target in `namespace`. `Targetless`, `pid/` and `netns/` have
/// nothing to resolve and are a caller error.
pub async fn resolve(
    client: &Client,
    target: &TargetPath,
    namespace: &str,
) -> Result<ResolvedTarget, ResolveError> {
    let Some((kind, name, container)) = target.workload() else {
        return Err(ResolveError::NoSelector {
            target: target.to_string(),
            why: "it is not a Kubernetes workload".into(),
        });
    };
    let display = format!("{kind}/{name}");
    let not_found = || ResolveError::NotFound {
        target: display.clone(),
        namespace: namespace.to_owned(),
    };
    let get = |what: &str, e: kube::Error| {
        if is_not_found(&e) {
            not_found()
        } else {
            api_error(format!("get {what} in namespace {namespace}"), e)
        }
    };
    let no_selector = |why: String| ResolveError::NoSelector {
        target: display.clone(),
        why,
    };
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = match kind {
        "pod" => {
            let pod = pods_api.get(name).await.map_err(|e| get(&display, e))?;
            return pick_pod(&[pod], container, &display, namespace);
        }
        "deployment" => {
            let d = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| get(&display, e))?;
            selector_string(&d.spec.selector).map_err(no_selector)?
        }
        "statefulset" => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| get(&display, e))?;
            selector_string(&s.spec.selector).map_err(no_selector)?
        }
        "replicaset" => {
            let r = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| get(&display, e))?;
            selector_string(&r.spec.selector).map_err(no_selector)?
        }
        "job" => {
            let j = Api::<Job>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| get(&display, e))?;
            job_selector(&j)
        }
        "service" => {
            let s = Api::<Service>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| get(&display, e))?;
            let map = s.spec.and_then(|s| s.selector).unwrap_or_default();
            if map.is_empty() {
                return Err(no_selector(
                    "it has no spec.selector: its endpoints are managed by hand".into(),
                ));
            }
            map.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
        "rollout" => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &rollout_resource());
            let r = api.get(name).await.map_err(|e| get(&display, e))?;
            match rollout_pods(&r) {
                Some(RolloutPods::Selector(sel)) => selector_string(&sel).map_err(no_selector)?,
                Some(RolloutPods::WorkloadRef { kind, name: wname }) => {
                    let what = format!("{} {wname} (the rollout's workloadRef)", kind);
                    let sel = match kind.as_str() {
                        "Deployment" => {
                            Api::<Deployment>::namespaced(client.clone(), namespace)
                                .get(&wname)
                                .await
                                .map_err(|e| api_error(format!("get {what}"), e))?
                                .spec
                                .selector
                        }
                        "ReplicaSet" => {
                            Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                                .get(&wname)
                                .await
                                .map_err(|e| api_error(format!("get {what}"), e))?
                                .spec
                                .selector
                        }
                        other => {
                            return Err(no_selector(format!(
                                "its workloadRef names a {other}, which mirrord cannot follow"
                            )))
                        }
                    };
                    selector_string(&sel).map_err(no_selector)?
                }
                None => {
                    return Err(no_selector(
                        "neither spec.selector nor spec.workloadRef".into(),
                    ))
                }
            }
        }
        "cronjob" => {
            // Exists at all? A missing cron job deserves "not found", not "idle".
            Api::<CronJob>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| get(&display, e))?;
            let jobs = Api::<Job>::namespaced(client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error(format!("list jobs in namespace {namespace}"), e))?;
            let mut owned: Vec<Job> = jobs
                .items
                .into_iter()
                .filter(|j| {
                    j.metadata.owner_references.as_ref().is_some_and(|refs| {
                        refs.iter().any(|r| r.kind == "CronJob" && r.name == name)
                    })
                })
                .collect();
            // Newest run first.
            owned.sort_by(|a, b| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
            });
            for job in &owned {
                let pods = list_pods(&pods_api, &job_selector(job), namespace).await?;
                if let Ok(t) = pick_pod(&pods, container, &display, namespace) {
                    return Ok(t);
                }
            }
            return Err(ResolveError::CronJobIdle {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            });
        }
        other => unreachable!("TargetPath::workload has no kind {other}"),
    };
    let pods = list_pods(&pods_api, &selector, namespace).await?;
    if pods.is_empty() {
        return Err(ResolveError::SelectorMatchesNothing {
            target: display,
            selector,
            namespace: namespace.to_owned(),
        });
    }
    pick_pod(&pods, container, &display, namespace)
}

/// A Job's pods: its `spec.selector` (the controller sets one), else the `job-name` label.
fn job_selector(job: &Job) -> String {
    job.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| selector_string(s).ok())
        .unwrap_or_else(|| format!("job-name={}", job.metadata.name.as_deref().unwrap_or("")))
}

async fn list_pods(
    api: &Api<Pod>,
    selector: &str,
    namespace: &str,
) -> Result<Vec<Pod>, ResolveError> {
    let mut pods = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| api_error(format!("list pods in namespace {namespace}"), e))?
        .items;
    // The API lists by name; the oldest pod first is the steadier choice when several are ready.
    pods.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, containers: &[&str], ready: &[&str], phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "payments"},
            "spec": {
                "nodeName": "node-1",
                "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()
            },
            "status": {
                "phase": phase,
                "containerStatuses": containers.iter().map(|c| json!({
                    "name": c, "ready": ready.contains(c), "restartCount": 0, "image": "i",
                    "imageID": "", "containerID": format!("containerd://{name}-{c}-0123456789abcdef")
                })).collect::<Vec<_>>()
            }
        }))
        .unwrap()
    }

    #[test]
    fn istio_sidecar_listed_first_is_skipped_and_said() {
        let p = pod(
            "api-1",
            &["istio-proxy", "app"],
            &["istio-proxy", "app"],
            "Running",
        );
        let t = pick_pod(&[p], None, "deployment/api", "payments").unwrap();
        assert_eq!(t.container, "app");
        assert_eq!(t.container_id, "containerd://api-1-app-0123456789abcdef");
        assert_eq!(t.node.as_deref(), Some("node-1"));
        let note = t.note.unwrap();
        assert!(note.contains("skipping sidecar istio-proxy"), "{note}");
    }

    #[test]
    fn every_mesh_sidecar_is_skipped() {
        for sidecar in SIDECARS {
            let p = pod("p", &[sidecar, "main"], &[sidecar, "main"], "Running");
            assert_eq!(pick_container(&p, None).unwrap().0, "main", "{sidecar}");
        }
    }

    #[test]
    fn default_container_annotation_wins() {
        let mut p = pod("p", &["a", "b"], &["a", "b"], "Running");
        p.metadata.annotations = Some(
            [(DEFAULT_CONTAINER_ANNOTATION.to_owned(), "b".to_owned())]
                .into_iter()
                .collect(),
        );
        let (c, note) = pick_container(&p, None).unwrap();
        assert_eq!(c, "b");
        assert!(note.unwrap().contains("annotation"));
        // A named container beats the annotation.
        assert_eq!(pick_container(&p, Some("a")).unwrap(), ("a".into(), None));
    }

    #[test]
    fn a_single_container_needs_no_note() {
        let p = pod("p", &["app"], &["app"], "Running");
        assert_eq!(pick_container(&p, None).unwrap(), ("app".into(), None));
    }

    #[test]
    fn the_ready_pod_is_picked_over_a_not_ready_one() {
        let not_ready = pod("api-a", &["app"], &[], "Running");
        let pending = pod("api-b", &["app"], &[], "Pending");
        let ready = pod("api-c", &["app"], &["app"], "Running");
        let t = pick_pod(
            &[not_ready, pending, ready],
            None,
            "deployment/api",
            "payments",
        )
        .unwrap();
        assert_eq!(t.pod, "api-c");
    }

    #[test]
    fn a_deleting_pod_is_not_picked() {
        let mut deleting = pod("api-a", &["app"], &["app"], "Running");
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let e = pick_pod(&[deleting], None, "deployment/api", "payments").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("being deleted") && msg.contains("-t pod/NAME"),
            "{msg}"
        );
    }

    #[test]
    fn no_ready_pod_says_why_and_what_to_do() {
        let e = pick_pod(
            &[
                pod("api-a", &["app"], &[], "Running"),
                pod("api-b", &["app"], &[], "Pending"),
            ],
            None,
            "deployment/api",
            "payments",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ResolveError::NoReadyPod { .. }));
        assert!(msg.contains("api-a: container app not ready"), "{msg}");
        assert!(msg.contains("api-b: Pending"), "{msg}");
        assert!(msg.contains("wait until"), "{msg}");
    }

    #[test]
    fn a_missing_container_names_the_ones_there_are() {
        let e = pick_pod(
            &[pod("api-a", &["app", "istio-proxy"], &["app"], "Running")],
            Some("web"),
            "pod/api-a",
            "payments",
        )
        .unwrap_err();
        assert_eq!(
            e,
            ResolveError::ContainerNotFound {
                pod: "api-a".into(),
                container: "web".into(),
                available: "app, istio-proxy".into()
            }
        );
        assert!(e.to_string().contains("container/NAME"));
    }

    #[test]
    fn only_sidecars_is_an_error_naming_them() {
        let p = pod("p", &["istio-proxy"], &["istio-proxy"], "Running");
        let e = pick_pod(&[p], None, "pod/p", "payments").unwrap_err();
        assert!(matches!(e, ResolveError::OnlySidecars { .. }), "{e}");
    }

    #[test]
    fn selectors_are_written_as_the_api_reads_them() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "api"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]
        }))
        .unwrap();
        let s = selector_string(&sel).unwrap();
        assert!(s.contains("app=api") && s.contains("tier in (web)"), "{s}");
        assert!(selector_string(&LabelSelector::default()).is_err());
    }

    #[test]
    fn rollouts_select_by_selector_or_workload_ref() {
        let with_selector: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "r"},
            "spec": {"selector": {"matchLabels": {"app": "r"}}}
        }))
        .unwrap();
        assert!(matches!(
            rollout_pods(&with_selector),
            Some(RolloutPods::Selector(_))
        ));
        let with_ref: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "r"},
            "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}}
        }))
        .unwrap();
        match rollout_pods(&with_ref) {
            Some(RolloutPods::WorkloadRef { kind, name }) => {
                assert_eq!((kind.as_str(), name.as_str()), ("Deployment", "api"))
            }
            _ => panic!("workloadRef not read"),
        }
    }

    #[test]
    fn a_job_without_selector_uses_its_name_label() {
        let j: Job = serde_json::from_value(json!({"metadata": {"name": "migrate"}})).unwrap();
        assert_eq!(job_selector(&j), "job-name=migrate");
        let j: Job = serde_json::from_value(json!({
            "metadata": {"name": "migrate"},
            "spec": {"template": {}, "selector": {"matchLabels": {"controller-uid": "u1"}}}
        }))
        .unwrap();
        assert_eq!(job_selector(&j), "controller-uid=u1");
    }
}
