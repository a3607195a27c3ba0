//! The user's configuration (`.mirrord/mirrord.json`), as typed Rust values.
//!
//! The keys follow mirrord's own schema so existing files keep working. It lives in the protocol
//! crate because the resolved configuration crosses a process boundary: the server hands it to
//! the layer as JSON in `MIRRORD_CONFIG`.
//!
//! Every value is checked while it is deserialized (rule syntax, regexes, enum values, unknown
//! keys), so a parser that tracks positions (serde_json) reports each mistake with its line and
//! column.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

pub mod compat;
pub use compat::Ignored;

/// A whole configuration file.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrordConfig {
    /// The target: `pod/NAME[/container/C]`, `deployment/NAME[/container/C]`,
    /// `statefulset/NAME[/container/C]`, `replicaset/NAME`, `job/NAME`, `cronjob/NAME`,
    /// `service/NAME`, `rollout/NAME`, `targetless`, `pid/PID` or `netns/NAME`; or
    /// `{path, namespace}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetConfig>,
    /// Path of the kubeconfig file (default: `$MIRRORD_KUBECONFIG`, `$KUBECONFIG`, then
    /// `~/.kube/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use (default: `$MIRRORD_KUBE_CONTEXT`, then the file's
    /// current context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_context: Option<String>,
    /// Accept the API server's certificate without checking it (for clusters with self-signed
    /// certificates the kubeconfig does not name a CA for). Insecure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_invalid_certificates: Option<bool>,
    #[serde(default)]
    pub feature: FeatureConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub api: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub baggage: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub ci: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub connect_tcp: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub container: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub experimental: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub external_proxy: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub internal_proxy: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub key: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub operator: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub pause: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub profile: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub sip_binaries: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub skip_build_tools: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub skip_extra_build_tools: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub skip_processes: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub skip_sip: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub startup_retry: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub telemetry: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub traceparent: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub use_proxy: Option<Ignored>,
}

impl MirrordConfig {
    /// Parses a JSON document; errors carry serde_json's line and column.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// `target` as written: a path string, or `{path, namespace}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TargetConfig {
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetConfigMap {
    /// The target path, e.g. `pod/NAME` or `pid/PID`.
    #[serde(default)]
    path: Option<String>,
    /// Kubernetes namespace of the target.
    #[serde(default)]
    namespace: Option<String>,
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a target path such as \"pod/NAME\", or {\"path\", \"namespace\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetConfig, E> {
                crate::config::TargetPath::parse(v).map_err(E::custom)?;
                Ok(TargetConfig {
                    path: Some(v.to_owned()),
                    namespace: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetConfig, A::Error> {
                let m = TargetConfigMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if let Some(p) = &m.path {
                    TargetPath::parse(p).map_err(de::Error::custom)?;
                }
                Ok(TargetConfig {
                    path: m.path,
                    namespace: m.namespace,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A parsed target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPath {
    Pod {
        name: String,
        container: Option<String>,
    },
    Deployment {
        name: String,
        container: Option<String>,
    },
    StatefulSet {
        name: String,
        container: Option<String>,
    },
    ReplicaSet {
        name: String,
        container: Option<String>,
    },
    Job {
        name: String,
        container: Option<String>,
    },
    CronJob {
        name: String,
        container: Option<String>,
    },
    Service {
        name: String,
        container: Option<String>,
    },
    /// An Argo Rollout (`argoproj.io/v1alpha1`).
    Rollout {
        name: String,
        container: Option<String>,
    },
    /// An agent pod of its own with no target: outgoing traffic and DNS from inside the
    /// cluster, no incoming traffic.
    Targetless,
    /// Any process on this machine: the agent joins its network namespace.
    Pid(u32),
    /// A named network namespace (`ip netns`).
    Netns(String),
}

impl TargetPath {
    pub fn parse(s: &str) -> Result<TargetPath, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            format!(
                "invalid target {s:?}: expected pod/NAME[/container/C], deployment/NAME[/container/C], \
                 statefulset/NAME, replicaset/NAME, job/NAME, cronjob/NAME, service/NAME, \
                 rollout/NAME, targetless, pid/PID or netns/NAME"
            )
        };
        let named = |parts: &[&str]| -> Result<(String, Option<String>), String> {
            match parts {
                [name] if !name.is_empty() => Ok((name.to_string(), None)),
                [name, "container", c] if !name.is_empty() && !c.is_empty() => {
                    Ok((name.to_string(), Some(c.to_string())))
                }
                _ => Err(bad()),
            }
        };
        match parts.as_slice() {
            ["targetless"] => Ok(TargetPath::Targetless),
            ["pod", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::Pod { name, container })
            }
            ["deployment", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::Deployment { name, container })
            }
            ["statefulset", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::StatefulSet { name, container })
            }
            ["replicaset", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::ReplicaSet { name, container })
            }
            ["job", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::Job { name, container })
            }
            ["cronjob", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::CronJob { name, container })
            }
            ["service", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::Service { name, container })
            }
            ["rollout", rest @ ..] => {
                named(rest).map(|(name, container)| TargetPath::Rollout { name, container })
            }
            ["pid", pid] => pid
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 0)
                .map(TargetPath::Pid)
                .ok_or_else(|| format!("invalid target {s:?}: {pid:?} is not a process id")),
            ["netns", name] if valid_netns_name(name) => Ok(TargetPath::Netns(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl TargetPath {
    /// Whether the target lives in a Kubernetes cluster (targetless included: its agent is a
    /// pod of its own).
    pub fn is_kubernetes(&self) -> bool {
        !matches!(self, TargetPath::Pid(_) | TargetPath::Netns(_))
    }

    /// `(kind, name, container)` of a Kubernetes workload target; `None` for targetless and
    /// local targets. `kind` is the path's first word (`pod`, `deployment`, ...).
    pub fn workload(&self) -> Option<(&'static str, &str, Option<&str>)> {
        let (kind, name, container) = match self {
            TargetPath::Pod { name, container } => ("pod", name, container),
            TargetPath::Deployment { name, container } => ("deployment", name, container),
            TargetPath::StatefulSet { name, container } => ("statefulset", name, container),
            TargetPath::ReplicaSet { name, container } => ("replicaset", name, container),
            TargetPath::Job { name, container } => ("job", name, container),
            TargetPath::CronJob { name, container } => ("cronjob", name, container),
            TargetPath::Service { name, container } => ("service", name, container),
            TargetPath::Rollout { name, container } => ("rollout", name, container),
            TargetPath::Targetless | TargetPath::Pid(_) | TargetPath::Netns(_) => return None,
        };
        Some((kind, name.as_str(), container.as_deref()))
    }
}

fn valid_netns_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl fmt::Display for TargetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPath::Targetless => f.write_str("targetless"),
            TargetPath::Pid(p) => write!(f, "pid/{p}"),
            TargetPath::Netns(n) => write!(f, "netns/{n}"),
            other => {
                // Every other variant is a workload (see `workload`).
                let (kind, name, container) = other.workload().expect("a workload target");
                match container {
                    Some(c) => write!(f, "{kind}/{name}/container/{c}"),
                    None => write!(f, "{kind}/{name}"),
                }
            }
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    #[serde(default)]
    pub network: NetworkConfig,
    /// The target process's environment for the program: `true`, `false` (the default) or
    /// `{include, exclude, override, env_file, unset}`.
    #[serde(default)]
    pub env: EnvConfig,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub capture_error_trace: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub copy_target: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub db_branches: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub fs: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub hostname: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub magic: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub preview: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub split_queues: Option<Ignored>,
}

/// `feature.network`: `true` (every default), `false` (incoming off, no outgoing traffic or
/// DNS through the target) or the object.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NetworkConfig {
    pub incoming: IncomingConfig,
    pub outgoing: OutgoingConfig,
    pub dns: DnsConfig,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkConfigMap {
    #[serde(default)]
    incoming: IncomingConfig,
    #[serde(default)]
    outgoing: OutgoingConfig,
    #[serde(default)]
    dns: DnsConfig,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default)]
    // Only accepted: `compat::ignored_keys_in` finds it in the document for the warning.
    #[allow(dead_code)]
    ipv6: Option<Ignored>,
}

impl<'de> Deserialize<'de> for NetworkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NetworkConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or {incoming, outgoing, dns}")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<NetworkConfig, E> {
                if on {
                    return Ok(NetworkConfig::default());
                }
                Ok(NetworkConfig {
                    incoming: IncomingConfigFull {
                        mode: IncomingMode::Off,
                        ..IncomingConfigFull::default()
                    },
                    outgoing: OutgoingConfig {
                        tcp: false,
                        udp: false,
                        ..OutgoingConfig::default()
                    },
                    dns: DnsConfig {
                        enabled: false,
                        filter: None,
                    },
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NetworkConfig, A::Error> {
                let m = NetworkConfigMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(NetworkConfig {
                    incoming: m.incoming,
                    outgoing: m.outgoing,
                    dns: m.dns,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `feature.env` resolved: whether the program gets the target process's environment, and
/// mirrord's rules for which of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvConfig {
    /// Off unless the file says `true` or gives the object (see the README: this product's
    /// launches have always kept the local environment).
    pub enabled: bool,
    /// Only these names (patterns with `*` and `?`); `None`: every name except the defaults
    /// that describe the developer's machine ([`EnvConfig::DEFAULT_EXCLUDED`]).
    pub include: Option<Vec<String>>,
    /// Names never taken from the target (they keep their local values).
    pub exclude: Vec<String>,
    /// Values set for the program whatever the target has.
    pub overrides: std::collections::BTreeMap<String, String>,
    /// A dotenv file on the developer's machine whose variables beat the target's.
    pub env_file: Option<String>,
    /// Names removed from the program's environment (case-insensitive).
    pub unset: Vec<String>,
}

impl EnvConfig {
    /// Names not taken from the target unless `include` names them: they describe the
    /// developer's machine (mirrord's defaults, plus the shell's own bookkeeping).
    pub const DEFAULT_EXCLUDED: &'static [&'static str] = &[
        "PATH",
        "HOME",
        "HOMEPATH",
        "CLASSPATH",
        "JAVA_EXE",
        "JAVA_HOME",
        "PYTHONPATH",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvConfigMap {
    /// Only these variables of the target (`"A;B;APP_*"` or a list; `*` and `?` match any
    /// characters / one character).
    #[serde(
        default,
        deserialize_with = "name_list",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<schema::OneOrMany<String>>")
    )]
    include: Option<Vec<String>>,
    /// Variables of the target the program does not get; they keep their local values
    /// (`"A;B"` or a list, with `*` and `?`).
    #[serde(
        default,
        deserialize_with = "name_list",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<schema::OneOrMany<String>>")
    )]
    exclude: Option<Vec<String>>,
    /// Values the program gets whatever the target has: `{"NAME": "value"}`.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    overrides: Option<std::collections::BTreeMap<String, String>>,
    /// A dotenv file (`NAME=value` lines) whose variables beat the target's; `override` beats
    /// both. Relative to the program's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env_file: Option<String>,
    /// Variables removed from the program's environment (case-insensitive; `"A;B"` or a list).
    #[serde(
        default,
        deserialize_with = "name_list",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<schema::OneOrMany<String>>")
    )]
    unset: Option<Vec<String>>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    // Only accepted: `compat::ignored_keys_in` finds it in the document for the warning.
    #[allow(dead_code)]
    load_from_process: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    // Only accepted: `compat::ignored_keys_in` finds it in the document for the warning.
    #[allow(dead_code)]
    mapping: Option<Ignored>,
}

impl Serialize for EnvConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.enabled {
            return s.serialize_bool(false);
        }
        EnvConfigMap {
            include: self.include.clone(),
            exclude: Some(self.exclude.clone()).filter(|e| !e.is_empty()),
            overrides: Some(self.overrides.clone()).filter(|o| !o.is_empty()),
            env_file: self.env_file.clone(),
            unset: Some(self.unset.clone()).filter(|u| !u.is_empty()),
            load_from_process: None,
            mapping: None,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for EnvConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or {include, exclude, override, env_file, unset}")
            }
            fn visit_bool<E: de::Error>(self, enabled: bool) -> Result<EnvConfig, E> {
                Ok(EnvConfig {
                    enabled,
                    ..EnvConfig::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvConfig, A::Error> {
                let m = EnvConfigMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EnvConfig {
                    enabled: true,
                    include: m.include,
                    exclude: m.exclude.unwrap_or_default(),
                    overrides: m.overrides.unwrap_or_default(),
                    env_file: m.env_file,
                    unset: m.unset.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// mirrord's "VecOrSingle" of names: `"A;B"` or `["A", "B"]`.
fn name_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("names separated by ';' or a list of names")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(
                v.split(';')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(n) = seq.next_element::<String>()? {
                out.push(n);
            }
            Ok(Some(out))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// One port or a list of ports.
fn one_or_many_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<u16>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a port or a list of ports")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u16::try_from(v)
                .map(|p| Some(vec![p]))
                .map_err(|_| E::custom(format!("{v} is not a port (0-65535)")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u16::try_from(v)
                .map(|p| Some(vec![p]))
                .map_err(|_| E::custom(format!("{v} is not a port (0-65535)")))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element::<u16>()? {
                out.push(p);
            }
            Ok(Some(out))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// One address rule or a list of them.
fn one_or_many_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AddressRule>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<AddressRule>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address rule or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            AddressRule::parse(v).map(|r| vec![r]).map_err(E::custom)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(r) = seq.next_element::<AddressRule>()? {
                out.push(r);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// `agent.image`: `"repo/image:tag"`, or mirrord's `{"registry", "tag"}` (either may be left
/// out: the default image's part is used).
fn agent_image<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Expanded {
        #[serde(default)]
        registry: Option<String>,
        #[serde(default)]
        tag: Option<String>,
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an image such as \"repo/mirrord-agent:1.0\" or {registry, tag}")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let e = Expanded::deserialize(de::value::MapAccessDeserializer::new(map))?;
            // DEFAULT_AGENT_IMAGE is "name:version", so the split always succeeds.
            let (default_registry, default_tag) = DEFAULT_AGENT_IMAGE
                .split_once(':')
                .expect("the default image has a tag");
            Ok(Some(format!(
                "{}:{}",
                e.registry.as_deref().unwrap_or(default_registry),
                e.tag.as_deref().unwrap_or(default_tag)
            )))
        }
    }
    d.deserialize_any(V)
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `feature.network.incoming`: `"mirror" | "steal" | "off"` or the full object.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncomingConfigMap {
    /// `mirror` (a copy; the target keeps serving), `steal` (instead of the target) or `off`.
    #[serde(default)]
    mode: IncomingMode,
    /// `[[local_port, remote_port], ...]`: the program listens on local_port and gets the
    /// traffic of the target's remote_port.
    #[serde(default)]
    port_mapping: Vec<(u16, u16)>,
    /// Accepted for compatibility with mirrord's files: listeners bound to a loopback address
    /// always stay local (in the pod they would not get its traffic either).
    #[serde(default)]
    ignore_localhost: bool,
    /// Ports the program listens on that are never subscribed.
    #[serde(default)]
    ignore_ports: Vec<u16>,
    /// If set, only these ports of the target are subscribed.
    #[serde(default)]
    ports: Option<Vec<u16>>,
    /// `[[remote_port, local_port], ...]`: when the program listens on remote_port, bind
    /// local_port on this machine instead.
    #[serde(default)]
    listen_ports: Vec<(u16, u16)>,
    /// Steal only the HTTP requests that match (header, path, method, all_of, any_of).
    #[serde(default)]
    http_filter: HttpFilterConfig,
    /// Ports where the target terminates TLS itself: the agent terminates it with the target's
    /// own certificate chain and key (paths in the target's filesystem), so mirror, dump and
    /// HTTP filters see the requests.
    #[serde(default)]
    tls_ports: Vec<TlsPortConfig>,
    /// How requests decrypted on a `tls_ports` port reach the program: plain (`tcp`) or
    /// re-encrypted (`tls`).
    #[serde(default)]
    https_delivery: HttpsDelivery,
    /// Mirror (and `mirrord dump`) by capturing the port's packets in the target's network
    /// namespace (`true`, the default), so the target's own traffic never crosses the agent;
    /// `false`: redirect the port through the agent, which relays every connection and copies
    /// it (slower for the target, but no copy is ever lost to a full capture buffer).
    #[serde(default = "default_true")]
    mirror_capture: bool,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    http_header_filter: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    on_concurrent_steal: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    tls_delivery: Option<Ignored>,
}

impl<'de> Deserialize<'de> for IncomingConfigFull {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IncomingConfigFull;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"mirror\", \"steal\", \"off\" or {mode, port_mapping, ignore_localhost, ignore_ports, ports, listen_ports, http_filter, tls_ports, https_delivery, mirror_capture}")
            }
            /// mirrord's toggle: `true` is the default mode, `false` is off.
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<IncomingConfigFull, E> {
                Ok(IncomingConfigFull {
                    mode: if on {
                        IncomingMode::Mirror
                    } else {
                        IncomingMode::Off
                    },
                    ..IncomingConfigFull::default()
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IncomingConfigFull, E> {
                let mode = IncomingMode::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(IncomingConfigFull {
                    mode,
                    ..IncomingConfigFull::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IncomingConfigFull, A::Error> {
                let m = IncomingConfigMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = m.tls_ports.iter().find(|t| !seen.insert(t.port)) {
                    return Err(de::Error::custom(format!(
                        "tls_ports: port {} is listed more than once",
                        dup.port
                    )));
                }
                Ok(IncomingConfigFull {
                    mode: m.mode,
                    port_mapping: m.port_mapping,
                    ignore_localhost: m.ignore_localhost,
                    ignore_ports: m.ignore_ports,
                    ports: m.ports,
                    listen_ports: m.listen_ports,
                    http_filter: m.http_filter,
                    tls_ports: m.tls_ports,
                    https_delivery: m.https_delivery,
                    mirror_capture: m.mirror_capture,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The resolved `feature.network.incoming`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncomingConfigFull {
    #[serde(default)]
    pub mode: IncomingMode,
    /// `[[local_port, remote_port], ...]`: the program listens on local_port, traffic of the
    /// pod's remote_port is delivered to it.
    #[serde(default)]
    pub port_mapping: Vec<(u16, u16)>,
    #[serde(default)]
    pub ignore_localhost: bool,
    /// Ports the program listens on that are never subscribed.
    #[serde(default)]
    pub ignore_ports: Vec<u16>,
    /// If set, only these ports are subscribed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// `[[remote_port, local_port], ...]`: when the program listens on remote_port, actually bind
    /// local_port on the developer's machine.
    #[serde(default)]
    pub listen_ports: Vec<(u16, u16)>,
    #[serde(default)]
    pub http_filter: HttpFilterConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_ports: Vec<TlsPortConfig>,
    #[serde(default, skip_serializing_if = "HttpsDelivery::is_default")]
    pub https_delivery: HttpsDelivery,
    /// Mirror and observe by packet capture in the target's namespace (`true`) or through the
    /// agent's relay (`false`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub mirror_capture: bool,
}

pub type IncomingConfig = IncomingConfigFull;

impl IncomingConfigFull {
    /// The TLS setting of the target's `port`, if it is one of `tls_ports`.
    pub fn tls_port(&self, port: u16) -> Option<&TlsPortConfig> {
        self.tls_ports.iter().find(|t| t.port == port)
    }
}

/// One entry of `feature.network.incoming.tls_ports`: a port where the target terminates TLS.
/// The paths are read by the agent in the target's own filesystem (`/proc/PID/root`); the
/// private key never leaves the agent.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPortConfig {
    /// The target's TLS port.
    pub port: u16,
    /// PEM file with the certificate chain the target serves (leaf first), as a path in the
    /// target's filesystem, e.g. `/etc/tls/tls.crt`.
    pub cert_pem: String,
    /// PEM file with the private key of that certificate, as a path in the target's filesystem,
    /// e.g. `/etc/tls/tls.key`.
    pub key_pem: String,
}

/// `feature.network.incoming.https_delivery` (mirrord's key): how requests that the agent
/// decrypted reach the program.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsDelivery {
    /// `tcp`: plain HTTP to the program (default); `tls`: TLS again, the program serves HTTPS.
    #[serde(default)]
    pub protocol: DeliveryProtocol,
    /// PEM files (on this machine) with the roots the program's certificate must chain to.
    /// Empty: the program's certificate is not verified (it is this machine's own loopback
    /// listener).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_roots: Vec<String>,
    /// The name sent as SNI and checked in the program's certificate (default `localhost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub server_cert: Option<Ignored>,
}

impl HttpsDelivery {
    /// Nothing the layer's copy needs (`server_cert` is never serialised).
    fn is_default(&self) -> bool {
        self.protocol == DeliveryProtocol::Tcp
            && self.trust_roots.is_empty()
            && self.server_name.is_none()
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryProtocol {
    #[default]
    Tcp,
    Tls,
}

impl Default for IncomingConfigFull {
    fn default() -> Self {
        IncomingConfigFull {
            mode: IncomingMode::Mirror,
            port_mapping: Vec::new(),
            ignore_localhost: false,
            ignore_ports: Vec::new(),
            ports: None,
            listen_ports: Vec::new(),
            http_filter: HttpFilterConfig::default(),
            tls_ports: Vec::new(),
            https_delivery: HttpsDelivery::default(),
            mirror_capture: true,
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncomingMode {
    #[default]
    Mirror,
    Steal,
    Off,
}

/// `http_filter`: which requests a steal takes.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFilterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_filter: Option<RegexString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_filter: Option<RegexString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_of: Option<Vec<InnerFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_of: Option<Vec<InnerFilter>>,
    /// Ports the filter applies to (one port or a list); other ports are stolen whole.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "one_or_many_ports"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::OneOrMany<u16>>"))]
    pub ports: Option<Vec<u16>>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub body_filter: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub header_filter_jq: Option<Ignored>,
}

/// One entry of `all_of` / `any_of`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum InnerFilter {
    Header(RegexString),
    Path(RegexString),
    Method(String),
}

/// A regular expression, checked when the config is read.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RegexString(pub String);

impl<'de> Deserialize<'de> for RegexString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex_syntax::Parser::new()
            .parse(&s)
            .map_err(|e| de::Error::custom(format!("invalid regular expression {s:?}: {e}")))?;
        Ok(RegexString(s))
    }
}

/// `feature.network.outgoing`: `true`/`false` or the full object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutgoingConfig {
    pub tcp: bool,
    pub udp: bool,
    /// Connections to loopback addresses stay on the developer's machine.
    pub ignore_localhost: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<OutgoingFilter>,
}

impl Default for OutgoingConfig {
    fn default() -> Self {
        OutgoingConfig {
            tcp: true,
            udp: true,
            ignore_localhost: false,
            filter: None,
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutgoingConfigMap {
    /// Make TCP connections from the target.
    #[serde(default = "yes")]
    tcp: bool,
    /// Send UDP datagrams from the target.
    #[serde(default = "yes")]
    udp: bool,
    /// Connections to loopback addresses stay on this machine.
    #[serde(default)]
    ignore_localhost: bool,
    /// `{"remote": [rules]}` sends only matching destinations through the target;
    /// `{"local": [rules]}` keeps matching destinations on this machine.
    /// Rule: `[tcp://|udp://]name|ip|subnet[:port]`.
    #[serde(default)]
    filter: Option<OutgoingFilter>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    // Only accepted: `compat::ignored_keys_in` finds it in the document for the warning.
    #[allow(dead_code)]
    unix_streams: Option<Ignored>,
}

fn yes() -> bool {
    true
}

impl<'de> Deserialize<'de> for OutgoingConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OutgoingConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or {tcp, udp, ignore_localhost, filter}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OutgoingConfig, E> {
                Ok(OutgoingConfig {
                    tcp: v,
                    udp: v,
                    ..OutgoingConfig::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OutgoingConfig, A::Error> {
                let m = OutgoingConfigMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(OutgoingConfig {
                    tcp: m.tcp,
                    udp: m.udp,
                    ignore_localhost: m.ignore_localhost,
                    filter: m.filter,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `filter: {remote: [...]}` sends only matching destinations through the pod;
/// `filter: {local: [...]}` keeps matching destinations on the developer's machine.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum OutgoingFilter {
    #[serde(deserialize_with = "one_or_many_rules")]
    Remote(
        #[cfg_attr(feature = "schema", schemars(with = "schema::OneOrMany<AddressRule>"))]
        Vec<AddressRule>,
    ),
    #[serde(deserialize_with = "one_or_many_rules")]
    Local(
        #[cfg_attr(feature = "schema", schemars(with = "schema::OneOrMany<AddressRule>"))]
        Vec<AddressRule>,
    ),
}

/// Where a connection or a lookup is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the target pod.
    Remote,
    /// On the developer's machine, untouched.
    Local,
}

impl OutgoingFilter {
    /// Route for a connection to `ip:port` (whose address came from a lookup of `hostname`, if
    /// known).
    pub fn route(&self, proto: Proto, ip: IpAddr, port: u16, hostname: Option<&str>) -> Route {
        match self {
            OutgoingFilter::Remote(rules) => {
                if rules.iter().any(|r| r.matches(proto, ip, port, hostname)) {
                    Route::Remote
                } else {
                    Route::Local
                }
            }
            OutgoingFilter::Local(rules) => {
                if rules.iter().any(|r| r.matches(proto, ip, port, hostname)) {
                    Route::Local
                } else {
                    Route::Remote
                }
            }
        }
    }

    /// Route for a name lookup: a hostname rule decides where the name is resolved too, so a
    /// name kept local resolves locally.
    pub fn route_name(&self, name: &str) -> Option<Route> {
        let (rules, route) = match self {
            OutgoingFilter::Remote(r) => (r, Route::Remote),
            OutgoingFilter::Local(r) => (r, Route::Local),
        };
        rules
            .iter()
            .any(|r| matches!(&r.address, RuleAddress::Name(n) if name_matches(n, name)))
            .then_some(route)
    }
}

/// `feature.network.dns`: `true`/`false` or `{enabled, filter}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsConfig {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<DnsFilter>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: true,
            filter: None,
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsConfigMap {
    /// Resolve names with the target's DNS configuration.
    #[serde(default = "yes")]
    enabled: bool,
    /// `{"remote": [names]}` resolves only matching names in the cluster;
    /// `{"local": [names]}` resolves matching names on this machine.
    #[serde(default)]
    filter: Option<DnsFilter>,
}

impl<'de> Deserialize<'de> for DnsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DnsConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or {enabled, filter}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DnsConfig, E> {
                Ok(DnsConfig {
                    enabled: v,
                    filter: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DnsConfig, A::Error> {
                let m = DnsConfigMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DnsConfig {
                    enabled: m.enabled,
                    filter: m.filter,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `dns.filter: {remote: [...]}` resolves only matching names in the cluster;
/// `dns.filter: {local: [...]}` resolves matching names on the developer's machine.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum DnsFilter {
    #[serde(deserialize_with = "one_or_many_rules")]
    Remote(
        #[cfg_attr(feature = "schema", schemars(with = "schema::OneOrMany<AddressRule>"))]
        Vec<AddressRule>,
    ),
    #[serde(deserialize_with = "one_or_many_rules")]
    Local(
        #[cfg_attr(feature = "schema", schemars(with = "schema::OneOrMany<AddressRule>"))]
        Vec<AddressRule>,
    ),
}

impl DnsFilter {
    pub fn route(&self, name: &str, port: u16) -> Route {
        let hit = |rules: &[AddressRule]| rules.iter().any(|r| r.matches_name(name, port));
        match self {
            DnsFilter::Remote(r) if hit(r) => Route::Remote,
            DnsFilter::Remote(_) => Route::Local,
            DnsFilter::Local(r) if hit(r) => Route::Local,
            DnsFilter::Local(_) => Route::Remote,
        }
    }
}

/// Transport protocol named by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
}

/// `[tcp://|udp://]name|ip|subnet[:port]`, e.g. `tcp://10.0.0.0/8:5432`, `db.local`, `:53`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRule {
    pub text: String,
    pub proto: Option<Proto>,
    pub address: RuleAddress,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAddress {
    Any,
    Ip(IpAddr),
    Subnet {
        base: IpAddr,
        prefix: u8,
    },
    /// Exact name, or `*.suffix` for every name under the suffix.
    Name(String),
}

impl AddressRule {
    pub fn parse(text: &str) -> Result<AddressRule, String> {
        let err = |why: &str| format!("invalid address rule {text:?}: {why}");
        let (proto, rest) = if let Some(r) = text.strip_prefix("tcp://") {
            (Some(Proto::Tcp), r)
        } else if let Some(r) = text.strip_prefix("udp://") {
            (Some(Proto::Udp), r)
        } else if text.contains("://") {
            return Err(err("the protocol must be tcp:// or udp://"));
        } else {
            (None, text)
        };
        // Split a trailing :port. IPv6 addresses are written in brackets when a port follows.
        let (addr, port) = if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(|| err("missing ']'"))?;
            let after = &inner[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(err("unexpected text after ']'")),
            };
            (&inner[..close], port)
        } else if rest.matches(':').count() > 1 {
            (rest, None) // a bare IPv6 address or subnet
        } else {
            match rest.rsplit_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| err("the port must be 0-65535"))?,
            ),
            None => None,
        };
        let address = if addr.is_empty() {
            if port.is_none() {
                return Err(err("give an address, a subnet, a name or a :port"));
            }
            RuleAddress::Any
        } else if let Some((base, prefix)) = addr.split_once('/') {
            let base: IpAddr = base
                .parse()
                .map_err(|_| err("the subnet base is not an IP address"))?;
            let max = if base.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| err("the subnet prefix length is out of range"))?;
            RuleAddress::Subnet { base, prefix }
        } else if let Ok(ip) = addr.parse::<IpAddr>() {
            RuleAddress::Ip(ip)
        } else if valid_hostname(addr) {
            RuleAddress::Name(addr.to_ascii_lowercase())
        } else {
            return Err(err("not an IP address, subnet or host name"));
        };
        Ok(AddressRule {
            text: text.to_owned(),
            proto,
            address,
            port,
        })
    }

    /// Whether a connection to `ip:port` over `proto` (resolved from `hostname`) matches.
    pub fn matches(&self, proto: Proto, ip: IpAddr, port: u16, hostname: Option<&str>) -> bool {
        if self.proto.is_some_and(|p| p != proto) || self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.address {
            RuleAddress::Any => true,
            RuleAddress::Ip(a) => canonical_ip(*a) == canonical_ip(ip),
            RuleAddress::Subnet { base, prefix } => in_subnet(ip, *base, *prefix),
            RuleAddress::Name(n) => hostname.is_some_and(|h| name_matches(n, h)),
        }
    }

    /// Whether a lookup of `name` (for a connection to `port`, 0 if unknown) matches.
    pub fn matches_name(&self, name: &str, port: u16) -> bool {
        if port != 0 && self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.address {
            RuleAddress::Any => true,
            RuleAddress::Name(n) => name_matches(n, name),
            RuleAddress::Ip(_) | RuleAddress::Subnet { .. } => false,
        }
    }
}

fn name_matches(rule: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match rule.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len()
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(rule),
    }
}

fn valid_hostname(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn in_subnet(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (canonical_ip(ip), canonical_ip(base)) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            u128::from(ip) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

impl Serialize for AddressRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for AddressRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AddressRule::parse(&s).map_err(de::Error::custom)
    }
}

/// `agent`: how the agent is run (for Kubernetes targets; local targets use only `log_level`
/// and `startup_timeout`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Kubernetes namespace the agent's Job is created in (default: the target's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Agent container image (default: `mirrord-agent:<version>`, see the README: build it
    /// from `agent/Dockerfile` and push it where the cluster can pull it).
    /// mirrord's expanded form `{"registry", "tag"}` is accepted too.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_image"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "Option<schema::AgentImage>"))]
    pub image: Option<String>,
    /// `imagePullPolicy` of the agent container (`IfNotPresent` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Secrets to pull the agent image with: `[{"name": "my-secret"}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<ImagePullSecret>>,
    /// Seconds the finished agent Job is kept before Kubernetes deletes it
    /// (`ttlSecondsAfterFinished`; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Run the agent as an ephemeral container of the target pod instead of a Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
    /// Seconds to wait for the agent to become ready (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout: Option<u32>,
    /// Seconds the agent keeps running with no session connected before it exits (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication_timeout: Option<u32>,
    /// Run the agent container privileged instead of with the capabilities it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// Capabilities not to give the agent: any of `NET_ADMIN`, `SYS_ADMIN`, `SYS_PTRACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_capabilities: Option<Vec<String>>,
    /// Tolerations of the agent pod (default: one with `operator: Exists`, tolerating every
    /// taint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Resource requests and limits of the agent container (default: small requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<AgentResources>,
    /// Extra labels of the agent's Job and pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Extra annotations of the agent pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    /// `nodeSelector` of the agent pod (a Job agent runs on the target's node anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Service account of the agent pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Agent log level (a tracing filter such as `info` or `mirrord_agent=debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub check_out_of_pods: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub clean_iptables_on_start: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub disable_mesh_sidecar_injection: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub dns: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub exclude_from_mesh: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub flush_connections: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub inject_headers: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub jaq_time_limit: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub json_log: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub max_body_buffer_size: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub max_body_buffer_timeout: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub metrics: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub network_interface: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub nftables: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub priority_class: Option<Ignored>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub security_context: Option<Ignored>,
}

/// Defaults of the `agent` keys.
impl AgentConfig {
    pub const DEFAULT_TTL: u32 = 1;
    pub const DEFAULT_STARTUP_TIMEOUT: u32 = 60;
    pub const DEFAULT_COMMUNICATION_TIMEOUT: u32 = 30;
}

/// Default agent image: the image `agent/Dockerfile` builds, tagged with this version.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("mirrord-agent:", env!("CARGO_PKG_VERSION"));

/// Environment variables that override the Kubernetes part of the configuration.
pub const TARGET_NAMESPACE_ENV: &str = "MIRRORD_TARGET_NAMESPACE";
pub const KUBECONFIG_ENV: &str = "MIRRORD_KUBECONFIG";
pub const KUBE_CONTEXT_ENV: &str = "MIRRORD_KUBE_CONTEXT";

/// `agent.image_pull_secrets[]`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePullSecret {
    /// Name of a Secret in the agent's namespace.
    pub name: String,
}

/// `agent.tolerations[]`, as in a pod spec.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// `agent.resources`: quantities as Kubernetes writes them (`"10m"`, `"64Mi"`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<std::collections::BTreeMap<String, String>>,
    /// Accepted for compatibility with mirrord; ignored by this product.
    #[serde(default, skip_serializing)]
    pub claims: Option<Ignored>,
}

impl HttpFilterConfig {
    /// The filter as the agent applies it; several keys at once must all match. `None` when no
    /// filter is configured (the steal takes every request).
    pub fn to_filter(&self) -> Option<crate::agent::HttpFilter> {
        use crate::agent::HttpFilter;
        let inner = |f: &InnerFilter| match f {
            InnerFilter::Header(r) => HttpFilter::Header(r.0.clone()),
            InnerFilter::Path(r) => HttpFilter::Path(r.0.clone()),
            InnerFilter::Method(m) => HttpFilter::Method(m.clone()),
        };
        let mut parts = Vec::new();
        if let Some(h) = &self.header_filter {
            parts.push(HttpFilter::Header(h.0.clone()));
        }
        if let Some(p) = &self.path_filter {
            parts.push(HttpFilter::Path(p.0.clone()));
        }
        if let Some(m) = &self.method_filter {
            parts.push(HttpFilter::Method(m.clone()));
        }
        if let Some(all) = &self.all_of {
            parts.push(HttpFilter::AllOf(all.iter().map(inner).collect()));
        }
        if let Some(any) = &self.any_of {
            parts.push(HttpFilter::AnyOf(any.iter().map(inner).collect()));
        }
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(HttpFilter::AllOf(parts)),
        }
    }

    /// Whether the filter applies to `port` (mirrord's default: 80 and 8080). Other ports of a
    /// filtered steal are stolen whole.
    pub fn applies_to(&self, port: u16) -> bool {
        match &self.ports {
            Some(ports) => ports.contains(&port),
            None => matches!(port, 80 | 8080),
        }
    }
}

/// Ports debuggers listen on; a program listening there is talking to its IDE, never to the
/// cluster: node --inspect (9229), debugpy (5678), JDWP (5005), delve (2345), lldb/gdb servers.
pub const DEBUGGER_PORTS: &[u16] = &[9229, 9230, 5678, 5005, 2345, 1234];

impl IncomingConfigFull {
    /// The pod port whose traffic a program listening on `local_port` gets, or `None` if the
    /// port is not subscribed (mode off, ignored, debugger, or not in `ports`).
    pub fn remote_port(&self, local_port: u16) -> Option<u16> {
        if self.mode == IncomingMode::Off
            || self.ignore_ports.contains(&local_port)
            || DEBUGGER_PORTS.contains(&local_port)
        {
            return None;
        }
        let remote = self
            .port_mapping
            .iter()
            .find(|(local, _)| *local == local_port)
            .map(|(_, remote)| *remote)
            .unwrap_or(local_port);
        match &self.ports {
            Some(ports) if !ports.contains(&remote) => None,
            _ => Some(remote),
        }
    }

    /// Where on the developer's machine to bind a listener for the pod's `port`
    /// (`listen_ports`), if configured.
    pub fn listen_port(&self, port: u16) -> Option<u16> {
        self.listen_ports
            .iter()
            .find(|(remote, _)| *remote == port)
            .map(|(_, local)| *local)
    }
}

#[cfg(feature = "schema")]
mod schema {
    //! JSON Schema for the types whose JSON form is "a shorthand or an object".
    use super::*;
    use schemars::gen::SchemaGenerator;
    use schemars::schema::{InstanceType, Metadata, Schema, SchemaObject, SubschemaValidation};
    use schemars::JsonSchema;

    fn either(gen: &mut SchemaGenerator, short: Schema, full: Schema, doc: &str) -> Schema {
        let _ = gen;
        Schema::Object(SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some(doc.to_owned()),
                ..Default::default()
            })),
            subschemas: Some(Box::new(SubschemaValidation {
                any_of: Some(vec![short, full]),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    /// mirrord's "one value or a list of them".
    pub struct OneOrMany<T>(std::marker::PhantomData<T>);

    impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
        fn schema_name() -> String {
            format!("OneOrMany_{}", T::schema_name())
        }
        fn json_schema(gen: &mut SchemaGenerator) -> Schema {
            let one = gen.subschema_for::<T>();
            let many = gen.subschema_for::<Vec<T>>();
            Schema::Object(SchemaObject {
                subschemas: Some(Box::new(SubschemaValidation {
                    any_of: Some(vec![one, many]),
                    ..Default::default()
                })),
                ..Default::default()
            })
        }
    }

    /// `agent.image`: a string, or `{registry, tag}`.
    pub struct AgentImage;

    impl JsonSchema for AgentImage {
        fn schema_name() -> String {
            "AgentImage".into()
        }
        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            let expanded: Schema = serde_json::from_value(serde_json::json!({
                "type": "object",
                "properties": {"registry": {"type": "string"}, "tag": {"type": "string"}},
                "additionalProperties": false
            }))
            // A literal schema: it always deserializes.
            .expect("a valid schema literal");
            Schema::Object(SchemaObject {
                subschemas: Some(Box::new(SubschemaValidation {
                    any_of: Some(vec![simple(InstanceType::String), expanded]),
                    ..Default::default()
                })),
                ..Default::default()
            })
        }
    }

    fn simple(t: InstanceType) -> Schema {
        Schema::Object(SchemaObject {
            instance_type: Some(t.into()),
            ..Default::default()
        })
    }

    impl JsonSchema for TargetConfig {
        fn schema_name() -> String {
            "TargetConfig".into()
        }
        fn json_schema(gen: &mut SchemaGenerator) -> Schema {
            let full = gen.subschema_for::<TargetConfigMap>();
            either(gen, simple(InstanceType::String), full, "The target: pod/NAME[/container/C], deployment/NAME[/container/C], statefulset/NAME[/container/C], replicaset/NAME, job/NAME, cronjob/NAME, service/NAME, rollout/NAME, targetless, pid/PID or netns/NAME; or {path, namespace}.")
        }
    }

    impl JsonSchema for IncomingConfigFull {
        fn schema_name() -> String {
            "IncomingConfig".into()
        }
        fn json_schema(gen: &mut SchemaGenerator) -> Schema {
            let mode = gen.subschema_for::<IncomingMode>();
            let short = Schema::Object(SchemaObject {
                subschemas: Some(Box::new(SubschemaValidation {
                    any_of: Some(vec![mode, simple(InstanceType::Boolean)]),
                    ..Default::default()
                })),
                ..Default::default()
            });
            let full = gen.subschema_for::<IncomingConfigMap>();
            either(gen, short, full, "Incoming traffic of the target's ports: \"mirror\", \"steal\", \"off\" or an object.")
        }
    }

    /// A section that is `true`, `false` or its full object form (mirrord's shorthand).
    macro_rules! bool_or_object_schema {
        ($ty:ty, $map:ty, $doc:expr) => {
            impl JsonSchema for $ty {
                fn schema_name() -> String {
                    stringify!($ty).into()
                }
                fn json_schema(gen: &mut SchemaGenerator) -> Schema {
                    let full = gen.subschema_for::<$map>();
                    either(gen, simple(InstanceType::Boolean), full, $doc)
                }
            }
        };
    }

    bool_or_object_schema!(
        OutgoingConfig,
        OutgoingConfigMap,
        "Outgoing connections made from the target: true, false or an object."
    );

    bool_or_object_schema!(
        DnsConfig,
        DnsConfigMap,
        "Name resolution with the target's DNS configuration: true, false or an object."
    );

    bool_or_object_schema!(
        NetworkConfig,
        NetworkConfigMap,
        "Network features: true (the defaults), false (none of them) or {incoming, outgoing, dns}."
    );

    bool_or_object_schema!(
        EnvConfig,
        EnvConfigMap,
        "The target process's environment for the program: true, false (the default) or {include, exclude, override, env_file, unset}. MIRRORD_*, LD_PRELOAD and the launch configuration's own variables are never replaced."
    );

    impl JsonSchema for AddressRule {
        fn schema_name() -> String {
            "AddressRule".into()
        }
        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            Schema::Object(SchemaObject {
                instance_type: Some(InstanceType::String.into()),
                metadata: Some(Box::new(Metadata {
                    description: Some("[tcp://|udp://]name|ip|subnet[:port], e.g. 10.0.0.0/8:5432, db.internal, :53".into()),
                    ..Default::default()
                })),
                ..Default::default()
            })
        }
    }
}

/// The JSON Schema of a configuration file.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::gen::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<MirrordConfig>();
    // A schema is plain data; serialising it cannot fail.
    serde_json::to_value(schema).expect("schema serialises")
}

/// Set to `0` to launch `mirrord exec` programs without syscall interception (the seccomp
/// filter): the layer alone, as before it existed.
pub const SECCOMP_ENV: &str = "MIRRORD_SECCOMP";

/// The session's seccomp mark (16 hex digits), set for a `mirrord exec` program only when the
/// filter is armed. The layer passes it as the sixth argument of the watched calls it already
/// decided (`connect`, `bind`, `open`...), which the filter then lets through without stopping
/// them at the supervisor. Not a secret: the filter routes, it does not confine.
pub const SECCOMP_MARK_ENV: &str = "MIRRORD_SECCOMP_MARK";

/// The target's resolver file behind `/etc/resolv.conf`.
pub const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
/// The target's hosts file behind `/etc/hosts`.
pub const HOSTS_PATH: &str = "/etc/hosts";

/// The paths whose opens the seccomp supervisor serves with the target's content (exact
/// strings: relative paths and other spellings are not served). The layer opens these without
/// the mark, so the supervisor still sees them; every other open of the layer carries the mark.
pub const SUPERVISOR_SERVED_FILES: [&str; 2] = [RESOLV_CONF_PATH, HOSTS_PATH];
