//! Our Noise responder (profile `wa`) against a client we did not write: pyaileys' own
//! `NoiseHandler` (a pure-Python port of Baileys' noise handler, on the `cryptography`
//! package's X25519 and AES-GCM), driven by `tests/wa_peer/noise_client.py` over loopback TCP.
//! pyaileys is installed on first use, pinned (`python_support`).
//!
//! The client checks our certificate chain with its own code, pinned to our root instead of
//! WhatsApp's, sends an `INTEROP` `ClientPayload`, and exchanges one sealed frame each way.
//! With the wrong pin it must refuse, which shows its check runs.
//!
//! pyaileys runs as published: its handshake, like WhatsApp's, does not mix the empty payload
//! of the `ClientHello` into the handshake hash, and neither does ours, so every step agrees:
//! keys, the certificate chain, the `ClientPayload`, the transport keys and nonces. The
//! negative test tells pyaileys to add that step as standard Noise has it
//! (`--hash-empty-hello-payload`) and shows that this variant is now refused.

mod python_support;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use interop_proto::noise::wire::{ClientPayload, Product};
use interop_proto::noise::{
    CertIssuer, CertWindow, FrameReader, MAX_WA_FRAME_BYTES, PrivateKey, ServerHandshake,
    issue_chain,
};
use prost::Message as _;
use serde_json::Value;

/// Lower-case hex, as the Python client prints bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What our responder learnt from the client.
struct Seen {
    client_static: [u8; 32],
    payload: ClientPayload,
    frame: Vec<u8>,
}

fn next_frame(stream: &mut TcpStream, reader: &mut FrameReader) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed the connection".into());
        }
        reader.push(&buf[..n]);
    }
}

/// Answers one client on `listener` with our sans-I/O responder.
fn respond(
    listener: TcpListener,
    key: PrivateKey,
    chain: interop_proto::noise::wire::CertChain,
) -> Result<Seen, String> {
    let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let rng = &mut rand::rng();
    let mut reader = FrameReader::expecting_prologue(MAX_WA_FRAME_BYTES);
    let hello = ServerHandshake::start(&key, &chain, rng).map_err(|e| e.to_string())?;
    let (expect_finish, server_hello) = hello
        .handle_client_hello(&next_frame(&mut stream, &mut reader)?)
        .map_err(|e| e.to_string())?;
    stream.write_all(&server_hello).map_err(|e| e.to_string())?;
    let finished = expect_finish
        .handle_client_finish(&next_frame(&mut stream, &mut reader)?)
        .map_err(|e| e.to_string())?;
    let mut transport = finished.transport;
    let frame = transport
        .open(&next_frame(&mut stream, &mut reader)?)
        .map_err(|e| e.to_string())?;
    let answer = transport
        .seal(b"pong from interopd")
        .map_err(|e| e.to_string())?;
    stream.write_all(&answer).map_err(|e| e.to_string())?;
    Ok(Seen {
        client_static: finished.client_static,
        payload: ClientPayload::decode(finished.client_payload.as_slice())
            .map_err(|e| e.to_string())?,
        frame,
    })
}

/// Runs pyaileys against a fresh responder whose chain is under `root`, with the client
/// pinned to `pin`; returns what each side saw.
fn run(
    root: &CertIssuer,
    pin: &CertIssuer,
    client_args: &[&str],
) -> (Result<Seen, String>, Value, bool) {
    let rng = &mut rand::rng();
    let key = PrivateKey::generate(rng);
    let intermediate = CertIssuer::generate(7, rng);
    let window = CertWindow {
        not_before_unix_s: 0,
        not_after_unix_s: u64::MAX,
    };
    let chain = issue_chain(root, &intermediate, 42, &key.public(), window, rng).expect("issue");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    let server = std::thread::spawn(move || respond(listener, key, chain));
    let pin_hex = hex(&pin.pin().key);
    let out = python_support::python3_with(python_support::PYAILEYS)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/wa_peer/noise_client.py"
        ))
        .arg(port.to_string())
        .arg(pin_hex)
        .arg(pin.pin().serial.to_string())
        .args(client_args)
        .output()
        .expect("run python3");
    let line = String::from_utf8_lossy(&out.stdout);
    let client: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        panic!(
            "the client printed no JSON: {line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        server.join().expect("server thread"),
        client,
        out.status.success(),
    )
}

/// Runs a handshake and one frame each way, and checks what both sides saw.
fn handshake_and_frames_agree(client_args: &[&str]) {
    let root = CertIssuer::generate(0, &mut rand::rng());
    let (server, client, ok) = run(&root, &root, client_args);

    assert!(ok, "pyaileys refused: {client}");
    let seen = server.expect("our responder");
    assert_eq!(
        client["static"].as_str(),
        Some(hex(&seen.client_static).as_str())
    );
    assert_eq!(seen.payload.product, Some(Product::Interop as i32));
    assert_eq!(seen.payload.username, Some(4_915_112_345_678));
    let interop = seen.payload.interop_data.expect("interopData (field 38)");
    assert_eq!(interop.account_id, Some(7));
    assert_eq!(
        interop.token.as_deref(),
        Some(&b"header.claims.signature"[..])
    );
    assert_eq!(interop.enable_read_receipts, Some(true));
    assert_eq!(seen.frame, b"ping from pyaileys");
    assert_eq!(
        client["answer"].as_str(),
        Some(hex(b"pong from interopd").as_str())
    );
}

#[test]
fn pyaileys_as_published_completes_the_handshake() {
    handshake_and_frames_agree(&[]);
}

#[test]
fn pyaileys_with_the_standard_noise_step_is_refused() {
    let root = CertIssuer::generate(0, &mut rand::rng());
    let (server, client, ok) = run(&root, &root, &["--hash-empty-hello-payload"]);
    assert!(
        !ok,
        "pyaileys opened a ServerHello under another hash: {client}"
    );
    assert!(
        client["error"]
            .as_str()
            .unwrap_or("")
            .contains("InvalidTag"),
        "{client}"
    );
    assert!(server.is_err(), "our side must see the client give up");
}

#[test]
fn pyaileys_refuses_a_chain_under_another_root() {
    let rng = &mut rand::rng();
    let root = CertIssuer::generate(0, rng);
    let other = CertIssuer::generate(0, rng);
    let (server, client, ok) = run(&root, &other, &[]);
    assert!(
        !ok,
        "pyaileys accepted a chain under a root it does not pin"
    );
    assert!(
        client["error"].as_str().unwrap_or("").contains("signature"),
        "{client}"
    );
    assert!(server.is_err(), "our side must see the client give up");
}
