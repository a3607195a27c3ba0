use mirrord_protocol::config::*;
use std::net::IpAddr;

#[test]
fn full_file_parses() {
    let cfg = MirrordConfig::from_json(
        r#"{
        "target": {"path": "pod/api/container/main", "namespace": "payments"},
        "feature": {"network": {
            "incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: alice"}, "port_mapping": [[8080, 80]]},
            "outgoing": {"filter": {"local": ["127.0.0.1:5432", "tcp://10.0.0.0/8", "db.internal", ":6379", "[::1]:80"]}},
            "dns": {"enabled": true, "filter": {"local": ["*.corp"]}}
        }},
        "agent": {"ttl": 30}
    }"#,
    )
    .unwrap();
    assert_eq!(cfg.feature.network.incoming.mode, IncomingMode::Steal);
    assert_eq!(cfg.target.unwrap().namespace.as_deref(), Some("payments"));
    let f = cfg.feature.network.outgoing.filter.unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        f.route(Proto::Tcp, ip("127.0.0.1"), 5432, None),
        Route::Local
    );
    assert_eq!(f.route(Proto::Tcp, ip("10.1.2.3"), 1, None), Route::Local);
    assert_eq!(f.route(Proto::Udp, ip("10.1.2.3"), 1, None), Route::Remote);
    assert_eq!(f.route(Proto::Tcp, ip("1.1.1.1"), 6379, None), Route::Local);
    assert_eq!(
        f.route(Proto::Tcp, ip("1.1.1.1"), 80, Some("DB.internal")),
        Route::Local
    );
    assert_eq!(f.route(Proto::Tcp, ip("::1"), 80, None), Route::Local);
    assert_eq!(
        f.route(Proto::Tcp, ip("10.96.0.50"), 8080, Some("payment-service")),
        Route::Local
    );
    assert_eq!(
        f.route(Proto::Tcp, ip("11.96.0.50"), 8080, Some("payment-service")),
        Route::Remote
    );
    let dns = cfg.feature.network.dns.filter.unwrap();
    assert_eq!(dns.route("a.corp", 0), Route::Local);
    assert_eq!(dns.route("corp", 0), Route::Remote);
}

#[test]
fn shorthands() {
    let cfg = MirrordConfig::from_json(
        r#"{"target": "pid/12", "feature": {"network": {"incoming": {"mode": "off"}, "outgoing": false, "dns": false}}}"#,
    )
    .unwrap();
    assert!(!cfg.feature.network.outgoing.tcp && !cfg.feature.network.outgoing.udp);
    assert!(!cfg.feature.network.dns.enabled);
    assert_eq!(
        TargetPath::parse(cfg.target.unwrap().path.as_deref().unwrap()).unwrap(),
        TargetPath::Pid(12)
    );
}

fn error_at(text: &str) -> (String, usize, usize) {
    let e = MirrordConfig::from_json(text).unwrap_err();
    (e.to_string(), e.line(), e.column())
}

#[test]
fn errors_carry_line_and_column() {
    let (msg, line, _) = error_at("{\n  \"feature\": {\n    \"netwrk\": {}\n  }\n}");
    assert!(msg.contains("unknown field `netwrk`"), "{msg}");
    assert_eq!(line, 3);
    let (msg, line, _) =
        error_at("{\n \"feature\": {\"network\": {\n  \"incoming\": {\"mode\": \"stael\"}}}}");
    assert!(msg.contains("stael"), "{msg}");
    assert_eq!(line, 3);
    let (msg, line, _) = error_at(
        "{\"feature\": {\"network\": {\"incoming\": {\n\"http_filter\": {\"header_filter\": \"(unclosed\"}}}}}",
    );
    assert!(msg.contains("invalid regular expression"), "{msg}");
    assert_eq!(line, 2);
    let (msg, _, _) = error_at(
        r#"{"feature": {"network": {"outgoing": {"filter": {"remote": ["tcp://1.2.3.4/40"]}}}}}"#,
    );
    assert!(msg.contains("prefix length"), "{msg}");
    let (msg, _, _) = error_at(r#"{"target": "pod/"}"#);
    assert!(msg.contains("invalid target"), "{msg}");
}

#[test]
fn rules_parse_and_reject() {
    for ok in [
        "1.2.3.4",
        "1.2.3.4:80",
        "udp://:53",
        "::1",
        "[fe80::1]:22",
        "fd00::/8",
        "*.svc.cluster.local:8080",
    ] {
        AddressRule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["", "http://a", "a:b", "1.2.3.4/33", "a..b", "[::1"] {
        assert!(AddressRule::parse(bad).is_err(), "{bad} should fail");
    }
}

#[test]
fn config_survives_the_env_roundtrip() {
    let cfg = MirrordConfig::from_json(
        r#"{"feature": {"network": {"outgoing": {"filter": {"remote": [":8080"]}}, "dns": {"filter": {"remote": ["*.local"]}}}}}"#,
    )
    .unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(MirrordConfig::from_json(&json).unwrap(), cfg);
}

#[test]
fn incoming_shorthand_and_errors() {
    let cfg = MirrordConfig::from_json(r#"{"feature":{"network":{"incoming":"steal"}}}"#).unwrap();
    assert_eq!(cfg.feature.network.incoming.mode, IncomingMode::Steal);
    let e =
        MirrordConfig::from_json(r#"{"feature":{"network":{"incoming":"stael"}}}"#).unwrap_err();
    assert!(e.to_string().contains("unknown variant `stael`"), "{e}");
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(MirrordConfig::from_json(&json).unwrap(), cfg);
}

#[test]
fn kubernetes_target_kinds_round_trip() {
    for s in [
        "pod/api",
        "pod/api/container/main",
        "deployment/payment-api",
        "deployment/payment-api/container/app",
        "statefulset/db/container/pg",
        "replicaset/api-5d9f",
        "job/migrate",
        "cronjob/nightly",
        "service/payment-service",
        "rollout/canary",
        "rollout/canary/container/app",
        "targetless",
    ] {
        let t = TargetPath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(t.to_string(), s);
        assert!(t.is_kubernetes(), "{s}");
    }
    assert_eq!(
        TargetPath::parse("service/payment-service")
            .unwrap()
            .workload(),
        Some(("service", "payment-service", None))
    );
    assert!(!TargetPath::parse("pid/4").unwrap().is_kubernetes());
    for bad in ["daemonset/x", "rollout/", "job/a/container/", "cronjob/a/b"] {
        let e = TargetPath::parse(bad).unwrap_err();
        assert!(e.contains("rollout/NAME"), "{bad}: {e}");
    }
}

#[test]
fn kubernetes_keys_parse_and_stay_strict() {
    let cfg = MirrordConfig::from_json(
        r#"{
        "target": {"path": "deployment/payment-api", "namespace": "payments"},
        "kubeconfig": "/tmp/kc.yaml", "kube_context": "sim", "accept_invalid_certificates": false,
        "agent": {"namespace": "mirrord", "image": "reg/agent:1", "image_pull_policy": "Always",
                  "image_pull_secrets": [{"name": "regcred"}], "ttl": 3, "ephemeral": true,
                  "startup_timeout": 20, "communication_timeout": 5, "privileged": false,
                  "disabled_capabilities": ["SYS_PTRACE"],
                  "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 5}],
                  "resources": {"requests": {"cpu": "10m"}, "limits": {"memory": "64Mi"}},
                  "labels": {"team": "a"}, "annotations": {"x": "y"}, "node_selector": {"zone": "a"},
                  "service_account": "sa", "log_level": "debug"}
    }"#,
    )
    .unwrap();
    assert_eq!(cfg.kube_context.as_deref(), Some("sim"));
    assert_eq!(cfg.agent.communication_timeout, Some(5));
    assert_eq!(cfg.agent.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(
        cfg.agent.tolerations.unwrap()[0].toleration_seconds,
        Some(5)
    );
    let e = MirrordConfig::from_json(r#"{"agent": {"tolerations": [{"keyy": "k"}]}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("keyy"), "{e}");
    let e = MirrordConfig::from_json(r#"{"agent": {"communication_timeout": "soon"}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn mirror_capture_defaults_on_and_survives_the_env_roundtrip_when_off() {
    let on = MirrordConfig::from_json(r#"{"feature":{"network":{"incoming":"mirror"}}}"#).unwrap();
    assert!(on.feature.network.incoming.mirror_capture);
    let off = MirrordConfig::from_json(
        r#"{"feature":{"network":{"incoming":{"mode":"mirror","mirror_capture":false}}}}"#,
    )
    .unwrap();
    assert!(!off.feature.network.incoming.mirror_capture);
    let json = serde_json::to_string(&off).unwrap();
    assert_eq!(MirrordConfig::from_json(&json).unwrap(), off);
    let e =
        MirrordConfig::from_json(r#"{"feature":{"network":{"incoming":{"mirror_capture":"no"}}}}"#)
            .unwrap_err();
    assert!(e.to_string().contains("expected a boolean"), "{e}");
}
