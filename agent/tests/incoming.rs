//! The agent's incoming side in real network namespaces (needs root, `ip`, `iptables`, `ss`,
//! `flock`): the real `mirrord-agent` binary, driven over its unix socket with the protocol's
//! own frames, its rules read with `iptables-save` inside the namespace.
//!
//! - concurrent subscribes and unsubscribes of one port leave exactly the expected rules;
//! - rule changes waiting for the xtables lock do not stall the agent's data path;
//! - a new agent removes the rules of agents that are gone (guard included), never a live
//!   agent's, and the pod serves again once the new agent is ready.
//!
//! Every test makes its own namespaces (`mrdi-<pid>-<n>`), deleted on drop; namespaces are
//! joined only to each other (a veth pair, no default route), so no packet leaves them.

mod common;

use mirrord_protocol::agent::{
    AgentChannel, AgentHello, AgentMessage, AgentRequest, AgentResponse, AgentWelcome,
    ControlRequest, TrafficMode,
};
use mirrord_protocol::codec::{read_frame, write_frame};
use mirrord_protocol::net::ConnectReply;
use mirrord_protocol::PROTOCOL_VERSION;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_mirrord-agent");
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const POD: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 1);
/// Bound on every wait for the agent (its answers, its ready line).
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- environment

fn have(program: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
}

/// Root with the tools, or the test is skipped (with a note).
fn can_run(test: &str, tools: &[&str]) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let missing: Vec<&&str> = tools.iter().filter(|t| !have(t)).collect();
    if !root || !missing.is_empty() {
        eprintln!("skipping {test}: needs root and {missing:?} (apt-get install -y iptables)");
        return false;
    }
    true
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace of this test (and a scratch dir), deleted on drop.
struct Netns {
    name: String,
    dir: PathBuf,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        common::sweep_dead_namespaces("mrdi-");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("mrdi-{}-{n}{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let ns = Netns { name, dir };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.name, program];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `-A MIRRORD_<id> ... --dport P ... --to-ports T` rules: (id, P, T), as `tool`-save shows.
    fn redirects(&self, tool: &str) -> Vec<(String, u16, u16)> {
        self.exec(&format!("{tool}-save"), &["-t", "nat"])
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let id = w.get(1)?.strip_prefix("MIRRORD_")?;
                (w.first() == Some(&"-A")).then_some(())?;
                let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1));
                Some((
                    id.to_owned(),
                    after("--dport")?.parse().ok()?,
                    after("--to-ports")?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Ids of the agents with a chain in the nat table.
    fn chains(&self, tool: &str) -> BTreeSet<String> {
        self.exec(&format!("{tool}-save"), &["-t", "nat"])
            .lines()
            .filter_map(|l| l.strip_prefix(":MIRRORD_"))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// TCP ports something listens on in the namespace.
    fn listening(&self) -> BTreeSet<u16> {
        self.exec("ss", &["-Htln"])
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(3)?
                    .rsplit_once(':')?
                    .1
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            // The agents' stderr stays for the post-mortem.
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A "pod" and a "client" namespace joined by a veth pair.
fn pair() -> (Netns, Netns) {
    let pod = Netns::new("p");
    let client = Netns::new("c");
    pod.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        &client.name,
    ]);
    pod.ip(&["addr", "add", "10.214.0.1/24", "dev", "veth0"]);
    client.ip(&["addr", "add", "10.214.0.2/24", "dev", "veth1"]);
    pod.ip(&["link", "set", "veth0", "up"]);
    client.ip(&["link", "set", "veth1", "up"]);
    (pod, client)
}

/// Runs `f` on a thread that entered `ns`: its sockets are that namespace's.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// A TCP server in a namespace: answers every connection with `reply` (or echoes, for
/// `None`) until dropped.
struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(ns: &Netns, addr: SocketAddr, reply: Option<&str>) -> Server {
        let listener = in_netns(&ns.name, || TcpListener::bind(addr)).expect("binding");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reply = reply.map(|r| format!("{r}\n"));
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let reply = reply.clone();
                        std::thread::spawn(move || match reply {
                            Some(r) => {
                                let _ = s.write_all(r.as_bytes());
                            }
                            None => {
                                let _ = s.set_read_timeout(Some(WAIT));
                                let mut buf = [0u8; 1024];
                                while let Ok(n) = s.read(&mut buf) {
                                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a server in the pod said to a client in `client` connecting to `addr`.
fn fetch(client: &Netns, addr: SocketAddr) -> Result<String, String> {
    in_netns(&client.name, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(text.trim().to_owned())
    })
}

// ---------------------------------------------------------------- the agent

/// A running agent for `netns/<ns>`; killed on drop.
struct Agent {
    child: Child,
    _lifeline: ChildStdin,
    socket: PathBuf,
}

impl Agent {
    fn start(ns: &Netns, name: &str, env: &[(&str, &str)]) -> Agent {
        let socket = ns.dir.join(format!("{name}.sock"));
        let mut cmd = Command::new(AGENT);
        cmd.args(["--target", &format!("netns/{}", ns.name)])
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--exit-on-stdin-eof")
            .env("MIRRORD_AGENT_TOKEN", TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(ns.dir.join(format!("{name}.stderr"))).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lifeline = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the agent never blocks on a full pipe.
            for _ in lines {}
        });
        let ready = rx.recv_timeout(WAIT).expect("the agent's ready line");
        let line = ready.and_then(|r| r.ok()).unwrap_or_default();
        assert!(
            line.contains("ready"),
            "agent {name} did not start: {line:?} {}",
            std::fs::read_to_string(ns.dir.join(format!("{name}.stderr"))).unwrap_or_default()
        );
        Agent {
            child,
            _lifeline: lifeline,
            socket,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn channel(&self, channel: AgentChannel) -> UnixStream {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write_frame(
            &mut s,
            &AgentHello {
                version: PROTOCOL_VERSION,
                token: TOKEN.into(),
                channel,
            },
        )
        .unwrap();
        match read_frame::<AgentWelcome, _>(&mut s).unwrap() {
            AgentWelcome::Welcome { .. } => s,
            AgentWelcome::Refused { reason } => panic!("refused: {reason}"),
        }
    }

    fn control(&self) -> Control {
        Control {
            stream: self.channel(AgentChannel::Control),
            next: 1,
            early: Default::default(),
        }
    }

    /// The agent's guard (its child named mirrord-guard).
    fn guard(&self) -> Option<u32> {
        let pid = self.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .find(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|n| n.trim() == "mirrord-guard")
            })
    }

    /// Whether the agent runs an iptables command right now (a child process of that name).
    fn runs_iptables(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .any(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|n| n.trim().starts_with("iptables"))
            })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One control channel: requests with ids, answers matched by id (events skipped).
struct Control {
    stream: UnixStream,
    next: u64,
    /// Answers that came before they were asked for.
    early: std::collections::HashMap<u64, AgentResponse>,
}

impl Control {
    fn send(&mut self, body: AgentRequest) -> u64 {
        let id = self.next;
        self.next += 1;
        write_frame(&mut self.stream, &ControlRequest { id, body }).unwrap();
        id
    }

    /// The answer to request `id` (answers come in completion order; others are kept).
    fn answer(&mut self, id: u64) -> AgentResponse {
        loop {
            if let Some(body) = self.early.remove(&id) {
                return body;
            }
            match read_frame::<AgentMessage, _>(&mut self.stream) {
                Ok(AgentMessage::Response { id: got, body }) => {
                    self.early.insert(got, body);
                }
                Ok(AgentMessage::Event(_)) => continue,
                Err(e) => panic!("no answer to request {id}: {e}"),
            }
        }
    }

    fn request(&mut self, body: AgentRequest) -> AgentResponse {
        let id = self.send(body);
        self.answer(id)
    }

    fn subscribe(&mut self, port: u16) {
        let r = self.request(AgentRequest::Subscribe {
            port,
            mode: TrafficMode::Mirror,
            filter: None,
            tls: None,
            // These tests are about the redirect rules: the relay mode.
            capture: false,
        });
        assert_eq!(r, AgentResponse::Subscribed);
    }

    fn unsubscribe(&mut self, port: u16) {
        assert_eq!(
            self.request(AgentRequest::Unsubscribe { port }),
            AgentResponse::Unsubscribed
        );
    }
}

/// Runs `a` and `b` at the same instant on two threads.
fn at_once(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            a()
        });
        start.wait();
        b();
    });
}

// ---------------------------------------------------------------- tests

#[test]
fn concurrent_subscribes_and_unsubscribes_of_one_port_leave_exactly_the_expected_rules() {
    if !can_run("concurrent_subscribes", &["ip", "iptables-nft", "ss"]) {
        return;
    }
    const PORT: u16 = 80;
    let ns = Netns::new("race");
    let agent = Agent::start(
        &ns,
        "agent",
        &[("MIRRORD_AGENT_REDIRECT_BACKEND", "iptables-nft")],
    );
    let mut a = agent.control();
    let mut b = agent.control();
    // Exactly `n` rules for the port, each pointing at a port the agent listens on.
    let expect = |n: usize, round: usize, what: &str| {
        let rules: Vec<_> = ns
            .redirects("iptables-nft")
            .into_iter()
            .filter(|r| r.1 == PORT)
            .collect();
        assert_eq!(rules.len(), n, "round {round}, {what}: {rules:?}");
        let listening = ns.listening();
        for (_, _, to) in &rules {
            assert!(
                listening.contains(to),
                "round {round}, {what}: the rule points at {to}, where nothing listens \
                 ({listening:?})"
            );
        }
    };
    for round in 0..100 {
        at_once(|| a.subscribe(PORT), || b.subscribe(PORT));
        expect(1, round, "after two subscribes");
        at_once(|| a.unsubscribe(PORT), || b.unsubscribe(PORT));
        expect(0, round, "after two unsubscribes");
        a.subscribe(PORT);
        at_once(|| a.unsubscribe(PORT), || b.subscribe(PORT));
        expect(1, round, "after an unsubscribe and a subscribe");
        b.unsubscribe(PORT);
        expect(0, round, "after the last unsubscribe");
    }
}

#[test]
fn rule_changes_waiting_for_the_xtables_lock_do_not_stall_the_data_path() {
    if !can_run("xtables_lock", &["ip", "iptables-legacy", "flock"]) {
        return;
    }
    let ns = Netns::new("lock");
    // A lock file of this test's own, so the 5 s hold stalls nobody else's iptables.
    let lock = ns.dir.join("xtables.lock");
    std::fs::write(&lock, b"").unwrap();
    let lock_s = lock.display().to_string();
    let agent = Agent::start(
        &ns,
        "agent",
        &[
            ("MIRRORD_AGENT_REDIRECT_BACKEND", "iptables-legacy"),
            ("XTABLES_LOCKFILE", &lock_s),
        ],
    );
    let echo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let _echo = Server::start(&ns, echo, None);
    let mut control = agent.control();
    // The chain exists before the lock is taken; what follows are plain rule changes.
    control.subscribe(80);

    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "5"])
        .spawn()
        .unwrap();
    let held = poll_until(Duration::from_secs(5), || {
        Command::new("flock")
            .args(["-n", "-E", "75"])
            .arg(&lock)
            .arg("true")
            .status()
            .is_ok_and(|s| s.code() == Some(75))
    });
    assert!(held, "flock did not take the lock");
    // More rule changes than the agent has async workers, all waiting for the lock.
    let ids: Vec<u64> = (81..=84)
        .map(|port| {
            control.send(AgentRequest::Subscribe {
                port,
                mode: TrafficMode::Mirror,
                filter: None,
                tls: None,
                // These tests are about the redirect rules: the relay mode.
                capture: false,
            })
        })
        .collect();
    assert!(
        poll_until(Duration::from_secs(5), || agent.runs_iptables()),
        "the agent never ran iptables for the new subscriptions"
    );
    // A client that subscribes and goes away while its subscribe waits: nothing of it may stay.
    let mut doomed = agent.control();
    doomed.send(AgentRequest::Subscribe {
        port: 85,
        mode: TrafficMode::Mirror,
        filter: None,
        tls: None,
        // These tests are about the redirect rules: the relay mode.
        capture: false,
    });
    drop(doomed);

    // The data path and the control path still work while those wait.
    let mut other = agent.control();
    assert_eq!(other.request(AgentRequest::Ping), AgentResponse::Pong);
    let mut tcp = agent.channel(AgentChannel::Tcp { remote: echo });
    match read_frame::<ConnectReply, _>(&mut tcp).unwrap() {
        ConnectReply::Connected { .. } => {}
        other => panic!("connect through the agent failed: {other:?}"),
    }
    tcp.write_all(b"still flowing\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut tcp).read_line(&mut line).unwrap();
    assert_eq!(line, "still flowing\n");
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the data path only moved after the xtables lock was released"
    );

    holder.wait().unwrap();
    for id in ids {
        // Subscribed, or an error naming the lock: either way an answer, not a hang.
        let answer = control.answer(id);
        assert!(
            matches!(answer, AgentResponse::Subscribed | AgentResponse::Error(_)),
            "{answer:?}"
        );
    }
    // Changes run one at a time, in order: once this one is through, so is the gone client's.
    control.subscribe(86);
    let left: Vec<_> = ns
        .redirects("iptables-legacy")
        .into_iter()
        .filter(|r| r.1 == 85)
        .collect();
    assert!(
        left.is_empty(),
        "the gone client's port stayed redirected: {left:?}"
    );
}

#[test]
fn a_new_agent_removes_the_rules_of_dead_agents_and_keeps_live_ones() {
    if !can_run("dead_agents", &["ip", "iptables-nft"]) {
        return;
    }
    let (pod, client) = pair();
    let env = [("MIRRORD_AGENT_REDIRECT_BACKEND", "iptables-nft")];
    let _web = Server::start(&pod, SocketAddr::from((POD, 80)), Some("pod"));
    let _other = Server::start(&pod, SocketAddr::from((POD, 81)), Some("pod81"));

    let mut dead = Agent::start(&pod, "dead", &env);
    // Held: a control channel's end releases its subscriptions.
    let mut dead_control = dead.control();
    dead_control.subscribe(80);
    let dead_id = pod
        .chains("iptables-nft")
        .into_iter()
        .next()
        .expect("chain");
    let live = Agent::start(&pod, "live", &env);
    let mut live_control = live.control();
    live_control.subscribe(81);
    let live_id = pod
        .chains("iptables-nft")
        .into_iter()
        .find(|id| *id != dead_id)
        .expect("the live agent's chain");
    assert_eq!(fetch(&client, SocketAddr::from((POD, 80))).unwrap(), "pod");

    // A container kill: the agent and its guard die together.
    let guard = dead.guard().expect("the agent's guard");
    // SAFETY: kill(2) of pids this test started (the guard is the agent's child).
    unsafe {
        libc::kill(guard as i32, libc::SIGKILL);
        libc::kill(dead.pid() as i32, libc::SIGKILL);
    }
    dead.child.wait().unwrap();
    assert!(poll_until(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{guard}"
    ))
    .exists()
        || std::fs::read_to_string(format!("/proc/{guard}/stat"))
            .is_ok_and(|s| s.contains(") Z "))));
    assert!(
        pod.chains("iptables-nft").contains(&dead_id),
        "nobody should have removed the dead agent's rules yet"
    );
    let answer = fetch(&client, SocketAddr::from((POD, 80)));
    assert!(
        answer.is_err(),
        "the port should be dead while the dead agent's redirect stays: {answer:?} {:?} {:?} {}",
        pod.redirects("iptables-nft"),
        pod.listening(),
        pod.exec("iptables-nft-save", &["-t", "nat"])
    );

    let _new = Agent::start(&pod, "new", &env);
    // Ready means swept: no waiting beyond the agent's start.
    let chains = pod.chains("iptables-nft");
    assert!(
        !chains.contains(&dead_id),
        "dead agent's chain left: {chains:?}"
    );
    assert!(
        chains.contains(&live_id),
        "live agent's chain removed: {chains:?}"
    );
    assert_eq!(fetch(&client, SocketAddr::from((POD, 80))).unwrap(), "pod");
    // The live agent still redirects its port (and passes it through: mirror).
    assert!(pod
        .redirects("iptables-nft")
        .iter()
        .any(|(id, port, _)| *id == live_id && *port == 81));
    assert_eq!(
        fetch(&client, SocketAddr::from((POD, 81))).unwrap(),
        "pod81"
    );
    assert_eq!(
        live_control.request(AgentRequest::Ping),
        AgentResponse::Pong
    );
}

/// Issue 17: a session whose connection dropped resumes with `ResumeControl`. Its earlier
/// control channel may still look open to the agent (half-open behind a dead port-forward) and
/// hold a whole-port steal: the resume ends it and releases the port, so the session steals
/// again instead of being refused as "another session".
#[test]
fn a_resuming_control_channel_replaces_a_half_open_one_and_steals_again() {
    if !can_run("resume", &["ip", "iptables-nft", "ss"]) {
        return;
    }
    const PORT: u16 = 80;
    let ns = Netns::new("resume");
    let agent = Agent::start(
        &ns,
        "agent",
        &[("MIRRORD_AGENT_REDIRECT_BACKEND", "iptables-nft")],
    );
    let steal = AgentRequest::Subscribe {
        port: PORT,
        mode: TrafficMode::Steal,
        filter: None,
        tls: None,
        // These tests are about the redirect rules: the relay mode.
        capture: false,
    };
    let mut old = agent.control();
    assert_eq!(old.request(steal.clone()), AgentResponse::Subscribed);
    // Without the resume, a second channel is another session and is refused the port.
    let mut other = agent.control();
    assert!(
        matches!(other.request(steal.clone()), AgentResponse::Error(e) if e.contains("already stolen")),
        "a plain second control channel must not take a stolen port"
    );
    drop(other);

    let mut resumed = Control {
        stream: agent.channel(AgentChannel::ResumeControl),
        next: 1,
        early: Default::default(),
    };
    assert_eq!(resumed.request(steal), AgentResponse::Subscribed);
    // The replaced channel was ended by the agent.
    let ended = read_frame::<AgentMessage, _>(&mut old.stream);
    assert!(ended.is_err(), "the old channel still works: {ended:?}");
    let rules: Vec<_> = ns
        .redirects("iptables-nft")
        .into_iter()
        .filter(|r| r.1 == PORT)
        .collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(ns.listening().contains(&rules[0].2), "{rules:?}");
    assert_eq!(resumed.request(AgentRequest::Ping), AgentResponse::Pong);
}

/// A spare connection (opened ahead of need by a session behind a port-forward) is
/// authenticated at once, then waits past the hello deadline for the hello that names its
/// channel, and serves that channel like a fresh connection.
#[test]
fn a_spare_connection_waits_past_the_hello_deadline_then_serves_its_channel() {
    if !can_run("spare", &["ip"]) {
        return;
    }
    let ns = Netns::new("spare");
    let agent = Agent::start(&ns, "agent", &[]);
    let echo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let _echo = Server::start(&ns, echo, None);
    let hello = |s: &mut UnixStream, token: &str, channel: AgentChannel| {
        write_frame(
            s,
            &AgentHello {
                version: PROTOCOL_VERSION,
                token: token.into(),
                channel,
            },
        )
        .unwrap();
        read_frame::<AgentWelcome, _>(s).unwrap()
    };

    // The wrong token is refused before the connection may idle.
    let mut stranger = UnixStream::connect(&agent.socket).unwrap();
    stranger.set_read_timeout(Some(WAIT)).unwrap();
    let answer = hello(&mut stranger, &"f".repeat(TOKEN.len()), AgentChannel::Spare);
    assert!(
        matches!(&answer, AgentWelcome::Refused { reason } if reason.contains("token")),
        "{answer:?}"
    );

    let mut spare = agent.channel(AgentChannel::Spare);
    let mut spare2 = agent.channel(AgentChannel::Spare);
    // Longer than the agent's 5 s hello deadline: a spare is not held to it (this is the
    // property under test, not a wait for something to happen).
    std::thread::sleep(Duration::from_secs(6));
    let answer = hello(&mut spare, TOKEN, AgentChannel::Tcp { remote: echo });
    assert!(matches!(answer, AgentWelcome::Welcome { .. }), "{answer:?}");
    match read_frame::<ConnectReply, _>(&mut spare).unwrap() {
        ConnectReply::Connected { .. } => {}
        other => panic!("connect through a spare failed: {other:?}"),
    }
    spare.write_all(b"through a spare\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut spare).read_line(&mut line).unwrap();
    assert_eq!(line, "through a spare\n");

    // A spare cannot be made spare again (it would idle with no end).
    let answer = hello(&mut spare2, TOKEN, AgentChannel::Spare);
    assert!(
        matches!(&answer, AgentWelcome::Refused { reason } if reason.contains("spare")),
        "{answer:?}"
    );
}
