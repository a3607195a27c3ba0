//! `mirrord`: the command-line interface. It embeds the session engine, so no daemon is needed.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mirrord_protocol::config::{MirrordConfig, TargetPath};
use mirrord_server::session::SessionOptions;
use mirrord_server::{config_file, exec, paths};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mirrord",
    version,
    about = "Run a local program with the network of a target in the cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command with the target's network: outgoing connections and DNS through the target.
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Configuration file (default: $MIRRORD_CONFIG_FILE).
    #[arg(short = 'f', long = "config-file")]
    config_file: Option<PathBuf>,
    /// Target: pid/PID or netns/NAME (pod/..., deployment/... need a cluster connection).
    #[arg(short = 't', long)]
    target: Option<String>,
    /// Path of libmirrord_layer.so (default: $MIRRORD_LAYER_FILE, else next to this binary).
    #[arg(long)]
    layer: Option<PathBuf>,
    /// Path of mirrord-agent (default: $MIRRORD_AGENT_PATH, else next to this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRRORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mirrord: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Exec(args) => {
            let config_path = args
                .config_file
                .clone()
                .or_else(|| std::env::var_os("MIRRORD_CONFIG_FILE").map(PathBuf::from));
            let config = match &config_path {
                Some(p) => config_file::load(p)?,
                None => MirrordConfig::default(),
            };
            let target_spec = args
                .target
                .clone()
                .or_else(|| config.target.as_ref().and_then(|t| t.path.clone()))
                .context("no target: pass -t pid/PID or netns/NAME, or set \"target\" in the configuration")?;
            let target = TargetPath::parse(&target_spec).map_err(anyhow::Error::msg)?;
            let opts = SessionOptions {
                config,
                target,
                agent_bin: paths::agent_path(args.agent.as_deref())?,
                layer_path: paths::layer_path(args.layer.as_deref())?,
                runtime_dir: paths::runtime_dir()?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(exec::exec(opts, &args.command))
        }
    }
}
