//! The nft backend: one `inet` table per agent. Changes go through `nft -f -` scripts, so each is
//! one atomic transaction.

use super::exec::{args, Program};
use super::AGENT_MARK;
use anyhow::{Context, Result};

/// Chain holding one redirect rule per port (`redirect` is an nft keyword, hence `ports`).
pub const PORTS_CHAIN: &str = "ports";
/// Priority of our base chains: `dstnat - 1`, just before iptables' nat chains (-100).
pub const PRIORITY: i32 = -101;

/// Tables iptables-nft creates (families ip and ip6); every other table is "foreign".
const IPTABLES_NFT_TABLES: &[&str] = &["nat", "filter", "mangle", "raw", "security"];

pub struct Nft {
    program: Program,
    table: String,
}

impl Nft {
    pub fn new(program: Program, table: String) -> Nft {
        Nft { program, table }
    }

    fn script(&self, script: &str) -> Result<String> {
        self.program
            .run_with_input(&args(["-f", "-"]), Some(script))
    }

    /// Creates the table afresh (replacing one of the same name) with its three chains.
    pub fn setup(&self) -> Result<()> {
        self.script(&setup_script(&self.table))
            .with_context(|| format!("creating the nft table inet {}", self.table))?;
        Ok(())
    }

    fn rules(&self) -> Result<Vec<PortRule>> {
        let out = self.program.run(&args([
            "-a",
            "list",
            "chain",
            "inet",
            &self.table,
            PORTS_CHAIN,
        ]))?;
        Ok(parse_port_rules(&out))
    }

    pub fn ports(&self) -> Result<Vec<(u16, u16)>> {
        Ok(self
            .rules()?
            .into_iter()
            .map(|r| (r.port, r.to_port))
            .collect())
    }

    pub fn add(&self, port: u16, to_port: u16) -> Result<()> {
        let rules = self.rules()?;
        if let Some(script) = add_script(&self.table, &rules, port, to_port) {
            self.script(&script)?;
        }
        Ok(())
    }

    pub fn remove(&self, port: u16) -> Result<()> {
        let rules = self.rules()?;
        let script: String = rules
            .iter()
            .filter(|r| r.port == port)
            .map(|r| delete_rule_line(&self.table, r.handle))
            .collect();
        if !script.is_empty() {
            self.script(&script)?;
        }
        Ok(())
    }

    /// Deletes the table if it exists (only ours: the name is the agent's).
    pub fn cleanup(&self) -> Result<()> {
        let listed = self.program.run(&args(["list", "tables"]))?;
        self.delete_if_listed(&listed)
    }

    /// [`Nft::cleanup`], where nft failing to list tables (no nf_tables here) means there is
    /// nothing to remove.
    pub fn cleanup_if_listable(&self) -> Result<()> {
        match self.program.run(&args(["list", "tables"])) {
            Ok(listed) => self.delete_if_listed(&listed),
            Err(e) => {
                tracing::debug!("{e:#}; nothing to remove there");
                Ok(())
            }
        }
    }

    fn delete_if_listed(&self, listed: &str) -> Result<()> {
        if !parse_tables(listed)
            .iter()
            .any(|(family, name)| family == "inet" && *name == self.table)
        {
            return Ok(());
        }
        // `add` first makes the delete idempotent within the transaction, should another
        // cleanup have won the race since the listing.
        self.script(&format!(
            "add table inet {t}\ndelete table inet {t}\n",
            t = self.table
        ))
        .with_context(|| format!("deleting the nft table inet {}", self.table))?;
        Ok(())
    }
}

pub fn setup_script(table: &str) -> String {
    let match_local = "meta l4proto tcp fib daddr type local";
    format!(
        "add table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain {PORTS_CHAIN} {{\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority {PRIORITY}; policy accept;\n\
         \t\t{match_local} jump {PORTS_CHAIN}\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority {PRIORITY}; policy accept;\n\
         \t\t{match_local} meta mark != {AGENT_MARK:#010x} jump {PORTS_CHAIN}\n\
         \t}}\n\
         }}\n"
    )
}

fn delete_rule_line(table: &str, handle: u64) -> String {
    format!("delete rule inet {table} {PORTS_CHAIN} handle {handle}\n")
}

/// The transaction `add` needs: the new rule first, then the deletion of the port's other
/// rules; `None` when exactly the wanted rule is already there.
pub fn add_script(table: &str, rules: &[PortRule], port: u16, to_port: u16) -> Option<String> {
    let mut keep_found = false;
    let mut script = String::new();
    let mut deletes = String::new();
    for r in rules.iter().filter(|r| r.port == port) {
        if r.to_port == to_port && !keep_found {
            keep_found = true;
        } else {
            deletes.push_str(&delete_rule_line(table, r.handle));
        }
    }
    if !keep_found {
        script.push_str(&format!(
            "add rule inet {table} {PORTS_CHAIN} tcp dport {port} redirect to :{to_port}\n"
        ));
    }
    script.push_str(&deletes);
    (!script.is_empty()).then_some(script)
}

/// A `tcp dport P redirect to :T # handle H` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub port: u16,
    pub to_port: u16,
    pub handle: u64,
}

/// The redirect rules of `nft -a list chain ...` output.
pub fn parse_port_rules(text: &str) -> Vec<PortRule> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |w: &str| {
                words
                    .windows(2)
                    .find(|pair| pair[0] == w)
                    .map(|pair| pair[1])
            };
            let port = after("dport")?.parse().ok()?;
            if !words.windows(2).any(|p| p == ["redirect", "to"]) {
                return None;
            }
            let to_port = after("to")?.trim_start_matches(':').parse().ok()?;
            let handle = after("handle")?.parse().ok()?;
            Some(PortRule {
                port,
                to_port,
                handle,
            })
        })
        .collect()
}

/// `(family, name)` of every `table FAMILY NAME` line of `nft list tables`.
pub fn parse_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            (w.next()? == "table").then_some(())?;
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Tables (as `family name`) of the current namespace that have a nat base chain and are not
/// iptables-nft's. Fails when nft cannot list the ruleset (not installed, no nf_tables).
pub fn foreign_nat_tables(program: &Program) -> Result<Vec<String>> {
    let out = program.run(&args(["-j", "list", "chains"]))?;
    parse_foreign_nat_tables(&out)
}

pub fn parse_foreign_nat_tables(json: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("parsing the JSON of `nft -j list chains`")?;
    let mut tables = Vec::new();
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    for item in items {
        let Some(chain) = item.get("chain") else {
            continue;
        };
        let s = |k: &str| chain.get(k).and_then(|x| x.as_str()).unwrap_or_default();
        if s("type") != "nat" {
            continue;
        }
        let (family, table) = (s("family"), s("table"));
        let iptables_nft = matches!(family, "ip" | "ip6") && IPTABLES_NFT_TABLES.contains(&table);
        let name = format!("{family} {table}");
        if !iptables_nft && !tables.contains(&name) {
            tables.push(name);
        }
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_script_is_one_replacing_transaction() {
        let s = setup_script("mirrord_ab");
        assert!(s.starts_with("add table inet mirrord_ab\ndelete table inet mirrord_ab\n"));
        assert!(s.contains("type nat hook prerouting priority -101; policy accept;"));
        assert!(s.contains("type nat hook output priority -101; policy accept;"));
        assert!(s.contains("meta l4proto tcp fib daddr type local jump ports"));
        assert!(
            s.contains("meta l4proto tcp fib daddr type local meta mark != 0x6d726464 jump ports")
        );
    }

    const LISTING: &str = "table inet mirrord_ab {
\tchain ports { # handle 1
\t\ttcp dport 80 redirect to :8080 # handle 6
\t\ttcp dport 81 redirect to :9000 # handle 7
\t\ttcp dport 80 redirect to :7000 # handle 9
\t}
}
";

    #[test]
    fn parses_port_rules() {
        assert_eq!(
            parse_port_rules(LISTING),
            [
                PortRule {
                    port: 80,
                    to_port: 8080,
                    handle: 6
                },
                PortRule {
                    port: 81,
                    to_port: 9000,
                    handle: 7
                },
                PortRule {
                    port: 80,
                    to_port: 7000,
                    handle: 9
                },
            ]
        );
        assert!(parse_port_rules("tcp dport 80 accept # handle 3").is_empty());
    }

    #[test]
    fn add_scripts() {
        let rules = parse_port_rules(LISTING);
        assert_eq!(
            add_script("t", &rules, 80, 8080).unwrap(),
            "delete rule inet t ports handle 9\n"
        );
        assert_eq!(add_script("t", &rules, 81, 9000), None);
        assert_eq!(
            add_script("t", &rules, 81, 9001).unwrap(),
            "add rule inet t ports tcp dport 81 redirect to :9001\n\
             delete rule inet t ports handle 7\n"
        );
        assert_eq!(
            add_script("t", &[], 82, 9002).unwrap(),
            "add rule inet t ports tcp dport 82 redirect to :9002\n"
        );
    }

    #[test]
    fn parses_tables() {
        assert_eq!(
            parse_tables("table ip nat\ntable inet mirrord_a-b\n"),
            [
                ("ip".to_owned(), "nat".to_owned()),
                ("inet".to_owned(), "mirrord_a-b".to_owned())
            ]
        );
    }

    #[test]
    fn foreign_tables() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "type": "nat", "hook": "prerouting", "prio": -100}},
            {"chain": {"family": "ip", "table": "kube-proxy", "name": "nat-prerouting", "type": "nat", "hook": "prerouting", "prio": -100}},
            {"chain": {"family": "ip", "table": "kube-proxy", "name": "nat-output", "type": "nat", "hook": "output", "prio": -100}},
            {"chain": {"family": "inet", "table": "nat", "name": "pre", "type": "nat", "hook": "prerouting", "prio": 0}},
            {"chain": {"family": "inet", "table": "filter", "name": "input", "type": "filter", "hook": "input", "prio": 0}},
            {"chain": {"family": "inet", "table": "x", "name": "regular"}}]}"#;
        assert_eq!(
            parse_foreign_nat_tables(json).unwrap(),
            ["ip kube-proxy", "inet nat"]
        );
        let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#;
        assert!(parse_foreign_nat_tables(empty).unwrap().is_empty());
        assert!(parse_foreign_nat_tables("not json").is_err());
    }
}
