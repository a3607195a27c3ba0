//! mirrord-agent: runs in the target's network namespace and does there what the developer's
//! program asks for: outgoing TCP/UDP connections and name lookups with the target's resolver
//! configuration.
//!
//! Start-up order matters: the namespace is entered on the main thread *before* the tokio runtime
//! starts, so every runtime thread (threads inherit the creating thread's network namespace)
//! and every socket the agent opens lives in the target's namespace.

mod dns;
mod incoming;
mod listener;
mod mesh;
mod outgoing;
mod target;

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
    /// The target: `pid/PID` or `netns/NAME`.
    #[arg(long)]
    target: String,
    /// Where to listen: `unix:/path/to/agent.sock`.
    #[arg(long)]
    listen: String,
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

    let token = std::env::var(TOKEN_ENV).with_context(|| format!("{TOKEN_ENV} is not set"))?;
    if token.len() < 16 {
        bail!("{TOKEN_ENV} is too short to be a session token");
    }
    // SAFETY-free alternative does not exist in std; we are still single-threaded here, which is
    // what makes removing a variable sound.
    std::env::remove_var(TOKEN_ENV);

    let agent_id = random_id()?;
    let target = target::Target::open(&args.target)?;
    let resolver_files = target.resolver_files()?;

    let socket_path: PathBuf = match args.listen.strip_prefix("unix:") {
        Some(p) => PathBuf::from(p),
        None => bail!("--listen must be unix:PATH, got {:?}", args.listen),
    };
    let std_listener = listener::bind_private(&socket_path)?;
    // Sockets keep the namespace they were made in: bound now, these stay on the developer
    // machine's loopback after the agent moves into the target.
    let data_listeners = if args.data_listen {
        bind_data_listeners()?
    } else {
        Vec::new()
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
    runtime.block_on(async move {
        let resolver = dns::PodResolver::new(&resolver_files)?;
        let incoming = incoming::IncomingState::new(agent_id.clone());
        incoming.sweep_dead_agents().await;
        let state = std::sync::Arc::new(listener::AgentState {
            token,
            resolver,
            nameserver: resolver_files.first_nameserver(),
            incoming: incoming.clone(),
            next_client: std::sync::atomic::AtomicU64::new(1),
            event_sinks: Default::default(),
        });
        let mut data_addrs = Vec::new();
        for l in data_listeners {
            data_addrs.push(l.local_addr()?.to_string());
            tokio::spawn(listener::serve_data(
                tokio::net::TcpListener::from_std(l)?,
                state.clone(),
            ));
        }
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
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
            _ = sigterm.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        // On a clean exit the agent removes its rules itself; the guard covers every other exit.
        incoming.cleanup();
        result
    })?;
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
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
