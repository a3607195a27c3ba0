//! The simulated Kubernetes API, checked the way the product uses it: kube-rs (list, watch,
//! `await_condition`, logs, port-forward, ephemeral containers) from the developer's namespace,
//! plus the faults tests switch on. Needs root (network namespaces).

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;
use mirrord_tests::k8s::{ImageRule, SimCluster, SimOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a condition in these tests may take on a busy machine.
const WAIT: Duration = Duration::from_secs(30);

fn start() -> SimCluster {
    SimCluster::start(SimOptions {
        images: vec![ImageRule::new("busybox", "/bin/sh")],
        ..SimOptions::default()
    })
    .expect("starting the simulated cluster")
}

/// Runs `f` with a kube-rs client inside the developer's namespace (the only place the API
/// is reachable), on a current-thread runtime of its own.
fn with_client<T, F, Fut>(sim: &SimCluster, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let kubeconfig: PathBuf = sim.kubeconfig().to_path_buf();
    sim.run_in_dev(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("config from kubeconfig");
            let client = Client::try_from(config).expect("client");
            f(client).await
        })
    })
    .expect("thread in the dev namespace")
}

fn job(name: &str, image: &str, script: &str, ttl: Option<i32>) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "mirrord"}},
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": ttl,
                 "template": {"metadata": {"labels": {"app": "mirrord"}},
                              "spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "main", "image": image,
                                                       "command": ["sh", "-c", script]}]}}}
    }))
    .expect("job")
}

/// Polls `f` until it is true (the store changes asynchronously); fails after [`WAIT`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn api_requires_the_token_and_answers_with_status_objects() {
    let sim = start();
    let ca = sim.workdir().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem()).unwrap();
    let url = format!("{}/api/v1/namespaces/payments/pods", sim.server_url());
    let curl = |extra: &[&str], url: &str| {
        let out = sim
            .dev_cmd("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let denied = curl(&[], &url);
    assert_eq!(denied["kind"], "Status");
    assert_eq!(denied["code"], 401);
    let wrong = curl(&["-H", "Authorization: Bearer nope"], &url);
    assert_eq!(wrong["code"], 401);

    let auth = format!("Authorization: Bearer {}", sim.token());
    let list = curl(&["-H", &auth], &url);
    assert_eq!(list["kind"], "PodList");
    assert!(list["metadata"]["resourceVersion"].as_str().is_some());
    assert!(list["items"].as_array().unwrap().len() >= 10, "{list}");

    let missing = curl(&["-H", &auth], &format!("{url}/nope"));
    assert_eq!(missing["code"], 404);
    assert_eq!(missing["reason"], "NotFound");
    assert_eq!(missing["message"], "pods \"nope\" not found");
    assert_eq!(missing["details"]["name"], "nope");
}

#[test]
fn fixtures_run_real_processes_found_by_container_id() {
    let sim = start();
    let pods = sim.pods_of("payments", "app=payment-api");
    assert_eq!(pods.len(), 2);
    for name in &pods {
        let ip = sim.pod_ip("payments", name).unwrap();
        let out = sim
            .client_cmd("curl")
            .args(["-sS", "-m", "5"])
            .arg(format!("http://{ip}/hello"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{name}: GET /hello\n")
        );
        let pod = sim.get("pods", "payments", name).unwrap();
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap()
            .strip_prefix("containerd://")
            .unwrap()
            .to_string();
        // As on a node: the process of that container is found by its id in /proc/*/cgroup,
        // and it lives in the pod's network namespace.
        let pid = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&id))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .expect("a process in the container's cgroup");
        let netns = sim.pod_netns("payments", name).unwrap();
        let pod_ns = std::fs::metadata(format!("/run/netns/{netns}")).unwrap();
        let proc_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((pod_ns.dev(), pod_ns.ino()), (proc_ns.dev(), proc_ns.ino()));
    }
    // The service by name from a pod network namespace, through the cluster DNS.
    let out = sim
        .client_cmd("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("http://payment-service.payments:8080/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let half = sim.get("deployments", "payments", "half-ready").unwrap();
    assert_eq!(half["status"]["readyReplicas"], 1);
    assert_eq!(half["status"]["replicas"], 2);

    // Deleting a pod kills its processes and the deployment's status follows.
    let netns = sim.pod_netns("payments", &pods[0]).unwrap();
    sim.delete("pods", "payments", &pods[0]).unwrap();
    assert!(sim.get("pods", "payments", &pods[0]).is_none());
    assert!(!std::path::Path::new("/run/netns").join(&netns).exists());
    let api = sim.get("deployments", "payments", "payment-api").unwrap();
    assert_eq!(api["status"]["readyReplicas"], 1, "{api}");
}

#[test]
fn watch_follows_a_job_pod_from_pending_to_deletion() {
    let sim = start();
    let outcome = with_client(&sim, |client| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "payments");
        let jobs: Api<Job> = Api::namespaced(client, "payments");
        let list = pods
            .list(&ListParams::default().labels("job-name=probe"))
            .await
            .unwrap();
        assert!(list.items.is_empty());
        let rv = list.metadata.resource_version.unwrap();
        let mut events = pods
            .watch(&WatchParams::default().labels("job-name=probe"), &rv)
            .await
            .unwrap()
            .boxed();
        jobs.create(
            &PostParams::default(),
            &job("probe", "busybox:1.36", "echo started; sleep 30", None),
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut pod_name = String::new();
        while let Some(ev) = events.try_next().await.unwrap() {
            match ev {
                WatchEvent::Added(p) => {
                    pod_name = p.metadata.name.clone().unwrap();
                    seen.push("ADDED".to_string());
                }
                WatchEvent::Modified(p) => {
                    let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                    seen.push(phase.clone());
                    if phase == "Running" {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pod_name.starts_with("probe-"), "{pod_name}");
        let running = await_condition(pods.clone(), &pod_name, conditions::is_pod_running());
        tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
        let mut log = pods
            .log_stream(
                &pod_name,
                &LogParams {
                    follow: true,
                    ..LogParams::default()
                },
            )
            .await
            .unwrap();
        let mut first = vec![0u8; 8];
        futures_util::AsyncReadExt::read_exact(&mut log, &mut first)
            .await
            .unwrap();
        assert_eq!(&first, b"started\n");
        jobs.delete("probe", &kube::api::DeleteParams::background())
            .await
            .unwrap();
        let gone = await_condition(pods.clone(), &pod_name, conditions::is_deleted(""));
        tokio::time::timeout(WAIT, gone).await.unwrap().unwrap();
        (seen, pod_name)
    });
    assert_eq!(outcome.0.first().map(String::as_str), Some("ADDED"));
    assert_eq!(outcome.0.last().map(String::as_str), Some("Running"));
    assert!(sim.get("pods", "payments", &outcome.1).is_none());
    assert!(sim.get("jobs", "payments", "probe").is_none());
    assert!(sim.pod_netns("payments", &outcome.1).is_none());
}

#[test]
fn finished_job_reports_exit_and_is_removed_after_its_ttl() {
    let sim = start();
    with_client(&sim, |client| async move {
        let jobs: Api<Job> = Api::namespaced(client, "payments");
        jobs.create(
            &PostParams::default(),
            &job(
                "fails",
                "busybox:1.36",
                "echo going down >&2; exit 3",
                Some(1),
            ),
        )
        .await
        .unwrap();
    });
    let mut failed_pod = None;
    eventually("the Job's pod fails", || {
        failed_pod = sim.pods("payments").into_iter().find(|p| {
            p["metadata"]["labels"]["job-name"] == "fails" && p["status"]["phase"] == "Failed"
        });
        failed_pod.is_some()
    });
    let pod = failed_pod.unwrap();
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 3);
    assert_eq!(term["reason"], "Error");
    assert_eq!(term["message"], "going down");
    // The Job's status follows its pod's (the controller writes it after the pod's phase); the
    // TTL may already have removed it, else it says it failed.
    eventually("the Job says it failed", || {
        sim.get("jobs", "payments", "fails")
            .is_none_or(|job| job["status"]["failed"] == 1)
    });
    eventually("the TTL removes the Job and its pod", || {
        sim.get("jobs", "payments", "fails").is_none()
            && !sim
                .pods("payments")
                .iter()
                .any(|p| p["metadata"]["labels"]["job-name"] == "fails")
    });
}

#[test]
fn port_forward_carries_many_connections_and_a_bulk_download() {
    let sim = start();
    let api_pods = sim.pods_of("payments", "app=payment-api");
    let svc_pod = sim.pods_of("payments", "app=payment-service").remove(0);
    let bulk = sim.workdir().join("bulk.bin");
    let expected_pod = api_pods[0].clone();
    let (answers, bulk_len) = with_client(&sim, move |client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "payments");
        // Many at once, each its own port-forward connection.
        let requests = (0..16).map(|i| {
            let pods = pods.clone();
            let name = expected_pod.clone();
            async move {
                let mut pf = pods.portforward(&name, &[80]).await.unwrap();
                let mut s = pf.take_stream(80).unwrap();
                s.write_all(
                    format!("GET /n{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        });
        let answers = futures_util::future::join_all(requests).await;

        // 100 MiB through one connection, compared with the file payment-service serves.
        let mut pf = pods.portforward(&svc_pod, &[8080]).await.unwrap();
        let mut s = pf.take_stream(8080).unwrap();
        s.write_all(b"GET /bytes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        let mut file = std::fs::File::open(&bulk).expect("the served blob exists");
        let mut got = vec![0u8; 256 * 1024];
        let mut want = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut got).await.unwrap();
            if n == 0 {
                break;
            }
            file.read_exact(&mut want[..n]).unwrap();
            assert!(got[..n] == want[..n], "bytes differ at offset {total}");
            total += n as u64;
        }
        (answers, total)
    });
    for (i, a) in answers.iter().enumerate() {
        assert!(a.ends_with(&format!("{}: GET /n{i}\n", api_pods[0])), "{a}");
    }
    assert_eq!(bulk_len, 100 * 1024 * 1024);
}

#[test]
fn port_forward_reports_refused_ports_and_drops_on_demand() {
    let sim = start();
    let pod = sim.pods_of("payments", "app=payment-api").remove(0);
    let (error, pod2) = (
        {
            let pod = pod.clone();
            with_client(&sim, move |client| async move {
                let pods: Api<Pod> = Api::namespaced(client, "payments");
                let mut pf = pods.portforward(&pod, &[81]).await.unwrap();
                let err = pf.take_error(81).unwrap();
                tokio::time::timeout(WAIT, err).await.unwrap()
            })
        },
        pod.clone(),
    );
    let error = error.expect("an error message for a port nothing listens on");
    assert!(error.contains("81") && error.contains("refused"), "{error}");

    // An open connection is cut by the fault; a new one works.
    let kubeconfig = sim.kubeconfig().to_path_buf();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let ns_dev = sim.ns_dev().to_string();
        let pod = pod2.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns_dev}")).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this test thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .unwrap();
                let pods: Api<Pod> = Api::namespaced(Client::try_from(config).unwrap(), "payments");
                let mut pf = pods.portforward(&pod, &[80]).await.unwrap();
                let mut s = pf.take_stream(80).unwrap();
                s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                opened_tx.send(()).unwrap();
                let _ = dropped_rx.await;
                // Keep-alive connection: only the fault can end it. The rest of the answer may
                // still arrive first (the pod writes head and body apart).
                let ended = async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return true,
                            Ok(_) => continue,
                        }
                    }
                };
                tokio::time::timeout(WAIT, ended).await.unwrap_or(false)
            })
        })
    };
    opened_rx.recv_timeout(WAIT).unwrap();
    sim.drop_port_forwards();
    dropped_tx.send(()).unwrap();
    assert!(reader.join().unwrap(), "the connection was not cut");
    let pod = pod2;
    let after = with_client(&sim, move |client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "payments");
        let mut pf = pods.portforward(&pod, &[80]).await.unwrap();
        let mut s = pf.take_stream(80).unwrap();
        s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    assert!(after.ends_with("GET /b\n"), "{after}");
}

#[test]
fn faults_forbid_fail_pulls_reject_pods_and_slow_the_api() {
    let sim = start();
    sim.forbid("create", "jobs", "payments");
    sim.fail_image_pull("ghcr.io/example/agent:broken");
    let forbidden = with_client(&sim, |client| async move {
        let jobs: Api<Job> = Api::namespaced(client, "payments");
        jobs.create(
            &PostParams::default(),
            &job("denied", "busybox", "true", None),
        )
        .await
        .unwrap_err()
    });
    match forbidden {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert_eq!(s.reason, "Forbidden");
            assert_eq!(
                s.message,
                "jobs.batch is forbidden: User \"mirrord-dev\" cannot create resource \"jobs\" \
                 in API group \"batch\" in the namespace \"payments\""
            );
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    sim.allow_all();

    sim.create(
        "jobs",
        "payments",
        serde_json::to_value(job("pull", "ghcr.io/example/agent:broken", "true", None)).unwrap(),
    )
    .unwrap();
    eventually("ImagePullBackOff naming the image", || {
        sim.pods("payments").iter().any(|p| {
            let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
            p["metadata"]["labels"]["job-name"] == "pull"
                && p["status"]["phase"] == "Pending"
                && w["reason"] == "ImagePullBackOff"
                && w["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ghcr.io/example/agent:broken"))
        })
    });

    sim.delete_job_pods(true);
    let events = with_client(&sim, |client| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "payments");
        let jobs: Api<Job> = Api::namespaced(client, "payments");
        let rv = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut stream = pods
            .watch(&WatchParams::default().labels("job-name=rejected"), &rv)
            .await
            .unwrap()
            .boxed();
        jobs.create(
            &PostParams::default(),
            &job("rejected", "busybox", "sleep 30", None),
        )
        .await
        .unwrap();
        let mut kinds = Vec::new();
        while let Some(ev) = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            let deleted = matches!(ev, WatchEvent::Deleted(_));
            kinds.push(match ev {
                WatchEvent::Added(_) => "ADDED",
                WatchEvent::Modified(_) => "MODIFIED",
                WatchEvent::Deleted(_) => "DELETED",
                _ => "OTHER",
            });
            if deleted {
                break;
            }
        }
        kinds
    });
    assert_eq!(events.first(), Some(&"ADDED"));
    assert_eq!(events.last(), Some(&"DELETED"));
    sim.delete_job_pods(false);

    sim.set_api_latency(Duration::from_millis(300));
    let took = with_client(&sim, |client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "payments");
        let t = Instant::now();
        pods.get("ledger-0").await.unwrap();
        t.elapsed()
    });
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

#[test]
fn ephemeral_container_runs_in_the_target_pods_network_namespace() {
    let sim = start();
    let pod = sim.pods_of("payments", "app=payment-api").remove(0);
    let target = pod.clone();
    with_client(&sim, move |client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "payments");
        let mut current = pods.get_ephemeral_containers(&target).await.unwrap();
        let spec = current.spec.as_mut().unwrap();
        spec.ephemeral_containers = Some(vec![serde_json::from_value(json!({
            "name": "probe", "image": "busybox",
            "targetContainerName": "api",
            "command": ["sh", "-c", "echo ephemeral-up; exec sleep 60"],
        }))
        .unwrap()]);
        pods.replace_ephemeral_containers(&target, &PostParams::default(), &current)
            .await
            .unwrap();
        let log = tokio::time::timeout(WAIT, async {
            loop {
                let params = LogParams {
                    container: Some("probe".into()),
                    ..LogParams::default()
                };
                match pods.logs(&target, &params).await {
                    Ok(l) if !l.is_empty() => return l,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(log, "ephemeral-up\n");
    });
    let p = sim.get("pods", "payments", &pod).unwrap();
    let status = &p["status"]["ephemeralContainerStatuses"][0];
    assert_eq!(status["name"], "probe");
    assert!(status["state"]["running"].is_object(), "{status}");
    let id = status["containerID"]
        .as_str()
        .unwrap()
        .strip_prefix("containerd://")
        .unwrap();
    let cgroup = format!(
        "/sys/fs/cgroup/unified/mirrord-sim-{}/{}/{id}/cgroup.procs",
        sim.id(),
        p["metadata"]["uid"].as_str().unwrap()
    );
    let pid = std::fs::read_to_string(&cgroup).unwrap();
    let pid = pid
        .lines()
        .next()
        .expect("a process in the ephemeral container");
    let netns = sim.pod_netns("payments", &pod).unwrap();
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(format!("/run/netns/{netns}")).unwrap();
    let b = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_eq!(sim.agent_pods().len(), 1);
}

#[test]
fn hostile_bytes_close_only_their_own_connection() {
    let sim = start();
    let pod = sim.pods_of("payments", "app=payment-api").remove(0);
    // Plain text to the TLS port, then a WebSocket upgrade followed by garbage frames: each
    // connection is closed, the server keeps serving.
    let script = r#"
import socket, ssl, sys
port, token, pod = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"\x16\x03\x01garbage\r\n\r\n" * 50)
try:
    while s.recv(4096):
        pass
except OSError:
    pass
s.close()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
t.sendall((
    f"GET /api/v1/namespaces/payments/pods/{pod}/portforward?ports=80 HTTP/1.1\r\n"
    f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\n"
    "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode())
head = t.recv(4096)
assert head.startswith(b"HTTP/1.1 101"), head
t.sendall(b"\xff" * 4096)
closed = False
try:
    while True:
        if not t.recv(4096):
            closed = True
            break
except OSError:
    closed = True
print("closed" if closed else "open")
"#;
    let out = sim
        .dev_cmd("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(sim.api_port().to_string())
        .arg(sim.token())
        .arg(&pod)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    let name = with_client(&sim, move |client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "payments");
        pods.get(&pod).await.unwrap().metadata.name.unwrap()
    });
    assert!(name.starts_with("payment-api-"));
}

#[test]
fn a_service_created_through_the_api_resolves_and_reaches_its_pod() {
    let sim = start();
    with_client(&sim, |client| async move {
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client, "payments");
        let svc = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ledger-svc"},
            "spec": {"selector": {"app": "ledger"},
                     "ports": [{"port": 80, "targetPort": 80}]}
        }))
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
    });
    let ip = sim.service_ip("payments", "ledger-svc").unwrap();
    // dnsmasq re-reads its hosts file on SIGHUP, asynchronously: poll for the answer.
    let resolves = |sim: &SimCluster| {
        let out = sim
            .client_cmd("getent")
            .args(["hosts", "ledger-svc.payments.svc.cluster.local"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("{ip} "))
    };
    eventually("the service's name resolves", || resolves(&sim));
    let out = sim
        .client_cmd("curl")
        .args(["-sS", "-m", "5", "http://ledger-svc.payments/x"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ledger-0: GET /x\n");
    sim.delete("services", "payments", "ledger-svc").unwrap();
    eventually("the deleted service's name is gone", || !resolves(&sim));
}
