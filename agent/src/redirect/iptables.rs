//! The iptables backends (nft and legacy flavours, IPv4 and IPv6): command lines, and parsing of
//! what `iptables-save` / `iptables -S` print.
//!
//! Lookups read `<tool>-save` *without* `-t`: it lists only the tables that exist, whereas
//! `iptables-legacy -t nat ...` would load and create the legacy nat table as a side effect.

use super::exec::{args, Program};
use super::AGENT_MARK;
use anyhow::{bail, Context, Result};
use std::sync::OnceLock;

/// Seconds to wait for the xtables lock (legacy iptables; iptables-nft accepts and ignores it).
const LOCK_WAIT_SECS: &str = "5";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    Nft,
    Legacy,
}

impl Flavour {
    fn suffix(self) -> &'static str {
        match self {
            Flavour::Nft => "nft",
            Flavour::Legacy => "legacy",
        }
    }
}

/// The built-in nat chains the agent hooks into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Output,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Prerouting, Hook::Output];

    pub fn chain(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Output => "OUTPUT",
        }
    }
}

/// One iptables tool (e.g. `iptables-nft` or `ip6tables-legacy`) and its `-save` companion.
#[derive(Clone, Debug)]
pub struct Iptables {
    program: Program,
    save: Program,
    flavour: Flavour,
}

impl Iptables {
    /// The tool of `flavour` for IPv4 or IPv6: `iptables-nft`/`iptables-legacy` (and `ip6...`),
    /// or plain `iptables` when it is of that flavour and the suffixed names are not installed.
    pub fn find(ipv6: bool, flavour: Flavour) -> Result<Iptables> {
        let base = if ipv6 { "ip6tables" } else { "iptables" };
        let variant = format!("{base}-{}", flavour.suffix());
        if let (Some(program), Some(save)) = (
            Program::find(&variant),
            Program::find(&format!("{variant}-save")),
        ) {
            return Ok(Iptables {
                program,
                save,
                flavour,
            });
        }
        if let (Some(program), Some(save)) =
            (Program::find(base), Program::find(&format!("{base}-save")))
        {
            if flavour_of(&program) == Some(flavour) {
                return Ok(Iptables {
                    program,
                    save,
                    flavour,
                });
            }
        }
        bail!("{variant} is not installed (apt-get install -y iptables)")
    }

    /// Every installed tool: nft and legacy flavours, IPv4 and IPv6.
    pub fn all_installed() -> Vec<Iptables> {
        let mut all = Vec::new();
        for ipv6 in [false, true] {
            for flavour in [Flavour::Nft, Flavour::Legacy] {
                if let Ok(t) = Iptables::find(ipv6, flavour) {
                    all.push(t);
                }
            }
        }
        all
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    fn run(&self, a: Vec<String>) -> Result<String> {
        self.program.run(&a)
    }

    /// The nat table as `<tool>-save` shows it; `None` when the table does not exist.
    pub fn nat_table(&self) -> Result<Option<SavedTable>> {
        let out = self.save.run(&[])?;
        Ok(parse_save(&out, "nat"))
    }

    /// Whether any table has any rule (backend detection).
    pub fn has_rules(&self) -> Result<bool> {
        let out = self.save.run(&[])?;
        Ok(out.lines().any(|l| l.starts_with("-A ")))
    }

    /// Creates (or empties) `chain` and inserts the jumps to it at the top of PREROUTING and
    /// OUTPUT, replacing jumps a previous agent of the same id left.
    pub fn setup(&self, chain: &str) -> Result<()> {
        let table = self.nat_table()?.unwrap_or_default();
        if table.chains.iter().any(|c| c == chain) {
            self.run(flush_chain_args(chain))?;
        } else {
            self.run(new_chain_args(chain))?;
        }
        for rule in table.jumps_to(chain) {
            self.run(delete_args(&rule.chain, &rule.spec))?;
        }
        for hook in Hook::ALL {
            self.run(insert_jump_args(hook, chain))?;
        }
        Ok(())
    }

    /// The rules of `chain` (`-S`).
    fn rules(&self, chain: &str) -> Result<Vec<Rule>> {
        let out = self
            .run(list_chain_args(chain))
            .with_context(|| format!("reading the redirect chain {chain}"))?;
        Ok(out.lines().filter_map(parse_rule_line).collect())
    }

    pub fn ports(&self, chain: &str) -> Result<Vec<(u16, u16)>> {
        Ok(self
            .rules(chain)?
            .iter()
            .filter_map(|r| match r.redirect() {
                Some((port, Some(to))) => Some((port, to)),
                _ => None,
            })
            .collect())
    }

    pub fn add(&self, chain: &str, port: u16, to_port: u16) -> Result<()> {
        let rules = self.rules(chain)?;
        let plan = plan_add(&rules, port, to_port);
        if plan.append {
            self.run(append_args(chain, &redirect_spec(port, to_port)))?;
        }
        for rule in plan.delete {
            self.run(delete_args(chain, &rule.spec))?;
        }
        Ok(())
    }

    pub fn remove(&self, chain: &str, port: u16) -> Result<()> {
        for rule in self.rules(chain)? {
            if rule.redirect().map(|(p, _)| p) == Some(port) {
                self.run(delete_args(chain, &rule.spec))?;
            }
        }
        Ok(())
    }

    /// Removes the jumps to `chain` and the chain itself. Finding nothing is success; a step
    /// that fails because something vanished meanwhile (two cleanups at once) is retried from a
    /// fresh listing.
    pub fn cleanup(&self, chain: &str) -> Result<()> {
        self.cleanup_inner(chain, false)
    }

    /// [`Iptables::cleanup`] that counts a tool unable to list its tables (no nf_tables or no
    /// IPv6 in this kernel) as "nothing of ours there" (the guard's sweep over every flavour).
    pub fn cleanup_if_listable(&self, chain: &str) -> Result<()> {
        self.cleanup_inner(chain, true)
    }

    fn cleanup_inner(&self, chain: &str, tolerate_unlistable: bool) -> Result<()> {
        let mut last_error = None;
        for pass in 0..3 {
            let table = match self.nat_table() {
                Ok(Some(table)) => table,
                Ok(None) => return Ok(()),
                Err(e) if pass == 0 && tolerate_unlistable => {
                    tracing::debug!("{e:#}; nothing to remove there");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let jumps = table.jumps_to(chain);
            let exists = table.chains.iter().any(|c| c == chain);
            if jumps.is_empty() && !exists {
                return Ok(());
            }
            let mut steps: Vec<Vec<String>> = jumps
                .iter()
                .map(|r| delete_args(&r.chain, &r.spec))
                .collect();
            if exists {
                steps.push(flush_chain_args(chain));
                steps.push(delete_chain_args(chain));
            }
            for step in steps {
                if let Err(e) = self.run(step) {
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{chain} keeps coming back")))
            .with_context(|| format!("removing {chain} with {}", self.program.name))
    }
}

/// What plain `iptables -V` says it is.
fn flavour_of(program: &Program) -> Option<Flavour> {
    let out = program.run(&args(["-V"])).ok()?;
    Some(parse_version_flavour(&out))
}

/// `iptables v1.8.9 (nf_tables)` → nft; `(legacy)`, or an old version without a suffix → legacy.
pub fn parse_version_flavour(version: &str) -> Flavour {
    if version.contains("nf_tables") {
        Flavour::Nft
    } else {
        Flavour::Legacy
    }
}

/// The flavour of the system's plain `iptables`, if installed.
pub fn default_flavour() -> Option<Flavour> {
    static DEFAULT: OnceLock<Option<Flavour>> = OnceLock::new();
    *DEFAULT.get_or_init(|| Program::find("iptables").and_then(|p| flavour_of(&p)))
}

// ---- command lines ----

fn nat<I: IntoIterator<Item = String>>(rest: I) -> Vec<String> {
    let mut a = args(["-w", LOCK_WAIT_SECS, "-t", "nat"]);
    a.extend(rest);
    a
}

pub fn new_chain_args(chain: &str) -> Vec<String> {
    nat(args(["-N", chain]))
}

pub fn flush_chain_args(chain: &str) -> Vec<String> {
    nat(args(["-F", chain]))
}

pub fn delete_chain_args(chain: &str) -> Vec<String> {
    nat(args(["-X", chain]))
}

pub fn list_chain_args(chain: &str) -> Vec<String> {
    nat(args(["-S", chain]))
}

pub fn append_args(chain: &str, spec: &[String]) -> Vec<String> {
    nat(args(["-A", chain]).into_iter().chain(spec.iter().cloned()))
}

pub fn delete_args(chain: &str, spec: &[String]) -> Vec<String> {
    nat(args(["-D", chain]).into_iter().chain(spec.iter().cloned()))
}

pub fn insert_jump_args(hook: Hook, chain: &str) -> Vec<String> {
    nat(args(["-I", hook.chain(), "1"])
        .into_iter()
        .chain(jump_spec(hook, chain)))
}

/// The match of the jump from `hook` to the agent's chain.
pub fn jump_spec(hook: Hook, chain: &str) -> Vec<String> {
    let mut spec = args(["-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL"]);
    if hook == Hook::Output {
        spec.extend(args(["-m", "mark", "!", "--mark"]));
        spec.push(format!("{AGENT_MARK:#x}"));
    }
    spec.extend(args(["-j", chain]));
    spec
}

/// One port's rule in the agent's chain.
pub fn redirect_spec(port: u16, to_port: u16) -> Vec<String> {
    args([
        "-p".to_owned(),
        "tcp".to_owned(),
        "-m".to_owned(),
        "tcp".to_owned(),
        "--dport".to_owned(),
        port.to_string(),
        "-j".to_owned(),
        "REDIRECT".to_owned(),
        "--to-ports".to_owned(),
        to_port.to_string(),
    ])
}

/// What `add` has to do given the chain's current rules: append the wanted rule unless it is
/// there, then delete every other rule of that port (after the append, so the port is never
/// without a redirect).
#[derive(Debug, PartialEq, Eq)]
pub struct AddPlan {
    pub append: bool,
    pub delete: Vec<Rule>,
}

pub fn plan_add(rules: &[Rule], port: u16, to_port: u16) -> AddPlan {
    let mut keep_found = false;
    let mut delete = Vec::new();
    for rule in rules {
        match rule.redirect() {
            Some((p, to)) if p == port => {
                if to == Some(to_port) && !keep_found {
                    keep_found = true;
                } else {
                    delete.push(rule.clone());
                }
            }
            _ => {}
        }
    }
    AddPlan {
        append: !keep_found,
        delete,
    }
}

// ---- parsing ----

/// One rule: `-A <chain> <spec...>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub spec: Vec<String>,
}

impl Rule {
    /// The `-j`/`-g` target.
    pub fn target(&self) -> Option<&str> {
        self.spec
            .windows(2)
            .find(|w| w[0] == "-j" || w[0] == "-g" || w[0] == "--jump" || w[0] == "--goto")
            .map(|w| w[1].as_str())
    }

    /// `(dport, to_port)` of a `REDIRECT` rule (`to_port` is `None` for a port range).
    pub fn redirect(&self) -> Option<(u16, Option<u16>)> {
        if self.target() != Some("REDIRECT") {
            return None;
        }
        let value = |name: &str| {
            self.spec
                .windows(2)
                .find(|w| w[0] == name)
                .map(|w| w[1].as_str())
        };
        let port = value("--dport")?.parse().ok()?;
        let to = value("--to-ports").and_then(|t| t.parse().ok());
        Some((port, to))
    }
}

/// One table of `iptables-save` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Every chain, built-in ones included.
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

impl SavedTable {
    /// Rules of other chains that jump (or go) to `chain`.
    pub fn jumps_to(&self, chain: &str) -> Vec<Rule> {
        self.rules
            .iter()
            .filter(|r| r.chain != chain && r.target() == Some(chain))
            .cloned()
            .collect()
    }
}

/// The section `*<table>` … `COMMIT` of `iptables-save` output; `None` if absent.
pub fn parse_save(text: &str, table: &str) -> Option<SavedTable> {
    let header = format!("*{table}");
    let mut inside = false;
    let mut found = None::<SavedTable>;
    for line in text.lines() {
        let line = line.trim_end();
        if !inside {
            if line == header {
                inside = true;
                found.get_or_insert_with(SavedTable::default);
            }
            continue;
        }
        if line == "COMMIT" {
            inside = false;
            continue;
        }
        let t = found.as_mut().expect("set when entering the section");
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                t.chains.push(name.to_owned());
            }
        } else if let Some(rule) = parse_rule_line(line) {
            t.rules.push(rule);
        }
    }
    found
}

/// `-A CHAIN spec...` (as in `iptables-save` and `iptables -S`); other lines give `None`.
pub fn parse_rule_line(line: &str) -> Option<Rule> {
    let mut tokens = tokenize(line).into_iter();
    if tokens.next()? != "-A" {
        return None;
    }
    let chain = tokens.next()?;
    Some(Rule {
        chain,
        spec: tokens.collect(),
    })
}

/// Splits a saved rule into arguments: whitespace separates, `"..."` groups (iptables-save quotes
/// values with spaces, e.g. comments), and `\` escapes the next character inside quotes.
pub fn tokenize(line: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    tokens.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            c => {
                current.push(c);
                in_token = true;
            }
        }
    }
    if in_token {
        tokens.push(current);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Thu Nov 26 13:35:08 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j MIRRORD_a
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MIRRORD_a - [0:0]
:MIRRORD_ab - [0:0]
-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -j MIRRORD_ab
-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -j MIRRORD_a
-A PREROUTING -m comment --comment "kube \"svc\" ports" -j KUBE-SERVICES
-A OUTPUT -p tcp -m addrtype --dst-type LOCAL -m mark ! --mark 0x6d726464 -j MIRRORD_a
-A MIRRORD_a -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080
-A MIRRORD_ab -p tcp -m tcp --dport 81 -j REDIRECT --to-ports 8081
COMMIT
# Completed on Thu Nov 26 13:35:08 2026
"#;

    #[test]
    fn parses_the_nat_section_only() {
        let t = parse_save(SAVE, "nat").unwrap();
        assert_eq!(
            t.chains,
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "MIRRORD_a",
                "MIRRORD_ab"
            ]
        );
        assert_eq!(t.rules.len(), 6);
        assert_eq!(t.rules[2].target(), Some("KUBE-SERVICES"));
        assert_eq!(
            t.rules[2].spec,
            [
                "-m",
                "comment",
                "--comment",
                "kube \"svc\" ports",
                "-j",
                "KUBE-SERVICES"
            ]
        );
        assert!(parse_save(SAVE, "mangle").is_none());
        assert_eq!(
            parse_save("*nat\nCOMMIT\n", "nat"),
            Some(SavedTable::default())
        );
    }

    #[test]
    fn jumps_are_matched_by_exact_chain_name() {
        let t = parse_save(SAVE, "nat").unwrap();
        let jumps = t.jumps_to("MIRRORD_a");
        assert_eq!(jumps.len(), 2);
        assert_eq!(jumps[0].chain, "PREROUTING");
        assert_eq!(jumps[1].chain, "OUTPUT");
        assert_eq!(
            jumps[1].spec,
            jump_spec(Hook::Output, "MIRRORD_a"),
            "what we insert is what iptables-save shows"
        );
        assert_eq!(jumps[0].spec, jump_spec(Hook::Prerouting, "MIRRORD_a"));
        // The filter table's rule jumping to a same-named chain is not in the nat table.
        assert_eq!(t.jumps_to("MIRRORD_ab").len(), 1);
        assert!(t.jumps_to("MIRRORD_").is_empty());
        assert!(t.jumps_to("MIRRORD_abc").is_empty());
    }

    #[test]
    fn redirect_rules() {
        let r =
            parse_rule_line("-A MIRRORD_a -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080")
                .unwrap();
        assert_eq!(r.chain, "MIRRORD_a");
        assert_eq!(r.spec, redirect_spec(80, 8080));
        assert_eq!(r.redirect(), Some((80, Some(8080))));
        let range =
            parse_rule_line("-A X -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080-8090")
                .unwrap();
        assert_eq!(range.redirect(), Some((80, None)));
        let other = parse_rule_line("-A X -p tcp -m tcp --dport 80 -j ACCEPT").unwrap();
        assert_eq!(other.redirect(), None);
        assert!(parse_rule_line("-N X").is_none());
        assert!(parse_rule_line("-P INPUT ACCEPT").is_none());
        assert!(parse_rule_line("").is_none());
    }

    #[test]
    fn tokenizer() {
        assert_eq!(tokenize("  a  b\tc "), ["a", "b", "c"]);
        assert_eq!(tokenize(r#"--comment "x y" z"#), ["--comment", "x y", "z"]);
        assert_eq!(tokenize(r#""a\"b\\c""#), [r#"a"b\c"#]);
        assert_eq!(tokenize(r#"--comment """#), ["--comment", ""]);
        assert!(tokenize("").is_empty());
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            new_chain_args("MIRRORD_a"),
            ["-w", "5", "-t", "nat", "-N", "MIRRORD_a"]
        );
        assert_eq!(
            insert_jump_args(Hook::Prerouting, "MIRRORD_a"),
            [
                "-w",
                "5",
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "-p",
                "tcp",
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-j",
                "MIRRORD_a"
            ]
        );
        assert_eq!(
            insert_jump_args(Hook::Output, "MIRRORD_a"),
            [
                "-w",
                "5",
                "-t",
                "nat",
                "-I",
                "OUTPUT",
                "1",
                "-p",
                "tcp",
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-m",
                "mark",
                "!",
                "--mark",
                "0x6d726464",
                "-j",
                "MIRRORD_a"
            ]
        );
        assert_eq!(
            append_args("MIRRORD_a", &redirect_spec(80, 8080)),
            [
                "-w",
                "5",
                "-t",
                "nat",
                "-A",
                "MIRRORD_a",
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                "80",
                "-j",
                "REDIRECT",
                "--to-ports",
                "8080"
            ]
        );
        assert_eq!(
            delete_args("OUTPUT", &args(["-j", "X"])),
            ["-w", "5", "-t", "nat", "-D", "OUTPUT", "-j", "X"]
        );
        assert_eq!(list_chain_args("C"), ["-w", "5", "-t", "nat", "-S", "C"]);
        assert_eq!(flush_chain_args("C")[4..], ["-F", "C"]);
        assert_eq!(delete_chain_args("C")[4..], ["-X", "C"]);
    }

    fn rule(port: u16, to: u16) -> Rule {
        Rule {
            chain: "C".into(),
            spec: redirect_spec(port, to),
        }
    }

    #[test]
    fn add_plans() {
        // Nothing there: append.
        assert_eq!(
            plan_add(&[rule(81, 9000)], 80, 8080),
            AddPlan {
                append: true,
                delete: vec![]
            }
        );
        // Already there: nothing to do.
        assert_eq!(
            plan_add(&[rule(80, 8080), rule(81, 9000)], 80, 8080),
            AddPlan {
                append: false,
                delete: vec![]
            }
        );
        // Another target: append the new one, delete the old one.
        assert_eq!(
            plan_add(&[rule(80, 7000), rule(81, 9000)], 80, 8080),
            AddPlan {
                append: true,
                delete: vec![rule(80, 7000)]
            }
        );
        // Duplicates collapse to one.
        assert_eq!(
            plan_add(&[rule(80, 8080), rule(80, 7000), rule(80, 8080)], 80, 8080),
            AddPlan {
                append: false,
                delete: vec![rule(80, 7000), rule(80, 8080)]
            }
        );
    }

    #[test]
    fn version_flavours() {
        assert_eq!(
            parse_version_flavour("iptables v1.8.9 (nf_tables)\n"),
            Flavour::Nft
        );
        assert_eq!(
            parse_version_flavour("iptables v1.8.9 (legacy)\n"),
            Flavour::Legacy
        );
        assert_eq!(parse_version_flavour("iptables v1.6.1\n"), Flavour::Legacy);
    }
}
