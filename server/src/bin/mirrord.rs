//! `mirrord`: the command-line interface. It embeds the session engine, so no daemon is needed.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mirrord_protocol::config::{IncomingMode, MirrordConfig, TargetPath};
use mirrord_server::cli::port_forward::{LocalForward, RemoteForward};
use mirrord_server::cli::{dump, port_forward, progress::Step};
use mirrord_server::session::{Session, SessionOptions};
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

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// Configuration file (default: $MIRRORD_CONFIG_FILE).
    #[arg(short = 'f', long = "config-file")]
    config_file: Option<PathBuf>,
    /// Target: pod/NAME[/container/C], deployment/NAME[/container/C], statefulset/NAME,
    /// replicaset/NAME, job/NAME, cronjob/NAME, service/NAME, rollout/NAME or targetless (in
    /// the cluster of the kubeconfig); pid/PID or netns/NAME (on this machine).
    #[arg(short = 't', long)]
    target: Option<String>,
    /// Kubernetes namespace of the target (default: $MIRRORD_TARGET_NAMESPACE, the
    /// configuration's target.namespace, else the kube context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Path of libmirrord_layer.so (default: $MIRRORD_LAYER_FILE, else next to this binary).
    #[arg(long)]
    layer: Option<PathBuf>,
    /// Path of mirrord-agent (default: $MIRRORD_AGENT_PATH, else next to this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command with the target's network: outgoing connections, DNS and incoming traffic.
    Exec {
        #[command(flatten)]
        target: TargetArgs,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print the traffic arriving at the target's ports (the target keeps serving it).
    Dump {
        #[command(flatten)]
        target: TargetArgs,
        /// Port to watch (repeatable).
        #[arg(short = 'p', long = "port", required = true)]
        ports: Vec<u16>,
        /// One JSON object (a TrafficEvent) per line.
        #[arg(long)]
        json: bool,
    },
    /// Forward local ports to destinations reached from the target (-L), or the target's ports
    /// to local ports (-R).
    PortForward {
        #[command(flatten)]
        target: TargetArgs,
        /// [LPORT:]HOST:PORT[/udp]: local port to HOST:PORT as resolved and reached from the target.
        #[arg(short = 'L', value_name = "[LPORT:]HOST:PORT")]
        local: Vec<LocalForward>,
        /// [RPORT:]LPORT: the target's port RPORT to the local port LPORT.
        #[arg(short = 'R', value_name = "[RPORT:]LPORT")]
        remote: Vec<RemoteForward>,
        /// With -R: mirror the target's port instead of stealing it.
        #[arg(long)]
        mirror: bool,
    },
    /// List the targets: the namespace's in the cluster when a kubeconfig exists, else the
    /// ones on this machine.
    Ls {
        /// One JSON document instead of a list.
        #[arg(long)]
        json: bool,
        /// Kubernetes namespace to list (default: as for a target).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Configuration file (its kubeconfig keys and target.namespace apply).
        #[arg(short = 'f', long = "config-file")]
        config_file: Option<PathBuf>,
    },
    /// Check a configuration file; errors are printed as FILE:LINE:COLUMN: MESSAGE.
    VerifyConfig {
        /// The file.
        file: PathBuf,
    },
    /// Print the JSON Schema of the configuration file.
    Schema,
}

fn main() {
    let cli = Cli::parse();
    mirrord_server::limits::raise_open_files();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRRORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // The program shares this stderr and may make it non-blocking (Node does): a log line
        // that cannot be written is dropped, never reported with `eprintln!` (which panics).
        .log_internal_errors(false)
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

fn runtime() -> Result<CommandRuntime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map(CommandRuntime)
        .context("starting the runtime")
}

/// The runtime of one command, which never holds up mirrord's exit: dropping a tokio runtime
/// waits for every blocking task without bound (a stuck DNS lookup, a file read on a dead mount),
/// but once the command's work is done nothing of it is worth waiting for.
struct CommandRuntime(tokio::runtime::Runtime);

impl CommandRuntime {
    fn block_on<F: std::future::Future>(self, work: F) -> F::Output {
        let out = self.0.block_on(work);
        self.0
            .shutdown_timeout(std::time::Duration::from_millis(500));
        out
    }
}

/// Reads the configuration and resolves the target for a command.
fn session_options(
    args: &TargetArgs,
    tweak: impl FnOnce(&mut MirrordConfig),
) -> Result<SessionOptions> {
    let config_path = args
        .config_file
        .clone()
        .or_else(|| std::env::var_os("MIRRORD_CONFIG_FILE").map(PathBuf::from));
    let mut config = match &config_path {
        Some(p) => {
            let loaded = config_file::load_with_warnings(p)?;
            // One line for all of them: the command's own output follows.
            if let Some(first) = loaded.warnings.first() {
                let keys: Vec<String> = loaded
                    .warnings
                    .iter()
                    .map(|w| format!("{} ({}:{})", w.key, w.line, w.column))
                    .collect();
                eprintln!(
                    "mirrord: warning: {}: ignored, accepted for compatibility with mirrord \
                     (this product does not have these features): {}",
                    first.path.display(),
                    keys.join(", ")
                );
            }
            loaded.config
        }
        None => MirrordConfig::default(),
    };
    tweak(&mut config);
    let target_spec = args
        .target
        .clone()
        .or_else(|| config.target.as_ref().and_then(|t| t.path.clone()))
        .context(
            "no target: pass -t (e.g. deployment/NAME, pod/NAME, targetless, pid/PID), or set \
             \"target\" in the configuration",
        )?;
    let target = TargetPath::parse(&target_spec).map_err(anyhow::Error::msg)?;
    // A cluster agent is an image, not a binary on this machine.
    let agent_bin = if target.is_kubernetes() {
        args.agent.clone().unwrap_or_default()
    } else {
        paths::agent_path(args.agent.as_deref())?
    };
    Ok(SessionOptions {
        config,
        target,
        namespace: args.namespace.clone(),
        agent_bin,
        layer_path: paths::layer_path(args.layer.as_deref())?,
        runtime_dir: paths::runtime_dir()?,
        progress: None,
    })
}

async fn start(mut opts: SessionOptions) -> Result<Session> {
    let step = Step::start(&format!("starting the agent for {}", opts.target));
    opts.progress = Some(step.reporter());
    match Session::start(opts).await {
        Ok(s) => {
            step.done(&format!("agent ready ({})", s.agent.describe()));
            Ok(s)
        }
        Err(e) => {
            step.fail();
            Err(e)
        }
    }
}

/// Runs `work` until it ends or until Ctrl-C/SIGTERM, the usual way to end dump and
/// port-forward (the caller then stops the session, which removes its rules).
async fn until_interrupted(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = sigterm.recv() => Ok(()),
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Exec { target, command } => {
            let opts = session_options(&target, |_| {})?;
            runtime()?.block_on(exec::exec(opts, &command))
        }
        Command::Dump {
            target,
            ports,
            json,
        } => {
            let opts = session_options(&target, |_| {})?;
            runtime()?.block_on(async move {
                let session = start(opts).await?;
                let result = until_interrupted(dump::run(&session, &ports, json)).await;
                session.stop().await;
                result.map(|_| 0)
            })
        }
        Command::PortForward {
            target,
            local,
            remote,
            mirror,
        } => {
            if local.is_empty() && remote.is_empty() {
                anyhow::bail!("nothing to forward: give -L and/or -R");
            }
            let opts = session_options(&target, |c| {
                c.feature.network.incoming.mode = if mirror {
                    IncomingMode::Mirror
                } else {
                    IncomingMode::Steal
                };
                // -R forwards whole ports: no HTTP filter applies.
                c.feature.network.incoming.http_filter = Default::default();
            })?;
            runtime()?.block_on(async move {
                let session = start(opts).await?;
                let result = until_interrupted(port_forward::run(&session, &local, &remote)).await;
                session.stop().await;
                result.map(|_| 0)
            })
        }
        Command::Ls {
            json,
            namespace,
            config_file,
        } => {
            let config_path =
                config_file.or_else(|| std::env::var_os("MIRRORD_CONFIG_FILE").map(PathBuf::from));
            let config = match &config_path {
                Some(p) => config_file::load(p)?,
                None => MirrordConfig::default(),
            };
            let settings = mirrord_server::kube::client::KubeSettings::from_config(&config);
            let (targets, namespaces) = if settings.kubeconfig_exists() {
                runtime()?.block_on(async {
                    let connection = settings.connect().await?;
                    let ns = mirrord_server::kube::client::target_namespace(
                        namespace.as_deref(),
                        &config,
                        &connection.context_namespace,
                    );
                    let targets =
                        mirrord_server::kube::targets::list(&connection.client, &ns).await?;
                    let namespaces =
                        mirrord_server::kube::targets::namespaces(&connection.client).await;
                    anyhow::Ok((targets, namespaces))
                })?
            } else {
                (mirrord_server::daemon::targets::local_targets(), None)
            };
            if json {
                let mut doc = serde_json::json!({ "targets": targets });
                if let Some(ns) = namespaces {
                    doc["namespaces"] = serde_json::json!(ns);
                }
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                for t in targets {
                    if t.available {
                        println!("{}", t.path);
                    } else {
                        println!("{} (not available: no ready pod)", t.path);
                    }
                }
            }
            Ok(0)
        }
        Command::VerifyConfig { file } => match config_file::load_with_warnings(&file) {
            Ok(config_file::Loaded {
                config: cfg,
                warnings,
            }) => {
                for w in &warnings {
                    eprintln!("{w}");
                }
                let target = cfg
                    .target
                    .and_then(|t| t.path)
                    .unwrap_or_else(|| "none".into());
                println!("{}: ok (target: {target})", file.display());
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(1)
            }
        },
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&mirrord_protocol::config::json_schema())?
            );
            Ok(0)
        }
    }
}
