use mirrord_protocol::agent::*;
use mirrord_protocol::codec::*;
use mirrord_protocol::layer::*;
use mirrord_protocol::net::*;
use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};

fn roundtrip<T>(msg: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let frame = encode(&msg).unwrap();
    let (back, used): (T, usize) = decode_frame(&frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(back, msg);
    // The blocking reader takes exactly one frame and leaves what follows.
    let mut stream = frame.clone();
    stream.extend_from_slice(b"raw bytes after the frame");
    let mut cursor = std::io::Cursor::new(stream);
    let back: T = read_frame(&mut cursor).unwrap();
    assert_eq!(back, msg);
    assert_eq!(cursor.position() as usize, frame.len());
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn every_message_roundtrips() {
    roundtrip(LayerHello::Control {
        version: 1,
        token: "t".repeat(64),
        pid: 42,
        executable: "curl".into(),
    });
    roundtrip(LayerHello::Tcp {
        version: 1,
        token: "x".into(),
        pid: 7,
        remote: addr("10.96.0.50:8080"),
        hostname: Some("payment-service".into()),
    });
    roundtrip(ServerHello::Welcome {
        version: 1,
        data_addrs: vec![addr("127.0.0.1:4000"), addr("[::1]:4000")],
    });
    roundtrip(ServerHello::Refused {
        reason: "bad token".into(),
    });
    roundtrip(DataReply::Connect(ConnectReply::Connected {
        local: addr("10.244.0.10:51234"),
        remote: addr("10.96.0.50:8080"),
    }));
    roundtrip(DataReply::Connect(ConnectReply::Failed { errno: 111 }));
    roundtrip(LayerRequest::Resolve {
        name: "payment-service".into(),
        family: Family::V4,
    });
    roundtrip(LayerRequest::UdpOpen {
        remote: addr("10.96.0.10:53"),
        dns: true,
    });
    roundtrip(LayerRequest::UdpClose {
        relay: addr("127.0.0.1:5000"),
    });
    roundtrip(LayerControlRequest {
        id: u64::MAX,
        request: LayerRequest::Listen {
            port: 80,
            local: addr("127.0.0.1:8080"),
        },
    });
    roundtrip(LayerControlResponse {
        id: 0,
        response: ServerResponse::IncomingPeer(Some((
            addr("10.244.0.20:40000"),
            addr("10.244.0.10:80"),
        ))),
    });
    roundtrip(ServerResponse::Resolved(Ok(Resolved {
        canonical_name: "payment-service.payments.svc.cluster.local".into(),
        addresses: vec![IpAddr::from([10, 96, 0, 50]), "fd00::1".parse().unwrap()],
    })));
    roundtrip(ServerResponse::Resolved(Err(ResolveError::NotFound)));
    roundtrip(ServerResponse::UdpOpened {
        relay: Some(addr("127.0.0.1:5000")),
        reply: UdpOpenReply::Opened {
            local: addr("10.244.0.10:40000"),
            remote: addr("10.96.0.10:53"),
        },
    });
    roundtrip(AgentHello {
        version: 1,
        token: "tok".into(),
        channel: AgentChannel::Udp {
            remote: addr("10.96.0.50:9001"),
            dns: false,
        },
    });
    roundtrip(AgentWelcome::Welcome {
        version: 1,
        agent_pid: 99,
    });
    roundtrip(ControlRequest {
        id: u64::MAX,
        body: AgentRequest::Resolve {
            name: "a".into(),
            family: Family::Any,
        },
    });
    roundtrip(AgentMessage::Response {
        id: 3,
        body: AgentResponse::Resolved(Err(ResolveError::Temporary("timeout".into()))),
    });
    roundtrip(Datagram(vec![0u8; 65507]));
}

#[test]
fn oversized_length_is_rejected_before_allocating() {
    let mut frame = (u32::MAX).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 16]);
    assert!(matches!(
        decode_frame::<LayerHello>(&frame),
        Err(CodecError::FrameTooLarge(_))
    ));
    let mut cursor = std::io::Cursor::new(frame);
    assert!(matches!(
        read_frame::<LayerHello, _>(&mut cursor),
        Err(CodecError::FrameTooLarge(_))
    ));
}

#[test]
fn hostile_inner_length_does_not_allocate() {
    // A Datagram whose varint length claims 2^60 bytes inside a small frame.
    let payload = [0xfd, 0x10, 0, 0, 0, 0, 0, 0, 0];
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    assert!(decode_frame::<Datagram>(&frame).is_err());
}

#[test]
fn truncated_frames_need_more_bytes_or_report_closed() {
    let frame = encode(&LayerRequest::Resolve {
        name: "payment-service".into(),
        family: Family::Any,
    })
    .unwrap();
    for cut in 0..frame.len() {
        assert!(decode_frame::<LayerRequest>(&frame[..cut])
            .unwrap()
            .is_none());
        let mut cursor = std::io::Cursor::new(frame[..cut].to_vec());
        let err = read_frame::<LayerRequest, _>(&mut cursor).unwrap_err();
        assert!(err.is_closed(), "cut at {cut}: {err}");
    }
}

#[test]
fn trailing_garbage_inside_a_frame_is_an_error() {
    let mut frame = encode(&AgentRequest::Ping).unwrap();
    frame.push(0);
    let len = (frame.len() - HEADER_LEN) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        decode_frame::<AgentRequest>(&frame),
        Err(CodecError::TrailingBytes(1))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame::<LayerHello>(&bytes);
        let _ = decode_frame::<LayerRequest>(&bytes);
        let _ = decode_frame::<AgentHello>(&bytes);
        let _ = decode_frame::<ControlRequest>(&bytes);
        let _ = decode_frame::<AgentMessage>(&bytes);
        let _ = decode_payload::<ServerResponse>(&bytes);
        let _ = decode_payload::<DataReply>(&bytes);
    }

    #[test]
    fn random_payload_with_valid_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&bytes);
        let _ = decode_frame::<LayerHello>(&frame);
        let _ = decode_frame::<ServerResponse>(&frame);
        let _ = decode_frame::<AgentHello>(&frame);
    }
}
