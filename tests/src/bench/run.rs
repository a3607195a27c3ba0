//! The scenarios of the benchmark, on one simulated cluster ([`Cluster`]).
//!
//! Every figure is measured once per run for every variant, the variants interleaved (their
//! order rotates from run to run) and every measurement a fresh process of the same client
//! (`bench_client`) doing the same warm-up, so no variant is warmed more than another.
//!
//! Where the load runs (the safety rule: nothing leaves the machine, nothing connects from the
//! root namespace to a cluster address):
//!
//! - **direct**: the client runs in the pod's namespace and talks to payment-service itself.
//! - **mirrord**: the client runs in `dev` (loopback only) under `mirrord exec -t pid/<pod>`.
//! - **socat**: the client runs in `dev` and connects to `127.0.0.1:<relay>`, where a socat
//!   (`TCP-LISTEN,fork → UNIX-CONNECT:<file>`) hands each connection to a unix socket file; a
//!   second socat in the pod's namespace (`UNIX-LISTEN:<file>,fork → TCP:payment-service`)
//!   connects it on. Unix socket files are reachable from every network namespace (they live in
//!   the filesystem), so this is the shape of a `kubectl port-forward` hop: a local listener,
//!   a byte stream to the pod, a connect made inside the pod.
//! - **proxychains**: the client runs in `dev` under `proxychains4` (proxy_dns on), whose SOCKS5
//!   proxy is `127.0.0.1:<port>` in dev, bridged the same way (socat pair over a unix socket
//!   file) to microsocks listening on the pod's loopback.
//! - incoming traffic is sent from the `client` namespace to the pod; the local programs run in
//!   `dev` under `mirrord exec`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::report::{Better, Figure, Goal};
use crate::lsp_client::{Framing, RpcClient};
use crate::{output_within, Cluster, ManagedChild};

/// The system Python (the `python3` on PATH may be a pyenv shim).
const PY: &str = "/usr/bin/python3";
/// How long one measurement process may run.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a service or session may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Mirror under load: the rate and length of the main step, its connections, and the rates of
/// the shorter steps after it that look for the rate where copies start to be lost.
const MIRROR_LOAD_RATE: usize = 2000;
const MIRROR_LOAD_SECS: usize = 10;
const MIRROR_LOAD_CONNS: usize = 8;
const MIRROR_LADDER: [usize; 3] = [4000, 8000, 16000];
const MIRROR_LADDER_SECS: usize = 3;

/// The sections of the benchmark, in the order they run within a run.
/// `kubernetes` runs on a simulated Kubernetes API of its own (see `super::kube`), after the
/// others.
pub const SECTIONS: [&str; 7] = [
    "outgoing",
    "incoming",
    "mirror-load",
    "session",
    "layer",
    "go",
    "kubernetes",
];

/// Set by SIGINT/SIGTERM: the bench stops after the current measurement and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C stop the bench between two measurements (so the cluster is removed).
pub fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub(super) fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sizes of the measurements.
#[derive(Clone, Debug)]
pub struct Params {
    pub runs: usize,
    pub req_n: usize,
    pub req_warmup: usize,
    pub newconn_n: usize,
    pub newconn_warmup: usize,
    pub dns_n: usize,
    pub dns_warmup: usize,
    pub conns: usize,
    pub bulk_streams: Vec<usize>,
    pub rps_n: usize,
    pub rps_conns: usize,
    pub loop_n: usize,
    pub loop_warmup: usize,
    /// Session starts (cold exec, warm relaunch, plain exec each) per run.
    pub session_reps: usize,
}

impl Params {
    pub fn full(runs: usize) -> Params {
        Params {
            runs,
            req_n: 2000,
            req_warmup: 200,
            newconn_n: 500,
            newconn_warmup: 50,
            dns_n: 500,
            dns_warmup: 50,
            conns: 1000,
            bulk_streams: vec![1, 8],
            rps_n: 4000,
            rps_conns: 4,
            loop_n: 3000,
            loop_warmup: 300,
            session_reps: 3,
        }
    }

    pub fn quick(runs: usize) -> Params {
        Params {
            runs,
            req_n: 200,
            req_warmup: 20,
            newconn_n: 50,
            newconn_warmup: 5,
            dns_n: 50,
            dns_warmup: 5,
            conns: 1000,
            bulk_streams: vec![1, 8],
            rps_n: 400,
            rps_conns: 4,
            loop_n: 300,
            loop_warmup: 30,
            session_reps: 1,
        }
    }
}

/// The benchmark's programs.
#[derive(Clone, Debug)]
pub struct Bins {
    pub mirrord: PathBuf,
    pub server: PathBuf,
    pub client: PathBuf,
    /// `tests/programs/benchclient.go` built statically (section "go"): reaches the cluster
    /// under mirrord only through syscall interception.
    pub go_client: Option<PathBuf>,
}

/// The ways the client reaches payment-service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Direct,
    Mirrord,
    Socat,
    Proxychains,
}

const VARIANTS: [Variant; 4] = [
    Variant::Direct,
    Variant::Mirrord,
    Variant::Socat,
    Variant::Proxychains,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Mirrord => "mirrord",
            Variant::Socat => "socat",
            Variant::Proxychains => "proxychains",
        }
    }
}

/// `items` rotated left by `run` (so each variant goes first in turn).
pub(super) fn rotated<T: Copy>(items: &[T], run: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = run % v.len();
        v.rotate_left(k);
    }
    v
}

/// The figures of a benchmark, by id.
pub struct Figures(pub Vec<Figure>);

impl Figures {
    pub(super) fn get(&mut self, id: &str) -> &mut Figure {
        let at = self
            .0
            .iter()
            .position(|f| f.id == id)
            .unwrap_or_else(|| panic!("no figure {id}"));
        &mut self.0[at]
    }

    pub(super) fn put(&mut self, id: &str, variant: &str, run: usize, v: f64) {
        eprintln!("    {id} {variant}: {}", super::report::fmt_num(v));
        self.get(id).put(variant, run, v);
    }

    pub(super) fn fail(&mut self, id: &str, variant: &str, run: usize, why: &str) {
        eprintln!("    {id} {variant}: FAILED: {why}");
        self.get(id).fail(variant, run, why);
    }
}

/// Every figure, with its goals and what it measures.
pub fn figures(p: &Params, sections: &[&str]) -> Figures {
    let mut f = Vec::new();
    if sections.contains(&"go") {
        let go = "Go client (static binary: syscall interception, no layer)";
        f.push(
            Figure::new(
                "go.ka.p50",
                go,
                "keep-alive request p50",
                "µs",
                Better::Lower,
            )
            .baseline("direct")
            .note(&format!(
                "`tests/programs/benchclient.go` (net/http, `CGO_ENABLED=0`): {} sequential \
                     `GET /` on one keep-alive connection after {} warm-up, timed around \
                     `client.Get` and the body read. direct: in the pod; mirrord: in the \
                     developer namespace, its connect made by the seccomp supervisor.",
                p.req_n, p.req_warmup
            )),
        );
        f.push(
            Figure::new(
                "go.ka.p99",
                go,
                "keep-alive request p99",
                "µs",
                Better::Lower,
            )
            .baseline("direct"),
        );
        f.push(
            Figure::new(
                "go.bulk1",
                go,
                "bulk download, 1 stream",
                "MiB/s",
                Better::Higher,
            )
            .baseline("direct")
            .note(
                "One GET of the 100 MiB blob, body read and discarded, over the wall time \
                       from the start of the lookup.",
            ),
        );
    }
    let out = "Outgoing (client → payment-service)";
    if sections.contains(&"outgoing") {
        for &s in &p.bulk_streams {
            let mib = 100 * s;
            f.push(
                Figure::new(
                    &format!("out.bulk{s}"),
                    out,
                    &format!("bulk download, {s} stream{}", if s > 1 { "s" } else { "" }),
                    "MiB/s",
                    Better::Higher,
                )
                .baseline("direct")
                .goal("mirrord", Goal::RatioAtLeast(0.6))
                .note(&format!(
                    "{s} connection(s) at once each GET the 100 MiB blob (`/bytes`, sent with \
                     sendfile by the Python service): {mib} MiB over the wall time of the \
                     whole download, body read and discarded."
                )),
            );
        }
        let req = format!(
            "{} sequential `GET /` (23-byte answer from the Python service) after {} \
             warm-up requests, timed from the request's write to the last byte of the answer",
            p.req_n, p.req_warmup
        );
        f.push(
            Figure::new(
                "out.ka.p50",
                out,
                "keep-alive request p50",
                "µs",
                Better::Lower,
            )
            .baseline("direct")
            .goal("mirrord", Goal::RatioAtMost(1.5))
            .note(&format!("{req}, all on one keep-alive connection.")),
        );
        f.push(
            Figure::new(
                "out.ka.p99",
                out,
                "keep-alive request p99",
                "µs",
                Better::Lower,
            )
            .baseline("direct"),
        );
        f.push(
            Figure::new(
                "out.nc.p50",
                out,
                "new-connection request p50",
                "µs",
                Better::Lower,
            )
            .baseline("direct")
            .goal("mirrord", Goal::RatioAtMost(2.0))
            .note(&format!(
                "{} sequential requests (after {} warm-up), each on a new connection: \
                     connect (the name is resolved once, before), `GET /`, answer read, close.",
                p.newconn_n, p.newconn_warmup
            )),
        );
        f.push(
            Figure::new(
                "out.nc.p99",
                out,
                "new-connection request p99",
                "µs",
                Better::Lower,
            )
            .baseline("direct"),
        );
        f.push(
            Figure::new("out.dns.p50", out, "DNS lookup p50", "µs", Better::Lower)
                .baseline("direct")
                .note(&format!(
                    "{} sequential `getaddrinfo(\"payment-service\")` (AF_UNSPEC, SOCK_STREAM) \
                     after {} warm-up. direct: glibc in the pod (search list, ndots:5, dnsmasq \
                     over the bridge); mirrord: the layer asks the agent, which resolves with \
                     hickory (which caches answers); proxychains: proxy_dns answers with a fake \
                     224.x address at once, the real lookup happens in the SOCKS server at \
                     connect time; socat has no DNS.",
                    p.dns_n, p.dns_warmup
                )),
        );
        f.push(
            Figure::new("out.dns.p99", out, "DNS lookup p99", "µs", Better::Lower)
                .baseline("direct"),
        );
        f.push(
            Figure::new(
                "out.conns.time",
                out,
                &format!("{} concurrent connections: time", p.conns),
                "ms",
                Better::Lower,
            )
            .baseline("direct")
            .note(&format!(
                "{} connections to the TCP echo service (tokio, connects all started at once); \
                 once every connect has finished (all are open together), each sends 16 bytes \
                 and reads them back. Time from the first connect to the last echo.",
                p.conns
            )),
        );
        f.push(
            Figure::new(
                "out.conns.errors",
                out,
                &format!("{} concurrent connections: errors", p.conns),
                "errors",
                Better::Lower,
            )
            .goal("mirrord", Goal::AtMost(0.0))
            .note("Failed connects plus failed or wrong echoes, per run."),
        );
        let mem = "Memory";
        f.push(
            Figure::new("mem.agent", mem, "agent peak RSS", "MiB", Better::Lower).note(&format!(
                "VmHWM (peak resident set over the process's life) of mirrord-agent's main \
                 process, read from /proc right after the {} connections of the mirrord run \
                 above (the session still up).",
                p.conns
            )),
        );
        f.push(
            Figure::new(
                "mem.server",
                mem,
                "session (mirrord exec) peak RSS",
                "MiB",
                Better::Lower,
            )
            .note("VmHWM of the `mirrord exec` process (the session engine), same moment."),
        );
    }
    let inc = "Incoming (client namespace → pod:80)";
    if sections.contains(&"incoming") {
        let lat = format!(
            "{} sequential `GET /` from the client namespace to 10.244.0.10:80 (after {} warm-up)",
            p.req_n, p.req_warmup
        );
        f.push(
            Figure::new(
                "in.steal.ka",
                inc,
                "stolen keep-alive p50",
                "µs",
                Better::Lower,
            )
            .baseline("pod-local")
            .goal("mirrord steal", Goal::RatioAtMost(1.5))
            .note(&format!(
                "{lat} on one keep-alive connection. pod-local: the pod's own server \
                     (`pod_http.py`) answers; mirrord steal: the same program, run in dev under \
                     `mirrord exec` with `incoming: steal`, answers every request."
            )),
        );
        f.push(
            Figure::new(
                "in.steal.nc",
                inc,
                "stolen new-connection p50",
                "µs",
                Better::Lower,
            )
            .baseline("pod-local")
            .goal("mirrord steal", Goal::RatioAtMost(1.5))
            .note(&format!(
                "{} requests (after {} warm-up) each on a new connection, as above.",
                p.newconn_n, p.newconn_warmup
            )),
        );
        f.push(
            Figure::new(
                "in.mirror.ka",
                inc,
                "pod's own keep-alive p50, mirror",
                "µs",
                Better::Lower,
            )
            .baseline("mirror off")
            .goal("mirror on", Goal::RatioAtMost(1.10))
            .note(
                "The pod serves every request itself; mirror on: a session in `mirror` mode \
                 with a local program (`bench_client serve`) listening on port 80 gets a copy \
                 of the traffic, by packet capture in the pod's namespace (the default); mirror \
                 on (relay): the same with `mirror_capture: false` (the port redirected through \
                 the agent, which relays every connection).",
            ),
        );
        f.push(
            Figure::new(
                "in.mirror.nc",
                inc,
                "pod's own new-connection p50, mirror",
                "µs",
                Better::Lower,
            )
            .baseline("mirror off")
            .goal("mirror on", Goal::RatioAtMost(1.10)),
        );
        f.push(
            Figure::new(
                "in.filter.rps",
                inc,
                "filtered steal throughput",
                "req/s",
                Better::Higher,
            )
            .baseline("pod-local")
            .note(&format!(
                "{} keep-alive requests over {} connections at once, every other one with \
                     `x-user: alice`. filtered steal: a session with `http_filter.header_filter \
                     = \"x-user: alice\"` and the pod's program in dev; matching requests are \
                     served in dev, the others by the pod (checked).",
                p.rps_n, p.rps_conns
            )),
        );
    }
    let mload = "Mirror under load (client namespace → pod:80)";
    if sections.contains(&"mirror-load") {
        f.push(
            Figure::new(
                "in.mirror.load",
                mload,
                &format!(
                    "mirrored copies at {} req/s for {} s",
                    MIRROR_LOAD_RATE, MIRROR_LOAD_SECS
                ),
                "requests",
                Better::Higher,
            )
            .baseline("answered by the pod")
            .goal("reached dev", Goal::RatioAtLeast(1.0))
            .note(&format!(
                "`bench_client paced` in the client namespace sends `GET /paced/<i>` to the pod \
                 at {MIRROR_LOAD_RATE} req/s for {MIRROR_LOAD_SECS} s over \
                 {MIRROR_LOAD_CONNS} keep-alive connections (each on its own schedule); a \
                 session in `mirror` mode runs `pod_http.py` in dev, which logs every request \
                 it gets. answered by the pod: requests the pod answered; reached dev: copies \
                 the program in dev logged (counted once its log stops growing); the ratio is \
                 the delivered fraction."
            )),
        );
        f.push(
            Figure::new(
                "in.mirror.loss",
                mload,
                "offered rate up to which no mirrored copy is lost",
                "req/s",
                Better::Higher,
            )
            .note(&format!(
                "After the {MIRROR_LOAD_RATE} req/s step, the same session takes steps of \
                 {} s at {:?} req/s (stopping at the first step that loses copies). every copy \
                 delivered: the highest rate really offered (answered by the pod per second) in \
                 a step where dev logged as many copies as the pod answered; first step losing \
                 copies: the rate offered in that step, absent when no step lost any (the load \
                 client and the pod's own server are then the limit, not mirroring).",
                MIRROR_LADDER_SECS, MIRROR_LADDER
            )),
        );
    }
    let ses = "Session start";
    if sections.contains(&"session") {
        f.push(
            Figure::new(
                "ses.ready",
                ses,
                "exec start → agent ready",
                "ms",
                Better::Lower,
            )
            .goal("mirrord exec", Goal::AtMost(300.0))
            .note(
                "From spawning `ip netns exec dev mirrord exec -t pid/<pod> -- bench_client \
                     first-byte ...` to the `session started` log line (agent spawned, joined \
                     the pod's namespace, printed ready, control channel open).",
            ),
        );
        f.push(
            Figure::new("ses.first", ses, "start → first byte", "ms", Better::Lower)
                .baseline("plain exec")
                .goal("warm relaunch", Goal::OverBaselineAtMost(30.0))
                .note(
                    "From spawning the program to its `first-byte` line: it resolves \
                     payment-service, connects, sends `GET /` and prints when the first byte of \
                     the answer arrives. plain exec: the program in the pod's namespace; \
                     mirrord exec: a new session (cold: agent start included); warm relaunch: \
                     the program started in dev with the environment of a session that \
                     `mirrord-server --stdio` already runs (`mirrord/startSession`), as an IDE \
                     relaunches a debug target. Medians of several starts per run.",
                ),
        );
    }
    let lay = "Layer overhead (loopback, bypassed)";
    if sections.contains(&"layer") {
        let note = format!(
            "{} iterations (after {} warm-up) of: connect to a listener on 127.0.0.1, accept, \
             one byte each way, close both; in dev, with and without the layer (`mirrord exec` \
             with `outgoing.ignore_localhost: true`, so the layer hands every call to libc).",
            p.loop_n, p.loop_warmup
        );
        f.push(
            Figure::new(
                "layer.p50",
                lay,
                "loopback connect/accept p50",
                "µs",
                Better::Lower,
            )
            .baseline("without layer")
            .note(&note),
        );
        f.push(
            Figure::new(
                "layer.mean",
                lay,
                "loopback connect/accept mean",
                "µs",
                Better::Lower,
            )
            .baseline("without layer"),
        );
    }
    if sections.contains(&"kubernetes") {
        super::kube::figures(p, &mut f);
    }
    Figures(f)
}

/// A child process whose output lines are timestamped when they arrive; its process group is
/// SIGKILLed when dropped.
pub(super) struct Proc {
    child: Child,
    started: Instant,
    exited: Option<ExitStatus>,
    out: Receiver<(Instant, String)>,
    err: Receiver<(Instant, String)>,
    out_seen: Vec<String>,
    err_seen: Vec<String>,
}

fn timed_lines<R: Read + Send + 'static>(r: R) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let now = Instant::now();
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    let _ = tx.send((now, line));
                }
            }
        }
    });
    rx
}

impl Proc {
    pub(super) fn spawn(mut cmd: Command) -> Result<Proc> {
        // Sessions end with Ctrl-C to the group (`stop_session`).
        crate::as_from_a_terminal(&mut cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let out = timed_lines(child.stdout.take().context("stdout")?);
        let err = timed_lines(child.stderr.take().context("stderr")?);
        Ok(Proc {
            child,
            started,
            exited: None,
            out,
            err,
            out_seen: Vec::new(),
            err_seen: Vec::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_on(
        rx: &Receiver<(Instant, String)>,
        seen: &mut Vec<String>,
        needle: &str,
        timeout: Duration,
    ) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((t, line)) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("no {needle:?} within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("output ended before {needle:?}"),
            }
        }
    }

    /// When a stdout line containing `needle` arrived.
    pub(super) fn wait_out(&mut self, needle: &str, timeout: Duration) -> Result<Instant> {
        Self::wait_on(&self.out, &mut self.out_seen, needle, timeout)
            .with_context(|| format!("stdout; stderr: {}", self.stderr_tail()))
    }

    /// When a stderr line containing `needle` arrived.
    fn wait_err(&mut self, needle: &str, timeout: Duration) -> Result<Instant> {
        Self::wait_on(&self.err, &mut self.err_seen, needle, timeout)
            .with_context(|| format!("stderr: {}", self.stderr_tail()))
    }

    fn last_out(&self) -> Option<&String> {
        self.out_seen.last()
    }

    fn stderr_tail(&mut self) -> String {
        self.err_seen.extend(self.err.try_iter().map(|(_, l)| l));
        let n = self.err_seen.len();
        self.err_seen[n.saturating_sub(8)..].join(" | ")
    }

    pub(super) fn signal_group(&mut self, sig: libc::c_int) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            if let Ok(pgid) = i32::try_from(self.child.id()) {
                if pgid > 1 {
                    // SAFETY: kill(2) of the process group we created (pgid > 1).
                    unsafe { libc::kill(-pgid, sig) };
                }
            }
        }
    }

    /// Waits for the exit (killing the group when `timeout` passes first).
    pub(super) fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited {
                return Ok(s);
            }
            if let Some(s) = self.child.try_wait()? {
                self.exited = Some(s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                self.signal_group(libc::SIGKILL);
                let s = self.child.wait()?;
                self.exited = Some(s);
                bail!("{:?} did not exit within {timeout:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// The last stdout line of a finished command, parsed as JSON (a failing exit is an error).
pub(super) fn run_json(mut cmd: Command) -> Result<Value> {
    let out = output_within(&mut cmd, MEASURE_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "exit {}: {}",
            out.status,
            tail_lines(&format!("{stdout}{stderr}"), 6)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no JSON line; stderr: {}", tail_lines(&stderr, 6)))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub(super) fn f64_of(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .ok_or_else(|| anyhow!("no number {key:?} in {v}"))
}

/// Errors a client reported (as a failure note), if any.
pub(super) fn client_errors(v: &Value) -> Option<String> {
    let n = v["errors"].as_u64().unwrap_or(0);
    (n > 0).then(|| format!("{n} errors, first: {}", v["first_error"]))
}

pub(super) fn no_proxy(cmd: &mut Command) {
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "MIRRORD_CONFIG_FILE",
        "LD_PRELOAD",
    ] {
        cmd.env_remove(var);
    }
}

/// VmHWM (peak resident set) of a process in MiB.
fn vm_hwm_mib(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for {pid}"))?;
    Ok(kb / 1024.0)
}

/// Children of `parent` whose command name is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) && name == comm {
            v.push(pid);
        }
    }
    v
}

/// Whether TCP `port` is listening in the network namespace of process `pid`.
fn listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .map(|t| {
            t.lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(3) == Some("0A") && l.contains(&want))
        })
        .unwrap_or(false)
}

/// Whether a pod still has a mirrord agent's redirect rules (iptables or nft), as the commands
/// `in_pod` makes (run in the pod's namespace) list them. A listing that fails counts as rules
/// left for iptables (the default backend) and as none for nft (absent on some machines).
pub(super) fn agent_rules_left(in_pod: impl Fn(&str) -> Command) -> bool {
    let ipt = output_within(
        in_pod("iptables-save").args(["-t", "nat"]),
        Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).contains("MIRRORD_"))
    .unwrap_or(true);
    let nft = output_within(
        in_pod("nft").args(["list", "ruleset"]),
        Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).contains("mirrord_"))
    .unwrap_or(false);
    ipt || nft
}

pub(super) fn poll(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The benchmark environment: the cluster plus the relays and proxies of the other variants.
pub struct Bench<'c> {
    c: &'c Cluster,
    bins: Bins,
    p: Params,
    work: PathBuf,
    pod_target: String,
    /// payment-service port → the socat relay's port in dev.
    relay_port: BTreeMap<u16, u16>,
    proxychains_conf: PathBuf,
    /// socats and microsocks (killed on drop, or with the cluster).
    _helpers: Vec<ManagedChild>,
    /// The IDE daemon and its warm session (started on first use).
    daemon: Option<(RpcClient, Value)>,
}

const SOCKS_PORT: u16 = 1080;

/// A socat pair: `TCP-LISTEN:127.0.0.1:dev_port` in dev → unix socket file → `TCP:pod_dest`
/// from the pod's namespace (see the module docs). Returns once both ends listen.
fn relay(
    c: &Cluster,
    work: &Path,
    name: &str,
    dev_port: u16,
    pod_dest: &str,
) -> Result<Vec<ManagedChild>> {
    let sock = work.join(format!("{name}.sock"));
    let mut pod_side = c.pod("socat");
    pod_side.arg(format!("UNIX-LISTEN:{},fork,backlog=1024", sock.display()));
    pod_side.arg(format!("TCP:{pod_dest},nodelay"));
    let pod_side = c.spawn_named(&format!("socat-pod-{name}"), pod_side)?;
    poll(READY_TIMEOUT, "socat's unix socket", || sock.exists())?;
    let mut dev_side = c.dev("socat");
    dev_side.arg(format!(
        "TCP-LISTEN:{dev_port},bind=127.0.0.1,reuseaddr,fork,backlog=1024,nodelay"
    ));
    dev_side.arg(format!("UNIX-CONNECT:{}", sock.display()));
    let dev_side = c.spawn_named(&format!("socat-dev-{name}"), dev_side)?;
    let pid = dev_side.pid();
    poll(READY_TIMEOUT, "socat's TCP listener in dev", || {
        listening(pid, dev_port)
    })?;
    Ok(vec![pod_side, dev_side])
}
const SOCKS_DEV_PORT: u16 = 11080;

impl<'c> Bench<'c> {
    /// Sets up the relays and the SOCKS proxy and checks each variant answers once.
    pub fn new(c: &'c Cluster, bins: Bins, p: Params) -> Result<Bench<'c>> {
        let work = c.workdir().join("bench");
        fs::create_dir_all(&work)?;
        fs::create_dir_all(c.workdir().join("run"))?;
        let mut helpers = Vec::new();
        let mut relay_port = BTreeMap::new();
        for (port, dev_port) in [
            (Cluster::SVC_HTTP_PORT, 18080),
            (Cluster::SVC_TCP_ECHO_PORT, 19000),
        ] {
            helpers.extend(relay(
                c,
                &work,
                &format!("svc{port}"),
                dev_port,
                &format!("{}:{port}", Cluster::SVC_IP),
            )?);
            relay_port.insert(port, dev_port);
        }
        // microsocks on the pod's loopback, bridged to dev like the relays.
        let mut socks = c.pod("microsocks");
        socks.args(["-i", "127.0.0.1", "-p", &SOCKS_PORT.to_string()]);
        let socks = c.spawn_named("microsocks", socks)?;
        let socks_pid = socks.pid();
        helpers.push(socks);
        poll(READY_TIMEOUT, "microsocks", || {
            listening(socks_pid, SOCKS_PORT)
        })?;
        helpers.extend(relay(
            c,
            &work,
            "socks",
            SOCKS_DEV_PORT,
            &format!("127.0.0.1:{SOCKS_PORT}"),
        )?);
        let proxychains_conf = work.join("proxychains.conf");
        fs::write(
            &proxychains_conf,
            format!(
                "# proxychains-ng for the benchmark: SOCKS5 in the pod (microsocks), reached\n\
                 # through a socat pair over a unix socket file.\n\
                 strict_chain\nquiet_mode\nproxy_dns\nremote_dns_subnet 224\n\
                 tcp_read_time_out 15000\ntcp_connect_time_out 8000\n\
                 [ProxyList]\nsocks5 127.0.0.1 {SOCKS_DEV_PORT}\n"
            ),
        )?;
        for (name, json) in [
            (
                "steal.json",
                r#"{"feature":{"network":{"incoming":"steal"}}}"#,
            ),
            (
                "mirror.json",
                r#"{"feature":{"network":{"incoming":"mirror"}}}"#,
            ),
            (
                "mirror-relay.json",
                r#"{"feature":{"network":{"incoming":{"mode":"mirror","mirror_capture":false}}}}"#,
            ),
            (
                "filtered.json",
                r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
            ),
            (
                "loopback.json",
                r#"{"feature":{"network":{"outgoing":{"ignore_localhost":true},"incoming":{"mode":"mirror","ignore_localhost":true}}}}"#,
            ),
        ] {
            fs::write(work.join(name), json)?;
        }
        let b = Bench {
            c,
            bins,
            p,
            work,
            pod_target: format!("pid/{}", c.pod_pid()),
            relay_port,
            proxychains_conf,
            _helpers: helpers,
            daemon: None,
        };
        // Each variant must work before anything is timed.
        for v in VARIANTS {
            let r = run_json(b.client(v, &["http", &b.dest(v, 8080), "/", "1", "0", "keepalive"]))
                .with_context(|| format!("checking the {} variant", v.name()))?;
            if r["n"] != 1 {
                bail!("the {} variant does not answer: {r}", v.name());
            }
        }
        Ok(b)
    }

    /// Where the client of variant `v` connects to reach payment-service's `port`.
    fn dest(&self, v: Variant, port: u16) -> String {
        match v {
            Variant::Socat => format!("127.0.0.1:{}", self.relay_port[&port]),
            _ => format!("{}:{port}", Cluster::SVC_NAME),
        }
    }

    fn mirrord_exec(&self, config: Option<&str>, program: &Path, args: &[&str]) -> Command {
        let mut cmd = self.c.dev(&self.bins.mirrord);
        cmd.args(["exec", "-t", &self.pod_target]);
        if let Some(cfg) = config {
            cmd.arg("-f").arg(self.work.join(cfg));
        }
        cmd.arg("--")
            .arg(program)
            .args(args)
            .env("MIRRORD_RUNTIME_DIR", self.c.workdir().join("run"));
        no_proxy(&mut cmd);
        cmd
    }

    /// The client with `args`, run the way variant `v` runs it.
    fn client(&self, v: Variant, args: &[&str]) -> Command {
        let mut cmd = match v {
            Variant::Direct => {
                let mut cmd = self.c.pod(&self.bins.client);
                cmd.args(args);
                cmd
            }
            Variant::Mirrord => self.mirrord_exec(None, &self.bins.client, args),
            Variant::Socat => {
                let mut cmd = self.c.dev(&self.bins.client);
                cmd.args(args);
                cmd
            }
            Variant::Proxychains => {
                let mut cmd = self.c.dev("proxychains4");
                cmd.arg("-q")
                    .arg("-f")
                    .arg(&self.proxychains_conf)
                    .arg(&self.bins.client)
                    .args(args);
                cmd
            }
        };
        no_proxy(&mut cmd);
        cmd
    }

    /// One run of `section`.
    pub fn run_section(&mut self, section: &str, run: usize, figs: &mut Figures) -> Result<()> {
        match section {
            "outgoing" => self.outgoing(run, figs),
            "incoming" => self.incoming(run, figs),
            "mirror-load" => self.mirror_load(run, figs),
            "session" => self.session(run, figs),
            "layer" => self.layer(run, figs),
            "go" => self.go(run, figs),
            other => bail!("no section {other}"),
        }
    }

    fn outgoing(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let order = rotated(&VARIANTS, run);
        let p = self.p.clone();
        for &streams in &p.bulk_streams {
            let id = format!("out.bulk{streams}");
            for &v in &order {
                check_interrupted()?;
                let r = run_json(self.client(
                    v,
                    &["bulk", &self.dest(v, 8080), "/bytes", &streams.to_string()],
                ));
                let want = streams as u64 * Cluster::BULK_SIZE;
                match r {
                    Ok(r) if r["bytes"].as_u64() == Some(want) => {
                        figs.put(&id, v.name(), run, f64_of(&r, "mib_s")?)
                    }
                    Ok(r) => figs.fail(&id, v.name(), run, &format!("incomplete: {r}")),
                    Err(e) => figs.fail(&id, v.name(), run, &format!("{e:#}")),
                }
            }
        }
        for (mode, n, w, key) in [
            ("keepalive", p.req_n, p.req_warmup, "ka"),
            ("newconn", p.newconn_n, p.newconn_warmup, "nc"),
        ] {
            for &v in &order {
                check_interrupted()?;
                let r = run_json(self.client(
                    v,
                    &[
                        "http",
                        &self.dest(v, 8080),
                        "/",
                        &n.to_string(),
                        &w.to_string(),
                        mode,
                    ],
                ));
                self.latency(figs, &format!("out.{key}"), v.name(), run, r)?;
            }
        }
        for &v in &order {
            if v == Variant::Socat {
                continue;
            }
            check_interrupted()?;
            let r = run_json(self.client(
                v,
                &[
                    "dns",
                    Cluster::SVC_NAME,
                    &p.dns_n.to_string(),
                    &p.dns_warmup.to_string(),
                ],
            ));
            self.latency(figs, "out.dns", v.name(), run, r)?;
        }
        for &v in &order {
            check_interrupted()?;
            let r = if v == Variant::Mirrord {
                self.conns_with_memory(run, figs)
            } else {
                run_json(self.client(v, &["conns", &self.dest(v, 9000), &p.conns.to_string()]))
            };
            match r {
                Ok(r) => {
                    figs.put(
                        "out.conns.time",
                        v.name(),
                        run,
                        f64_of(&r, "total_secs")? * 1e3,
                    );
                    figs.put("out.conns.errors", v.name(), run, f64_of(&r, "errors")?);
                    if let Some(e) = client_errors(&r) {
                        figs.get("out.conns.errors").fail(v.name(), run, &e);
                    }
                }
                Err(e) => {
                    figs.fail("out.conns.time", v.name(), run, &format!("{e:#}"));
                    figs.fail("out.conns.errors", v.name(), run, &format!("{e:#}"));
                }
            }
        }
        Ok(())
    }

    /// The Go client (static: no layer), direct in the pod and under mirrord.
    fn go(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let Some(go) = self.bins.go_client.clone() else {
            bail!("the Go client was not built");
        };
        let p = self.p.clone();
        let dest = format!("{}:8080", Cluster::SVC_NAME);
        let go_cmd = |v: Variant, args: &[&str]| {
            let mut cmd = match v {
                Variant::Mirrord => self.mirrord_exec(None, &go, args),
                _ => {
                    let mut cmd = self.c.pod(&go);
                    cmd.args(args);
                    cmd
                }
            };
            no_proxy(&mut cmd);
            cmd
        };
        for &v in &rotated(&[Variant::Direct, Variant::Mirrord], run) {
            check_interrupted()?;
            let r = run_json(go_cmd(
                v,
                &[
                    "http",
                    &dest,
                    "/",
                    &p.req_n.to_string(),
                    &p.req_warmup.to_string(),
                ],
            ));
            self.latency(figs, "go.ka", v.name(), run, r)?;
            check_interrupted()?;
            let r = run_json(go_cmd(v, &["bulk", &dest, "/bytes"]));
            match r {
                Ok(r) if r["bytes"].as_u64() == Some(Cluster::BULK_SIZE) => {
                    figs.put("go.bulk1", v.name(), run, f64_of(&r, "mib_s")?)
                }
                Ok(r) => figs.fail("go.bulk1", v.name(), run, &format!("incomplete: {r}")),
                Err(e) => figs.fail("go.bulk1", v.name(), run, &format!("{e:#}")),
            }
        }
        Ok(())
    }

    /// Records p50 and p99 of a latency client's summary under `{id}.p50` / `{id}.p99`.
    fn latency(
        &self,
        figs: &mut Figures,
        id: &str,
        variant: &str,
        run: usize,
        r: Result<Value>,
    ) -> Result<()> {
        let (p50, p99) = (format!("{id}.p50"), format!("{id}.p99"));
        match r {
            Ok(r) => {
                figs.put(&p50, variant, run, f64_of(&r, "p50_us")?);
                figs.put(&p99, variant, run, f64_of(&r, "p99_us")?);
                if let Some(e) = client_errors(&r) {
                    figs.get(&p50).fail(variant, run, &e);
                }
            }
            Err(e) => {
                figs.fail(&p50, variant, run, &format!("{e:#}"));
                figs.fail(&p99, variant, run, &format!("{e:#}"));
            }
        }
        Ok(())
    }

    /// The mirrord run of the concurrent connections; reads the agent's and the session's
    /// peak RSS while the client holds (its summary printed, the connections just finished).
    fn conns_with_memory(&self, run: usize, figs: &mut Figures) -> Result<Value> {
        let hold = self.work.join(format!("hold-{run}"));
        let dest = self.dest(Variant::Mirrord, 9000);
        let mut p = Proc::spawn(self.client(
            Variant::Mirrord,
            &[
                "conns",
                &dest,
                &self.p.conns.to_string(),
                hold.to_str().context("non-UTF-8 workdir")?,
            ],
        ))?;
        let waited = p.wait_out("{", MEASURE_TIMEOUT);
        let mirrord_pid = p.pid();
        let agents = children_named(mirrord_pid, "mirrord-agent");
        match agents.first().map(|a| vm_hwm_mib(*a)) {
            Some(Ok(mib)) => figs.put("mem.agent", "mirrord", run, mib),
            Some(Err(e)) => figs.fail("mem.agent", "mirrord", run, &format!("{e:#}")),
            None => figs.fail("mem.agent", "mirrord", run, "no agent process found"),
        }
        match vm_hwm_mib(mirrord_pid) {
            Ok(mib) => figs.put("mem.server", "mirrord", run, mib),
            Err(e) => figs.fail("mem.server", "mirrord", run, &format!("{e:#}")),
        }
        fs::write(&hold, "")?;
        waited?;
        let line = p.last_out().cloned().unwrap_or_default();
        let status = p.wait_exit(Duration::from_secs(30))?;
        if !status.success() {
            bail!("exit {status}: {}", p.stderr_tail());
        }
        serde_json::from_str(&line).with_context(|| format!("parsing {line:?}"))
    }

    /// Starts `program args` under `mirrord exec -f config` in dev and waits for `ready`.
    fn start_session(
        &self,
        config: &str,
        program: &Path,
        args: &[&str],
        ready: &str,
    ) -> Result<Proc> {
        let mut p = Proc::spawn(self.mirrord_exec(Some(config), program, args))?;
        p.wait_out(ready, READY_TIMEOUT)
            .with_context(|| format!("starting the {config} session"))?;
        Ok(p)
    }

    /// Ends a session as a terminal's Ctrl-C does and waits until its rules are gone from the pod.
    fn stop_session(&self, mut p: Proc) -> Result<()> {
        p.signal_group(libc::SIGINT);
        let _ = p.wait_exit(Duration::from_secs(15));
        drop(p);
        poll(Duration::from_secs(15), "the agent's rules to go", || {
            !agent_rules_left(|program| self.c.pod(program))
        })
    }

    fn pod_http_args(&self, log: &Path) -> Vec<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("services")
            .join("pod_http.py");
        vec![
            "-B".into(),
            script.display().to_string(),
            "--port".into(),
            "80".into(),
            "--log".into(),
            log.display().to_string(),
        ]
    }

    fn client_ns(&self, args: &[&str]) -> Command {
        let mut cmd = self.c.client(&self.bins.client);
        cmd.args(args);
        no_proxy(&mut cmd);
        cmd
    }

    fn pod_latency(
        &self,
        figs: &mut Figures,
        ids: [&str; 2],
        variant: &str,
        run: usize,
    ) -> Result<()> {
        let pod = format!("{}:{}", Cluster::POD_IP, Cluster::POD_HTTP_PORT);
        let p = &self.p;
        for (id, mode, n, w) in [
            (ids[0], "keepalive", p.req_n, p.req_warmup),
            (ids[1], "newconn", p.newconn_n, p.newconn_warmup),
        ] {
            check_interrupted()?;
            let r = run_json(self.client_ns(&[
                "http",
                &pod,
                "/",
                &n.to_string(),
                &w.to_string(),
                mode,
            ]));
            match r {
                Ok(r) => {
                    figs.put(id, variant, run, f64_of(&r, "p50_us")?);
                    if let Some(e) = client_errors(&r) {
                        figs.get(id).fail(variant, run, &e);
                    }
                }
                Err(e) => figs.fail(id, variant, run, &format!("{e:#}")),
            }
        }
        Ok(())
    }

    fn lines(path: &Path) -> usize {
        fs::read_to_string(path).map_or(0, |s| s.lines().count())
    }

    fn incoming(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let py = PathBuf::from(PY);
        let p = self.p.clone();
        // Steal vs the pod serving itself (the same program on both sides).
        for on in rotated(&[false, true], run) {
            if !on {
                self.pod_latency(figs, ["in.steal.ka", "in.steal.nc"], "pod-local", run)?;
                continue;
            }
            let log = self.work.join(format!("steal-{run}.log"));
            let args = self.pod_http_args(&log);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let s = match self.start_session("steal.json", &py, &args, "ready") {
                Ok(s) => s,
                Err(e) => {
                    for id in ["in.steal.ka", "in.steal.nc"] {
                        figs.fail(id, "mirrord steal", run, &format!("{e:#}"));
                    }
                    continue;
                }
            };
            let measured =
                self.pod_latency(figs, ["in.steal.ka", "in.steal.nc"], "mirrord steal", run);
            self.stop_session(s)?;
            measured?;
            let want = p.req_n + p.req_warmup + p.newconn_n + p.newconn_warmup;
            let got = Self::lines(&log);
            if got != want {
                figs.get("in.steal.ka").fail(
                    "mirrord steal",
                    run,
                    &format!("the local program served {got} of {want} requests"),
                );
            }
        }
        // The pod's own latency with a mirroring session (by capture, the default, and through
        // the relay) and without.
        let variants = [
            None,
            Some(("mirror.json", "mirror on")),
            Some(("mirror-relay.json", "mirror on (relay)")),
        ];
        for variant in rotated(&variants, run + 1) {
            let Some((config, name)) = variant else {
                self.pod_latency(figs, ["in.mirror.ka", "in.mirror.nc"], "mirror off", run)?;
                continue;
            };
            let s = match self.start_session(
                config,
                &self.bins.client.clone(),
                &["serve", "80", "local"],
                "listening",
            ) {
                Ok(s) => s,
                Err(e) => {
                    for id in ["in.mirror.ka", "in.mirror.nc"] {
                        figs.fail(id, name, run, &format!("{e:#}"));
                    }
                    continue;
                }
            };
            let measured = self.pod_latency(figs, ["in.mirror.ka", "in.mirror.nc"], name, run);
            self.stop_session(s)?;
            measured?;
        }
        // Filtered steal: half the requests to dev, half to the pod.
        let pod = format!("{}:{}", Cluster::POD_IP, Cluster::POD_HTTP_PORT);
        let rps_args = [
            "rps".to_string(),
            pod,
            p.rps_n.to_string(),
            p.rps_conns.to_string(),
            "x-user: alice".to_string(),
        ];
        let rps_args: Vec<&str> = rps_args.iter().map(String::as_str).collect();
        for on in rotated(&[false, true], run) {
            check_interrupted()?;
            if !on {
                match run_json(self.client_ns(&rps_args)) {
                    Ok(r) if r["ok"].as_u64() == Some(p.rps_n as u64) => {
                        figs.put("in.filter.rps", "pod-local", run, f64_of(&r, "rps")?)
                    }
                    Ok(r) => figs.fail("in.filter.rps", "pod-local", run, &r.to_string()),
                    Err(e) => figs.fail("in.filter.rps", "pod-local", run, &format!("{e:#}")),
                }
                continue;
            }
            let log = self.work.join(format!("filtered-{run}.log"));
            let args = self.pod_http_args(&log);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let variant = "filtered steal";
            let s = match self.start_session("filtered.json", &py, &args, "ready") {
                Ok(s) => s,
                Err(e) => {
                    figs.fail("in.filter.rps", variant, run, &format!("{e:#}"));
                    continue;
                }
            };
            let r = run_json(self.client_ns(&rps_args));
            self.stop_session(s)?;
            let stolen = Self::lines(&log);
            let want = p.rps_n.div_ceil(2);
            match r {
                Ok(r) if r["ok"].as_u64() == Some(p.rps_n as u64) && stolen == want => {
                    figs.put("in.filter.rps", variant, run, f64_of(&r, "rps")?)
                }
                Ok(r) => figs.fail(
                    "in.filter.rps",
                    variant,
                    run,
                    &format!("{stolen} of {want} expected requests reached dev; {r}"),
                ),
                Err(e) => figs.fail("in.filter.rps", variant, run, &format!("{e:#}")),
            }
        }
        Ok(())
    }

    /// Mirrored copies under a paced load (see the figures `in.mirror.load`, `in.mirror.loss`).
    fn mirror_load(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let py = PathBuf::from(PY);
        let log = self.work.join(format!("mirror-load-{run}.log"));
        let args = self.pod_http_args(&log);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let s = match self.start_session("mirror.json", &py, &args, "ready") {
            Ok(s) => s,
            Err(e) => {
                figs.fail("in.mirror.load", "reached dev", run, &format!("{e:#}"));
                figs.fail(
                    "in.mirror.loss",
                    "every copy delivered",
                    run,
                    &format!("{e:#}"),
                );
                return Ok(());
            }
        };
        let steps = std::iter::once((MIRROR_LOAD_RATE, MIRROR_LOAD_SECS))
            .chain(MIRROR_LADDER.iter().map(|&r| (r, MIRROR_LADDER_SECS)));
        let pod = format!("{}:{}", Cluster::POD_IP, Cluster::POD_HTTP_PORT);
        let mut loss_at = None;
        let mut highest = 0.0f64;
        let mut steps_done = 0;
        let mut outcome = Ok(());
        for (i, (rate, secs)) in steps.enumerate() {
            if let Err(e) = check_interrupted() {
                outcome = Err(e);
                break;
            }
            let before = Self::lines(&log);
            let args = [
                "paced".to_string(),
                pod.clone(),
                rate.to_string(),
                secs.to_string(),
                MIRROR_LOAD_CONNS.to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = match run_json(self.client_ns(&args)) {
                Ok(r) => r,
                Err(e) => {
                    if i == 0 {
                        figs.fail("in.mirror.load", "reached dev", run, &format!("{e:#}"));
                        figs.fail("in.mirror.loss", "every copy delivered", run, "no step ran");
                    }
                    break;
                }
            };
            steps_done += 1;
            let answered = r["ok"].as_u64().unwrap_or(0) as usize;
            // Copies still in flight: counted once the log stops growing (at most 10 s).
            let mut last = Self::lines(&log);
            let settle = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let now = Self::lines(&log);
                if now == last || settle.elapsed() > Duration::from_secs(10) {
                    last = now;
                    break;
                }
                last = now;
            }
            let reached = last - before;
            let offered = f64_of(&r, "rps").unwrap_or(0.0);
            eprintln!(
                "    mirror at {rate} req/s: offered {offered:.0} req/s, pod answered {answered}, \
                 dev got {reached}"
            );
            if i == 0 {
                figs.put(
                    "in.mirror.load",
                    "answered by the pod",
                    run,
                    answered as f64,
                );
                figs.put("in.mirror.load", "reached dev", run, reached as f64);
            }
            if reached < answered {
                loss_at = Some(offered);
                break;
            }
            highest = highest.max(offered);
        }
        if steps_done > 0 {
            figs.put("in.mirror.loss", "every copy delivered", run, highest);
        }
        if let Some(rate) = loss_at {
            figs.put("in.mirror.loss", "first step losing copies", run, rate);
        }
        self.stop_session(s)?;
        outcome
    }

    /// The IDE daemon with one started session (started once, then reused).
    fn warm_session(&mut self) -> Result<&Value> {
        if self.daemon.is_none() {
            let mut cmd = self.c.dev(&self.bins.server);
            cmd.arg("--stdio")
                .arg("--log-file")
                .arg(self.work.join("daemon.log"))
                .env("MIRRORD_RUNTIME_DIR", self.c.workdir().join("run"));
            no_proxy(&mut cmd);
            let d = RpcClient::spawn(
                "mirrord-server",
                cmd,
                Framing::ContentLength,
                &self.work.join("daemon.stderr"),
            )?;
            let init = d.request(
                "initialize",
                json!({"processId": null, "rootUri": null, "capabilities": {}}),
            );
            init.map_err(|e| anyhow!("initialize: {e}"))?;
            d.notify("initialized", json!({}));
            let session = d
                .request("mirrord/startSession", json!({"target": self.pod_target}))
                .map_err(|e| anyhow!("startSession: {e}"))?;
            self.daemon = Some((d, session));
        }
        Ok(&self.daemon.as_ref().expect("set above").1)
    }

    /// What the daemon last said of the warm relaunch's session (`mirrord/sessionChanged`), so a
    /// failed relaunch shows whether the session had ended and why.
    fn warm_session_news(&self) -> String {
        let Some((d, session)) = &self.daemon else {
            return String::new();
        };
        let last = d.notifications().into_iter().rev().find(|n| {
            n["method"] == "mirrord/sessionChanged"
                && n["params"]["sessionId"] == session["sessionId"]
        });
        match last {
            Some(n) => format!(
                "; the daemon's session was last {}: {}",
                n["params"]["state"], n["params"]["message"]
            ),
            None => "; the daemon said nothing of its session since it started".into(),
        }
    }

    fn first_byte_args(&self) -> [String; 3] {
        [
            "first-byte".into(),
            format!("{}:{}", Cluster::SVC_NAME, Cluster::SVC_HTTP_PORT),
            "/".into(),
        ]
    }

    /// Spawns `cmd`, returns (ms to `session started` on stderr if `ready`, ms to `first-byte`).
    fn time_start(&self, cmd: Command, ready: bool) -> Result<(Option<f64>, f64)> {
        let mut p = Proc::spawn(cmd)?;
        let ms = |t: Instant, p: &Proc| t.duration_since(p.started).as_secs_f64() * 1e3;
        let ready = if ready {
            let t = p.wait_err("session started", READY_TIMEOUT)?;
            Some(ms(t, &p))
        } else {
            None
        };
        let t = p.wait_out("first-byte", READY_TIMEOUT)?;
        let first = ms(t, &p);
        let status = p.wait_exit(READY_TIMEOUT)?;
        if !status.success() {
            bail!("exit {status}: {}", p.stderr_tail());
        }
        Ok((ready, first))
    }

    fn session(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let env = match self.warm_session() {
            Ok(s) => Ok(s.clone()),
            Err(e) => Err(format!("{e:#}")),
        };
        let args = self.first_byte_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut plain = Vec::new();
        let mut cold = Vec::new();
        let mut ready = Vec::new();
        let mut warm = Vec::new();
        let mut fails: Vec<(&str, String)> = Vec::new();
        for rep in 0..self.p.session_reps {
            for kind in rotated(&[0, 1, 2], run * self.p.session_reps + rep) {
                check_interrupted()?;
                match kind {
                    0 => {
                        let mut cmd = self.c.pod(&self.bins.client);
                        cmd.args(&args);
                        no_proxy(&mut cmd);
                        match self.time_start(cmd, false) {
                            Ok((_, f)) => plain.push(f),
                            Err(e) => fails.push(("plain exec", format!("{e:#}"))),
                        }
                    }
                    1 => {
                        let mut cmd = self.mirrord_exec(None, &self.bins.client, &args);
                        cmd.env("MIRRORD_LOG", "mirrord_server=info,warn");
                        match self.time_start(cmd, true) {
                            Ok((r, f)) => {
                                ready.extend(r);
                                cold.push(f);
                            }
                            Err(e) => fails.push(("mirrord exec", format!("{e:#}"))),
                        }
                    }
                    _ => {
                        let session = match &env {
                            Ok(s) => s,
                            Err(e) => {
                                fails.push(("warm relaunch", e.clone()));
                                continue;
                            }
                        };
                        let mut cmd = self.c.dev(&self.bins.client);
                        cmd.args(&args);
                        no_proxy(&mut cmd);
                        for var in session["envToUnset"].as_array().into_iter().flatten() {
                            if let Some(v) = var.as_str() {
                                cmd.env_remove(v);
                            }
                        }
                        for (k, v) in session["env"].as_object().into_iter().flatten() {
                            cmd.env(k, v.as_str().unwrap_or_default());
                        }
                        match self.time_start(cmd, false) {
                            Ok((_, f)) => warm.push(f),
                            Err(e) => fails.push((
                                "warm relaunch",
                                format!("{e:#}{}", self.warm_session_news()),
                            )),
                        }
                    }
                }
            }
        }
        eprintln!(
            "    starts (ms): plain {plain:.1?} cold {cold:.1?} (ready {ready:.1?}) warm {warm:.1?}"
        );
        let med = |v: &[f64]| super::report::summarize(v).map(|s| s.median);
        match med(&ready) {
            Some(m) => figs.put("ses.ready", "mirrord exec", run, m),
            None => figs.fail("ses.ready", "mirrord exec", run, "no successful start"),
        }
        for (variant, v) in [
            ("plain exec", &plain),
            ("mirrord exec", &cold),
            ("warm relaunch", &warm),
        ] {
            match med(v) {
                Some(m) => figs.put("ses.first", variant, run, m),
                None => figs.fail("ses.first", variant, run, "no successful start"),
            }
        }
        for (variant, why) in fails {
            figs.get("ses.first").fail(variant, run, &why);
        }
        Ok(())
    }

    fn layer(&mut self, run: usize, figs: &mut Figures) -> Result<()> {
        let n = self.p.loop_n.to_string();
        let w = self.p.loop_warmup.to_string();
        let args = ["loopback", n.as_str(), w.as_str()];
        for with in rotated(&[false, true], run) {
            check_interrupted()?;
            let (variant, cmd) = if with {
                (
                    "with layer",
                    self.mirrord_exec(Some("loopback.json"), &self.bins.client, &args),
                )
            } else {
                let mut cmd = self.c.dev(&self.bins.client);
                cmd.args(args);
                no_proxy(&mut cmd);
                ("without layer", cmd)
            };
            match run_json(cmd) {
                Ok(r) => {
                    figs.put("layer.p50", variant, run, f64_of(&r, "p50_us")?);
                    figs.put("layer.mean", variant, run, f64_of(&r, "mean_us")?);
                }
                Err(e) => {
                    figs.fail("layer.p50", variant, run, &format!("{e:#}"));
                    figs.fail("layer.mean", variant, run, &format!("{e:#}"));
                }
            }
        }
        Ok(())
    }
}
