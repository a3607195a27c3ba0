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
    /// The target's search list (without trailing dots) and `ndots`. The agent walks the search
    /// candidates itself, as glibc's `res_search` does, so that it can tell "no such name" from
    /// "no address of this family" and so that the A and AAAA answers of one lookup come from
    /// the same candidate.
    search: Vec<String>,
    ndots: usize,
}

/// Why one candidate name gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Miss {
    /// NXDOMAIN.
    NoName,
    /// The name exists, without a record of the wanted family.
    NoData,
    /// The nameserver answered with an error (SERVFAIL, REFUSED): glibc tries the next
    /// candidate.
    ServerError(String),
    /// No answer at all (timeout, unreachable): glibc stops the walk.
    NoAnswer(String),
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
        let ndots = opts.ndots;
        // `domain` is the search list when there is no `search` line (resolv.conf(5)).
        let search: Vec<String> = if config.search().is_empty() {
            config.domain().into_iter().cloned().collect::<Vec<_>>()
        } else {
            config.search().to_vec()
        }
        .iter()
        .map(|n| n.to_utf8().trim_end_matches('.').to_owned())
        .filter(|n| !n.is_empty())
        .collect();
        // The resolvers only ever get fully qualified candidates.
        let servers = hickory_resolver::config::ResolverConfig::from_parts(
            None,
            Vec::new(),
            config.name_servers().to_vec(),
        );
        let mut v4_opts = opts.clone();
        v4_opts.ip_strategy = LookupIpStrategy::Ipv4Only;
        let mut v6_opts = opts;
        v6_opts.ip_strategy = LookupIpStrategy::Ipv6Only;
        Ok(PodResolver {
            v4: TokioAsyncResolver::tokio(servers.clone(), v4_opts),
            v6: TokioAsyncResolver::tokio(servers, v6_opts),
            hosts: parse_hosts(&files.hosts),
            search,
            ndots,
        })
    }

    /// The name of `ip`: the target's `/etc/hosts` first, then a PTR query to its nameservers.
    pub async fn reverse(&self, ip: IpAddr) -> Result<String, ResolveError> {
        if let Some(name) = self
            .hosts
            .iter()
            .filter(|(_, addrs)| addrs.contains(&ip))
            .map(|(name, _)| name)
            .min()
        {
            return Ok(name.clone());
        }
        let resolver = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        match resolver.reverse_lookup(ip).await {
            Ok(lookup) => lookup
                .iter()
                .next()
                .map(|n| n.to_utf8().trim_end_matches('.').to_owned())
                .ok_or(ResolveError::NotFound),
            Err(e) => Err(match map_error(e) {
                Miss::NoName | Miss::NoData => ResolveError::NotFound,
                Miss::ServerError(m) | Miss::NoAnswer(m) => ResolveError::Temporary(m),
            }),
        }
    }

    pub async fn resolve(&self, name: &str, family: Family) -> ResolveResult {
        let absolute = name.ends_with('.');
        let name = name.trim_end_matches('.');
        // What no nameserver could answer (empty labels, labels over 63 bytes, ...) is a name
        // that does not exist, as for glibc.
        if name.is_empty() || name.len() > 253 || hickory_resolver::Name::from_utf8(name).is_err() {
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
        let candidates = search_candidates(name, absolute, &self.search, self.ndots);
        let as_is_first = candidates.first().is_some_and(|c| c == name);
        let mut first_miss = None;
        let mut nodata = false;
        let mut server_error = None;
        let mut last = Miss::NoName;
        for (i, candidate) in candidates.iter().enumerate() {
            let fqdn = format!("{candidate}.");
            let miss = match family {
                Family::V4 => lookup(&self.v4, &fqdn).await,
                Family::V6 => lookup(&self.v6, &fqdn).await,
                Family::Any => {
                    let (a, aaaa) = tokio::join!(lookup(&self.v4, &fqdn), lookup(&self.v6, &fqdn));
                    merge(a, aaaa)
                }
            };
            let miss = match miss {
                Ok(found) => return Ok(found),
                Err(m) => m,
            };
            tracing::debug!(candidate, ?miss, "no address");
            if i == 0 && as_is_first {
                first_miss = Some(miss.clone());
            }
            match &miss {
                Miss::NoData => nodata = true,
                Miss::ServerError(e) => server_error = Some(e.clone()),
                Miss::NoAnswer(_) => {
                    last = miss;
                    break;
                }
                Miss::NoName => {}
            }
            last = miss;
        }
        // glibc's precedence: the error of a name tried as is first, then "exists without
        // this family", then a server error, then the last answer.
        let miss = match (first_miss, nodata, server_error) {
            (Some(m), _, _) => m,
            (None, true, _) => Miss::NoData,
            (None, false, Some(e)) => Miss::ServerError(e),
            (None, false, None) => last,
        };
        Err(match miss {
            Miss::NoName => ResolveError::NotFound,
            Miss::NoData => ResolveError::NoData,
            Miss::ServerError(e) | Miss::NoAnswer(e) => ResolveError::Temporary(e),
        })
    }
}

/// The names glibc's `res_search` tries for `name`, in order: as is first when it has at least
/// `ndots` dots, then with each search domain, then as is (unless tried already). A name written
/// with a trailing dot is only tried as is.
fn search_candidates(name: &str, absolute: bool, search: &[String], ndots: usize) -> Vec<String> {
    if absolute {
        return vec![name.to_owned()];
    }
    let dots = name.matches('.').count();
    let mut out = Vec::with_capacity(search.len() + 1);
    if dots >= ndots {
        out.push(name.to_owned());
    }
    for domain in search {
        out.push(format!("{name}.{domain}"));
    }
    if dots < ndots {
        out.push(name.to_owned());
    }
    out
}

fn family_matches(family: Family, a: &IpAddr) -> bool {
    match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    }
}

/// Looks up one fully qualified name (no search list).
async fn lookup(resolver: &TokioAsyncResolver, fqdn: &str) -> Result<Resolved, Miss> {
    match resolver.lookup_ip(fqdn).await {
        Ok(lookup) => {
            let addresses: Vec<IpAddr> = lookup.iter().collect();
            if addresses.is_empty() {
                return Err(Miss::NoData);
            }
            // The owner of the address records: the end of a CNAME chain, like glibc's
            // canonical name.
            let owner = lookup
                .as_lookup()
                .record_iter()
                .find(|r| r.data().is_some_and(|d| d.ip_addr().is_some()))
                .map(|r| r.name().clone())
                .unwrap_or_else(|| lookup.query().name().clone());
            Ok(Resolved {
                canonical_name: owner.to_utf8().trim_end_matches('.').to_owned(),
                addresses,
            })
        }
        Err(e) => Err(map_error(e)),
    }
}

/// Both families asked for one candidate: an answer from either is an answer.
fn merge(a: Result<Resolved, Miss>, b: Result<Resolved, Miss>) -> Result<Resolved, Miss> {
    match (a, b) {
        (Ok(mut a), Ok(b)) => {
            a.addresses.extend(b.addresses);
            Ok(a)
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
        // One family says "no such name": the name is missing whatever the other says.
        (Err(Miss::NoName), Err(_)) | (Err(_), Err(Miss::NoName)) => Err(Miss::NoName),
        (Err(Miss::NoData), Err(Miss::NoData)) => Err(Miss::NoData),
        (Err(e @ (Miss::ServerError(_) | Miss::NoAnswer(_))), Err(_)) => Err(e),
        (Err(_), Err(e)) => Err(e),
    }
}

fn map_error(e: HickoryError) -> Miss {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => Miss::NoName,
            ResponseCode::NoError => Miss::NoData,
            code => Miss::ServerError(format!("nameserver answered {code}")),
        },
        ResolveErrorKind::Timeout => Miss::NoAnswer("timed out".into()),
        _ => Miss::NoAnswer(e.to_string()),
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
        assert!(merge(ok.clone(), Err(Miss::NoData)).is_ok());
        assert_eq!(
            merge(Err(Miss::NoData), Err(Miss::NoName)),
            Err(Miss::NoName)
        );
        assert_eq!(
            merge(Err(Miss::NoData), Err(Miss::NoData)),
            Err(Miss::NoData)
        );
        assert!(matches!(
            merge(Err(Miss::NoAnswer("x".into())), Err(Miss::NoData)),
            Err(Miss::NoAnswer(_))
        ));
    }

    #[test]
    fn search_candidates_follow_ndots() {
        let search = vec![
            "payments.svc.cluster.local".to_string(),
            "cluster.local".to_string(),
        ];
        assert_eq!(
            search_candidates("svc", false, &search, 5),
            ["svc.payments.svc.cluster.local", "svc.cluster.local", "svc"]
        );
        assert_eq!(
            search_candidates("a.b", false, &search, 1),
            ["a.b", "a.b.payments.svc.cluster.local", "a.b.cluster.local"]
        );
        assert_eq!(search_candidates("a.b", true, &search, 5), ["a.b"]);
    }
}
