//! `mirrord exec`: a session around one command.

use crate::session::{Connection, Session, SessionOptions};
use anyhow::{Context, Result};
use std::os::unix::process::ExitStatusExt;

/// Runs `command` in a new session and returns the exit code to leave with (the command's, or
/// 128+signal like a shell).
pub async fn exec(mut opts: SessionOptions, command: &[String]) -> Result<i32> {
    let (program, args) = command.split_first().context("no command given")?;
    let browser = crate::browser::setup(&opts.config);
    let step =
        crate::cli::progress::Step::start(&format!("starting the agent for {}", opts.target));
    if opts.progress.is_none() {
        opts.progress = Some(step.reporter());
    }
    let mut session = match Session::start(opts).await {
        Ok(s) => {
            step.done(&format!("agent ready ({})", s.agent.describe()));
            s
        }
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    if let Some(setup) = &browser {
        eprintln!("{}", crate::browser::offer_line(setup));
    }
    // The command's own environment is this process's: nothing of it is a launch
    // configuration's, so only MIRRORD_* and LD_PRELOAD are kept from `feature.env`.
    let program_env = match session.program_env(&|_| false, None) {
        Ok(e) => e,
        Err(e) => {
            session.stop().await;
            return Err(e);
        }
    };
    let env = session.launch_env(std::env::var("LD_PRELOAD").ok().as_deref());
    let mut command = tokio::process::Command::new(program);
    crate::limits::restore_in_child(&mut command);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if program_env
            .unset
            .iter()
            .any(|u| u.eq_ignore_ascii_case(&name))
        {
            command.env_remove(name.as_ref());
        }
    }
    // Calls the layer cannot see (Go, static binaries, resolvers of their own) are intercepted
    // with seccomp; the target's resolver files are fetched first, so the program's first open
    // of them is served without waiting for the agent.
    let seccomp = match crate::seccomp::Prepared::new() {
        Some(prepared) => {
            prepared.arm(&mut command);
            let files = match session.target_resolver_files().await {
                Ok((resolv_conf, hosts)) => Some(crate::seccomp::TargetFiles {
                    resolv_conf: resolv_conf.into_bytes(),
                    hosts: hosts.into_bytes(),
                }),
                Err(e) => {
                    eprintln!("mirrord: the target's resolver files are not available ({e:#}); programs read this machine's");
                    None
                }
            };
            Some((prepared, files))
        }
        None => None,
    };
    // Caught before the command exists: a Ctrl-C that reaches the group as soon as the command
    // runs must not kill mirrord first (the session would then end without removing its agent).
    // A command started with Ctrl-C ignored (`nohup`, a background job of a script) keeps it
    // ignored, as it would without mirrord: catching it here would otherwise hand the command
    // the default action.
    if sigint_ignored() {
        // SAFETY: between fork and exec only `signal`, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    // The session's variables last: they win over anything `feature.env` brought.
    command.args(args).envs(program_env.set).envs(env);
    // The layer marks the calls it decided only when this session's filter is armed; a mark
    // inherited from an enclosing session would be the wrong one.
    match &seccomp {
        Some((prepared, _)) => command.env(crate::seccomp::MARK_ENV, prepared.mark()),
        None => command.env_remove(crate::seccomp::MARK_ENV),
    };
    let spawned = command.spawn();
    let mut supervisor = None;
    if let (Ok(c), Some((prepared, files))) = (&spawned, seccomp) {
        match prepared.outcome() {
            crate::seccomp::Outcome::Supervised(listener) => {
                let link = crate::seccomp::SessionLink::new(
                    session.proxy.control_path.clone(),
                    session.token().to_owned(),
                    c.id().unwrap_or(0),
                    format!("{program} (system calls)"),
                );
                let served = std::sync::Arc::new(crate::seccomp::Supervisor::new(
                    link,
                    session.shared.clone(),
                    session.network.clone(),
                    files,
                ));
                crate::seccomp::supervise(listener, served.clone());
                supervisor = Some(served);
            }
            crate::seccomp::Outcome::Unavailable(why) => eprintln!("mirrord: {why}"),
        }
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            session.stop().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("mirrord: cannot run {program}: {e}");
            return Ok(code);
        }
    };
    // One line for each change of the connection to the agent (a cluster agent's port-forward
    // may drop; the command keeps running while the session reconnects).
    let mut connection = session.connection.clone();
    let connection_lines = tokio::spawn(async move {
        while connection.changed().await.is_ok() {
            let state = connection.borrow_and_update().clone();
            match state {
                Connection::Reconnecting => eprintln!(
                    "mirrord: reconnecting: the connection to the agent dropped (the command \
                     keeps running; its lookups and new connections fail meanwhile)"
                ),
                Connection::Ready => {
                    eprintln!(
                        "mirrord: ready: reconnected, the session resumed with the same agent"
                    )
                }
                Connection::ResumedWithErrors(why) => {
                    eprintln!("mirrord: ready: reconnected to the same agent, but {why}")
                }
                // wait_exit below says why.
                Connection::Lost => return,
            }
        }
    });
    // The terminal delivers Ctrl-C to the whole foreground group, the command included; the CLI
    // itself waits for the command to finish rather than dying first.
    let interrupts = tokio::spawn(async move {
        loop {
            match sigint.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    });
    // SIGTERM (a supervisor, an IDE stopping a run) is passed on to the command; mirrord ends
    // its session after the command, so a cluster agent is removed at once rather than after
    // its communication timeout.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    let status = tokio::select! {
        s = child.wait() => s.context("waiting for the command")?,
        why = session.agent.wait_exit(&session.control) => {
            eprintln!("mirrord: {why}; the command can no longer reach the target");
            child.wait().await.context("waiting for the command")?
        }
        _ = sigterm.recv() => {
            if let Some(pid) = child.id() {
                // SAFETY: a signal to our own child, which has not been reaped (id() is Some).
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            child.wait().await.context("waiting for the command")?
        }
    };
    interrupts.abort();
    connection_lines.abort();
    if let Some(supervisor) = supervisor {
        // Tests read this line to see which calls reached the supervisor.
        tracing::debug!(
            target: "mirrord_server::seccomp",
            "seccomp: stopped calls: {}",
            supervisor.stopped_calls()
        );
    }
    session.stop().await;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Whether SIGINT is ignored in this process (inherited from whoever started mirrord).
fn sigint_ignored() -> bool {
    // SAFETY: a query only (no new action); `old` is a valid, zeroed sigaction to fill.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}
