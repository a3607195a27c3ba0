//! `mirrord-server`: the long-lived daemon IDE plugins talk to. `--stdio` speaks JSON-RPC with LSP
//! framing on stdin/stdout (the way an IDE starts a language server); `--listen 127.0.0.1:PORT`
//! serves the same methods over WebSocket. Logs go to a file, never to stdout (which is the
//! protocol).

use anyhow::{bail, Context, Result};
use clap::Parser;
use mirrord_server::daemon::{lsp, ws, Daemon, DaemonOptions};
use mirrord_server::paths;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mirrord-server",
    version,
    about = "mirrord's session daemon for IDEs (JSON-RPC over stdio or WebSocket)"
)]
struct Args {
    /// Serve JSON-RPC with LSP framing on stdin/stdout.
    #[arg(long)]
    stdio: bool,
    /// Serve JSON-RPC over WebSocket on this loopback address (e.g. 127.0.0.1:0).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Log file, or `-` for stderr (default: mirrord-server.log in the state directory).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Log level or tracing filter (default: $MIRRORD_LOG, $RUST_LOG, or info).
    #[arg(long)]
    log_level: Option<String>,
    /// Path of libmirrord_layer.so (default: $MIRRORD_LAYER_FILE, else next to this binary).
    #[arg(long)]
    layer: Option<PathBuf>,
    /// Path of mirrord-agent (default: $MIRRORD_AGENT_PATH, else next to this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// End a session after this many seconds without any process in it.
    #[arg(long, default_value_t = 1800)]
    idle_timeout_secs: u64,
}

fn log_path(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let dirs = directories::ProjectDirs::from("", "", "mirrord")
        .context("no home directory for the log")?;
    let dir = dirs
        .state_dir()
        .unwrap_or_else(|| dirs.data_local_dir())
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join("mirrord-server.log"))
}

fn main() {
    let args = Args::parse();
    mirrord_server::limits::raise_open_files();
    if let Err(e) = run(args) {
        eprintln!("mirrord-server: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if args.stdio == args.listen.is_some() {
        bail!("give exactly one of --stdio or --listen ADDR");
    }
    // `--log-file -` logs to stderr (which an IDE may hand over as a socket, not a file).
    let writer: Box<dyn std::io::Write + Send> =
        if args.log_file.as_deref() == Some(std::path::Path::new("-")) {
            Box::new(std::io::stderr())
        } else {
            let log = log_path(args.log_file.clone())?;
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .with_context(|| format!("opening the log {}", log.display()))?,
            )
        };
    let filter = args
        .log_level
        .clone()
        .or_else(|| std::env::var("MIRRORD_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::sync::Mutex::new(writer))
        .with_ansi(false)
        // A log line that cannot be written is dropped, never reported with `eprintln!`.
        .log_internal_errors(false)
        .init();
    tracing::info!(pid = std::process::id(), "mirrord-server starting");

    let opts = DaemonOptions {
        agent_bin: paths::agent_path(args.agent.as_deref())?,
        layer_path: paths::layer_path(args.layer.as_deref())?,
        runtime_dir: paths::runtime_dir()?,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let token_dir = opts.runtime_dir.clone();
        let daemon = Daemon::new(opts);
        if args.stdio {
            lsp::serve_stdio(daemon.clone()).await;
            daemon.stop_all().await;
            Ok(())
        } else {
            // Checked above: exactly one transport was asked for.
            let addr = args.listen.expect("--listen given");
            let (token, token_path) = ws::write_token(&token_dir)?;
            eprintln!("mirrord-server: token in {}", token_path.display());
            let result = ws::serve_ws(daemon.clone(), addr, token).await;
            daemon.stop_all().await;
            result
        }
    })
}
