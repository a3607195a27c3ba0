//! redirect-probe: drives the agent's port redirects by hand, in the current network namespace
//! (run it under `ip netns exec NS`). Used by the agent's integration tests; handy for
//! inspecting what the agent does to a namespace.
//!
//! ```text
//! redirect-probe --id ID [--guard] [--backend B]   # then commands on stdin, one per line:
//!     add PORT TO_PORT | remove PORT | ports | cleanup | backend | ipv6 | quit
//! redirect-probe --cleanup-agent ID                 # what the guard does
//! redirect-probe --detect                           # print the backend this namespace gets
//! ```
//!
//! Interactive mode prints `ready pid=PID guard=GUARD_PID backend=BACKEND` once set up, then
//! `ok [...]` or `err MESSAGE` per command. At the end of stdin (or `quit`) it exits *without*
//! removing its rules (the guard's job, if started); `cleanup` removes them explicitly.

use anyhow::{bail, Context, Result};
use clap::Parser;
use mirrord_agent::redirect::{self, Backend, Redirector};
use std::io::BufRead;

#[derive(Parser, Debug)]
#[command(about = "Drive the mirrord agent's port redirects in the current network namespace")]
struct Args {
    /// Agent id (names the chains).
    #[arg(long, required_unless_present_any = ["cleanup_agent", "detect"])]
    id: Option<String>,
    /// Start the guard first (removes the rules when this process dies).
    #[arg(long)]
    guard: bool,
    /// Backend instead of detecting one: iptables-nft, iptables-legacy or nft.
    #[arg(long)]
    backend: Option<Backend>,
    /// Remove the rules of this agent id and exit.
    #[arg(long, value_name = "ID")]
    cleanup_agent: Option<String>,
    /// Print the detected backend and what it was based on, and exit.
    #[arg(long)]
    detect: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("redirect-probe: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    mirrord_agent::init_logging();

    if let Some(id) = &args.cleanup_agent {
        return redirect::cleanup_agent(id);
    }
    if args.detect {
        let facts = redirect::backend_facts();
        println!("{}", redirect::decide_backend(&facts)?);
        eprintln!("{facts:?}");
        return Ok(());
    }
    let id = args.id.context("--id is required")?;
    // First, while this process has one thread.
    let guard = if args.guard {
        Some(redirect::spawn_guard(&id)?)
    } else {
        None
    };
    let redirector = match args.backend {
        Some(b) => Redirector::with_backend(&id, b)?,
        None => Redirector::new(&id)?,
    };
    println!(
        "ready pid={} guard={} backend={}",
        std::process::id(),
        guard.as_ref().map_or(0, |g| g.pid()),
        redirector.backend()
    );
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            break;
        }
        match command(&redirector, &words) {
            Ok(reply) if reply.is_empty() => println!("ok"),
            Ok(reply) => println!("ok {reply}"),
            Err(e) => println!("err {}", format!("{e:#}").replace('\n', " | ")),
        }
    }
    Ok(())
}

fn command(r: &Redirector, words: &[&str]) -> Result<String> {
    let port = |i: usize| -> Result<u16> {
        words
            .get(i)
            .context("missing port")?
            .parse()
            .context("bad port")
    };
    match words.first().copied() {
        Some("add") => r.add(port(1)?, port(2)?).map(|()| String::new()),
        Some("remove") => r.remove(port(1)?).map(|()| String::new()),
        Some("cleanup") => r.cleanup().map(|()| String::new()),
        Some("backend") => Ok(r.backend().to_string()),
        Some("ipv6") => Ok(r.ipv6().to_string()),
        Some("ports") => Ok(r
            .ports()?
            .iter()
            .map(|(p, t)| format!("{p}:{t}"))
            .collect::<Vec<_>>()
            .join(",")),
        Some(other) => bail!("unknown command {other:?}"),
        None => bail!("empty command"),
    }
}
