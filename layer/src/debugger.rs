//! Debugger ports: a debuggee talks to its IDE's debug adapter over loopback (debugpy's launcher
//! and debuggee connect to the adapter, a JDWP agent may connect out). Those connections must
//! stay on the developer's machine even though loopback destinations otherwise go to the target.
//!
//! The ports come from `MIRRORD_IGNORE_DEBUGGER_PORTS` (`45000,46000-46100`, set by whoever
//! knows them) and from the process's own command line, where debuggers put them.

use std::sync::OnceLock;

/// Inclusive port ranges.
type Ranges = Vec<(u16, u16)>;

static PORTS: OnceLock<Ranges> = OnceLock::new();

pub fn is_debugger_port(port: u16) -> bool {
    PORTS
        .get_or_init(|| {
            let mut ranges = std::env::var("MIRRORD_IGNORE_DEBUGGER_PORTS")
                .map(|v| parse_ranges(&v))
                .unwrap_or_default();
            let args: Vec<String> = std::fs::read("/proc/self/cmdline")
                .map(|raw| {
                    raw.split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            ranges.extend(ports_in_args(&args).into_iter().map(|p| (p, p)));
            ranges
        })
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&port))
}

fn parse_ranges(v: &str) -> Ranges {
    v.split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

/// The port of a `host:port` or `port` argument.
fn port_of(arg: &str) -> Option<u16> {
    arg.rsplit(':').next()?.parse().ok()
}

/// Ports a debugger named on this command line: debugpy (`--connect [HOST:]PORT`, `--port PORT`,
/// and its launcher's `PORT` argument), JDWP (`-agentlib:jdwp=...address=[HOST:]PORT`).
fn ports_in_args(args: &[String]) -> Vec<u16> {
    let mut ports = Vec::new();
    let debugpy = args.iter().position(|a| a.contains("debugpy"));
    if let Some(at) = debugpy {
        let rest = &args[at..];
        for (i, a) in rest.iter().enumerate() {
            let next = rest.get(i + 1).map(String::as_str);
            match a.as_str() {
                "--connect" | "--port" | "--client-port" => ports.extend(next.and_then(port_of)),
                // `.../debugpy/launcher PORT -- program`: the adapter's port comes first.
                _ if a.ends_with("launcher") || a.ends_with("launcher/") => {
                    ports.extend(next.and_then(port_of))
                }
                _ => {}
            }
        }
    }
    for a in args {
        if let Some(opts) = a.strip_prefix("-agentlib:jdwp=") {
            for kv in opts.split(',') {
                if let Some(addr) = kv.strip_prefix("address=") {
                    ports.extend(port_of(addr));
                }
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_debugger_ports() {
        assert_eq!(
            ports_in_args(&args(&[
                "python",
                "/x/debugpy/launcher",
                "41234",
                "--",
                "app.py"
            ])),
            vec![41234]
        );
        assert_eq!(
            ports_in_args(&args(&[
                "python",
                "-m",
                "debugpy",
                "--connect",
                "127.0.0.1:5679",
                "app.py"
            ])),
            vec![5679]
        );
        assert_eq!(
            ports_in_args(&args(&[
                "java",
                "-agentlib:jdwp=transport=dt_socket,server=n,address=localhost:5005",
                "Main"
            ])),
            vec![5005]
        );
        assert!(ports_in_args(&args(&["python", "app.py", "--port", "80"])).is_empty());
        assert_eq!(
            parse_ranges("45000, 46000-46010,x"),
            vec![(45000, 45000), (46000, 46010)]
        );
    }
}
