//! Our sender keys (the group cipher in `interop_proto::signal`) against an implementation we
//! did not write: pyaileys' `signal/group.py`, a pure-Python port of Baileys' `Signal/Group`,
//! not built from the whatsapp-rust project's code (`tests/wa_peer/sender_key_peer.py`).
//! pyaileys is installed on first use, pinned (`python_support`).
//!
//! Both directions, as the issue asks: their side processes our SenderKeyDistributionMessage
//! and decrypts our SenderKeyMessages, and ours processes theirs; in both, messages arrive out
//! of order (within the skipped-key bound), and a redelivered or tampered one is refused.
//! Baileys' sender skips iteration 1 (it encrypts at 0, then 2, 3, …), so our side also reads
//! a chain with a gap.

mod python_support;

use std::io::Write as _;
use std::process::Stdio;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use interop_proto::signal::{self, Address, SignalError};
use interop_proto::signal_store::MemoryStore;
use serde_json::{Value, json};

const GROUP: &str = "120363000000000001";

fn peer_script() -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/wa_peer/sender_key_peer.py")
}

/// Runs the peer on one request (see the script's docstring) and returns its answer.
fn run_peer(req: &Value) -> Value {
    let mut child = python_support::python3_with(python_support::PYAILEYS)
        .arg(peer_script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(req.to_string().as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("the peer runs");
    assert!(out.status.success(), "sender_key_peer.py failed");
    serde_json::from_slice(&out.stdout).expect("the peer answers JSON")
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().expect("a base64 string"))
        .expect("valid base64")
}

fn us() -> Address {
    Address::new("acme-home", 1)
}

fn them() -> Address {
    Address::new("15550100", 0)
}

/// Our distribution and `n` messages `"ours {i}"`, from a fresh chain.
fn our_chain(n: usize) -> (MemoryStore, Vec<u8>, Vec<Vec<u8>>) {
    let store = MemoryStore::default();
    let mut rng = rand::rng();
    let skdm = signal::sender_key_distribution(&store, GROUP, &us(), &mut rng).unwrap();
    let messages = (0..n)
        .map(|i| {
            signal::group_encrypt(
                &store,
                GROUP,
                &us(),
                format!("ours {i}").as_bytes(),
                &mut rng,
            )
            .unwrap()
        })
        .collect();
    (store, skdm, messages)
}

#[test]
fn their_group_cipher_reads_our_distribution_and_our_messages_out_of_order() {
    let (_, skdm, mut messages) = our_chain(5);
    let mut tampered = messages[1].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    messages.push(tampered);
    let order = [3usize, 0, 4, 1, 2, 0, 5];
    let answer = run_peer(&json!({
        "group": GROUP,
        "ours": {
            "skdm": B64.encode(&skdm),
            "messages": messages.iter().map(|m| B64.encode(m)).collect::<Vec<_>>(),
            "order": order,
        },
        "theirs": {"plaintexts": []},
    }));
    let decrypted = answer["decrypted"].as_array().expect("a list");
    assert_eq!(decrypted.len(), order.len());
    for (slot, &i) in order.iter().enumerate().take(5) {
        assert_eq!(
            b64(&decrypted[slot]),
            format!("ours {i}").as_bytes(),
            "message {i} in slot {slot}"
        );
    }
    assert!(
        decrypted[5]["error"].is_string(),
        "a redelivered message is refused: {}",
        decrypted[5]
    );
    assert!(
        decrypted[6]["error"].is_string(),
        "a tampered message is refused: {}",
        decrypted[6]
    );
}

#[test]
fn we_read_their_distribution_and_their_messages_out_of_order() {
    let plaintexts: Vec<String> = (0..4).map(|i| format!("theirs {i}")).collect();
    let answer = run_peer(&json!({
        "group": GROUP,
        "ours": {"skdm": B64.encode(our_chain(0).1), "messages": [], "order": []},
        "theirs": {"plaintexts": plaintexts.iter().map(|p| B64.encode(p)).collect::<Vec<_>>()},
    }));
    let store = MemoryStore::default();
    signal::process_sender_key_distribution(&store, GROUP, &them(), &b64(&answer["skdm"])).unwrap();
    let messages: Vec<Vec<u8>> = answer["messages"]
        .as_array()
        .expect("a list")
        .iter()
        .map(b64)
        .collect();
    assert_eq!(messages.len(), 4);
    for i in [2usize, 0, 3, 1] {
        let pt = signal::group_decrypt(&store, GROUP, &them(), &messages[i])
            .unwrap_or_else(|e| panic!("their message {i}: {e}"));
        assert_eq!(pt, plaintexts[i].as_bytes());
    }
    assert!(matches!(
        signal::group_decrypt(&store, GROUP, &them(), &messages[0]),
        Err(SignalError::Duplicate)
    ));
    let mut tampered = messages[3].clone();
    tampered[5] ^= 0x01;
    assert!(signal::group_decrypt(&store, GROUP, &them(), &tampered).is_err());
    // Processing their distribution again neither rewinds nor replaces the chain.
    signal::process_sender_key_distribution(&store, GROUP, &them(), &b64(&answer["skdm"])).unwrap();
    assert!(matches!(
        signal::group_decrypt(&store, GROUP, &them(), &messages[2]),
        Err(SignalError::Duplicate)
    ));
}
