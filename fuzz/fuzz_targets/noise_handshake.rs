//! Fuzzes the `wa` Noise handshake (`interop_proto::noise`) at each point where a peer's
//! bytes come in: (a) the responder's first input (prologue and `ClientHello` frame), (b) the
//! initiator's `ServerHello` after a real `ClientHello`, and (c) the responder's
//! `ClientFinish` after a real exchange. The first byte picks the case.
//!
//! Nothing may panic, and fuzz bytes must never complete a handshake: in (b) the chain would
//! have to verify under a root key the fuzzer has never seen.
#![no_main]

use interop_proto::noise::{
    CertIssuer, CertWindow, ClientHandshake, FrameReader, MAX_WA_FRAME_BYTES, PrivateKey,
    ServerHandshake, issue_chain,
};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;
const WINDOW: CertWindow = CertWindow {
    not_before_unix_s: 0,
    not_after_unix_s: u64::MAX,
};

fuzz_target!(|data: &[u8]| {
    let Some((&case, input)) = data.split_first() else {
        return;
    };
    let rng = &mut StdRng::seed_from_u64(7);
    let server_key = PrivateKey::generate(rng);
    let root = CertIssuer::generate(0, rng);
    let inter = CertIssuer::generate(1, rng);
    let Ok(chain) = issue_chain(&root, &inter, 2, &server_key.public(), WINDOW, rng) else {
        return;
    };
    let Ok(server) = ServerHandshake::start(&server_key, &chain, rng) else {
        return;
    };
    match case % 3 {
        0 => {
            let mut reader = FrameReader::expecting_prologue(MAX_WA_FRAME_BYTES);
            reader.push(input);
            if let Ok(Some(frame)) = reader.next_frame() {
                let _ = server.handle_client_hello(&frame);
            }
        }
        1 => {
            let Ok((client, _hello)) = ClientHandshake::start(&PrivateKey::generate(rng), rng)
            else {
                return;
            };
            let r = client.handle_server_hello(input, &root.pin(), NOW);
            assert!(r.is_err(), "fuzz bytes passed the certificate check");
        }
        _ => {
            let Ok((client, hello)) = ClientHandshake::start(&PrivateKey::generate(rng), rng)
            else {
                return;
            };
            let mut reader = FrameReader::expecting_prologue(MAX_WA_FRAME_BYTES);
            reader.push(&hello);
            let Ok(Some(ch)) = reader.next_frame() else {
                return;
            };
            let Ok((server, sh)) = server.handle_client_hello(&ch) else {
                return;
            };
            let mut reader = FrameReader::frames_only(MAX_WA_FRAME_BYTES);
            reader.push(&sh);
            let Ok(Some(sh)) = reader.next_frame() else {
                return;
            };
            // The client side of the exchange is real, so the server is at the right point.
            let _ = client.handle_server_hello(&sh, &root.pin(), NOW);
            let _ = server.handle_client_finish(input);
        }
    }
});
