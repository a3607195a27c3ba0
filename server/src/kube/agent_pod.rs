//! The agent in the cluster: a Job on the target's node (default) or an ephemeral container of
//! the target pod; readiness (its pod, then its ready line), fail-fast on the usual failures,
//! and removal of whatever was created.

use super::resolve::{describe_kube_error, ResolvedTarget};
use anyhow::{anyhow, bail, Context, Result};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, EphemeralContainer, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use mirrord_protocol::config::{AgentConfig, DEFAULT_AGENT_IMAGE};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The agent container's name in its Job's pod.
pub const AGENT_CONTAINER: &str = "mirrord-agent";
/// Every agent Job and pod carries `app=mirrord`.
pub const AGENT_LABEL: (&str, &str) = ("app", "mirrord");
/// What the agent prints once it serves (its first stdout line, so the first log line).
pub const READY_LINE: &str = "mirrord-agent ready";
/// The label a Job controller puts on its pods.
const JOB_NAME_LABEL: &str = "job-name";

/// Everything that decides the agent's pod, for [`agent_job`] and [`agent_ephemeral`].
#[derive(Debug, Clone)]
pub struct AgentPlan {
    /// `mirrord-agent-<random>`: the Job's (or ephemeral container's) name.
    pub name: String,
    /// Namespace of the Job.
    pub namespace: String,
    /// The pod and container to serve; `None` for targetless.
    pub target: Option<ResolvedTarget>,
    /// The agent's TCP port on its pod's loopback.
    pub port: u16,
    pub token: String,
    pub config: AgentConfig,
}

impl AgentPlan {
    fn image(&self) -> String {
        self.config
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT_IMAGE.to_owned())
    }

    fn communication_timeout(&self) -> u32 {
        self.config
            .communication_timeout
            .unwrap_or(AgentConfig::DEFAULT_COMMUNICATION_TIMEOUT)
    }

    /// The agent's arguments (the token goes in the environment, never argv).
    pub fn args(&self, ephemeral: bool) -> Vec<String> {
        let mut args = Vec::new();
        match (&self.target, ephemeral) {
            (Some(t), true) => {
                args.push("--ephemeral".into());
                args.extend(["--container-id".into(), t.container_id.clone()]);
            }
            (Some(t), false) => args.extend(["--container-id".into(), t.container_id.clone()]),
            (None, _) => args.extend(["--target".into(), "targetless".into()]),
        }
        args.extend([
            "--listen".into(),
            format!("tcp:127.0.0.1:{}", self.port),
            "--communication-timeout".into(),
            self.communication_timeout().to_string(),
        ]);
        args
    }

    fn env(&self) -> serde_json::Value {
        let mut env = vec![json!({"name": crate::session::AGENT_TOKEN_ENV, "value": self.token})];
        if let Some(level) = &self.config.log_level {
            env.push(json!({"name": "MIRRORD_AGENT_LOG", "value": level}));
        }
        json!(env)
    }

    fn security_context(&self) -> serde_json::Value {
        if self.config.privileged.unwrap_or(false) {
            return json!({"privileged": true});
        }
        let disabled: Vec<String> = self
            .config
            .disabled_capabilities
            .iter()
            .flatten()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
            .collect();
        let add: Vec<&str> = ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
            .into_iter()
            .filter(|c| !disabled.iter().any(|d| d == c))
            .collect();
        json!({"capabilities": {"add": add}})
    }

    fn resources(&self) -> serde_json::Value {
        match &self.config.resources {
            Some(r) => json!(r),
            None => json!({"requests": {"cpu": "10m", "memory": "32Mi"}}),
        }
    }

    fn container(&self, ephemeral: bool) -> serde_json::Value {
        let mut c = json!({
            "name": if ephemeral { self.name.as_str() } else { AGENT_CONTAINER },
            "image": self.image(),
            "imagePullPolicy": self.config.image_pull_policy.as_deref().unwrap_or("IfNotPresent"),
            "command": ["mirrord-agent"],
            "args": self.args(ephemeral),
            "env": self.env(),
            "securityContext": self.security_context(),
        });
        if !ephemeral {
            // Ephemeral containers may not have resources.
            c["resources"] = self.resources();
        }
        c
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.config.labels.clone().unwrap_or_default();
        labels.insert(AGENT_LABEL.0.into(), AGENT_LABEL.1.into());
        labels
    }
}

/// The agent's Job.
pub fn agent_job(plan: &AgentPlan) -> Job {
    let mut annotations = plan.config.annotations.clone().unwrap_or_default();
    // Invariant: no mesh sidecar in the agent's pod (it would intercept the agent's own
    // traffic and keep the Job from finishing).
    annotations.insert("sidecar.istio.io/inject".into(), "false".into());
    annotations.insert("linkerd.io/inject".into(), "disabled".into());
    let tolerations = match &plan.config.tolerations {
        Some(t) => json!(t),
        None => json!([{"operator": "Exists"}]),
    };
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "tolerations": tolerations,
        "containers": [plan.container(false)],
    });
    if let Some(t) = &plan.target {
        // The agent finds the target's process by its container id, so it must run on the
        // target's node and see the node's processes.
        pod_spec["hostPID"] = json!(true);
        if let Some(node) = &t.node {
            pod_spec["nodeName"] = json!(node);
        }
    }
    if let Some(secrets) = &plan.config.image_pull_secrets {
        pod_spec["imagePullSecrets"] = json!(secrets);
    }
    if let Some(sel) = &plan.config.node_selector {
        pod_spec["nodeSelector"] = json!(sel);
    }
    if let Some(sa) = &plan.config.service_account {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": plan.labels(),
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": plan.config.ttl.unwrap_or(AgentConfig::DEFAULT_TTL),
            "template": {
                "metadata": {"labels": plan.labels(), "annotations": annotations},
                "spec": pod_spec,
            }
        }
    });
    // Built from typed values above; the shape is a Job's.
    serde_json::from_value(job).expect("the agent Job is a valid Job")
}

/// The agent as an ephemeral container of the target pod.
pub fn agent_ephemeral(plan: &AgentPlan) -> EphemeralContainer {
    let mut c = plan.container(true);
    if let Some(t) = &plan.target {
        c["targetContainerName"] = json!(t.container);
    }
    // Built from typed values above; the shape is an EphemeralContainer's.
    serde_json::from_value(c).expect("the agent container is a valid EphemeralContainer")
}

/// How far the agent's pod (or ephemeral container) has got.
#[derive(Debug, PartialEq)]
pub enum Progress {
    Starting(String),
    Running,
    Failed(String),
}

fn image_pull_failure(status: &ContainerStatus, image: &str) -> Option<String> {
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    matches!(
        reason,
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
    )
    .then(|| {
        format!(
            "the cluster cannot pull the agent image {image} ({reason}{}): build it from \
             agent/Dockerfile, push it to a registry the cluster can pull from, and set \
             agent.image (and agent.image_pull_secrets if the registry needs them)",
            waiting
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )
    })
}

fn terminated(status: &ContainerStatus) -> Option<String> {
    let t = status.state.as_ref()?.terminated.as_ref()?;
    Some(format!(
        "the agent exited (code {}{}{})",
        t.exit_code,
        t.reason
            .as_deref()
            .map(|r| format!(", {r}"))
            .unwrap_or_default(),
        t.message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ))
}

/// Reads the agent's state out of its pod: `container` in `status.containerStatuses` (a Job's
/// pod) or `status.ephemeralContainerStatuses` (ephemeral).
pub fn agent_progress(pod: &Pod, container: &str, ephemeral: bool, image: &str) -> Progress {
    let status = pod.status.as_ref();
    let statuses = status.and_then(|s| {
        if ephemeral {
            s.ephemeral_container_statuses.as_ref()
        } else {
            s.container_statuses.as_ref()
        }
    });
    let cs = statuses.and_then(|all| all.iter().find(|c| c.name == container));
    if let Some(cs) = cs {
        if let Some(why) = image_pull_failure(cs, image) {
            return Progress::Failed(why);
        }
        if let Some(why) = terminated(cs) {
            return Progress::Failed(why);
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if !ephemeral && phase == "Failed" {
        let reason = status
            .and_then(|s| s.reason.as_deref())
            .unwrap_or("no reason");
        let message = status
            .and_then(|s| s.message.as_deref())
            .unwrap_or("no message");
        return Progress::Failed(format!("the agent pod failed: {reason}: {message}"));
    }
    match cs
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running.as_ref())
    {
        Some(_) => Progress::Running,
        None => Progress::Starting(phase.to_owned()),
    }
}

/// What went wrong while starting the agent; each has its own message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "not allowed to {verb} {resource} in namespace {namespace} ({message}): ask for RBAC \
         that allows it (see the README), or use another namespace (agent.namespace){hint}"
    )]
    Forbidden {
        verb: String,
        resource: String,
        namespace: String,
        message: String,
        hint: &'static str,
    },
    #[error("the agent did not start: {0}")]
    Failed(String),
    #[error(
        "the agent's pod {pod} was deleted while it started: usually a Pod Security admission \
         rejection (the agent needs hostPID and the NET_ADMIN, SYS_ADMIN and SYS_PTRACE \
         capabilities, which the namespace's pod-security level may forbid): create the agent \
         in a namespace that allows privileged pods (agent.namespace), or try agent.ephemeral"
    )]
    PodDeleted { pod: String },
    #[error(
        "the agent was not ready within {secs} s (agent.startup_timeout){last}: the cluster may \
         be slow to schedule or pull the image; raise agent.startup_timeout, or look at \
         kubectl describe pod -n {namespace} -l job-name={name}"
    )]
    Timeout {
        secs: u64,
        last: String,
        namespace: String,
        name: String,
    },
    #[error("the Kubernetes API failed to {action}: {message}")]
    Api { action: String, message: String },
}

fn api_failure(
    action: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
    e: kube::Error,
) -> StartError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => StartError::Forbidden {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            message: s.message.clone(),
            hint: if resource == "jobs" {
                ", or agent.ephemeral (which needs pods/ephemeralcontainers instead)"
            } else {
                ""
            },
        },
        _ => StartError::Api {
            action: action.into(),
            message: describe_kube_error(&e),
        },
    }
}

/// A running agent in the cluster.
#[derive(Clone)]
pub struct KubeAgent {
    pub client: Client,
    /// The namespace of the agent's pod.
    pub namespace: String,
    /// The pod the agent runs in (its Job's pod, or the target pod when ephemeral).
    pub pod: String,
    pub port: u16,
    /// The Job's name; `None` for an ephemeral container (which cannot be removed: it exits by
    /// itself once its session has been gone for the communication timeout).
    pub job: Option<String>,
    /// The agent's container in `pod`.
    pub container: String,
}

impl KubeAgent {
    /// Creates the agent and waits until it serves, within `agent.startup_timeout`. Whatever
    /// was created is deleted again if it fails. `progress` hears about each step.
    pub async fn start(
        client: &Client,
        plan: AgentPlan,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<KubeAgent> {
        let timeout = Duration::from_secs(u64::from(
            plan.config
                .startup_timeout
                .unwrap_or(AgentConfig::DEFAULT_STARTUP_TIMEOUT),
        ));
        let deadline = Instant::now() + timeout;
        let ephemeral = plan.config.ephemeral.unwrap_or(false) && plan.target.is_some();
        if plan.config.ephemeral.unwrap_or(false) && plan.target.is_none() {
            tracing::info!(
                "targetless: the agent runs as a Job (an ephemeral container needs a pod)"
            );
        }
        // The watch starts before anything is created, so that no change of the agent's pod
        // is missed (admission may delete it the moment it exists).
        let (watch_namespace, watch_config) = match (&plan.target, ephemeral) {
            (Some(t), true) => (
                t.namespace.clone(),
                watcher::Config::default().fields(&format!("metadata.name={}", t.pod)),
            ),
            _ => (
                plan.namespace.clone(),
                watcher::Config::default().labels(&format!("{JOB_NAME_LABEL}={}", plan.name)),
            ),
        };
        let mut events = watcher(
            Api::<Pod>::namespaced(client.clone(), &watch_namespace),
            watch_config,
        )
        .default_backoff()
        .boxed();
        let listed = tokio::time::timeout_at(deadline.into(), async {
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => tracing::debug!("watching the agent's pod: {e}"),
                }
            }
            Err(anyhow!("the watch of the agent's pod ended"))
        })
        .await;
        match listed {
            Ok(r) => r.context("watching pods before creating the agent")?,
            Err(_) => bail!(
                "the Kubernetes API did not list pods in namespace {watch_namespace} within {} s \
                 (agent.startup_timeout)",
                timeout.as_secs()
            ),
        }
        let mut agent = if ephemeral {
            Self::create_ephemeral(client, &plan, progress).await?
        } else {
            Self::create_job(client, &plan, progress).await?
        };
        let waited = agent
            .wait_ready(events, ephemeral, &plan, deadline, timeout, progress)
            .await;
        match waited {
            Ok(pod) => {
                agent.pod = pod;
                Ok(agent)
            }
            Err(e) => {
                agent.delete().await;
                Err(e.into())
            }
        }
    }

    async fn create_job(
        client: &Client,
        plan: &AgentPlan,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<KubeAgent, StartError> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &plan.namespace);
        progress(&format!(
            "creating the agent Job {} in {}",
            plan.name, plan.namespace
        ));
        jobs.create(&PostParams::default(), &agent_job(plan))
            .await
            .map_err(|e| {
                api_failure("create the agent Job", "create", "jobs", &plan.namespace, e)
            })?;
        Ok(KubeAgent {
            client: client.clone(),
            namespace: plan.namespace.clone(),
            // Known once the Job's pod exists.
            pod: String::new(),
            port: plan.port,
            job: Some(plan.name.clone()),
            container: AGENT_CONTAINER.into(),
        })
    }

    async fn create_ephemeral(
        client: &Client,
        plan: &AgentPlan,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<KubeAgent, StartError> {
        // `start` only takes this path with a target.
        let target = plan
            .target
            .as_ref()
            .expect("ephemeral agents have a target");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
        progress(&format!(
            "adding the agent as an ephemeral container of pod {}",
            target.pod
        ));
        let mut pod = pods
            .get_ephemeral_containers(&target.pod)
            .await
            .map_err(|e| {
                api_failure(
                    "read the target pod's ephemeral containers",
                    "get",
                    "pods/ephemeralcontainers",
                    &target.namespace,
                    e,
                )
            })?;
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.ephemeral_containers
            .get_or_insert_with(Vec::new)
            .push(agent_ephemeral(plan));
        pods.replace_ephemeral_containers(&target.pod, &PostParams::default(), &pod)
            .await
            .map_err(|e| {
                api_failure(
                    "add the agent's ephemeral container",
                    "update",
                    "pods/ephemeralcontainers",
                    &target.namespace,
                    e,
                )
            })?;
        Ok(KubeAgent {
            client: client.clone(),
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
            port: plan.port,
            job: None,
            container: plan.name.clone(),
        })
    }

    /// Watches the agent's pod until its container runs, then reads its log until the ready
    /// line; fails fast on image pull errors, a failed pod, or the pod being deleted.
    async fn wait_ready(
        &self,
        mut events: futures::stream::BoxStream<'static, watcher::Result<watcher::Event<Pod>>>,
        ephemeral: bool,
        plan: &AgentPlan,
        deadline: Instant,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<String, StartError> {
        let mut last = String::new();
        let image = plan.image();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let watch = async {
            let mut seen: Option<String> = None;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::debug!("watching the agent's pod: {e}");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        if seen.is_none() {
                            progress(&format!("agent pod {name} scheduled"));
                        }
                        seen = Some(name.clone());
                        match agent_progress(&pod, &self.container, ephemeral, &image) {
                            Progress::Running => return Ok(name),
                            Progress::Failed(why) => return Err(StartError::Failed(why)),
                            Progress::Starting(phase) => {
                                last = format!("; last seen: pod {name} {phase}");
                            }
                        }
                    }
                    watcher::Event::Delete(pod) => {
                        let name = pod.metadata.name.unwrap_or_default();
                        return Err(if ephemeral {
                            StartError::Failed(format!("the target pod {name} was deleted"))
                        } else {
                            StartError::PodDeleted { pod: name }
                        });
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
            Err(StartError::Failed(
                "the watch of the agent's pod ended".into(),
            ))
        };
        let timed_out = |last: String| StartError::Timeout {
            secs: timeout.as_secs(),
            last,
            namespace: self.namespace.clone(),
            name: self.job.clone().unwrap_or_else(|| self.pod.clone()),
        };
        let pod_name = match tokio::time::timeout_at(deadline.into(), watch).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(timed_out(if last.is_empty() {
                    "; no pod was created for it (an admission rejection or quota shows in \
                     kubectl describe job)"
                        .into()
                } else {
                    last
                }))
            }
        };
        progress(&format!(
            "agent pod {pod_name} running; waiting for the agent"
        ));
        let log = async {
            let params = LogParams {
                container: Some(self.container.clone()),
                follow: true,
                ..Default::default()
            };
            let stream =
                pods.log_stream(&pod_name, &params)
                    .await
                    .map_err(|e| StartError::Api {
                        action: format!("read the log of the agent's pod {pod_name}"),
                        message: describe_kube_error(&e),
                    })?;
            let mut lines = stream.lines();
            let mut said = Vec::new();
            while let Some(line) = lines.try_next().await.map_err(|e| StartError::Api {
                action: format!("read the log of the agent's pod {pod_name}"),
                message: e.to_string(),
            })? {
                if line.contains(READY_LINE) {
                    return Ok(());
                }
                said.push(line);
            }
            Err(StartError::Failed(if said.is_empty() {
                "it exited without a word".into()
            } else {
                said.join("\n")
            }))
        };
        match tokio::time::timeout_at(deadline.into(), log).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(timed_out(format!(
                    "; pod {pod_name} runs but never said it was ready"
                )))
            }
        }
        Ok(pod_name)
    }

    /// Removes the agent's Job and its pod (background propagation, and the pods by label in
    /// case the API does not cascade). An ephemeral container cannot be removed; it exits by
    /// itself once its session is gone.
    pub async fn delete(&self) {
        let Some(job) = &self.job else { return };
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Err(e) = jobs.delete(job, &DeleteParams::background()).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                tracing::warn!(%job, "deleting the agent Job: {}", describe_kube_error(&e));
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job}"));
        match pods.list(&selector).await {
            Ok(list) => {
                for p in list.items {
                    let Some(name) = p.metadata.name else {
                        continue;
                    };
                    if let Err(e) = pods.delete(&name, &DeleteParams::background()).await {
                        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                            tracing::warn!(pod = %name, "deleting the agent pod: {}", describe_kube_error(&e));
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("listing the agent's pods: {}", describe_kube_error(&e)),
        }
    }

    /// Resolves when the agent's pod is gone or its container has stopped.
    pub async fn wait_gone(&self) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.pod));
        let ephemeral = self.job.is_none();
        let mut events = watcher(pods, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Delete(_)) => {
                    return format!("the agent's pod {} was deleted", self.pod)
                }
                Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                    if let Progress::Failed(why) =
                        agent_progress(&pod, &self.container, ephemeral, "")
                    {
                        return why;
                    }
                }
                _ => {}
            }
        }
        "the watch of the agent's pod ended".into()
    }
}

/// `mirrord-agent-` and 10 random lowercase hex digits.
pub fn random_agent_name() -> Result<String> {
    let mut b = [0u8; 5];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("reading random bytes: {e}"))?;
    Ok(format!(
        "mirrord-agent-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// A port for the agent on its pod's loopback, away from the well-known and ephemeral ranges
/// (an ephemeral agent shares the target pod's loopback with the target's own ports).
pub fn random_agent_port() -> Result<u16> {
    let mut b = [0u8; 2];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("reading random bytes: {e}"))?;
    Ok(20000 + u16::from_le_bytes(b) % 12000)
}

/// Checks a target for the agent plan (used before anything is created).
pub fn check_plan(plan: &AgentPlan) -> Result<()> {
    if plan.config.ephemeral.unwrap_or(false) {
        if let Some(ns) = &plan.config.namespace {
            if plan.target.as_ref().is_some_and(|t| &t.namespace != ns) {
                bail!(
                    "agent.namespace is {ns}, but an ephemeral agent lives in the target's pod, \
                     in its namespace: drop agent.namespace or agent.ephemeral"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(config: AgentConfig, target: bool) -> AgentPlan {
        AgentPlan {
            name: "mirrord-agent-0123456789".into(),
            namespace: "payments".into(),
            target: target.then(|| ResolvedTarget {
                namespace: "payments".into(),
                pod: "payment-api-1".into(),
                node: Some("node-a".into()),
                container: "app".into(),
                container_id: "containerd://abcdef0123456789".into(),
                note: None,
            }),
            port: 23456,
            token: "t0k3n".into(),
            config,
        }
    }

    fn json_of<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn the_job_is_what_design_md_describes() {
        let job = json_of(&agent_job(&plan(AgentConfig::default(), true)));
        assert_eq!(job["metadata"]["name"], "mirrord-agent-0123456789");
        assert_eq!(job["metadata"]["labels"]["app"], "mirrord");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 1);
        let tpl = &job["spec"]["template"];
        assert_eq!(tpl["metadata"]["labels"]["app"], "mirrord");
        assert_eq!(
            tpl["metadata"]["annotations"]["sidecar.istio.io/inject"],
            "false"
        );
        assert_eq!(
            tpl["metadata"]["annotations"]["linkerd.io/inject"],
            "disabled"
        );
        let spec = &tpl["spec"];
        assert_eq!(spec["nodeName"], "node-a");
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
        let c = &spec["containers"][0];
        assert_eq!(c["name"], AGENT_CONTAINER);
        assert_eq!(c["image"], DEFAULT_AGENT_IMAGE);
        assert_eq!(
            c["args"],
            json!([
                "--container-id",
                "containerd://abcdef0123456789",
                "--listen",
                "tcp:127.0.0.1:23456",
                "--communication-timeout",
                "30"
            ])
        );
        // The token travels in the environment, never in argv.
        assert_eq!(
            c["env"][0],
            json!({"name": "MIRRORD_AGENT_TOKEN", "value": "t0k3n"})
        );
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"])
        );
        assert!(c["resources"]["requests"]["cpu"].is_string());
    }

    #[test]
    fn agent_keys_shape_the_job() {
        let config: AgentConfig = serde_json::from_value(json!({
            "image": "reg.example/agent:1", "image_pull_policy": "Always",
            "image_pull_secrets": [{"name": "regcred"}], "ttl": 9,
            "communication_timeout": 4, "disabled_capabilities": ["CAP_SYS_PTRACE"],
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "labels": {"team": "pay"}, "annotations": {"a": "b"},
            "node_selector": {"zone": "z1"}, "service_account": "agent-sa", "log_level": "debug",
            "resources": {"limits": {"memory": "64Mi"}}
        }))
        .unwrap();
        let job = json_of(&agent_job(&plan(config, true)));
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 9);
        assert_eq!(job["metadata"]["labels"]["team"], "pay");
        let spec = &job["spec"]["template"]["spec"];
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "gpu", "operator": "Exists"}])
        );
        assert_eq!(spec["nodeSelector"]["zone"], "z1");
        assert_eq!(spec["serviceAccountName"], "agent-sa");
        assert_eq!(job["spec"]["template"]["metadata"]["annotations"]["a"], "b");
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "reg.example/agent:1");
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["args"][5], "4");
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "SYS_ADMIN"])
        );
        assert_eq!(
            c["env"][1],
            json!({"name": "MIRRORD_AGENT_LOG", "value": "debug"})
        );
        assert_eq!(c["resources"], json!({"limits": {"memory": "64Mi"}}));
        let privileged: AgentConfig = serde_json::from_value(json!({"privileged": true})).unwrap();
        let job = json_of(&agent_job(&plan(privileged, true)));
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["securityContext"],
            json!({"privileged": true})
        );
    }

    #[test]
    fn targetless_jobs_float_and_ephemeral_containers_target_the_container() {
        let job = json_of(&agent_job(&plan(AgentConfig::default(), false)));
        let spec = &job["spec"]["template"]["spec"];
        assert!(spec.get("nodeName").is_none() && spec.get("hostPID").is_none());
        assert_eq!(spec["containers"][0]["args"][0], "--target");
        assert_eq!(spec["containers"][0]["args"][1], "targetless");
        let eph = json_of(&agent_ephemeral(&plan(AgentConfig::default(), true)));
        assert_eq!(eph["name"], "mirrord-agent-0123456789");
        assert_eq!(eph["targetContainerName"], "app");
        assert_eq!(eph["args"][0], "--ephemeral");
        assert!(eph.get("resources").is_none());
    }

    fn agent_pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn progress_reads_the_kubelets_report() {
        let image = "reg/agent:1";
        let p = agent_pod(json!({"phase": "Pending"}));
        assert_eq!(
            agent_progress(&p, AGENT_CONTAINER, false, image),
            Progress::Starting("Pending".into())
        );
        let p = agent_pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": AGENT_CONTAINER, "ready": false, "restartCount": 0, "image": image, "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling"}}}]}));
        match agent_progress(&p, AGENT_CONTAINER, false, image) {
            Progress::Failed(m) => {
                assert!(m.contains(image) && m.contains("ImagePullBackOff"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let p =
            agent_pod(json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}));
        match agent_progress(&p, AGENT_CONTAINER, false, image) {
            Progress::Failed(m) => assert!(m.contains("Evicted: low on memory"), "{m}"),
            other => panic!("{other:?}"),
        }
        let p = agent_pod(json!({"phase": "Running", "containerStatuses": [{
            "name": AGENT_CONTAINER, "ready": true, "restartCount": 0, "image": image, "imageID": "",
            "state": {"running": {}}}]}));
        assert_eq!(
            agent_progress(&p, AGENT_CONTAINER, false, image),
            Progress::Running
        );
        let p = agent_pod(json!({"phase": "Running", "ephemeralContainerStatuses": [{
            "name": "mirrord-agent-x", "ready": false, "restartCount": 0, "image": image, "imageID": "",
            "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}));
        match agent_progress(&p, "mirrord-agent-x", true, image) {
            Progress::Failed(m) => assert!(m.contains("code 1, Error"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_403_names_verb_resource_and_namespace() {
        let status =
            kube::core::Status::failure("jobs.batch is forbidden", "Forbidden").with_code(403);
        let e = api_failure(
            "create",
            "create",
            "jobs",
            "payments",
            kube::Error::Api(Box::new(status)),
        );
        let m = e.to_string();
        assert!(
            m.contains("not allowed to create jobs in namespace payments") && m.contains("RBAC"),
            "{m}"
        );
    }
}
