//! Name lookups with the target's resolver configuration: its `/etc/hosts` first, then its
//! nameservers with its search list and `ndots`, as glibc in the pod would.

use crate::target::ResolverFiles;
use anyhow::{Context, Result};
use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::error::{ResolveError as HickoryError, ResolveErrorKind};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use mirrord_protocol::net::{Family, ResolveError, ResolveResult, Resolved};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

pub struct PodResolver {
    v4: TokioAsyncResolver,
    v6: TokioAsyncResolver,
    /// Lower-cased name → addresses, from the target's `/etc/hosts`.
    hosts: HashMap<String, Vec<IpAddr>>,
}

impl PodResolver {
    pub fn new(files: &ResolverFiles) -> Result<PodResolver> {
        let (config, mut opts) =
            hickory_resolver::system_conf::parse_resolv_conf(&files.resolv_conf)
                .with_context(|| format!("parsing {}", files.origin.display()))?;
        // The agent's own /etc/hosts is not the target's; ours is applied below.
        opts.use_hosts_file = false;
        // glibc defaults: 5 s per try, 2 tries. Keep failures fast enough for an interactive
        // program while still surviving one lost datagram.
        opts.timeout = opts.timeout.min(Duration::from_secs(2));
        opts.attempts = opts.attempts.clamp(1, 2);
        let mut v4_opts = opts.clone();
        v4_opts.ip_strategy = LookupIpStrategy::Ipv4Only;
        let mut v6_opts = opts;
        v6_opts.ip_strategy = LookupIpStrategy::Ipv6Only;
        Ok(PodResolver {
            v4: TokioAsyncResolver::tokio(config.clone(), v4_opts),
            v6: TokioAsyncResolver::tokio(config, v6_opts),
            hosts: parse_hosts(&files.hosts),
        })
    }

    pub async fn resolve(&self, name: &str, family: Family) -> ResolveResult {
        let name = name.trim_end_matches('.');
        if name.is_empty() || name.len() > 253 {
            return Err(ResolveError::NotFound);
        }
        if let Some(addrs) = self.hosts.get(&name.to_ascii_lowercase()) {
            let addresses: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|a| family_matches(family, a))
                .collect();
            if !addresses.is_empty() {
                return Ok(Resolved {
                    canonical_name: name.to_owned(),
                    addresses,
                });
            }
        }
        match family {
            Family::V4 => lookup(&self.v4, name).await,
            Family::V6 => lookup(&self.v6, name).await,
            Family::Any => {
                let (a, aaaa) = tokio::join!(lookup(&self.v4, name), lookup(&self.v6, name));
                merge(a, aaaa)
            }
        }
    }
}

fn family_matches(family: Family, a: &IpAddr) -> bool {
    match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    }
}

async fn lookup(resolver: &TokioAsyncResolver, name: &str) -> ResolveResult {
    match resolver.lookup_ip(name).await {
        Ok(lookup) => {
            let addresses: Vec<IpAddr> = lookup.iter().collect();
            if addresses.is_empty() {
                return Err(ResolveError::NotFound);
            }
            let canonical_name = lookup
                .query()
                .name()
                .to_utf8()
                .trim_end_matches('.')
                .to_owned();
            Ok(Resolved {
                canonical_name,
                addresses,
            })
        }
        Err(e) => Err(map_error(e)),
    }
}

/// Both families asked: an answer from either is an answer; "not found" only if neither has one.
fn merge(a: ResolveResult, b: ResolveResult) -> ResolveResult {
    match (a, b) {
        (Ok(mut a), Ok(b)) => {
            a.addresses.extend(b.addresses);
            Ok(a)
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
        // One family says "no such name" while the other could not ask: glibc reports the name
        // as missing, and so do we.
        (Err(ResolveError::NotFound), Err(_)) | (Err(_), Err(ResolveError::NotFound)) => {
            Err(ResolveError::NotFound)
        }
        (Err(e), Err(_)) => Err(e),
    }
}

fn map_error(e: HickoryError) -> ResolveError {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain | ResponseCode::NoError => ResolveError::NotFound,
            code => ResolveError::Temporary(format!("nameserver answered {code}")),
        },
        ResolveErrorKind::Timeout => ResolveError::Temporary("timed out".into()),
        _ => ResolveError::Temporary(e.to_string()),
    }
}

fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in words {
            let entry = map.entry(name.to_ascii_lowercase()).or_default();
            if !entry.contains(&ip) {
                entry.push(ip);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_is_parsed() {
        let m = parse_hosts(
            "127.0.0.1 localhost\n# c\n10.0.0.1  Db db.local # trailing\n::1 localhost\nbad line\n",
        );
        assert_eq!(m["db"], vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(m["localhost"].len(), 2);
        assert!(!m.contains_key("bad"));
    }

    #[test]
    fn merging_families() {
        let ok = Ok(Resolved {
            canonical_name: "a".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
        });
        assert!(merge(ok.clone(), Err(ResolveError::NotFound)).is_ok());
        assert_eq!(
            merge(Err(ResolveError::NotFound), Err(ResolveError::NotFound)),
            Err(ResolveError::NotFound)
        );
        assert!(matches!(
            merge(
                Err(ResolveError::Temporary("x".into())),
                Err(ResolveError::Temporary("y".into()))
            ),
            Err(ResolveError::Temporary(_))
        ));
    }
}
