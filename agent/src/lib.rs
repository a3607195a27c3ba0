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

/// Raises the soft open-file limit to the hard one: every incoming or outgoing flow costs the
/// agent two descriptors, and the usual soft limit of 1,024 would cap it at about 500 flows.
pub fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open-file limit: {e}"),
    }
}
