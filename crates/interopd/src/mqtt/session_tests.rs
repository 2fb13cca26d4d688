//! The MQTT session against a broker simulated in the test: packets made and read with the
//! same codec, bytes fed in any split, and time passed in by hand.

use bytes::{Bytes, BytesMut};
use symqtt_codec::QoS;
use symqtt_codec::v3::{ConnAck, ConnectReturnCode, Packet, PingResp, PubAck, Publish};

use super::session::*;

fn config() -> SessionConfig {
    SessionConfig {
        client_id: "interopd-n1".into(),
        username: Some("ha".into()),
        password: Some("pw".into()),
        keepalive_secs: 30,
        will_topic: "interopd/n1/availability".into(),
        will_payload: b"offline".to_vec(),
    }
}

fn wire(p: Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.encode(&mut b).unwrap();
    b.to_vec()
}

/// Every packet the session wrote since the last call.
fn sent(s: &mut Session) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    while let Some(b) = s.poll_transmit() {
        buf.extend_from_slice(&b);
    }
    let mut out = Vec::new();
    while let Some(p) = Packet::decode(&mut buf).unwrap() {
        out.push(p);
    }
    assert!(buf.is_empty());
    out
}

fn events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn connack(code: ConnectReturnCode) -> Vec<u8> {
    wire(Packet::ConnAck(ConnAck {
        session_present: false,
        return_code: code,
    }))
}

/// A session connected at `t`.
fn connected(t: u64) -> Session {
    let mut s = Session::new(config(), t);
    assert!(s.poll_dial(t));
    s.handle_dialed(t);
    sent(&mut s);
    s.handle_bytes(&connack(ConnectReturnCode::Accepted), t);
    assert_eq!(
        events(&mut s),
        [SessionEvent::Connected {
            session_present: false
        }]
    );
    s
}

fn publish(topic: &str, pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    wire(Packet::Publish(Publish {
        dup: false,
        qos: if pkid.is_some() {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        },
        retain: false,
        topic: topic.into(),
        pkid,
        payload: Bytes::copy_from_slice(payload),
    }))
}

#[test]
fn connect_carries_the_credentials_a_persistent_session_and_a_retained_will() {
    let mut s = Session::new(config(), 0);
    assert!(s.poll_dial(0));
    assert!(!s.poll_dial(0), "one dial at a time");
    s.handle_dialed(0);
    let [Packet::Connect(c)] = &sent(&mut s)[..] else {
        panic!("one CONNECT")
    };
    assert!(!c.clean_session);
    assert_eq!(c.keep_alive, 30);
    assert_eq!(c.client_id, "interopd-n1");
    assert_eq!(c.username.as_deref(), Some("ha"));
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    let will = c.will.as_ref().unwrap();
    assert_eq!(will.topic, "interopd/n1/availability");
    assert_eq!(&will.message[..], b"offline");
    assert!(will.retain);
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!s.is_connected());
    s.handle_bytes(&connack(ConnectReturnCode::Accepted), 5);
    assert!(s.is_connected());
}

#[test]
fn a_refused_login_is_a_bad_login_and_the_backoff_doubles_up_to_its_cap() {
    let mut s = Session::new(config(), 0);
    let mut t = 0;
    let mut delays = Vec::new();
    for _ in 0..9 {
        assert!(s.poll_dial(t));
        s.handle_dialed(t);
        s.handle_bytes(&connack(ConnectReturnCode::NotAuthorized), t);
        let [
            SessionEvent::Closed {
                reason,
                retry_in_ms,
            },
        ] = &events(&mut s)[..]
        else {
            panic!("closed")
        };
        assert!(reason.is_bad_login(), "{reason}");
        assert!(reason.to_string().contains("not authorized"), "{reason}");
        delays.push(*retry_in_ms);
        assert!(!s.poll_dial(t + retry_in_ms - 1));
        assert_eq!(s.poll_timeout(), Some(t + retry_in_ms));
        t += retry_in_ms;
    }
    assert_eq!(
        delays,
        [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
    );
    // A CONNACK that accepts starts the backoff over.
    assert!(s.poll_dial(t));
    s.handle_dialed(t);
    s.handle_bytes(&connack(ConnectReturnCode::Accepted), t);
    s.handle_closed(t);
    let [_, SessionEvent::Closed { retry_in_ms, .. }] = &events(&mut s)[..] else {
        panic!("connected, then closed")
    };
    assert_eq!(*retry_in_ms, 1000);
    // Code 4 is a bad login too; 3 (server unavailable) is not.
    assert!(CloseReason::Refused { code: 4 }.is_bad_login());
    assert!(!CloseReason::Refused { code: 3 }.is_bad_login());
}

#[test]
fn keepalive_pings_after_half_the_interval_and_closes_without_an_answer() {
    let mut s = connected(0);
    assert_eq!(s.poll_timeout(), Some(15_000));
    s.handle_timeout(14_999);
    assert!(sent(&mut s).is_empty());
    s.handle_timeout(15_000);
    assert!(matches!(&sent(&mut s)[..], [Packet::PingReq(_)]));
    s.handle_bytes(&wire(Packet::PingResp(PingResp)), 16_000);
    assert_eq!(s.poll_timeout(), Some(30_000), "counted from the PINGREQ");
    s.handle_timeout(30_000);
    assert!(matches!(&sent(&mut s)[..], [Packet::PingReq(_)]));
    s.handle_timeout(59_999);
    assert!(s.is_connected());
    s.handle_timeout(60_000);
    assert!(!s.is_connected());
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Closed {
            reason: CloseReason::KeepaliveTimeout,
            ..
        }]
    ));
}

#[test]
fn no_connack_in_time_closes_the_connection() {
    let mut s = Session::new(config(), 0);
    assert!(s.poll_dial(0));
    s.handle_dialed(0);
    assert_eq!(s.poll_timeout(), Some(CONNACK_TIMEOUT_MS));
    s.handle_timeout(CONNACK_TIMEOUT_MS);
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Closed {
            reason: CloseReason::ConnAckTimeout,
            ..
        }]
    ));
}

#[test]
fn a_qos1_publish_is_acked_by_its_packet_id_and_the_window_is_bounded() {
    let mut s = connected(0);
    let p1 = s
        .publish("t/a", Bytes::from_static(b"x"), true, true, 1)
        .unwrap()
        .unwrap();
    let p2 = s
        .publish("t/b", Bytes::from_static(b"y"), true, false, 1)
        .unwrap()
        .unwrap();
    assert_ne!(p1, p2);
    assert_eq!(s.publish("t/c", Bytes::new(), false, false, 1), Ok(None));
    let packets = sent(&mut s);
    let Packet::Publish(first) = &packets[0] else {
        panic!("publish")
    };
    assert!(first.retain);
    assert_eq!(first.pkid, Some(p1));
    assert_eq!(s.in_flight(), 2);
    // An unknown or repeated PUBACK is not an event.
    s.handle_bytes(&wire(Packet::PubAck(PubAck { pkid: 999 })), 2);
    s.handle_bytes(&wire(Packet::PubAck(PubAck { pkid: p2 })), 2);
    s.handle_bytes(&wire(Packet::PubAck(PubAck { pkid: p2 })), 2);
    assert_eq!(events(&mut s), [SessionEvent::Acked { pkid: p2 }]);
    assert_eq!(s.in_flight(), 1);
    while s.in_flight() < MAX_IN_FLIGHT {
        s.publish("t", Bytes::new(), true, false, 3).unwrap();
    }
    assert_eq!(
        s.publish("t", Bytes::new(), true, false, 3),
        Err(SessionError::WindowFull)
    );
    // A close forgets what was in flight.
    s.handle_closed(4);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(
        s.publish("t", Bytes::new(), true, false, 4),
        Err(SessionError::NotConnected)
    );
}

#[test]
fn a_message_split_anywhere_is_decoded_once_and_acked_when_asked() {
    let mut s = connected(0);
    let mut bytes = publish("interopd/n1/send", Some(7), b"{\"to\":\"+15550100\"}");
    bytes.extend(publish("interopd/n1/notify/15550100", None, b"hi"));
    for b in &bytes {
        s.handle_bytes(std::slice::from_ref(b), 1);
    }
    let got = events(&mut s);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[0], SessionEvent::Message { topic, pkid: Some(7), .. } if topic == "interopd/n1/send")
    );
    assert!(
        matches!(&got[1], SessionEvent::Message { payload, pkid: None, .. } if &payload[..] == b"hi")
    );
    assert!(sent(&mut s).is_empty(), "no PUBACK before the bridge asks");
    s.ack(7, 2);
    assert!(matches!(
        &sent(&mut s)[..],
        [Packet::PubAck(PubAck { pkid: 7 })]
    ));
}

#[test]
fn an_oversized_publish_is_skipped_and_reported_and_the_next_packet_still_decodes() {
    let mut s = connected(0);
    let big = vec![b'x'; MAX_PACKET_BYTES + 100];
    let mut bytes = publish("interopd/n1/send", Some(9), &big);
    bytes.extend(publish("interopd/n1/send", Some(10), b"{}"));
    for chunk in bytes.chunks(1000) {
        s.handle_bytes(chunk, 1);
    }
    let got = events(&mut s);
    assert_eq!(got.len(), 2, "{got:?}");
    let SessionEvent::Oversized { topic, pkid, len } = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!((topic.as_str(), *pkid), ("interopd/n1/send", Some(9)));
    assert!(*len > MAX_PACKET_BYTES);
    assert!(matches!(
        &got[1],
        SessionEvent::Message { pkid: Some(10), .. }
    ));
    assert!(s.is_connected());
    // In one piece too.
    let mut s = connected(0);
    s.handle_bytes(&bytes, 1);
    assert_eq!(events(&mut s).len(), 2);
}

#[test]
fn garbage_and_oversized_control_packets_close_the_session() {
    for bytes in [
        vec![0x00, 0x00],
        vec![0x90, 0xff, 0xff, 0xff, 0x7f],
        vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        wire(Packet::ConnAck(ConnAck {
            session_present: false,
            return_code: ConnectReturnCode::Accepted,
        })),
    ] {
        let mut s = connected(0);
        s.handle_bytes(&bytes, 1);
        assert!(!s.is_connected(), "{bytes:?}");
        assert!(
            matches!(
                &events(&mut s)[..],
                [SessionEvent::Closed {
                    reason: CloseReason::Protocol { .. },
                    ..
                }]
            ),
            "{bytes:?}"
        );
    }
}

/// Feeds `stream` to a connected session in pieces of `sizes` (cycling); returns the events
/// and whether it is still connected.
pub(crate) fn feed(stream: &[u8], sizes: &[usize]) -> (Vec<SessionEvent>, bool) {
    let mut s = connected(0);
    let mut rest = stream;
    let mut turn = 0;
    while !rest.is_empty() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        turn += 1;
        let (piece, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        s.handle_bytes(piece, 1);
    }
    (events(&mut s), s.is_connected())
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_stream_in_any_pieces_gives_what_it_gives_in_one_piece(
            head in proptest::collection::vec(any::<u8>(), 0..64),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            sizes in proptest::collection::vec(1usize..40, 1..8),
        ) {
            // Valid packets around noise, so that both paths are walked.
            let mut stream = publish("interopd/n1/send", Some(3), &payload);
            stream.extend(&head);
            stream.extend(publish("x", None, &tail));
            stream.extend(&tail);
            prop_assert_eq!(feed(&stream, &sizes), feed(&stream, &[stream.len().max(1)]));
        }
    }
}
