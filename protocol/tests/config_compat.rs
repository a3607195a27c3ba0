//! mirrord's configuration shapes this product accepts (issue 18).

use mirrord_protocol::config::compat::{ignored_keys_in, IGNORED_KEYS};
use mirrord_protocol::config::{EnvConfig, IncomingMode, MirrordConfig, OutgoingFilter};

#[test]
fn every_ignored_key_is_accepted_with_any_shape_of_value() {
    for key in IGNORED_KEYS {
        for value in [
            r#"true"#,
            r#""read""#,
            r#"{"mode": "write", "x": [1, {"y": null}]}"#,
        ] {
            let mut doc = value.to_owned();
            for part in key.rsplit('.') {
                doc = format!("{{\"{part}\": {doc}}}");
            }
            let cfg =
                MirrordConfig::from_json(&doc).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
            let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
            assert_eq!(
                ignored_keys_in(&parsed),
                vec![key.split('.').map(str::to_owned).collect::<Vec<_>>()]
            );
            // Ignored keys do not travel to the layer.
            let json = serde_json::to_string(&cfg).unwrap();
            assert!(!json.contains("\"x\""), "{json}");
            let again = MirrordConfig::from_json(&json).unwrap();
            assert_eq!(serde_json::to_string(&again).unwrap(), json);
        }
    }
}

#[test]
fn env_forms() {
    let on = MirrordConfig::from_json(r#"{"feature": {"env": true}}"#).unwrap();
    assert!(on.feature.env.enabled);
    assert!(
        !MirrordConfig::default().feature.env.enabled,
        "off by default"
    );
    let cfg = MirrordConfig::from_json(
        r#"{"feature": {"env": {"include": "A;B_*; ", "exclude": ["C"], "override": {"D": "1"},
            "env_file": ".env", "unset": "AWS_PROFILE", "load_from_process": true, "mapping": {".+": "x"}}}}"#,
    )
    .unwrap();
    let env = &cfg.feature.env;
    assert_eq!(
        env,
        &EnvConfig {
            enabled: true,
            include: Some(vec!["A".into(), "B_*".into()]),
            exclude: vec!["C".into()],
            overrides: [("D".to_string(), "1".to_string())].into(),
            env_file: Some(".env".into()),
            unset: vec!["AWS_PROFILE".into()],
        }
    );
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(MirrordConfig::from_json(&json).unwrap(), cfg);
    let e = MirrordConfig::from_json(r#"{"feature": {"env": {"includ": "A"}}}"#).unwrap_err();
    assert!(e.to_string().contains("includ"), "{e}");
    let e = MirrordConfig::from_json(r#"{"feature": {"env": "yes"}}"#).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn mirrord_shorthands_of_implemented_keys() {
    let off = MirrordConfig::from_json(r#"{"feature": {"network": false}}"#).unwrap();
    assert_eq!(off.feature.network.incoming.mode, IncomingMode::Off);
    assert!(!off.feature.network.outgoing.tcp && !off.feature.network.dns.enabled);
    let no_incoming =
        MirrordConfig::from_json(r#"{"feature": {"network": {"incoming": false}}}"#).unwrap();
    assert_eq!(no_incoming.feature.network.incoming.mode, IncomingMode::Off);
    let on = MirrordConfig::from_json(r#"{"feature": {"network": true}}"#).unwrap();
    assert_eq!(on.feature.network, MirrordConfig::default().feature.network);
    let cfg = MirrordConfig::from_json(
        r#"{"feature": {"network": {"incoming": {"http_filter": {"ports": 8080}},
            "outgoing": {"filter": {"local": "google.com"}}, "dns": {"filter": {"remote": ":53"}}}},
            "agent": {"image": {"registry": "internal.repo/mirrord", "tag": "3.1"}}}"#,
    )
    .unwrap();
    assert_eq!(
        cfg.feature.network.incoming.http_filter.ports,
        Some(vec![8080])
    );
    assert!(
        matches!(&cfg.feature.network.outgoing.filter, Some(OutgoingFilter::Local(r)) if r.len() == 1)
    );
    assert_eq!(
        cfg.agent.image.as_deref(),
        Some("internal.repo/mirrord:3.1")
    );
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(MirrordConfig::from_json(&json).unwrap(), cfg);
    let e = MirrordConfig::from_json(
        r#"{"feature": {"network": {"outgoing": {"filter": {"local": "a..b"}}}}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("a..b"), "{e}");
}

/// `tls_ports` and `https_delivery` (HTTPS steal): parsed, kept for the layer's copy, strict
/// about unknown keys and repeated ports; `https_delivery.server_cert` is accepted and ignored.
#[test]
fn tls_ports_and_https_delivery() {
    use mirrord_protocol::config::{DeliveryProtocol, TlsPortConfig};
    let cfg = MirrordConfig::from_json(
        r#"{"feature": {"network": {"incoming": {"mode": "steal",
            "tls_ports": [{"port": 443, "cert_pem": "/etc/tls/tls.crt", "key_pem": "/etc/tls/tls.key"}],
            "https_delivery": {"protocol": "tls", "trust_roots": ["ca.pem"], "server_name": "localhost", "server_cert": "x.pem"}}}}}"#,
    )
    .unwrap();
    let incoming = &cfg.feature.network.incoming;
    assert_eq!(
        incoming.tls_port(443),
        Some(&TlsPortConfig {
            port: 443,
            cert_pem: "/etc/tls/tls.crt".into(),
            key_pem: "/etc/tls/tls.key".into(),
        })
    );
    assert_eq!(incoming.tls_port(80), None);
    assert_eq!(incoming.https_delivery.protocol, DeliveryProtocol::Tls);
    assert_eq!(incoming.https_delivery.trust_roots, ["ca.pem"]);
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(!json.contains("x.pem"), "{json}");
    let again = MirrordConfig::from_json(&json).unwrap();
    assert_eq!(again.feature.network.incoming.tls_ports, incoming.tls_ports);
    assert_eq!(
        again.feature.network.incoming.https_delivery.trust_roots,
        incoming.https_delivery.trust_roots
    );

    for (bad, says) in [
        (
            r#"{"feature": {"network": {"incoming": {"tls_ports": [
                {"port": 443, "cert_pem": "a", "key_pem": "b"},
                {"port": 443, "cert_pem": "c", "key_pem": "d"}]}}}}"#,
            "port 443 is listed more than once",
        ),
        (
            r#"{"feature": {"network": {"incoming": {"tls_ports": [{"port": 443, "cert_pem": "a"}]}}}}"#,
            "key_pem",
        ),
        (
            r#"{"feature": {"network": {"incoming": {"tls_ports": [{"port": 443, "cert": "a", "key_pem": "b"}]}}}}"#,
            "cert",
        ),
        (
            r#"{"feature": {"network": {"incoming": {"https_delivery": {"protocol": "quic"}}}}}"#,
            "quic",
        ),
    ] {
        let e = MirrordConfig::from_json(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
