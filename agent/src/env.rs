//! `feature.env`: the target process's environment, as the pod's process sees it.

use mirrord_protocol::agent::AgentResponse;

/// The environment of `pid` from `/proc/PID/environ`, read when asked (so a restarted
/// container's process is read as it is now). No process (targetless, `netns/NAME`): none.
pub fn target_environment(pid: Option<u32>) -> AgentResponse {
    let Some(pid) = pid else {
        return AgentResponse::Env(Vec::new());
    };
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(raw) => AgentResponse::Env(parse_environ(&raw)),
        Err(e) => AgentResponse::Error(format!(
            "cannot read the environment of the target process {pid}: {e}"
        )),
    }
}

/// `NAME=value` entries separated by NUL bytes. Entries without `=` or with bytes that are not
/// UTF-8 cannot be passed on as strings and are left out.
fn parse_environ(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('='))
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_entries_split_on_the_first_equals() {
        let raw = b"A=1\0URL=postgres://u:p@db/x?a=b\0bad\0\xff=x\0=nameless\0EMPTY=\0";
        assert_eq!(
            parse_environ(raw),
            vec![
                ("A".into(), "1".into()),
                ("URL".into(), "postgres://u:p@db/x?a=b".into()),
                ("EMPTY".into(), "".into()),
            ]
        );
    }

    #[test]
    fn reads_a_real_process_environment() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("DATABASE_URL", "postgres://db:5432/app?x=1")
            .env("ONLY", "")
            .spawn()
            .expect("sleep runs");
        let got = target_environment(Some(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            got,
            AgentResponse::Env(vec![
                ("DATABASE_URL".into(), "postgres://db:5432/app?x=1".into()),
                ("ONLY".into(), "".into()),
            ])
        );
        assert_eq!(target_environment(None), AgentResponse::Env(Vec::new()));
        assert!(matches!(
            target_environment(Some(u32::MAX)),
            AgentResponse::Error(_)
        ));
    }
}
