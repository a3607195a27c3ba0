//! The layer never freezes, crashes or serialises the program it lives in (issue 12): event
//! loops keep running while a connect is pending in the pod, lookups of different threads run
//! concurrently, the layer's diagnostics never fail the program, and `fork` in a program whose
//! other threads are mid-request never deadlocks.
//!
//! Each test compares with the same program run in the pod's namespace without mirrord where a
//! number is involved, so the bounds are relative to what the program gets in the pod.

use mirrord_tests::{no_proxy, output_within, run_ok, target_dir_bin, Cluster};
use std::process::{Command, Output};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
/// The system Python.
const PY: &str = "/usr/bin/python3";
const NODE: &str = "node";
/// payment-service's port that drops SYNs in these tests (nothing listens on it).
const SYN_DROP_PORT: u16 = 9002;

/// `mirrord exec -t pid/<pod> -- program args` in the dev namespace.
fn mirrord(c: &Cluster, program: &str, args: &[&str]) -> Command {
    let mut cmd = c.dev(target_dir_bin("mirrord"));
    cmd.arg("exec")
        .arg("-t")
        .arg(format!("pid/{}", c.pod_pid()))
        .arg("--")
        .arg(program)
        .args(args)
        .env("MIRRORD_RUNTIME_DIR", c.workdir().join("run"));
    no_proxy(&mut cmd);
    cmd
}

/// The same program in the pod's namespace, without mirrord: the baseline.
fn in_pod(c: &Cluster, program: &str, args: &[&str]) -> Command {
    let mut cmd = c.pod(program);
    cmd.args(args);
    no_proxy(&mut cmd);
    cmd
}

fn run(mut cmd: Command) -> Output {
    output_within(&mut cmd, TIMEOUT).unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): stdout {} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Makes payment-service drop SYNs to [`SYN_DROP_PORT`]: a connect there stays pending.
fn drop_syns(c: &Cluster) {
    run_ok(c.cmd(c.ns_svc(), "iptables").args([
        "-I",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &SYN_DROP_PORT.to_string(),
        "-j",
        "DROP",
    ]))
    .unwrap();
}

/// `ticks N STATE` → (N, STATE).
fn ticks(out: &str) -> (u32, String) {
    let line = out
        .lines()
        .find(|l| l.starts_with("ticks "))
        .unwrap_or_else(|| panic!("no ticks line in {out:?}"));
    let mut parts = line.splitn(3, ' ').skip(1);
    let n = parts.next().unwrap().parse().unwrap();
    (n, parts.next().unwrap_or("").to_string())
}

/// Runs a tick counter in the pod and under mirrord; returns what is wrong, if anything.
fn keeps_ticking(c: &Cluster, what: &str, program: &str, args: &[&str]) -> Option<String> {
    let (pod, pod_state) = ticks(&ok(run(in_pod(c, program, args))));
    let (dev, dev_state) = ticks(&ok(run(mirrord(c, program, args))));
    // The connect must really have been pending all along in both runs.
    if pod_state != "pending" || dev_state != "pending" {
        return Some(format!(
            "{what}: the connect was not pending all along: {pod} ticks and {pod_state} in the \
             pod, {dev} ticks and {dev_state} under mirrord"
        ));
    }
    (dev * 5 < pod * 4)
        .then(|| format!("{what}: {dev} timer ticks under mirrord, {pod} in the pod (need >= 80%)"))
}

const NODE_TICKS: &str = r#"
const net = require('net');
let ticks = 0, state = 'pending';
const s = net.connect({ host: '10.96.0.50', port: 9002 });
s.on('connect', () => { state = 'connected'; });
s.on('error', e => { state = `error ${e.code}`; });
const t = setInterval(() => { ticks++; }, 50);
setTimeout(() => {
  clearInterval(t);
  console.log(`ticks ${ticks} ${state}`);
  process.exit(0);
}, 2000);
"#;

/// argv[1] names the selector behind the event loop: epoll (asyncio's default), poll, select.
const ASYNCIO_TICKS: &str = r#"
import asyncio, selectors, sys
async def main():
    state = "pending"
    async def conn():
        nonlocal state
        try:
            await asyncio.open_connection("10.96.0.50", 9002)
            state = "connected"
        except Exception as e:
            state = "error " + type(e).__name__
    task = asyncio.ensure_future(conn())
    loop = asyncio.get_running_loop()
    ticks, end = 0, loop.time() + 2
    while loop.time() < end:
        await asyncio.sleep(0.05)
        ticks += 1
    print("ticks", ticks, state, flush=True)
    task.cancel()
selector = {"epoll": selectors.EpollSelector, "poll": selectors.PollSelector,
            "select": selectors.SelectSelector}[sys.argv[1]]()
loop = asyncio.SelectorEventLoop(selector)
loop.run_until_complete(main())
"#;

const JAVA_TICKS: &str = r#"
import java.net.InetSocketAddress;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;

public class Ticks {
    public static void main(String[] args) throws Exception {
        Selector selector = Selector.open();
        SocketChannel ch = SocketChannel.open();
        ch.configureBlocking(false);
        String state = ch.connect(new InetSocketAddress("10.96.0.50", 9002)) ? "connected" : "pending";
        ch.register(selector, SelectionKey.OP_CONNECT);
        long tick = 50_000_000L;
        long end = System.nanoTime() + 2_000_000_000L;
        long next = System.nanoTime() + tick;
        int ticks = 0;
        while (System.nanoTime() < end) {
            long waitMs = Math.max(1, (next - System.nanoTime()) / 1_000_000);
            selector.select(waitMs);
            for (SelectionKey k : selector.selectedKeys()) {
                if (k.isConnectable()) {
                    try {
                        ch.finishConnect();
                        state = "connected";
                    } catch (Exception e) {
                        state = "error " + e.getClass().getSimpleName();
                    }
                    if (k.isValid()) {
                        k.interestOps(0);
                    }
                }
            }
            selector.selectedKeys().clear();
            if (System.nanoTime() >= next) {
                ticks++;
                next += tick;
            }
        }
        System.out.println("ticks " + ticks + " " + state);
        System.exit(0);
    }
}
"#;

/// Issue 12, point 1: a non-blocking connect to a destination that drops SYNs returns
/// `EINPROGRESS` at once, so Node's, asyncio's (on epoll, poll and select) and Java NIO's event
/// loops keep their timers.
#[test]
fn event_loops_keep_ticking_while_a_connect_is_pending_in_the_pod() {
    let c = Cluster::start().unwrap();
    drop_syns(&c);
    let mut problems = Vec::new();
    problems.extend(keeps_ticking(&c, "node", NODE, &["-e", NODE_TICKS]));
    for selector in ["epoll", "poll", "select"] {
        let what = format!("asyncio ({selector})");
        problems.extend(keeps_ticking(
            &c,
            &what,
            PY,
            &["-c", ASYNCIO_TICKS, selector],
        ));
    }

    let java_dir = c.workdir().join("java");
    std::fs::create_dir_all(&java_dir).unwrap();
    let source = java_dir.join("Ticks.java");
    std::fs::write(&source, JAVA_TICKS).unwrap();
    run_ok(Command::new("javac").arg("-d").arg(&java_dir).arg(&source)).unwrap();
    let cp = java_dir.display().to_string();
    problems.extend(keeps_ticking(
        &c,
        "java nio",
        "java",
        &["-cp", &cp, "Ticks"],
    ));
    assert!(problems.is_empty(), "{problems:#?}");
}

/// What a program can observe of non-blocking connects, through epoll (edge-triggered) and
/// select: `EINPROGRESS`, `EALREADY` and `ENOTCONN` while pending, no writability until the
/// pod-side outcome, then `SO_ERROR`, the peer, `EISCONN`, data; a refused connect reports
/// `ECONNREFUSED` once.
const NONBLOCKING_SEMANTICS: &str = r#"
import errno, select, socket
def name(e):
    return errno.errorcode.get(e, str(e))
def nb():
    s = socket.socket()
    s.setblocking(False)
    return s
ep = select.epoll()
s = nb()
print("dropped first", name(s.connect_ex(("10.96.0.50", 9002))))
print("dropped again", name(s.connect_ex(("10.96.0.50", 9002))))
try:
    s.getpeername()
    print("dropped peer: yes")
except OSError as e:
    print("dropped peer:", name(e.errno))
ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLET)
print("dropped writable within 0.5 s:", bool(ep.poll(0.5)))
ep.unregister(s.fileno())
s.close()
s = nb()
print("served first", name(s.connect_ex(("10.96.0.50", 8080))))
ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLET)
events = ep.poll(20)
print("served writable:", any(ev & select.EPOLLOUT for _, ev in events))
print("served SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
print("served peer", s.getpeername())
print("served again", name(s.connect_ex(("10.96.0.50", 8080))))
ep.unregister(s.fileno())
s.setblocking(True)
s.settimeout(20)
s.sendall(b"GET / HTTP/1.0\r\nHost: payment-service\r\n\r\n")
print("served reply", s.makefile("rb").readline().decode().split()[1])
s.close()
s = nb()
print("closed first", name(s.connect_ex(("10.96.0.50", 8081))))
select.select([], [s], [], 20)
print("closed SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
print("closed SO_ERROR again", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
"#;

/// Issue 12, point 1: the asynchronous connect keeps the kernel's observable semantics.
#[test]
fn nonblocking_connects_behave_as_in_the_pod() {
    let c = Cluster::start().unwrap();
    drop_syns(&c);
    let pod = ok(run(in_pod(&c, PY, &["-c", NONBLOCKING_SEMANTICS])));
    let dev = ok(run(mirrord(&c, PY, &["-c", NONBLOCKING_SEMANTICS])));
    assert!(pod.contains("served reply 200"), "{pod}");
    assert_eq!(dev, pod);
}

/// Waves of 63 lookups while one lookup hangs (its queries are dropped on the way to the
/// cluster's nameserver). Prints each wave's slowest lookup and whether the hanging one was
/// still in flight when the wave ended.
const CONCURRENT_LOOKUPS: &str = r#"
import socket, threading, time
hang_done = threading.Event()
def hang():
    try:
        socket.getaddrinfo("hangme", 80)
    except OSError:
        pass
    hang_done.set()
threading.Thread(target=hang, daemon=True).start()
for wave in range(5):
    times = []
    def one():
        t = time.monotonic()
        socket.getaddrinfo("payment-service", 8080)
        times.append(time.monotonic() - t)
    threads = [threading.Thread(target=one) for _ in range(63)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times) == 63, times
    print(f"wave {max(times):.3f} {'hanging' if not hang_done.is_set() else 'done'}", flush=True)
"#;

/// (slowest lookup of each wave, hanging lookup still in flight after each wave)
fn waves(out: &str) -> Vec<(f64, bool)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("wave "))
        .map(|l| {
            let (t, state) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), state == "hanging")
        })
        .collect()
}

/// Issue 12, point 2: control requests of different threads run concurrently: with one lookup
/// hanging, 63 others finish in about the time they take in the pod.
#[test]
fn lookups_of_other_threads_finish_while_one_hangs() {
    let c = Cluster::start().unwrap();
    // Every query for a name with the label `hangme` is dropped before the nameserver.
    run_ok(c.cmd(c.ns_dns(), "iptables").args([
        "-I", "INPUT", "-p", "udp", "--dport", "53", "-m", "string", "--algo", "bm", "--string",
        "hangme", "-j", "DROP",
    ]))
    .unwrap();
    let pod = waves(&ok(run(in_pod(&c, PY, &["-c", CONCURRENT_LOOKUPS]))));
    let dev = waves(&ok(run(mirrord(&c, PY, &["-c", CONCURRENT_LOOKUPS]))));
    assert_eq!(pod.len(), 5, "{pod:?}");
    assert_eq!(dev.len(), 5, "{dev:?}");
    // The waves really overlapped the hanging lookup.
    assert!(
        dev.iter().all(|w| w.1),
        "the hanging lookup ended early: {dev:?}"
    );
    let pod_slowest = pod.iter().map(|w| w.0).fold(0.0, f64::max);
    for (slowest, _) in &dev {
        assert!(
            *slowest <= pod_slowest + 1.0,
            "a wave's slowest lookup took {slowest:.3} s under mirrord, {pod_slowest:.3} s in \
             the pod: {dev:?}"
        );
    }
}

/// Issue 12, point 3: with debug logging on and stderr a pipe nobody reads any more (SIGPIPE
/// ignored, as Python does), a program making one HTTP request finishes normally, and errno
/// is what it was after hooked calls that succeed.
#[test]
fn debug_logging_to_a_broken_stderr_never_fails_the_program() {
    let c = Cluster::start().unwrap();
    let code = r#"
import os, signal, urllib.request
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
r, w = os.pipe()
os.close(r)
os.dup2(w, 2)
os.close(w)
with urllib.request.urlopen("http://payment-service:8080/", timeout=20) as resp:
    print("status", resp.status, resp.read().decode().strip(), flush=True)
# errno survives hooked calls that succeed, diagnostics (failing with EPIPE) included.
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
s = socket.create_connection(("payment-service", 8080), timeout=20)
addr, alen = ctypes.create_string_buffer(128), ctypes.c_uint32(128)
ctypes.set_errno(77)
r = libc.getpeername(s.fileno(), addr, ctypes.byref(alen))
print("getpeername", r, ctypes.get_errno(), flush=True)
res = ctypes.c_void_p()
ctypes.set_errno(77)
r = libc.getaddrinfo(b"payment-service", b"8080", None, ctypes.byref(res))
print("getaddrinfo", r, ctypes.get_errno(), flush=True)
ctypes.set_errno(77)
libc.freeaddrinfo(res)
print("freeaddrinfo", ctypes.get_errno(), flush=True)
"#;
    let mut cmd = mirrord(&c, PY, &["-c", code]);
    cmd.env("MIRRORD_LAYER_LOG", "debug");
    assert_eq!(
        ok(run(cmd)),
        "status 200 payment-service: hello\n\
         getpeername 0 77\n\
         getaddrinfo 0 77\n\
         freeaddrinfo 77\n"
    );
}

/// Threads making lookups and requests all the time; the main thread forks 200 times, and each
/// child (a worker of a pre-fork server) makes requests from two threads of its own. A child
/// that does not finish within 20 s counts as a deadlock.
const FORK_UNDER_LOAD: &str = r#"
import os, socket, sys, threading, time, urllib.request
URL = "http://payment-service:8080/"
def fetch():
    socket.getaddrinfo("payment-service", 8080)
    with urllib.request.urlopen(URL, timeout=10) as r:
        return r.read().decode().strip() == "payment-service: hello"
stop = threading.Event()
counts, errors = [0] * 4, []
def busy(i):
    while not stop.is_set():
        try:
            if fetch():
                counts[i] += 1
        except Exception as e:
            errors.append(repr(e))
# Python's own import locks are not reset in a fork child: every module the children use is
# imported before any thread runs, and every thread is busy before the first fork.
assert fetch()
for i in range(4):
    threading.Thread(target=busy, args=(i,), daemon=True).start()
t_end = time.monotonic() + 20
while min(counts) < 1 and time.monotonic() < t_end:
    time.sleep(0.01)
failures = 0
for it in range(200):
    pid = os.fork()
    if pid == 0:
        results = []
        def work():
            try:
                results.append(fetch())
            except Exception:
                results.append(False)
        ts = [threading.Thread(target=work) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        os._exit(0 if results == [True, True] else 1)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child deadlocked at iteration", it, flush=True)
            sys.exit(3)
        time.sleep(0.01)
    if status != 0:
        failures += 1
before = list(counts)
# The parent's threads still work after all the forks.
t_end = time.monotonic() + 20
while min(c - b for c, b in zip(counts, before)) < 1 and time.monotonic() < t_end:
    time.sleep(0.01)
stop.set()
progress = min(c - b for c, b in zip(counts, before))
print(f"forks 200 child_failures {failures} errors {len(errors)} progress_after {progress > 0}", flush=True)
"#;

/// Issue 12, point 4: `fork` while other threads are mid-request: parent and children keep
/// working, 200 iterations, no deadlock (bounded: a stuck child or parent fails the test).
#[test]
fn fork_while_threads_are_mid_request_never_deadlocks() {
    let c = Cluster::start().unwrap();
    let mut cmd = mirrord(&c, PY, &["-W", "ignore", "-c", FORK_UNDER_LOAD]);
    // Logging on: the layer's diagnostics are one more thing a fork could catch mid-way.
    cmd.env("MIRRORD_LAYER_LOG", "debug");
    let out = ok(run(cmd));
    assert_eq!(
        out,
        "forks 200 child_failures 0 errors 0 progress_after True\n"
    );
}

/// Lists each thread's name and whether it blocks SIGINT and SIGTERM, after the layer has
/// started its threads (a lookup starts the control channel's reader, a non-blocking connect
/// to the cluster the connect watcher).
const THREAD_SIGNALS: &str = r#"
import os, select, socket
socket.getaddrinfo("payment-service", 8080)
s = socket.socket()
s.setblocking(False)
s.connect_ex(("10.96.0.50", 8080))
select.select([], [s], [], 5)
for t in sorted(os.listdir("/proc/self/task")):
    name = open(f"/proc/self/task/{t}/comm").read().strip()
    blk = next(l for l in open(f"/proc/self/task/{t}/status") if l.startswith("SigBlk:"))
    mask = int(blk.split()[1], 16)
    print(name, "INT" if mask & (1 << 1) else "-", "TERM" if mask & (1 << 14) else "-")
"#;

/// A Ctrl-C reaches the program's own threads: the layer's threads block every signal. (A
/// process-directed signal goes to any thread that does not block it; taken by a layer thread,
/// it interrupted nothing: Python under `mirrord exec` slept on in `time.sleep` after Ctrl-C.)
#[test]
fn the_layers_threads_leave_signals_to_the_program() {
    let c = Cluster::start().unwrap();
    let out = ok(run(mirrord(&c, PY, &["-c", THREAD_SIGNALS])));
    let layer: Vec<&str> = out.lines().filter(|l| l.starts_with("mirrord-")).collect();
    assert!(
        layer.iter().any(|l| l.starts_with("mirrord-control")),
        "the layer's control reader runs: {out}"
    );
    for line in &layer {
        assert!(
            line.ends_with("INT TERM"),
            "a layer thread takes signals: {out}"
        );
    }
    let main = out.lines().next().unwrap_or_default();
    assert!(
        main.ends_with("- -"),
        "the program's main thread blocks nothing: {out}"
    );
}
