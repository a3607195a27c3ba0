//! Randomised runs of every decoder a peer can reach: valid frames of each direction, edited at
//! random, decoded as every message type. A decoder returns a message or an error, never panics
//! and never allocates past the frame (the codec's limit). CI runs a short version;
//! `scripts/fuzz` runs each property with `MIRRORD_FUZZ_CASES` (100,000 there).

use mirrord_protocol::agent::*;
use mirrord_protocol::codec::*;
use mirrord_protocol::layer::*;
use mirrord_protocol::net::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("MIRRORD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// Valid frames, as the peers of each socket send them.
fn seeds() -> Vec<Vec<u8>> {
    let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("literal address");
    vec![
        encode(&LayerHello::Control {
            version: mirrord_protocol::PROTOCOL_VERSION,
            token: "t".repeat(64),
            pid: 42,
            executable: "curl".into(),
        }),
        encode(&LayerHello::Tcp {
            version: mirrord_protocol::PROTOCOL_VERSION,
            token: "x".repeat(64),
            pid: 7,
            remote: a("10.96.0.50:8080"),
            hostname: Some("payment-service".into()),
        }),
        encode(&ServerHello::Welcome {
            version: mirrord_protocol::PROTOCOL_VERSION,
            data_addrs: vec![a("127.0.0.1:4000"), a("[::1]:4000")],
        }),
        encode(&DataReply::Connect(ConnectReply::Connected {
            local: a("10.244.0.10:51234"),
            remote: a("10.96.0.50:8080"),
        })),
        encode(&LayerRequest::Resolve {
            name: "payment-service".into(),
            family: Family::V4,
        }),
        encode(&AgentHello {
            version: mirrord_protocol::PROTOCOL_VERSION,
            token: "k".repeat(64),
            channel: AgentChannel::Udp {
                remote: a("10.96.0.10:53"),
                dns: true,
            },
        }),
        encode(&ControlRequest {
            id: 9,
            body: AgentRequest::Resolve {
                name: "payment-service.payments".into(),
                family: Family::Any,
            },
        }),
        encode(&AgentWelcome::Welcome {
            version: mirrord_protocol::PROTOCOL_VERSION,
            agent_pid: 1234,
        }),
        encode(&Datagram(b"\x12\x34\x01\x00\x00\x01".to_vec())),
    ]
    .into_iter()
    .map(|f| f.expect("every seed message encodes"))
    .collect()
}

/// Decodes `bytes` as every message type a socket of the product reads.
fn decode_all(bytes: &[u8]) {
    let _ = decode_frame::<LayerHello>(bytes);
    let _ = decode_frame::<LayerRequest>(bytes);
    let _ = decode_frame::<ServerHello>(bytes);
    let _ = decode_frame::<ServerResponse>(bytes);
    let _ = decode_frame::<DataReply>(bytes);
    let _ = decode_frame::<AgentHello>(bytes);
    let _ = decode_frame::<AgentWelcome>(bytes);
    let _ = decode_frame::<ControlRequest>(bytes);
    let _ = decode_frame::<AgentMessage>(bytes);
    let _ = decode_frame::<Datagram>(bytes);
    // The blocking and async readers share the decoder, but read the header separately.
    let _ = read_frame::<AgentMessage, _>(&mut std::io::Cursor::new(bytes));
    let _ = read_frame::<LayerRequest, _>(&mut std::io::Cursor::new(bytes));
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Rewrites the 4-byte length header (lies about the frame's size).
    Length(u32),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<usize>().prop_map(Edit::Remove),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => any::<u32>().prop_map(Edit::Length),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let n = v.len().max(1);
        match *e {
            Edit::Flip(i, b) if !v.is_empty() => v[i % n] ^= b.max(1),
            Edit::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Edit::Remove(i) if !v.is_empty() => {
                v.remove(i % n);
            }
            Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
            Edit::Length(l) if v.len() >= 4 => v[..4].copy_from_slice(&l.to_be_bytes()),
            _ => {}
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn edited_frames_never_panic_any_decoder(
        seed in 0..9usize,
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let seeds = seeds();
        decode_all(&apply(&seeds[seed % seeds.len()], &edits));
    }

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        decode_all(&bytes);
        // The same bytes behind an honest length header.
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        decode_all(&framed);
    }
}
