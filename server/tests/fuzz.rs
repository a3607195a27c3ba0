//! Randomised runs of the parsers that read what users and peers send: configuration files
//! (JSON, TOML, YAML) and the HTTP sniffer. Each must return a value or an error for any input,
//! never panic. CI runs a short version; `scripts/fuzz` runs each with `MIRRORD_FUZZ_CASES`
//! (100,000 there).

use mirrord_server::config_file;
use mirrord_server::http_sniff::{Head, Seen, Sniffer};
use proptest::prelude::*;
use std::path::Path;

/// Cases per property: `MIRRORD_FUZZ_CASES`, else a number CI can afford.
fn cases() -> u32 {
    std::env::var("MIRRORD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// One edit of an input: what to do, where (wrapped to the input's length), with which byte.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Copies a run of the input elsewhere (grows nesting, repeats keys).
    Splice(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| Edit::Splice(a, b, c)),
    ]
}

/// Interesting bytes for text formats: structure, quotes, escapes, multi-byte starts.
fn pick(b: u8) -> u8 {
    const SPECIAL: &[u8] = b"{}[]\":,\\\n\r\t =#'-.0e\x00\xc3\xff";
    if b & 1 == 0 {
        SPECIAL[(b as usize >> 1) % SPECIAL.len()]
    } else {
        b
    }
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let n = v.len().max(1);
        match *e {
            Edit::Flip(i, b) if !v.is_empty() => v[i % n] = pick(b),
            Edit::Insert(i, b) => v.insert(i % (v.len() + 1), pick(b)),
            Edit::Remove(i) if !v.is_empty() => {
                v.remove(i % n);
            }
            Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
            Edit::Splice(a, len, at) if !v.is_empty() => {
                let a = a % n;
                let end = (a + len % 64).min(v.len());
                let run = v[a..end].to_vec();
                let at = at % (v.len() + 1);
                v.splice(at..at, run);
            }
            _ => {}
        }
    }
    v
}

const JSON_SEEDS: &[&str] = &[
    r#"{"target": {"path": "pod/api/container/main", "namespace": "payments"},
        "feature": {"network": {
            "incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: alice", "ports": [80]},
                         "port_mapping": [[8080, 80]], "ignore_ports": [9229]},
            "outgoing": {"tcp": true, "udp": false, "filter": {"local": ["127.0.0.1:5432", "tcp://10.0.0.0/8", "db.internal", ":6379", "[::1]:80"]}},
            "dns": {"enabled": true, "filter": {"remote": ["*.svc.cluster.local"]}}}},
        "agent": {"ttl": 30, "namespace": "mirrord", "ephemeral": false}}"#,
    r#"{"target": "pid/42", "feature": {"network": {"incoming": "mirror", "outgoing": {"ignore_localhost": true}}}}"#,
    r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"all_of": [{"path": "^/api"}, {"method": "POST"}]}}}}}"#,
    r#"{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": {"any_of": [{"header": "x-a: 1"}, {"path": "/(a|b)+$"}]}}}}}"#,
];

const TOML_SEED: &str = r#"target = "netns/pod"
[feature.network.incoming]
mode = "steal"
port_mapping = [[8080, 80]]
[feature.network.incoming.http_filter]
header_filter = "x-user: alice"
[feature.network.outgoing.filter]
local = ["127.0.0.1:5432", "*.corp"]
"#;

const YAML_SEED: &str = "target:\n  path: deployment/api\n  namespace: payments\nfeature:\n  network:\n    incoming:\n      mode: mirror\n      ignore_ports: [9229, 5005]\n    dns:\n      enabled: true\n";

/// Every error from a file with text in it points into the file (1-based line and column), so
/// an editor can show it.
fn check_config(path: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Err(e) = config_file::parse(Path::new(path), &text) {
        assert!(!e.message.is_empty(), "{path}: an error without a message");
        if e.line > 0 {
            // Lines as editors and YAML count them: CRLF, LF or a lone CR ends a line.
            let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
            assert!(
                e.line <= lines + 1,
                "{path}: line {} of a {lines}-line text: {e}",
                e.line
            );
        }
    }
}

/// Valid HTTP/1 streams in both directions: lengths, chunks, HEAD, pipelining, upgrades.
const REQUEST_SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: pod\r\nx-user: alice\r\n\r\nPOST /api HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\n\r\nhelloHEAD /h HTTP/1.1\r\n\r\n",
    b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
];
const RESPONSE_SEEDS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until close",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
];

/// Feeds `bytes` to a sniffer in pieces cut at `cuts` (positions wrapped to the length).
fn sniff(requests: bool, bytes: &[u8], cuts: &[usize]) -> Vec<Seen> {
    let mut s = Sniffer::new(requests);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut seen = Vec::new();
    let mut from = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        seen.extend(s.feed(&bytes[from..p]));
        from = p;
    }
    seen
}

fn heads(seen: &[Seen]) -> Vec<Head> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Head(h) => Some(h.clone()),
            Seen::Body(_) => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn json_config_files_never_panic(seed in 0..JSON_SEEDS.len(), edits in prop::collection::vec(edit(), 0..12)) {
        check_config("mirrord.json", &apply(JSON_SEEDS[seed].as_bytes(), &edits));
    }

    #[test]
    fn toml_config_files_never_panic(edits in prop::collection::vec(edit(), 0..12)) {
        check_config("mirrord.toml", &apply(TOML_SEED.as_bytes(), &edits));
    }

    #[test]
    fn yaml_config_files_never_panic(edits in prop::collection::vec(edit(), 0..12)) {
        check_config("mirrord.yaml", &apply(YAML_SEED.as_bytes(), &edits));
    }

    #[test]
    fn random_text_as_config_never_panics(text in ".{0,300}") {
        check_config("a.json", text.as_bytes());
        check_config("a.toml", text.as_bytes());
        check_config("a.yaml", text.as_bytes());
    }

    /// Where a stream is cut never changes what the sniffer sees in it.
    #[test]
    fn sniffer_sees_the_same_heads_however_the_stream_is_cut(
        req in any::<bool>(),
        seed in 0..3usize,
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes = if req { REQUEST_SEEDS[seed] } else { RESPONSE_SEEDS[seed] };
        let whole = heads(&sniff(req, bytes, &[]));
        prop_assert!(!whole.is_empty());
        prop_assert_eq!(heads(&sniff(req, bytes, &cuts)), whole);
    }

    #[test]
    fn sniffer_never_panics_on_mutated_streams(
        req in any::<bool>(),
        seed in 0..3usize,
        edits in prop::collection::vec(edit(), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let seeds = if req { REQUEST_SEEDS } else { RESPONSE_SEEDS };
        let bytes = apply(seeds[seed], &edits);
        let seen = sniff(req, &bytes, &cuts);
        // A body preview is bounded whatever the stream claims.
        for s in &seen {
            if let Seen::Body(b) = s {
                prop_assert!(b.len() <= mirrord_server::http_sniff::BODY_PREVIEW);
            }
        }
    }

    #[test]
    fn sniffer_never_panics_on_random_bytes(req in any::<bool>(), bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = sniff(req, &bytes, &[bytes.len() / 2]);
    }
}
