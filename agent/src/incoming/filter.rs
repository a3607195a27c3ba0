//! HTTP filters of filtered steals: compiled once per subscription, matched per request.

use anyhow::{Context, Result};
use hyper::Request;
use mirrord_protocol::agent::HttpFilter;

/// A filter with its regexes compiled.
pub enum CompiledFilter {
    Header(regex::Regex),
    Path(regex::Regex),
    Method(String),
    AllOf(Vec<CompiledFilter>),
    AnyOf(Vec<CompiledFilter>),
}

impl CompiledFilter {
    pub fn compile(f: &HttpFilter) -> Result<CompiledFilter> {
        let re = |s: &str| {
            regex::Regex::new(s).with_context(|| format!("invalid regular expression {s:?}"))
        };
        Ok(match f {
            HttpFilter::Header(r) => CompiledFilter::Header(re(r)?),
            HttpFilter::Path(r) => CompiledFilter::Path(re(r)?),
            HttpFilter::Method(m) => CompiledFilter::Method(m.to_ascii_uppercase()),
            HttpFilter::AllOf(v) => {
                CompiledFilter::AllOf(v.iter().map(Self::compile).collect::<Result<_>>()?)
            }
            HttpFilter::AnyOf(v) => {
                CompiledFilter::AnyOf(v.iter().map(Self::compile).collect::<Result<_>>()?)
            }
        })
    }

    fn matches<B>(&self, req: &Request<B>) -> bool {
        match self {
            CompiledFilter::Header(re) => req.headers().iter().any(|(name, value)| {
                value
                    .to_str()
                    .is_ok_and(|v| re.is_match(&format!("{}: {v}", name.as_str())))
            }),
            CompiledFilter::Path(re) => {
                re.is_match(req.uri().path())
                    || req
                        .uri()
                        .path_and_query()
                        .is_some_and(|pq| re.is_match(pq.as_str()))
            }
            CompiledFilter::Method(m) => req.method().as_str().eq_ignore_ascii_case(m),
            CompiledFilter::AllOf(v) => v.iter().all(|f| f.matches(req)),
            CompiledFilter::AnyOf(v) => v.iter().any(|f| f.matches(req)),
        }
    }

    /// The filter as the user wrote it, for the traffic view.
    pub fn describe(&self) -> String {
        let list = |v: &[CompiledFilter]| {
            v.iter()
                .map(|f| f.describe())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            CompiledFilter::Header(re) => format!("header: {}", re.as_str()),
            CompiledFilter::Path(re) => format!("path: {}", re.as_str()),
            CompiledFilter::Method(m) => format!("method: {m}"),
            CompiledFilter::AllOf(v) => format!("all_of({})", list(v)),
            CompiledFilter::AnyOf(v) => format!("any_of({})", list(v)),
        }
    }

    /// Whether the filter names Kubernetes probes explicitly (then it may take them).
    fn names_probes(&self) -> bool {
        match self {
            CompiledFilter::Header(re) | CompiledFilter::Path(re) => {
                re.as_str().contains("kube-probe")
            }
            CompiledFilter::Method(_) => false,
            CompiledFilter::AllOf(v) | CompiledFilter::AnyOf(v) => {
                v.iter().any(|f| f.names_probes())
            }
        }
    }
}

/// Whether a stealer with `filter` takes `req`. Health checks of the kubelet stay with the
/// target unless the filter names them: stealing them would make Kubernetes restart the pod.
pub(super) fn matches<B>(filter: Option<&CompiledFilter>, req: &Request<B>) -> bool {
    let probe = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("kube-probe/"));
    match filter {
        None => !probe,
        Some(f) => (!probe || f.names_probes()) && f.matches(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn f(filter: HttpFilter) -> CompiledFilter {
        CompiledFilter::compile(&filter).unwrap()
    }

    #[test]
    fn filters_match_requests() {
        let alice = req("GET", "/api/x?y=1", &[("X-User", "alice")]);
        let bob = req("POST", "/other", &[("x-user", "bob")]);
        let h = f(HttpFilter::Header("x-user: alice".into()));
        assert!(matches(Some(&h), &alice));
        assert!(!matches(Some(&h), &bob));
        let p = f(HttpFilter::Path("^/api/".into()));
        assert!(matches(Some(&p), &alice) && !matches(Some(&p), &bob));
        let m = f(HttpFilter::Method("post".into()));
        assert!(matches(Some(&m), &bob) && !matches(Some(&m), &alice));
        let all = f(HttpFilter::AllOf(vec![
            HttpFilter::Header("x-user: bob".into()),
            HttpFilter::Method("POST".into()),
        ]));
        assert!(matches(Some(&all), &bob) && !matches(Some(&all), &alice));
        let any = f(HttpFilter::AnyOf(vec![
            HttpFilter::Header("x-user: bob".into()),
            HttpFilter::Path("^/api".into()),
        ]));
        assert!(matches(Some(&any), &bob) && matches(Some(&any), &alice));
    }

    #[test]
    fn probes_stay_with_the_target_unless_named() {
        let probe = req("GET", "/healthz", &[("user-agent", "kube-probe/1.29")]);
        assert!(!matches(None, &probe));
        assert!(!matches(
            Some(&f(HttpFilter::Path("/healthz".into()))),
            &probe
        ));
        assert!(matches(
            Some(&f(HttpFilter::Header("user-agent: kube-probe/.*".into()))),
            &probe
        ));
        assert!(matches(None, &req("GET", "/", &[("user-agent", "curl/8")])));
    }
}
