//! mirrord-agent: runs in the target's network namespace and does there what the developer's
//! program asks for: outgoing TCP/UDP connections and name lookups with the target's resolver
//! configuration.
//!
//! Start-up order matters: the namespace is entered on the main thread *before* the tokio runtime
//! starts, so every runtime thread (threads inherit the creating thread's network namespace)
//! and every socket the agent opens lives in the target's namespace.

mod dns;
mod env;
mod home;
mod incoming;
mod listener;
mod mesh;
mod outgoing;
mod target;
mod traffic;

/// Port redirects and their guard live in the library (`src/lib.rs`), so tests and the
/// `redirect-probe` tool share them; `crate::redirect` resolves through this import.
use mirrord_agent::redirect;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

/// Environment variable the server passes the session token in (never on the command line, where
/// `ps` would show it).
pub const TOKEN_ENV: &str = "MIRRORD_AGENT_TOKEN";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "mirrord agent: serves one session from inside the target's network namespace"
)]
struct Args {
    /// The target: `pid/PID`, `netns/NAME` or `targetless` (no namespace change; incoming
    /// traffic refused).
    #[arg(long, required_unless_present_any = ["container_id", "ephemeral"])]
    target: Option<String>,
    /// The target is the container with this id (`containerd://ID`, `cri-o://ID`,
    /// `docker://ID`): the agent finds its process through /proc/*/cgroup (it needs the host's
    /// PID namespace) and enters that process's network namespace.
    #[arg(long, conflicts_with = "target")]
    container_id: Option<String>,
    /// The agent already runs in the target's network namespace (an ephemeral container of the
    /// target pod): no namespace change. With --container-id, that container's process still
    /// provides the resolver files.
    #[arg(long, conflicts_with = "target")]
    ephemeral: bool,
    /// Where to listen: `unix:/path/to/agent.sock`, or `tcp:127.0.0.1:PORT` (bound on the
    /// loopback of the namespace the agent starts in, its own pod's, before it enters the
    /// target's; a port-forward reaches it there).
    #[arg(long)]
    listen: String,
    /// Exit once no session has been connected for this many seconds (a Kubernetes agent's
    /// way to notice that its session is gone: it cannot tell an ended session from a dropped
    /// connection).
    #[arg(long, value_name = "SECS")]
    communication_timeout: Option<u64>,
    /// Also listen for programs' TCP flows on the loopback of the namespace the agent starts in
    /// (the developer's machine), so their bytes take one relay (the agent) instead of two.
    #[arg(long)]
    data_listen: bool,
    /// Exit when standard input closes (the server holds the other end, so the agent never
    /// outlives it).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("mirrord-agent: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    mirrord_agent::init_logging();
    mirrord_agent::raise_open_files();

    let token = std::env::var(TOKEN_ENV).with_context(|| format!("{TOKEN_ENV} is not set"))?;
    if token.len() < 16 {
        bail!("{TOKEN_ENV} is too short to be a session token");
    }
    // SAFETY-free alternative does not exist in std; we are still single-threaded here, which is
    // what makes removing a variable sound.
    std::env::remove_var(TOKEN_ENV);

    let agent_id = random_id()?;
    let target = match (&args.target, &args.container_id, args.ephemeral) {
        (_, id, true) => target::Target::in_place(id.as_deref()),
        (_, Some(id), false) => target::Target::container(id)?,
        (Some(spec), None, false) => target::Target::open(spec)?,
        // clap requires one of the three.
        (None, None, false) => bail!("give --target, --container-id or --ephemeral"),
    };
    let resolver_files = target.resolver_files()?;

    let listen = Listen::parse(&args.listen)?;
    let std_listener = match &listen {
        Listen::Unix(path) => StdListener::Unix(listener::bind_private(path)?),
        Listen::Tcp(addr) => StdListener::Tcp({
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the agent's port {addr}"))?;
            l.set_nonblocking(true)?;
            listener::widen_backlog(&l);
            l
        }),
    };
    // Sockets keep the namespace they were made in: bound now, these stay on the developer
    // machine's loopback after the agent moves into the target.
    let data_listeners = if args.data_listen {
        bind_data_listeners()?
    } else {
        Vec::new()
    };
    // A local agent also delivers stolen connections to programs on this machine itself.
    let home_namespace = if args.data_listen {
        Some(home::HomeNamespace::current()?)
    } else {
        None
    };

    target
        .enter()
        .context("entering the target's network namespace")?;
    // Forks the guard that removes this agent's redirect rules when it dies (even by SIGKILL):
    // it must happen here, in the target's namespace and before any thread exists.
    let _redirect_guard =
        redirect::spawn_guard(&agent_id).context("starting the redirect guard")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let home_sockets = home_namespace.and_then(|home| match home::HomeSockets::start(home) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("stolen connections will go through the session: {e:#}");
            None
        }
    });
    runtime.block_on(async move {
        let resolver = dns::PodResolver::new(&resolver_files)?;
        let incoming =
            incoming::IncomingState::new(agent_id.clone(), target.process_pid(), home_sockets);
        incoming.sweep_dead_agents().await;
        let state = std::sync::Arc::new(listener::AgentState {
            token,
            resolver,
            nameserver: resolver_files.first_nameserver(),
            incoming: incoming.clone(),
            next_client: std::sync::atomic::AtomicU64::new(1),
            event_sinks: Default::default(),
            targetless: target.is_targetless(),
            sessions: tokio::sync::watch::Sender::new(0),
            control_epoch: tokio::sync::watch::Sender::new(0),
            shutdown: tokio::sync::Notify::new(),
            target_pid: target.process_pid(),
            resolver_files: (
                resolver_files.resolv_conf.clone(),
                resolver_files.hosts.clone(),
            ),
        });
        let mut data_addrs = Vec::new();
        for l in data_listeners {
            data_addrs.push(l.local_addr()?.to_string());
            tokio::spawn(listener::serve_data(
                tokio::net::TcpListener::from_std(l)?,
                state.clone(),
            ));
        }
        let listener = match std_listener {
            StdListener::Unix(l) => {
                listener::AgentListener::Unix(tokio::net::UnixListener::from_std(l)?)
            }
            StdListener::Tcp(l) => {
                listener::AgentListener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
        };
        // Readiness signal the server waits for: one line on stdout.
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "mirrord-agent ready pid={} data={}",
                std::process::id(),
                data_addrs.join(",")
            )?;
            out.flush()?;
        }
        let abandoned = {
            let state = state.clone();
            async move {
                match args.communication_timeout {
                    Some(secs) => {
                        listener::no_session_for(state, std::time::Duration::from_secs(secs)).await
                    }
                    None => std::future::pending().await,
                }
            }
        };
        let shutdown_state = state.clone();
        let ended = async move { shutdown_state.shutdown.notified().await };
        let serve = listener::serve(listener, state);
        let stdin_closed = async {
            if args.exit_on_stdin_eof {
                wait_stdin_eof().await
            } else {
                std::future::pending().await
            }
        };
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let result = tokio::select! {
            r = serve => r,
            _ = stdin_closed => {
                tracing::info!("server went away (stdin closed), exiting");
                Ok(())
            }
            _ = ended => Ok(()),
            _ = abandoned => {
                tracing::info!("no session for the communication timeout, exiting");
                Ok(())
            }
            _ = sigterm.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        // On a clean exit the agent removes its rules itself; the guard covers every other exit.
        incoming.cleanup();
        result
    })?;
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `--listen`: where sessions reach the agent.
enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

enum StdListener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

impl Listen {
    fn parse(spec: &str) -> Result<Listen> {
        if let Some(p) = spec.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if let Some(a) = spec.strip_prefix("tcp:") {
            let addr: std::net::SocketAddr = a.parse().with_context(|| {
                format!("--listen tcp:{a}: not an address such as 127.0.0.1:PORT")
            })?;
            // Invariant: only a port-forward (which lands on the pod's loopback) may reach the
            // agent; other pods must not.
            if !addr.ip().is_loopback() {
                bail!("--listen tcp:{addr}: the agent listens on loopback only");
            }
            return Ok(Listen::Tcp(addr));
        }
        bail!("--listen must be unix:PATH or tcp:127.0.0.1:PORT, got {spec:?}")
    }
}

/// Loopback TCP listeners (IPv4, and IPv6 where the namespace has it) for the direct data path.
fn bind_data_listeners() -> Result<Vec<std::net::TcpListener>> {
    let mut listeners =
        vec![std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding the data listener")?];
    if let Ok(v6) = std::net::TcpListener::bind(("::1", 0)) {
        listeners.push(v6);
    }
    for l in &listeners {
        l.set_nonblocking(true)?;
        listener::widen_backlog(l);
    }
    Ok(listeners)
}

/// 8 random hex digits naming this agent's redirect chains, so several agents can share a
/// namespace and each removes only its own.
fn random_id() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

async fn wait_stdin_eof() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Listen;

    #[test]
    fn listen_takes_a_unix_path_or_a_loopback_port_only() {
        assert!(
            matches!(Listen::parse("unix:/run/a.sock"), Ok(Listen::Unix(p)) if p.ends_with("a.sock"))
        );
        assert!(
            matches!(Listen::parse("tcp:127.0.0.1:23456"), Ok(Listen::Tcp(a)) if a.port() == 23456)
        );
        assert!(matches!(Listen::parse("tcp:[::1]:9"), Ok(Listen::Tcp(_))));
        for bad in [
            "tcp:0.0.0.0:1",
            "tcp:10.244.0.5:1",
            "tcp:localhost:1",
            "udp:127.0.0.1:1",
            "/x",
        ] {
            assert!(Listen::parse(bad).is_err(), "{bad}");
        }
    }
}
