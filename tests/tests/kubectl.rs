//! Debian's `kubectl` (package `kubernetes-client`, 1.20) against the simulated API with the
//! kubeconfig the product uses: if kubectl reads its JSON, so will any client. Needs root.
//!
//! The binary: `$MIRRORD_TESTS_KUBECTL` if set, else Debian's kubectl unpacked (not installed:
//! this machine's `/usr/bin/kubectl` may belong to another package) under
//! `/var/cache/mirrord-tests/kubernetes-client` with `apt-get download` + `dpkg-deb -x` on first
//! use.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_tests::k8s::{ImageRule, SimCluster, SimOptions};
use mirrord_tests::output_within;
use serde_json::{json, Value};

const UNPACKED: &str = "/var/cache/mirrord-tests/kubernetes-client";
/// Bound on one kubectl call (a hang is a failure, not a stuck test run).
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

/// Debian's kubectl, unpacked on first use (under a lock: tests run in parallel).
fn kubectl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MIRRORD_TESTS_KUBECTL") {
        return p.into();
    }
    let bin = Path::new(UNPACKED).join("usr/bin/kubectl");
    std::fs::create_dir_all(UNPACKED).unwrap();
    let lock = std::fs::File::create(Path::new(UNPACKED).join(".lock")).unwrap();
    // SAFETY: flock on a file we hold open; released when it closes.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !bin.exists() {
        let dir = tempdir();
        let out = Command::new("apt-get")
            .args(["download", "kubernetes-client"])
            .current_dir(&dir)
            .output()
            .expect("running apt-get download");
        assert!(
            out.status.success(),
            "apt-get download kubernetes-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deb = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("the downloaded .deb");
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(UNPACKED)
            .status()
            .unwrap();
        assert!(st.success(), "dpkg-deb -x failed");
        let _ = std::fs::remove_dir_all(&dir);
    }
    bin
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrord-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // apt's sandbox user must be able to write there.
    let _ = Command::new("chmod").arg("777").arg(&dir).status();
    dir
}

fn start() -> SimCluster {
    SimCluster::start(SimOptions {
        images: vec![ImageRule::new("busybox", "/bin/sh")],
        ..SimOptions::default()
    })
    .expect("starting the simulated cluster")
}

/// Runs kubectl in the developer's namespace with the simulated cluster's kubeconfig; returns
/// stdout, failing on a non-zero exit.
fn kubectl(sim: &SimCluster, args: &[&str]) -> String {
    let home = sim.workdir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = sim.dev_cmd(kubectl_bin());
    cmd.arg("--kubeconfig")
        .arg(sim.kubeconfig())
        .args(args)
        // Its discovery cache goes to $HOME/.kube.
        .env("HOME", &home);
    let out = output_within(&mut cmd, KUBECTL_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(items: &[Value], kind: &str) -> BTreeSet<String> {
    items
        .iter()
        .filter(|i| i["kind"] == kind)
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn pid_of_container(id: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(id)))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

#[test]
fn kubectl_reads_pods_deployments_and_jobs() {
    let sim = start();
    // No -n: the kubeconfig's context says payments.
    let out = kubectl(&sim, &["get", "pods,deployments,jobs", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();

    let stored = |plural: &str| -> BTreeSet<String> {
        sim.list(plural, "payments")
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(items, "Pod"), stored("pods"));
    assert_eq!(names(items, "Deployment"), stored("deployments"));
    assert_eq!(names(items, "Job"), stored("jobs"));
    assert!(names(items, "Deployment").contains("payment-api"));
    assert!(names(items, "Job").contains("batch-report"));

    let find = |kind: &str, name: &str| -> &Value {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} not in kubectl's output"))
    };
    let api = find("Deployment", "payment-api");
    assert_eq!(api["status"]["readyReplicas"], 2);
    assert_eq!(api["spec"]["replicas"], 2);
    let half = find("Deployment", "half-ready");
    assert_eq!(half["status"]["readyReplicas"], 1);
    assert_eq!(half["status"]["replicas"], 2);
    assert_eq!(find("Job", "batch-report")["status"]["active"], 1);

    // Every container id kubectl reads belongs to a live process of that pod (found by the id
    // in /proc/*/cgroup, as the agent does), in the pod's network namespace.
    let mut checked = 0;
    for pod in items.iter().filter(|i| i["kind"] == "Pod") {
        let name = pod["metadata"]["name"].as_str().unwrap();
        assert_eq!(pod["status"]["phase"], "Running", "{name}");
        let netns = sim.pod_netns("payments", name).unwrap();
        use std::os::unix::fs::MetadataExt;
        let pod_ns = std::fs::metadata(format!("/run/netns/{netns}")).unwrap();
        for c in pod["status"]["containerStatuses"].as_array().unwrap() {
            let id = c["containerID"]
                .as_str()
                .and_then(|i| i.strip_prefix("containerd://"))
                .unwrap_or_else(|| panic!("{name}: containerID {}", c["containerID"]));
            assert_eq!(id.len(), 64);
            let pid = pid_of_container(id).unwrap_or_else(|| panic!("{name}: no process {id}"));
            let proc_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
            assert_eq!((pod_ns.dev(), pod_ns.ino()), (proc_ns.dev(), proc_ns.ino()));
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} containers");
    let meshed = find("Pod", "meshed-api");
    assert_eq!(
        meshed["spec"]["containers"][0]["name"], "istio-proxy",
        "the sidecar is listed first"
    );
    let not_ready = find("Pod", "half-ready-6d5f8b7c9d-bbbbb");
    assert_eq!(not_ready["status"]["containerStatuses"][0]["ready"], false);

    // The human view (server-side Table) shows readiness and status per pod.
    let table = kubectl(&sim, &["get", "pods", "-l", "app=half-ready"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["NAME", "READY", "STATUS"], "{table}");
    assert_eq!(
        rows[1][..3],
        ["half-ready-6d5f8b7c9d-bbbbb", "0/1", "Running"],
        "{table}"
    );
    assert_eq!(
        rows[2][..3],
        ["half-ready-6d5f8b7c9d-ccccc", "1/1", "Running"],
        "{table}"
    );
}

#[test]
fn kubectl_creates_a_job_that_runs_logs_and_goes_away() {
    let sim = start();
    let manifest = sim.workdir().join("job.json");
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "hello", "namespace": "payments"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "hello", "image": "busybox:1.36",
                            "command": ["sh", "-c", "echo hello-from-$(WHO); exec sleep 60"],
                            "env": [{"name": "WHO", "value": "job"}]}]}}}
    });
    std::fs::write(&manifest, job.to_string()).unwrap();
    // --validate=false: kubectl's client-side validation downloads /openapi/v2 (protobuf),
    // which the simulated API does not serve.
    let created = kubectl(
        &sim,
        &[
            "create",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    assert_eq!(created.trim(), "job.batch/hello created");

    // kubectl wait lists, then watches the pod until it is ready.
    let waited = kubectl(
        &sim,
        &[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "job-name=hello",
            "--timeout=30s",
        ],
    );
    assert!(waited.contains("condition met"), "{waited}");
    let pods: Value = serde_json::from_str(&kubectl(
        &sim,
        &["get", "pods", "-l", "job-name=hello", "-o", "json"],
    ))
    .unwrap();
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pod.starts_with("hello-") && pod.len() == "hello-".len() + 5,
        "{pod}"
    );
    assert_eq!(
        pods["items"][0]["metadata"]["ownerReferences"][0]["kind"],
        "Job"
    );
    // Ready means the container started, not that its shell has echoed yet (a real kubelet
    // says the same): poll, bounded, until the line is there.
    let deadline = Instant::now() + WAIT;
    let logs = loop {
        let logs = kubectl(&sim, &["logs", &pod]);
        if !logs.is_empty() || Instant::now() >= deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(logs, "hello-from-job\n");
    let netns = sim.pod_netns("payments", &pod).expect("the pod runs");

    let deleted = kubectl(&sim, &["delete", "job", "hello"]);
    assert_eq!(deleted.trim(), "job.batch \"hello\" deleted");
    // kubectl asks for background propagation: the pod goes too.
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Value = serde_json::from_str(&kubectl(
            &sim,
            &["get", "pods", "-l", "job-name=hello", "-o", "json"],
        ))
        .unwrap();
        if left["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the Job's pod is still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!Path::new("/run/netns").join(&netns).exists());
}
