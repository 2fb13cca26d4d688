//! Both roles in one process: the handshake, the frames after it, and one test per way the
//! peer or the chain can be wrong, each with its own error.

use proptest::prelude::*;
use prost::Message as _;

use super::wire::{CertChain, ClientPayload, HandshakeMessage, InteropData, Product};
use super::*;

const NOW: u64 = 1_800_000_000;
const WINDOW: CertWindow = CertWindow {
    not_before_unix_s: NOW - 86_400,
    not_after_unix_s: NOW + 86_400,
};

struct Server {
    key: PrivateKey,
    root: CertIssuer,
    chain: CertChain,
}

fn server() -> Server {
    let rng = &mut rand::rng();
    let key = PrivateKey::generate(rng);
    let root = CertIssuer::generate(0, rng);
    let inter = CertIssuer::generate(7, rng);
    let chain = issue_chain(&root, &inter, 42, &key.public(), WINDOW, rng).expect("issue");
    Server { key, root, chain }
}

fn payload() -> Vec<u8> {
    ClientPayload {
        username: Some(4_915_112_345_678),
        passive: Some(false),
        product: Some(Product::Interop as i32),
        interop_data: Some(InteropData {
            account_id: Some(99),
            token: Some(b"opaque-token".to_vec()),
            enable_read_receipts: Some(true),
        }),
        ..ClientPayload::default()
    }
    .encode_to_vec()
}

/// The frame bodies of `bytes` as the other side's reader sees them.
fn frames(reader: &mut FrameReader, bytes: &[u8]) -> Vec<Vec<u8>> {
    reader.push(bytes);
    let mut out = Vec::new();
    while let Some(f) = reader.next_frame().expect("frame") {
        out.push(f);
    }
    out
}

/// Runs the first two messages; returns what the test needs to go on or tamper.
fn hello(s: &Server) -> (ExpectServerHello, ExpectClientFinish, Vec<u8>, PrivateKey) {
    let rng = &mut rand::rng();
    let client_key = PrivateKey::generate(rng);
    let (client, first) = ClientHandshake::start(&client_key, rng).expect("start");
    let mut server_reader = FrameReader::expecting_prologue(MAX_WA_FRAME_BYTES);
    let ch = frames(&mut server_reader, &first);
    assert_eq!(ch.len(), 1);
    let srv = ServerHandshake::start(&s.key, &s.chain, rng).expect("server start");
    let (srv, sh) = srv.handle_client_hello(&ch[0]).expect("client hello");
    let sh = frames(&mut FrameReader::frames_only(MAX_WA_FRAME_BYTES), &sh);
    (client, srv, sh[0].clone(), client_key)
}

fn both() -> (NoiseTransport, NoiseTransport) {
    let s = server();
    let (client, srv, sh, client_key) = hello(&s);
    let finish = client
        .handle_server_hello(&sh, &s.root.pin(), NOW)
        .expect("server hello");
    assert_eq!(finish.server_cert().server_static(), &s.key.public());
    let (ct, cf) = finish.finish(&payload()).expect("finish");
    let cf = frames(&mut FrameReader::frames_only(MAX_WA_FRAME_BYTES), &cf);
    let done = srv.handle_client_finish(&cf[0]).expect("client finish");
    assert_eq!(done.client_static, client_key.public());
    assert_eq!(done.client_payload, payload());
    (ct, done.transport)
}

fn body(frame: &[u8]) -> Vec<u8> {
    frames(&mut FrameReader::frames_only(MAX_WA_FRAME_BYTES), frame).remove(0)
}

#[test]
fn both_sides_complete_the_handshake_and_exchange_frames_both_ways() {
    let (mut client, mut server) = both();
    for i in 0..3u8 {
        let f = client.seal(&[i; 5]).expect("seal");
        assert_eq!(server.open(&body(&f)).expect("open"), vec![i; 5]);
        let f = server.seal(b"pong").expect("seal");
        assert_eq!(client.open(&body(&f)).expect("open"), b"pong");
    }
}

#[test]
fn client_payload_decodes_with_interop_fields() {
    let p = ClientPayload::decode(payload().as_slice()).expect("decode");
    assert_eq!(p.product, Some(Product::Interop as i32));
    let d = p.interop_data.expect("interop data");
    assert_eq!(
        (d.account_id, d.token.as_deref()),
        (Some(99), Some(&b"opaque-token"[..]))
    );
    assert!(!format!("{d:?}").contains("opaque"), "Debug shows no token");
}

/// The client's verdict on an honest server, with `pin` at `now`.
fn client_result(s: &Server, pin: &RootPin, now: u64) -> Result<(), NoiseError> {
    let (client, _, sh, _) = hello(s);
    client.handle_server_hello(&sh, pin, now).map(|_| ())
}

/// A server whose chain was built by `make`, and the client's verdict on it.
fn verdict(make: impl FnOnce(&PrivateKey, &CertIssuer) -> CertChain) -> Result<(), NoiseError> {
    let mut s = server();
    s.chain = make(&s.key, &s.root);
    let (client, _, sh, _) = hello(&s);
    client
        .handle_server_hello(&sh, &s.root.pin(), NOW)
        .map(|_| ())
}

#[test]
fn a_leaf_signed_by_another_intermediate_is_an_invalid_chain() {
    let r = verdict(|key, root| {
        let rng = &mut rand::rng();
        let inter = CertIssuer::generate(7, rng);
        let other = CertIssuer::generate(7, rng);
        let mut chain = issue_chain(root, &inter, 42, &key.public(), WINDOW, rng).expect("issue");
        chain.leaf = Some(other.issue(42, &key.public(), WINDOW, rng).expect("leaf"));
        chain
    });
    assert_eq!(
        r,
        Err(NoiseError::ChainInvalid {
            which: CertRole::Leaf
        })
    );
}

#[test]
fn a_leaf_whose_issuer_serial_is_not_the_intermediate_is_an_invalid_chain() {
    let r = verdict(|key, root| {
        let rng = &mut rand::rng();
        let inter = CertIssuer::generate(7, rng);
        let mut chain = issue_chain(root, &inter, 42, &key.public(), WINDOW, rng).expect("issue");
        let liar = CertIssuer::from_parts(inter.private_key().clone(), 8);
        chain.leaf = Some(liar.issue(42, &key.public(), WINDOW, rng).expect("leaf"));
        chain
    });
    assert_eq!(
        r,
        Err(NoiseError::ChainInvalid {
            which: CertRole::Leaf
        })
    );
}

#[test]
fn a_chain_under_another_root_is_a_pin_mismatch() {
    let s = server();
    let other = CertIssuer::generate(0, &mut rand::rng()).pin();
    assert_eq!(client_result(&s, &other, NOW), Err(NoiseError::PinMismatch));
    let wrong_serial = RootPin {
        serial: 1,
        ..s.root.pin()
    };
    assert_eq!(
        client_result(&s, &wrong_serial, NOW),
        Err(NoiseError::PinMismatch)
    );
}

#[test]
fn a_leaf_for_another_key_is_not_the_server_static() {
    let r = verdict(|_, root| {
        let rng = &mut rand::rng();
        let inter = CertIssuer::generate(7, rng);
        let elsewhere = PrivateKey::generate(rng).public();
        issue_chain(root, &inter, 42, &elsewhere, WINDOW, rng).expect("issue")
    });
    assert_eq!(r, Err(NoiseError::LeafKeyNotServerStatic));
}

#[test]
fn certificates_outside_their_window_are_expired() {
    let s = server();
    for now in [WINDOW.not_before_unix_s - 1, WINDOW.not_after_unix_s + 1] {
        assert_eq!(
            client_result(&s, &s.root.pin(), now),
            Err(NoiseError::CertExpired {
                which: CertRole::Intermediate
            })
        );
    }
    let r = verdict(|key, root| {
        let rng = &mut rand::rng();
        let inter = CertIssuer::generate(7, rng);
        let mut chain = issue_chain(root, &inter, 42, &key.public(), WINDOW, rng).expect("issue");
        let old = CertWindow {
            not_before_unix_s: 0,
            not_after_unix_s: NOW - 1,
        };
        chain.leaf = Some(inter.issue(42, &key.public(), old, rng).expect("leaf"));
        chain
    });
    assert_eq!(
        r,
        Err(NoiseError::CertExpired {
            which: CertRole::Leaf
        })
    );
}

/// Flips one byte at every position of a handshake message that the receiver checks.
fn flip(bytes: &[u8], i: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[i] ^= 0x01;
    v
}

#[test]
fn a_flipped_byte_in_client_hello_fails_the_handshake() {
    let s = server();
    let rng = &mut rand::rng();
    let (client, first) = ClientHandshake::start(&PrivateKey::generate(rng), rng).expect("start");
    let ch = body(&first[WA_PROLOGUE.len()..]);
    // The ephemeral key is the last 32 bytes; a different key gives the server different
    // secrets, so the client cannot open the ServerHello.
    let srv = ServerHandshake::start(&s.key, &s.chain, rng).expect("server");
    let (_, sh) = srv
        .handle_client_hello(&flip(&ch, ch.len() - 1))
        .expect("any key parses");
    assert_eq!(
        client
            .handle_server_hello(&body(&sh), &s.root.pin(), NOW)
            .map(|_| ()),
        Err(NoiseError::PeerBadHandshakeMessage)
    );
    // A flipped tag or length byte is a message that does not parse.
    let srv = ServerHandshake::start(&s.key, &s.chain, rng).expect("server");
    assert_eq!(
        srv.handle_client_hello(&flip(&ch, 1)).map(|_| ()).err(),
        Some(NoiseError::PeerBadHandshakeMessage)
    );
}

#[test]
fn a_flipped_byte_anywhere_in_server_hello_fails_the_handshake() {
    let s = server();
    let (_, _, sh, _) = hello(&s);
    for i in 0..sh.len() {
        let (client, _, _, _) = hello(&s);
        let r = client.handle_server_hello(&flip(&sh, i), &s.root.pin(), NOW);
        assert_eq!(
            r.map(|_| ()),
            Err(NoiseError::PeerBadHandshakeMessage),
            "byte {i}"
        );
    }
}

#[test]
fn a_flipped_byte_anywhere_in_client_finish_fails_the_handshake() {
    let s = server();
    let mut i = 0;
    loop {
        // Each attempt needs a server at the same point, so each runs its own first steps.
        let (client, srv, sh, _) = hello(&s);
        let finish = client
            .handle_server_hello(&sh, &s.root.pin(), NOW)
            .expect("hello");
        let (_, cf) = finish.finish(&payload()).expect("finish");
        let cf = body(&cf);
        if i == cf.len() {
            break;
        }
        let r = srv.handle_client_finish(&flip(&cf, i));
        assert_eq!(
            r.map(|_| ()),
            Err(NoiseError::PeerBadHandshakeMessage),
            "byte {i}"
        );
        i += 1;
    }
}

#[test]
fn a_forged_tag_a_reordered_frame_and_a_replay_fail_to_decrypt() {
    let (mut client, mut server) = both();
    let one = body(&client.seal(b"one").expect("seal"));
    let two = body(&client.seal(b"two").expect("seal"));
    assert_eq!(
        server.open(&two),
        Err(NoiseError::DecryptFailed),
        "out of order"
    );
    assert_eq!(
        server.open(&one),
        Err(NoiseError::DecryptFailed),
        "broken transport stays so"
    );

    let (mut client, mut server) = both();
    let one = body(&client.seal(b"one").expect("seal"));
    let last = one.len() - 1;
    assert_eq!(
        server.open(&flip(&one, last)),
        Err(NoiseError::DecryptFailed),
        "forged tag"
    );

    let (mut client, mut server) = both();
    let one = body(&client.seal(b"one").expect("seal"));
    assert_eq!(server.open(&one).expect("open"), b"one");
    assert_eq!(server.open(&one), Err(NoiseError::DecryptFailed), "replay");
    assert_eq!(
        server.open(&one[..3]),
        Err(NoiseError::DecryptFailed),
        "truncated"
    );
}

#[test]
fn a_truncated_frame_is_incomplete_not_an_error() {
    let mut r = FrameReader::frames_only(MAX_WA_FRAME_BYTES);
    r.push(&[0, 0, 5, 1, 2]);
    assert_eq!(r.next_frame(), Ok(None));
    r.push(&[3, 4, 5]);
    assert_eq!(r.next_frame(), Ok(Some(vec![1, 2, 3, 4, 5])));
    assert_eq!(r.next_frame(), Ok(None));
}

#[test]
fn an_oversize_length_is_refused_before_its_bytes_arrive() {
    let mut r = FrameReader::frames_only(1_000);
    r.push(&[0, 3, 0xe9]);
    assert_eq!(
        r.next_frame(),
        Err(NoiseError::FrameTooLarge {
            len: 1_001,
            max: 1_000
        })
    );
    assert_eq!(
        FrameReader::expecting_prologue(usize::MAX).max_frame_bytes(),
        MAX_WA_FRAME_BYTES
    );
}

#[test]
fn a_wrong_prologue_is_refused_at_its_first_wrong_byte() {
    let mut r = FrameReader::expecting_prologue(MAX_WA_FRAME_BYTES);
    r.push(b"W");
    assert_eq!(r.next_frame(), Ok(None));
    r.push(b"B");
    assert_eq!(r.next_frame(), Err(NoiseError::PeerBadPrologue));
    assert_eq!(
        r.next_frame(),
        Err(NoiseError::PeerBadPrologue),
        "and stays refused"
    );
}

#[test]
fn private_keys_do_not_show_in_debug() {
    let k = PrivateKey::from_bytes([0xab; 32]);
    assert_eq!(format!("{k:?}"), "PrivateKey(..)");
    let issuer = CertIssuer::from_parts(k, 3);
    assert!(!format!("{issuer:?}").contains("171"));
}

#[test]
fn a_handshake_message_without_its_step_is_refused() {
    let s = server();
    let srv = ServerHandshake::start(&s.key, &s.chain, &mut rand::rng()).expect("server");
    let empty = HandshakeMessage::default().encode_to_vec();
    assert_eq!(
        srv.handle_client_hello(&empty).map(|_| ()).err(),
        Some(NoiseError::PeerBadHandshakeMessage)
    );
}

/// A deterministic "RNG" for known-answer tests: SHA-256 of a counter, block after block.
struct FixedRng(u64);

impl rand::TryRng for FixedRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        use sha2::Digest as _;
        for chunk in dst.chunks_mut(32) {
            let block = sha2::Sha256::digest(self.0.to_be_bytes());
            self.0 += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand::TryCryptoRng for FixedRng {}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fixed keys of the known-answer test: client static, client ephemeral, server static,
/// server ephemeral.
fn fixed_keys() -> [PrivateKey; 4] {
    [1u8, 2, 3, 4].map(|b| PrivateKey::from_bytes([b; 32]))
}

#[test]
fn message_one_hashes_the_prologue_and_e_and_not_the_empty_payload() {
    let [cs, ce, ..] = fixed_keys();
    let e = ce.public();
    let (client, first) = ClientHandshake::start_with(&cs, ce).expect("start");
    let mut name = [0u8; 32];
    name[..NOISE_PATTERN.len()].copy_from_slice(NOISE_PATTERN.as_bytes());
    let after_prologue = sha256(&[&name, &WA_PROLOGUE]);
    let whatsapp = sha256(&[&after_prologue, &e]);
    assert_eq!(client.handshake_hash(), whatsapp);
    // Standard Noise would go one step further and hash the empty payload.
    assert_ne!(client.handshake_hash(), sha256(&[&whatsapp, b""]));
    // The ClientHello carries `e` and nothing else.
    let hello = HandshakeMessage::decode(body(&first[WA_PROLOGUE.len()..]).as_slice())
        .expect("decode")
        .client_hello
        .expect("clientHello");
    assert_eq!(hello.ephemeral.as_deref(), Some(&e[..]));
    assert_eq!((hello.r#static, hello.payload), (None, None));
}

#[test]
fn the_responder_continues_from_the_same_hash_after_message_one() {
    let [cs, ce, ss, se] = fixed_keys();
    let (_, first) = ClientHandshake::start_with(&cs, ce.clone()).expect("start");
    let srv = ServerHandshake::start_with(&ss, &CertChain::default(), se.clone()).expect("start");
    let (srv, sh) = srv
        .handle_client_hello(&body(&first[WA_PROLOGUE.len()..]))
        .expect("hello");
    let sh = HandshakeMessage::decode(body(&sh).as_slice())
        .expect("decode")
        .server_hello
        .expect("serverHello");
    let mut name = [0u8; 32];
    name[..NOISE_PATTERN.len()].copy_from_slice(NOISE_PATTERN.as_bytes());
    let h1 = sha256(&[&sha256(&[&name, &WA_PROLOGUE]), &ce.public()]);
    let h2 = sha256(&[&h1, &se.public()]);
    let s = sh.r#static.expect("static");
    let h3 = sha256(&[&h2, &s]);
    let h4 = sha256(&[&h3, &sh.payload.expect("payload")]);
    assert_eq!(srv.handshake_hash(), h4);
}

/// Pinned values for the fixed keys, the chain issued from `FixedRng(0)` and `payload()`: the
/// handshake hash after message 3 and the client's first sealed frame (`seal(b"ping")`).
/// Computed apart from this crate, by a straight-line script over Python's `cryptography`
/// (X25519, AES-GCM, HKDF) that follows WhatsApp's steps, given the same chain and payload
/// bytes; the sealed keys and payloads of both handshake messages agreed byte for byte too.
/// The chain's XEdDSA signatures come from the RNG, so a change in how they are drawn
/// changes these values without the handshake being wrong.
const KAT_HANDSHAKE_HASH: &str = "a4e254ec850b8f7fc00a039a8fee2574a961f9a0fef8289da0b6fcdc0f8c1f4c";
const KAT_FIRST_CLIENT_FRAME: &str = "000014069394e4197122f67dfc3ee93a06238bb8f834be";

#[test]
fn a_handshake_with_fixed_keys_gives_the_pinned_hash_and_first_frame() {
    let [cs, ce, ss, se] = fixed_keys();
    let rng = &mut FixedRng(0);
    let root = CertIssuer::generate(0, rng);
    let inter = CertIssuer::generate(7, rng);
    let chain = issue_chain(&root, &inter, 42, &ss.public(), WINDOW, rng).expect("issue");
    let (client, first) = ClientHandshake::start_with(&cs, ce).expect("start");
    let srv = ServerHandshake::start_with(&ss, &chain, se).expect("server");
    let (srv, sh) = srv
        .handle_client_hello(&body(&first[WA_PROLOGUE.len()..]))
        .expect("hello");
    let finish = client
        .handle_server_hello(&body(&sh), &root.pin(), NOW)
        .expect("server hello");
    let (mut ct, cf) = finish.finish(&payload()).expect("finish");
    let cf_body = body(&cf);
    let srv_hash_before = srv.handshake_hash();
    let done = srv.handle_client_finish(&cf_body).expect("finish");
    let cf_msg = HandshakeMessage::decode(cf_body.as_slice())
        .expect("decode")
        .client_finish
        .expect("clientFinish");
    let h = sha256(&[
        &sha256(&[&srv_hash_before, &cf_msg.r#static.expect("static")]),
        &cf_msg.payload.expect("payload"),
    ]);
    let frame = ct.seal(b"ping").expect("seal");
    let mut st = done.transport;
    assert_eq!(st.open(&body(&frame)).expect("open"), b"ping");
    assert_eq!(
        (hex(&h).as_str(), hex(&frame).as_str()),
        (KAT_HANDSHAKE_HASH, KAT_FIRST_CLIENT_FRAME)
    );
}

#[test]
fn a_low_order_client_ephemeral_is_refused_with_its_own_error() {
    let s = server();
    let rng = &mut rand::rng();
    // 0 and 1 are points of small order on Curve25519; X25519 with them gives all zeros.
    for point in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let hello = HandshakeMessage {
            client_hello: Some(wire::ClientHello {
                ephemeral: Some(point.to_vec()),
                ..wire::ClientHello::default()
            }),
            ..HandshakeMessage::default()
        };
        let srv = ServerHandshake::start(&s.key, &s.chain, rng).expect("server");
        assert_eq!(
            srv.handle_client_hello(&hello.encode_to_vec())
                .map(|_| ())
                .err(),
            Some(NoiseError::PeerLowOrderKey)
        );
    }
    assert_eq!(NoiseError::PeerLowOrderKey.reason(), "low-order-key");
    assert!(NoiseError::PeerLowOrderKey.to_string().contains("peer"));
}

#[test]
fn a_low_order_server_ephemeral_is_refused_with_its_own_error() {
    let s = server();
    let (client, _, sh, _) = hello(&s);
    let mut msg = HandshakeMessage::decode(sh.as_slice()).expect("decode");
    if let Some(hello) = msg.server_hello.as_mut() {
        hello.ephemeral = Some(vec![0u8; 32]);
    }
    assert_eq!(
        client
            .handle_server_hello(&msg.encode_to_vec(), &s.root.pin(), NOW)
            .map(|_| ())
            .err(),
        Some(NoiseError::PeerLowOrderKey)
    );
}

proptest! {
    #[test]
    fn frames_come_out_the_same_however_the_stream_is_split(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut stream = WA_PROLOGUE.to_vec();
        for b in &bodies {
            stream.extend_from_slice(&encode_frame(b).expect("frame"));
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut r = FrameReader::expecting_prologue(MAX_WA_FRAME_BYTES);
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            r.push(&stream[w[0]..w[1]]);
            while let Some(f) = r.next_frame().expect("valid stream") {
                got.push(f);
            }
        }
        prop_assert_eq!(got, bodies);
        prop_assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn arbitrary_bytes_at_each_handshake_input_never_panic(
        input in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let s = server();
        let rng = &mut rand::rng();
        // The responder's first input.
        let srv = ServerHandshake::start(&s.key, &s.chain, rng).expect("server");
        let _ = srv.handle_client_hello(&input);
        // The initiator's ServerHello, after a real ClientHello.
        let (client, _, _, _) = hello(&s);
        prop_assert!(client.handle_server_hello(&input, &s.root.pin(), NOW).is_err());
        // The responder's ClientFinish, after a real exchange.
        let (client, srv, sh, _) = hello(&s);
        let _ = client.handle_server_hello(&sh, &s.root.pin(), NOW);
        prop_assert!(srv.handle_client_finish(&input).is_err());
    }
}
