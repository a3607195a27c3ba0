//! HTTPS steal end to end (`feature.network.incoming.tls_ports`): the pod serves HTTPS itself
//! (`services/tls_http.js`, HTTP/1.1 and h2 by ALPN, websockets, gRPC-shaped trailers) with a
//! certificate made by `openssl` for this test run; the agent terminates TLS with the pod's own
//! certificate and key (read through `/proc/PID/root`), steals the requests that match the
//! header filter and sends the others on to the pod over TLS.
//!
//! Clients run in the `client` namespace and reach the pod by its cluster DNS name
//! (`10-244-0-10.payments.pod.cluster.local`), checking the certificate against the test CA:
//! curl, Python `requests` (Debian's `python3-requests`, for `/usr/bin/python3`), Node `https`,
//! Node `http2` and a websocket client. The program runs under `mirrord exec` in `dev`.

use mirrord_tests::lsp_client::{Framing, RpcClient};
use mirrord_tests::{no_proxy, output_within, run_ok, target_dir_bin, Cluster, ManagedChild};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";
const TLS_PORT: u16 = 8443;
/// A name the pod serves with another certificate, which the agent does not have.
const OTHER_NAME: &str = "other.test";

fn service(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("services")
        .join(name)
        .display()
        .to_string()
}

/// The test's certificates, made with `openssl` in the workdir: a CA, the pod's certificate
/// (its DNS name and address), one for [`OTHER_NAME`], and one for the program (`localhost`).
struct Certs {
    ca: PathBuf,
    pod_cert: PathBuf,
    pod_key: PathBuf,
    other_cert: PathBuf,
    other_key: PathBuf,
    local_cert: PathBuf,
    local_key: PathBuf,
    /// A client certificate, for a pod that requires one.
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args))
        .unwrap_or_else(|e| panic!("openssl {args:?}: {e:#}"));
}

fn make_certs(c: &Cluster) -> Certs {
    let dir = c.workdir().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=mirrord test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&dir, &ca_args);
    let leaf = |name: &str, san: &str| {
        let mut req = vec!["req"];
        req.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={name}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&dir, &req);
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let pem = format!("{name}.pem");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
        (dir.join(pem), dir.join(key))
    };
    let (pod_cert, pod_key) = leaf(
        "pod",
        &format!("DNS:{},IP:{}", Cluster::POD_FQDN, Cluster::POD_IP),
    );
    let (other_cert, other_key) = leaf("other", &format!("DNS:{OTHER_NAME}"));
    let (local_cert, local_key) = leaf("local", "DNS:localhost");
    let (client_cert, client_key) = leaf("client", "DNS:client.test");
    Certs {
        ca: dir.join("ca.pem"),
        pod_cert,
        pod_key,
        other_cert,
        other_key,
        local_cert,
        local_key,
        client_cert,
        client_key,
    }
}

/// The pod's HTTPS server on [`TLS_PORT`] (beside the target process, in the pod's namespace).
fn pod_https(c: &Cluster, certs: &Certs) -> ManagedChild {
    pod_https_with(c, certs, false)
}

/// [`pod_https`], requiring client certificates (from the test CA) with `mtls`.
fn pod_https_with(c: &Cluster, certs: &Certs, mtls: bool) -> ManagedChild {
    let mut cmd = c.pod("node");
    if mtls {
        cmd.env("CLIENT_CA", &certs.ca);
    }
    cmd.args([
        service("tls_http.js").as_str(),
        &TLS_PORT.to_string(),
        "pod",
        &certs.pod_cert.display().to_string(),
        &certs.pod_key.display().to_string(),
        OTHER_NAME,
        &certs.other_cert.display().to_string(),
        &certs.other_key.display().to_string(),
    ]);
    let mut pod = c.spawn(cmd).unwrap();
    pod.wait_line("listening", WAIT).unwrap();
    pod
}

/// A steal of [`TLS_PORT`] filtered by `x-user: alice`, with the pod's certificate paths.
fn steal_config(c: &Cluster, certs: &Certs, mode: &str, extra: &str) -> PathBuf {
    let cfg = serde_json::json!({
        "feature": {"network": {"incoming": {
            "mode": mode,
            "http_filter": {"header_filter": "x-user: alice", "ports": [TLS_PORT]},
            "tls_ports": [{
                "port": TLS_PORT,
                "cert_pem": certs.pod_cert.display().to_string(),
                "key_pem": certs.pod_key.display().to_string(),
            }],
        }}}
    });
    let mut cfg = cfg;
    if !extra.is_empty() {
        let extra: Value = serde_json::from_str(extra).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            cfg["feature"]["network"]["incoming"][k] = v.clone();
        }
    }
    let path = c.workdir().join(format!("https-{mode}.json"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// `mirrord exec -t pid/<pod> -f config -- program args` in the dev namespace.
fn mirrord(c: &Cluster, config: &Path, program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.args(["exec", "-t", &format!("pid/{}", c.pod_pid()), "-f"])
        .arg(config)
        .arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

/// The program: `tls_http.js` named `local` on [`TLS_PORT`], plain, or HTTPS with `tls`.
/// With `verbose`, the session logs at debug level and the agent's own code at trace level
/// (everything that could ever print a key), all in the program's stderr.
fn local_program(c: &Cluster, cfg: &Path, tls: Option<&Certs>, verbose: bool) -> ManagedChild {
    let script = service("tls_http.js");
    let port = TLS_PORT.to_string();
    let mut args = vec![script.clone(), port, "local".to_owned()];
    if let Some(certs) = tls {
        args.push(certs.local_cert.display().to_string());
        args.push(certs.local_key.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = mirrord(c, cfg, "node", &args);
    if verbose {
        cmd.env("MIRRORD_LOG", "debug")
            .env("MIRRORD_AGENT_LOG", "mirrord_agent=trace");
    }
    let mut app = c.spawn(cmd).unwrap();
    app.wait_line("listening", WAIT).unwrap();
    app
}

fn pod_url(path: &str) -> String {
    format!("https://{}:{TLS_PORT}{path}", Cluster::POD_FQDN)
}

/// `curl --cacert` from the client namespace: (x-served-by, body, HTTP version). The body goes
/// to a file of its own: with `-D -` curl prints the trailers among the headers.
fn curl(c: &Cluster, certs: &Certs, url: &str, args: &[&str]) -> (String, String, String) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let body_file = c.workdir().join(format!(
        "curl-body-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = c.client("curl");
    no_proxy(&mut cmd)
        .args(["-sS", "--max-time", "10", "-D", "-", "--cacert"])
        .arg(&certs.ca)
        .args(["-w", "version=%{http_version}", "-o"])
        .arg(&body_file)
        .args(args)
        .arg(url);
    let out = output_within(&mut cmd, WAIT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-served-by")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let (_, version) = text.rsplit_once("version=").unwrap();
    let body = std::fs::read_to_string(&body_file).unwrap_or_default();
    (by, body, version.trim().to_owned())
}

/// Runs `cmd` (printing one JSON line) and returns that line.
fn json_out(mut cmd: Command) -> Value {
    let out = output_within(&mut cmd, Duration::from_secs(120)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Python `requests` (verify = the test CA): {by, body}.
fn python_requests(c: &Cluster, certs: &Certs, path: &str, header: Option<&str>) -> Value {
    let script = "import json, sys, requests\n\
        headers = dict([sys.argv[3].split(': ', 1)]) if len(sys.argv) > 3 else {}\n\
        r = requests.get(sys.argv[1], headers=headers, verify=sys.argv[2], timeout=10)\n\
        print(json.dumps({'by': r.headers.get('x-served-by'), 'body': r.text}))";
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd)
        .args(["-c", script, &pod_url(path)])
        .arg(&certs.ca)
        .args(header);
    json_out(cmd)
}

/// Node `https` (ca = the test CA): {by, body}.
fn node_https(c: &Cluster, certs: &Certs, path: &str, header: Option<&str>) -> Value {
    let script = r#"
const https = require("https"), fs = require("fs");
const [url, ca, header] = process.argv.slice(1);
const headers = header ? Object.fromEntries([header.split(": ")]) : {};
https.get(url, { ca: fs.readFileSync(ca), headers, timeout: 10000 }, (res) => {
  let body = "";
  res.on("data", (d) => (body += d));
  res.on("end", () => console.log(JSON.stringify({ by: res.headers["x-served-by"], body })));
}).on("error", (e) => { console.error(String(e)); process.exit(1); });
"#;
    let mut cmd = c.client("node");
    no_proxy(&mut cmd)
        .args(["-e", script, &pod_url(path)])
        .arg(&certs.ca)
        .args(header);
    json_out(cmd)
}

/// Whether the pod's rules still mention any agent.
fn agent_chains(c: &Cluster) -> String {
    let ipt = run_ok(c.pod("iptables-save").args(["-t", "nat"])).unwrap();
    let nft = run_ok(c.pod("nft").args(["list", "ruleset"])).unwrap_or_default();
    format!("{ipt}\n{nft}")
        .lines()
        .filter(|l| l.contains("MIRRORD_") || l.contains("mirrord_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_no_agent_rules(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = agent_chains(c);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "agents' rules left: {left}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The requests a `tls_http.js` printed so far (its JSON lines with a path).
fn requests_seen(app: &mut ManagedChild) -> Vec<Value> {
    app.stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("path").is_some())
        .collect()
}

/// Waits until `app` printed `n` requests.
fn wait_requests(app: &mut ManagedChild, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = requests_seen(app);
        if seen.len() >= n || Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The base64 lines of a PEM file (what a leaked key would show).
fn pem_body_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

/// curl (HTTP/2 and HTTP/1.1, by name and by address), Python `requests` and Node `https`: with
/// the header the program
/// answers, without it the pod; the program sees exactly the requests with the header; the
/// key appears in none of the logs (agent at trace level).
#[test]
fn https_requests_with_the_header_go_to_the_program_and_the_others_to_the_pod() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let mut pod = pod_https(&c, &certs);
    let cfg = steal_config(&c, &certs, "steal", "");
    let mut app = local_program(&c, &cfg, None, true);

    let alice = ["-H", "x-user: alice"];
    let bob = ["-H", "x-user: bob"];
    let (by, body, version) = curl(&c, &certs, &pod_url("/curl-h2"), &alice);
    assert_eq!(
        (by.as_str(), body.as_str(), version.as_str()),
        ("local", "local: GET /curl-h2\n", "2")
    );
    let (by, _, version) = curl(&c, &certs, &pod_url("/curl-h2"), &bob);
    assert_eq!((by.as_str(), version.as_str()), ("pod", "2"));
    let (by, _, _) = curl(&c, &certs, &pod_url("/curl-none"), &[]);
    assert_eq!(by, "pod");
    let mut h1 = vec!["--http1.1"];
    h1.extend(alice);
    let (by, body, version) = curl(&c, &certs, &pod_url("/curl-h1"), &h1);
    assert_eq!(
        (by.as_str(), body.as_str(), version.as_str()),
        ("local", "local: GET /curl-h1\n", "1.1")
    );
    let (by, _, version) = curl(&c, &certs, &pod_url("/curl-h1"), &["--http1.1"]);
    assert_eq!((by.as_str(), version.as_str()), ("pod", "1.1"));

    // By address: curl sends no SNI, and the agent answers with the pod's certificate (which
    // covers the address) as the pod would.
    let by_ip = format!("https://{}:{TLS_PORT}/by-ip", Cluster::POD_IP);
    let (by, _, _) = curl(&c, &certs, &by_ip, &alice);
    assert_eq!(by, "local");

    let r = python_requests(&c, &certs, "/py", Some("x-user: alice"));
    assert_eq!(
        (r["by"].as_str(), r["body"].as_str()),
        (Some("local"), Some("local: GET /py\n")),
        "{r}"
    );
    let r = python_requests(&c, &certs, "/py", Some("x-user: bob"));
    assert_eq!(r["by"], "pod", "{r}");
    let r = node_https(&c, &certs, "/node", Some("x-user: alice"));
    assert_eq!(
        (r["by"].as_str(), r["body"].as_str()),
        (Some("local"), Some("local: GET /node\n")),
        "{r}"
    );
    let r = node_https(&c, &certs, "/node", None);
    assert_eq!(r["by"], "pod", "{r}");

    // Exactly the requests with the header reached the program, the others the pod.
    let stolen = wait_requests(&mut app, 5);
    assert_eq!(stolen.len(), 5, "{stolen:?}");
    assert!(
        stolen.iter().all(|r| r["headers"]["x-user"] == "alice"),
        "{stolen:?}"
    );
    let served = wait_requests(&mut pod, 5);
    assert_eq!(served.len(), 5, "{served:?}");
    assert!(
        served.iter().all(|r| r["headers"]["x-user"] != "alice"),
        "{served:?}"
    );

    // The agent did terminate TLS (its trace is in the session's log), and the key is nowhere.
    app.wait_stderr_line("TLS terminated", WAIT).unwrap();
    app.kill().unwrap();
    let log = app.stderr_lines().join("\n");
    for line in pem_body_lines(&certs.pod_key) {
        assert!(!log.contains(&line), "the key leaked into the log");
    }
}

/// HTTP/2 with trailers (gRPC's shape, Node `http2` on one session) and a websocket over TLS:
/// with the header to the program, without to the pod; trailers arrive from either side.
#[test]
fn https_http2_trailers_and_websockets_are_routed_by_the_header() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https(&c, &certs);
    let cfg = steal_config(&c, &certs, "steal", "");
    let _app = local_program(&c, &cfg, None, false);

    let kinds = r#"[
        {"method":"POST","path":"/grpc.Svc/Alice","headers":{"x-user":"alice","content-type":"application/grpc"},"body":"a","expect":"local"},
        {"method":"GET","path":"/alice","headers":{"x-user":"alice"},"expect":"local"},
        {"method":"POST","path":"/grpc.Svc/Bob","headers":{"x-user":"bob","content-type":"application/grpc"},"body":"b","expect":"pod"},
        {"method":"GET","path":"/none","expect":"pod"}
    ]"#;
    let mut cmd = c.client("node");
    no_proxy(&mut cmd)
        .env("NODE_EXTRA_CA_CERTS", &certs.ca)
        .args([
            service("h2.js").as_str(),
            "client",
            &format!("https://{}:{TLS_PORT}", Cluster::POD_FQDN),
            "200",
            "20",
            kinds,
        ]);
    let s = json_out(cmd);
    assert_eq!(
        (s["sent"].as_u64(), s["ok"].as_u64()),
        (Some(200), Some(200)),
        "{s}"
    );
    let local = s["by"]["local"].as_u64().unwrap_or(0);
    let pod = s["by"]["pod"].as_u64().unwrap_or(0);
    assert!(local > 50 && pod > 50, "{s}");

    let ws = |header: &str| {
        let mut cmd = c.client(PY);
        no_proxy(&mut cmd)
            .env("WS_TLS_CA", &certs.ca)
            .arg("-B")
            .arg(service("ws_client.py"))
            .args([
                Cluster::POD_FQDN,
                &TLS_PORT.to_string(),
                "hello over wss",
                header,
            ]);
        json_out(cmd)
    };
    let r = ws("x-user: alice");
    assert!(r["status"].as_str().unwrap().contains(" 101"), "{r}");
    assert_eq!(r["accept_ok"], true, "{r}");
    assert_eq!(r["served_by"], "local", "{r}");
    assert_eq!(r["reply"], "local echo: hello over wss", "{r}");
    let r = ws("x-user: bob");
    assert!(r["status"].as_str().unwrap().contains(" 101"), "{r}");
    assert_eq!(r["served_by"], "pod", "{r}");
    assert_eq!(r["reply"], "pod echo: hello over wss", "{r}");
}

/// SHA-256 of the certificate a TLS client gets for `name` (Python `ssl`, checked against the
/// test CA), and x-served-by of a request with the header on that connection.
fn peer_cert(c: &Cluster, certs: &Certs, name: &str) -> Value {
    let script = "import hashlib, json, socket, ssl, sys\n\
        name, ip, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]\n\
        ctx = ssl.create_default_context(cafile=ca)\n\
        ctx.set_alpn_protocols(['http/1.1'])\n\
        s = ctx.wrap_socket(socket.create_connection((ip, port), timeout=10), server_hostname=name)\n\
        der = s.getpeercert(binary_form=True)\n\
        s.sendall(b'GET /cert HTTP/1.1\\r\\nHost: x\\r\\nx-user: alice\\r\\nConnection: close\\r\\n\\r\\n')\n\
        data = b''\n\
        while True:\n\
        \x20   chunk = s.recv(4096)\n\
        \x20   if not chunk: break\n\
        \x20   data += chunk\n\
        by = [l.split(b':', 1)[1].strip().decode() for l in data.split(b'\\r\\n') if l.lower().startswith(b'x-served-by:')]\n\
        print(json.dumps({'sha256': hashlib.sha256(der).hexdigest(), 'by': by[0] if by else None}))";
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd)
        .args([
            "-c",
            script,
            name,
            &Cluster::POD_IP.to_string(),
            &TLS_PORT.to_string(),
        ])
        .arg(&certs.ca);
    json_out(cmd)
}

/// SHA-256 of a PEM certificate's DER form (lowercase hex).
fn pem_sha256(path: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(path),
    )
    .unwrap();
    // "sha256 Fingerprint=AB:CD:..."
    let (_, hex) = out.trim().split_once('=').unwrap();
    hex.replace(':', "").to_ascii_lowercase()
}

/// A name the pod's certificate does not cover goes to the pod untouched (the client gets the
/// pod's other certificate, which the agent does not have); bytes that are not TLS reach the
/// pod too; a covered name gets the pod's own certificate from the agent; and when the
/// session ends, the pod serves its TLS port alone again, with no rule left.
#[test]
fn other_names_and_plain_bytes_reach_the_pod_and_the_port_is_the_pods_after_the_session() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let mut pod = pod_https(&c, &certs);
    let cfg = steal_config(&c, &certs, "steal", "");
    let mut app = local_program(&c, &cfg, None, false);

    // The covered name: the agent answers with the pod's own certificate and steals.
    let r = peer_cert(&c, &certs, Cluster::POD_FQDN);
    assert_eq!(r["sha256"], pem_sha256(&certs.pod_cert), "{r}");
    assert_eq!(r["by"], "local", "{r}");
    // Another name: byte for byte to the pod, which answers with its other certificate.
    let r = peer_cert(&c, &certs, OTHER_NAME);
    assert_eq!(r["sha256"], pem_sha256(&certs.other_cert), "{r}");
    assert_eq!(r["by"], "pod", "{r}");

    // Not TLS at all: the bytes reach the pod, whose TLS server rejects them.
    let mut cmd = c.client(PY);
    no_proxy(&mut cmd).args([
        "-c",
        "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); \
         s.sendall(b'GET /plain HTTP/1.1\\r\\nx-user: alice\\r\\n\\r\\n'); s.recv(4096); s.close()",
        &Cluster::POD_IP.to_string(),
        &TLS_PORT.to_string(),
    ]);
    let out = output_within(&mut cmd, WAIT).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pod.wait_line("tls_error", WAIT).unwrap();
    let stolen = requests_seen(&mut app);
    assert!(
        stolen.iter().all(|r| r["path"] == "/cert"),
        "the program got more than the covered request: {stolen:?}"
    );

    // The session ends: no rule is left and the pod answers everything, header or not.
    app.kill().unwrap();
    wait_no_agent_rules(&c);
    let (by, _, _) = curl(&c, &certs, &pod_url("/after"), &["-H", "x-user: alice"]);
    assert_eq!(by, "pod");
    let r = peer_cert(&c, &certs, Cluster::POD_FQDN);
    assert_eq!(r["by"], "pod", "{r}");
}

/// Mirror on a TLS port: the pod answers, the program gets a decrypted copy, and `mirrord
/// dump` prints the decrypted request.
#[test]
fn mirror_and_dump_see_decrypted_requests() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https(&c, &certs);
    let cfg = steal_config(&c, &certs, "mirror", "");
    let mut app = local_program(&c, &cfg, None, false);
    let (by, _, _) = curl(
        &c,
        &certs,
        &pod_url("/mirrored"),
        &["--http1.1", "-H", "x-user: carol"],
    );
    assert_eq!(by, "pod");
    let seen = wait_requests(&mut app, 1);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["path"], "/mirrored");
    assert_eq!(seen[0]["headers"]["x-user"], "carol");
    app.kill().unwrap();
    wait_no_agent_rules(&c);

    let mut dump = c.dev(target_dir_bin("mirrord"));
    dump.args([
        "dump",
        "-t",
        &format!("pid/{}", c.pod_pid()),
        "-p",
        &TLS_PORT.to_string(),
        "-f",
    ])
    .arg(&cfg)
    .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    let mut dump = c.spawn(dump).unwrap();
    dump.wait_stderr_line("watching port(s)", WAIT).unwrap();
    let (by, _, _) = curl(
        &c,
        &certs,
        &pod_url("/dumped"),
        &["--http1.1", "-H", "x-test: dump-me"],
    );
    assert_eq!(by, "pod");
    dump.wait_line("> GET /dumped HTTP/1.1", WAIT).unwrap();
    dump.wait_line("x-test: dump-me", WAIT).unwrap();
    dump.wait_line("x-served-by: pod", WAIT).unwrap();
}

/// The IDE's traffic panel (the daemon's `mirrord/traffic` notifications) shows a request
/// mirrored from a TLS port decrypted, with its path and headers.
#[test]
fn the_traffic_panel_shows_decrypted_mirrored_requests() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https(&c, &certs);
    let cfg = steal_config(&c, &certs, "mirror", "");
    let mut daemon = c.dev(target_dir_bin("mirrord-server"));
    daemon
        .args(["--stdio", "--log-file"])
        .arg(c.workdir().join("daemon.log"))
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    let d = RpcClient::spawn(
        "daemon",
        daemon,
        Framing::ContentLength,
        &c.workdir().join("daemon.stderr"),
    )
    .unwrap();
    d.call(
        "initialize",
        serde_json::json!({"processId": null, "rootUri": null, "capabilities": {}}),
    );
    d.notify("initialized", serde_json::json!({}));
    let started = d.call(
        "mirrord/startSession",
        serde_json::json!({"target": format!("pid/{}", c.pod_pid()), "configPath": cfg}),
    );
    let sid = started["sessionId"].as_str().unwrap().to_owned();
    // The program, launched with the session's environment as an IDE launches it.
    let mut app = c.dev("/usr/bin/env");
    for var in started["envToUnset"].as_array().unwrap() {
        app.arg("-u").arg(var.as_str().unwrap());
    }
    for (k, v) in started["env"].as_object().unwrap() {
        app.arg(format!("{k}={}", v.as_str().unwrap()));
    }
    app.args([
        "node",
        &service("tls_http.js"),
        &TLS_PORT.to_string(),
        "local",
    ]);
    let mut app = c.spawn(app).unwrap();
    app.wait_line("listening", WAIT).unwrap();

    let (by, _, _) = curl(
        &c,
        &certs,
        &pod_url("/panel?q=1"),
        &["--http1.1", "-H", "x-user: dave"],
    );
    assert_eq!(by, "pod");
    let event = d
        .wait_notification(WAIT, |n| {
            n["method"] == "mirrord/traffic"
                && n["params"]["sessionId"] == sid.as_str()
                && n["params"]["event"]["type"] == "incoming_request"
        })
        .map(|n| n["params"]["event"].clone())
        .unwrap_or_else(|| panic!("no incoming_request: {:#?}", d.notifications()));
    assert_eq!(event["path"], "/panel?q=1", "{event}");
    assert_eq!(event["mode"], "mirror", "{event}");
    assert_eq!(event["port"], TLS_PORT, "{event}");
    assert_eq!(event["headers"]["x-user"], "dave", "{event}");
    assert_eq!(event["status"], 200, "{event}");
}

/// `https_delivery: {protocol: "tls"}`: the program serves HTTPS itself; stolen requests reach
/// it re-encrypted (its certificate checked against `trust_roots`), HTTP/2 and HTTP/1.1.
#[test]
fn https_delivery_tls_reencrypts_for_the_program() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https(&c, &certs);
    let delivery = serde_json::json!({"https_delivery": {
        "protocol": "tls",
        "trust_roots": [certs.ca.display().to_string()],
        "server_name": "localhost",
    }});
    let cfg = steal_config(&c, &certs, "steal", &delivery.to_string());
    let mut app = local_program(&c, &cfg, Some(&certs), false);
    let (by, body, version) = curl(&c, &certs, &pod_url("/re-h2"), &["-H", "x-user: alice"]);
    assert_eq!(
        (by.as_str(), body.as_str(), version.as_str()),
        ("local", "local: GET /re-h2\n", "2")
    );
    let (by, _, version) = curl(
        &c,
        &certs,
        &pod_url("/re-h1"),
        &["--http1.1", "-H", "x-user: alice"],
    );
    assert_eq!((by.as_str(), version.as_str()), ("local", "1.1"));
    let (by, _, _) = curl(&c, &certs, &pod_url("/re-none"), &[]);
    assert_eq!(by, "pod");
    let seen = wait_requests(&mut app, 2);
    let versions: Vec<&str> = seen.iter().filter_map(|r| r["http"].as_str()).collect();
    assert_eq!(versions, ["2.0", "1.1"], "{seen:?}");
}

/// A key file that does not exist in the target: the listen fails and says which file.
#[test]
fn a_missing_key_is_a_clear_error() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https(&c, &certs);
    let cfg = serde_json::json!({"feature": {"network": {"incoming": {
        "mode": "steal",
        "tls_ports": [{"port": TLS_PORT, "cert_pem": certs.pod_cert.display().to_string(), "key_pem": "/nowhere/tls.key"}],
    }}}});
    let path = c.workdir().join("missing-key.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let mut cmd = mirrord(
        &c,
        &path,
        "node",
        &[&service("tls_http.js"), &TLS_PORT.to_string(), "local"],
    );
    let out = output_within(&mut cmd, Duration::from_secs(60)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/nowhere/tls.key") && stderr.contains("private key"),
        "{stderr}"
    );
    wait_no_agent_rules(&c);
}

/// A pod that requires client certificates cannot be reached by the agent as a TLS client: its
/// clients still get through, untouched (the agent falls back to passing the connection on),
/// even with the header the filter wants.
#[test]
fn a_pod_that_requires_client_certificates_keeps_its_clients() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https_with(&c, &certs, true);
    let cfg = steal_config(&c, &certs, "steal", "");
    let mut app = local_program(&c, &cfg, None, false);
    let client_cert = certs.client_cert.display().to_string();
    let client_key = certs.client_key.display().to_string();
    let (by, body, _) = curl(
        &c,
        &certs,
        &pod_url("/mtls"),
        &[
            "--cert",
            &client_cert,
            "--key",
            &client_key,
            "-H",
            "x-user: alice",
        ],
    );
    assert_eq!((by.as_str(), body.as_str()), ("pod", "pod: GET /mtls\n"));
    assert!(requests_seen(&mut app).is_empty());
}

/// Two sessions steal the pod's TLS port with different header filters: each gets its own
/// requests (the first agent hands the others to the second over TLS, which terminates again),
/// the rest reach the pod.
#[test]
fn two_sessions_steal_one_tls_port_with_different_filters() {
    let c = Cluster::start().unwrap();
    let certs = make_certs(&c);
    let _pod = pod_https(&c, &certs);
    let mut apps = Vec::new();
    for name in ["alice", "bob"] {
        let filter = serde_json::json!({"http_filter": {
            "header_filter": format!("x-user: {name}"),
            "ports": [TLS_PORT],
        }});
        let cfg = steal_config(&c, &certs, "steal", &filter.to_string());
        let named = c.workdir().join(format!("{name}.json"));
        std::fs::rename(&cfg, &named).unwrap();
        let script = service("tls_http.js");
        let port = TLS_PORT.to_string();
        let mut app = c
            .spawn(mirrord(&c, &named, "node", &[&script, &port, name]))
            .unwrap();
        app.wait_line("listening", WAIT).unwrap();
        apps.push(app);
    }
    for (header, expect) in [
        ("x-user: alice", "alice"),
        ("x-user: bob", "bob"),
        ("x-user: carol", "pod"),
    ] {
        for version in ["--http2", "--http1.1"] {
            let (by, body, _) = curl(&c, &certs, &pod_url("/two"), &[version, "-H", header]);
            assert_eq!(
                (by.as_str(), body.as_str()),
                (expect, &*format!("{expect}: GET /two\n"))
            );
        }
    }
}
