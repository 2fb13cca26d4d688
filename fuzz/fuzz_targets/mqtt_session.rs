//! Fuzzes the MQTT client session (`interopd::mqtt::session`) with an arbitrary byte stream
//! from the broker, cut into arbitrary pieces, after a CONNACK that accepts it.
//!
//! Input layout: byte 0 says how many of the following bytes (0..=15) are piece sizes; each
//! piece size is that byte plus one, used in turn, cycling; the rest is the stream. Checks:
//! - nothing panics, whatever the packets (oversized ones are skipped, bad ones close);
//! - the events and whether the session is still connected are the same as for the stream
//!   fed in one piece.
#![no_main]

use interopd::mqtt::session::{Session, SessionConfig, SessionEvent};
use libfuzzer_sys::fuzz_target;

/// A CONNACK that accepts the session.
const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

fn feed(stream: &[u8], sizes: &[usize]) -> (Vec<SessionEvent>, bool) {
    let config = SessionConfig {
        client_id: "fuzz".into(),
        username: None,
        password: None,
        keepalive_secs: 30,
        will_topic: "fuzz/availability".into(),
        will_payload: b"offline".to_vec(),
    };
    let mut s = Session::new(config, 0);
    assert!(s.poll_dial(0));
    s.handle_dialed(0);
    s.handle_bytes(&CONNACK, 0);
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
    let events = std::iter::from_fn(|| s.poll_event()).collect();
    (events, s.is_connected())
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();
    let whole = feed(stream, &[stream.len().max(1)]);
    assert_eq!(feed(stream, &sizes), whole);
});
