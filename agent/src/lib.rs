//! mirrord-agent as a library: the parts that are useful (and testable) on their own. The agent
//! binary (`main.rs`) uses them from here.

pub mod redirect;

/// Logs to stderr, quiet by default; `MIRRORD_AGENT_LOG` takes a tracing filter.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRRORD_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
