//! Misbehaviour that tests switch on at runtime, as real clusters misbehave: RBAC denials,
//! image pulls that fail, Pod Security admission deleting a starting pod, port-forward
//! connections dropped, an API server that is down for a while, a slow API.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::lock;

#[derive(Default)]
struct State {
    /// (verb, resource as RBAC names it (`jobs`, `pods/portforward`), namespace)
    forbidden: HashSet<(String, String, String)>,
    failing_images: HashSet<String>,
    delete_job_pods: bool,
    latency: Duration,
    /// The API server is down until then: new connections are closed at once.
    down_until: Option<std::time::Instant>,
}

pub(crate) struct Faults {
    state: Mutex<State>,
    /// faults --generation of "drop every port-forward now"--> port-forward connections
    drop_pf_tx: watch::Sender<u64>,
    /// faults --generation of "the API server went down"--> every API connection
    down_tx: watch::Sender<u64>,
}

impl Faults {
    pub fn new() -> Faults {
        Faults {
            state: Mutex::new(State::default()),
            drop_pf_tx: watch::channel(0).0,
            down_tx: watch::channel(0).0,
        }
    }

    pub fn forbid(&self, verb: &str, resource: &str, namespace: &str) {
        lock(&self.state).forbidden.insert((
            verb.to_string(),
            resource.to_string(),
            namespace.to_string(),
        ));
    }

    /// Back to a well-behaved cluster (forbidden verbs, failing images, Pod Security deletion,
    /// latency).
    pub fn clear(&self) {
        *lock(&self.state) = State::default();
    }

    pub fn allow_all(&self) {
        lock(&self.state).forbidden.clear();
    }

    pub fn is_forbidden(&self, verb: &str, resource: &str, namespace: &str) -> bool {
        lock(&self.state).forbidden.contains(&(
            verb.to_string(),
            resource.to_string(),
            namespace.to_string(),
        ))
    }

    pub fn set_image_pull_failure(&self, image: &str, fail: bool) {
        let mut s = lock(&self.state);
        if fail {
            s.failing_images.insert(image.to_string());
        } else {
            s.failing_images.remove(image);
        }
    }

    pub fn image_pull_fails(&self, image: &str) -> bool {
        lock(&self.state).failing_images.contains(image)
    }

    pub fn set_delete_job_pods(&self, on: bool) {
        lock(&self.state).delete_job_pods = on;
    }

    pub fn delete_job_pods(&self) -> bool {
        lock(&self.state).delete_job_pods
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    pub fn latency(&self) -> Duration {
        lock(&self.state).latency
    }

    /// Drops every port-forward connection open now (later ones are not affected).
    pub fn drop_port_forwards(&self) {
        self.drop_pf_tx.send_modify(|g| *g += 1);
    }

    pub fn port_forward_drops(&self) -> watch::Receiver<u64> {
        self.drop_pf_tx.subscribe()
    }

    /// The API server goes down for `period`, as a restarting one does: every connection
    /// open now (port-forwards, watches, kept-alive requests) is cut without a goodbye, and
    /// connections made before `period` has passed are closed as soon as they are accepted.
    pub fn take_api_down(&self, period: Duration) {
        lock(&self.state).down_until = Some(std::time::Instant::now() + period);
        self.drop_pf_tx.send_modify(|g| *g += 1);
        self.down_tx.send_modify(|g| *g += 1);
    }

    /// Whether the API server is down now.
    pub fn api_is_down(&self) -> bool {
        lock(&self.state)
            .down_until
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    pub fn api_downs(&self) -> watch::Receiver<u64> {
        self.down_tx.subscribe()
    }
}
