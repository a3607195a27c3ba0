//! Compatibility with mirrord's configuration files: the keys of mirrord's schema that this
//! product accepts but does not act on, and the "did you mean" hint for keys no schema knows.
//!
//! An ignored key is a real field of its configuration struct (type [`Ignored`]), so strict
//! deserialization, the JSON Schema, completion and hover all know it; [`IGNORED_KEYS`] lists the
//! same keys by path so callers can warn about each one present in a file.

use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize, Serializer};

/// The documentation every ignored key carries (schema, hover, completion).
pub const IGNORED_DOC: &str = "Accepted for compatibility with mirrord; ignored by this product.";

/// The value of a key this product accepts but ignores: any JSON value mirrord allows (a
/// boolean, a string, a list or an object). It is never serialized (fields holding it are
/// `skip_serializing`), so the layer's copy of the configuration does not carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

impl Serialize for Ignored {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Ignored {
    fn schema_name() -> String {
        "IgnoredForCompatibility".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::Schema::Object(schemars::schema::SchemaObject {
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some(IGNORED_DOC.to_owned()),
                ..Default::default()
            })),
            ..Default::default()
        })
    }
}

/// Every key of mirrord's schema (and of older mirrord versions) that is accepted and ignored,
/// as a dotted path from the root of the file.
///
/// Invariant: each path here is an [`Ignored`] field of the struct at that path, and every
/// `Ignored` field is listed here (the protocol tests check both directions through the schema).
pub const IGNORED_KEYS: &[&str] = &[
    // Root.
    "api",
    "baggage",
    "ci",
    "connect_tcp",
    "container",
    "experimental",
    "external_proxy",
    "internal_proxy",
    "key",
    "operator",
    "pause",
    "profile",
    "sip_binaries",
    "skip_build_tools",
    "skip_extra_build_tools",
    "skip_processes",
    "skip_sip",
    "startup_retry",
    "telemetry",
    "traceparent",
    "use_proxy",
    // agent
    "agent.check_out_of_pods",
    "agent.clean_iptables_on_start",
    "agent.disable_mesh_sidecar_injection",
    "agent.dns",
    "agent.exclude_from_mesh",
    "agent.flush_connections",
    "agent.inject_headers",
    "agent.jaq_time_limit",
    "agent.json_log",
    "agent.max_body_buffer_size",
    "agent.max_body_buffer_timeout",
    "agent.metrics",
    "agent.network_interface",
    "agent.nftables",
    "agent.priority_class",
    "agent.security_context",
    "agent.resources.claims",
    // feature
    "feature.capture_error_trace",
    "feature.copy_target",
    "feature.db_branches",
    "feature.fs",
    "feature.hostname",
    "feature.magic",
    "feature.preview",
    "feature.split_queues",
    "feature.env.load_from_process",
    "feature.env.mapping",
    "feature.network.ipv6",
    "feature.network.incoming.https_delivery.server_cert",
    "feature.network.incoming.http_header_filter",
    "feature.network.incoming.on_concurrent_steal",
    "feature.network.incoming.tls_delivery",
    "feature.network.incoming.http_filter.body_filter",
    "feature.network.incoming.http_filter.header_filter_jq",
    "feature.network.outgoing.unix_streams",
];

/// The ignored keys present in a parsed document (any format, as a JSON value), in document
/// order of their paths as listed in [`IGNORED_KEYS`].
pub fn ignored_keys_in(doc: &serde_json::Value) -> Vec<Vec<String>> {
    IGNORED_KEYS
        .iter()
        .filter_map(|path| {
            let parts: Vec<&str> = path.split('.').collect();
            let mut node = doc;
            for p in &parts {
                node = node.as_object()?.get(*p)?;
            }
            Some(parts.iter().map(|p| p.to_string()).collect())
        })
        .collect()
}

/// The closest of `candidates` to an unknown key, when it is close enough to be a typo.
pub fn did_you_mean<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = match unknown.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(unknown, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into a message with a
/// "did you mean" hint when one of the expected keys is close; other messages pass unchanged.
pub fn explain_unknown_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    match did_you_mean(unknown, &candidates) {
        Some(close) => format!(
            "unknown field `{unknown}` (in no mirrord configuration schema): did you mean `{close}`?"
        ),
        None => format!("unknown field `{unknown}` (in no mirrord configuration schema){expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_only_close_names() {
        assert_eq!(
            did_you_mean("incomming", &["incoming", "outgoing", "dns"]),
            Some("incoming")
        );
        assert_eq!(did_you_mean("nope", &["network", "env"]), None);
        let m = explain_unknown_field(
            "unknown field `incomming`, expected one of `incoming`, `outgoing`, `dns`",
        );
        assert!(m.contains("did you mean `incoming`?"), "{m}");
        let m = explain_unknown_field("unknown field `zzz`, expected `network`");
        assert!(
            m.contains("expected `network`") && !m.contains("did you mean"),
            "{m}"
        );
    }
}
