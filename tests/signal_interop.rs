//! Interoperability of our Signal engine with an independent classic Signal implementation:
//! libsignal-node (the library the Baileys WhatsApp client uses), driven as a child process
//! through `tests/interop/peer.js` (protocol in tests/interop/README.md).
//!
//! The Node packages are installed with `npm ci` on first use if `node_modules` is missing,
//! so `cargo test` works from a fresh clone on a machine with Node 20 and npm.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Once;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use interopd::signal::{
    self, Address, Ciphertext, EncType, WireBundle, WirePreKey, WireSignedPreKey,
};
use interopd::store::Store;
use serde_json::{Value, json};

const NOW: u64 = 1_700_000_000_000;

fn interop_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("tests/interop")
}

fn install_node_packages() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if interop_dir().join("node_modules/libsignal").is_dir() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(interop_dir())
            .status()
            .expect("the interop test needs Node.js 20+ and npm on PATH");
        assert!(status.success(), "npm ci in tests/interop failed");
    });
}

/// The Node peer process.
struct NodePeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: Address,
}

impl NodePeer {
    fn start(name: &str, device: u32) -> NodePeer {
        install_node_packages();
        let mut child = Command::new("node")
            .arg(interop_dir().join("peer.js"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = NodePeer {
            child,
            stdin,
            stdout,
            addr: Address::new(name, device),
        };
        let r = p.call(json!({"op": "init", "name": name, "device": device}));
        assert_eq!(r["ok"], true, "{r}");
        p
    }

    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad peer answer {line:?}: {e}"))
    }

    fn bundle(&mut self, with_prekey: bool) -> WireBundle {
        let r = self.call(json!({"op": "bundle", "with_prekey": with_prekey}));
        assert_eq!(r["ok"], true, "{r}");
        WireBundle {
            registration_id: r["registration_id"].as_u64().unwrap() as u32,
            identity: key32(&r["identity"]),
            signed_prekey: WireSignedPreKey {
                id: r["signed_prekey"]["id"].as_u64().unwrap() as u32,
                public: key32(&r["signed_prekey"]["public"]),
                signature: B64
                    .decode(r["signed_prekey"]["signature"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap(),
            },
            prekey: r["prekey"].as_object().map(|p| WirePreKey {
                id: p["id"].as_u64().unwrap() as u32,
                public: key32(&p["public"]),
            }),
        }
    }

    fn process_bundle(&mut self, from: &Address, b: &WireBundle) -> Value {
        let prekey = b
            .prekey
            .map(|p| json!({"id": p.id, "public": B64.encode(p.public)}));
        self.call(json!({
            "op": "process_bundle", "name": from.user, "device": from.device,
            "bundle": {
                "registration_id": b.registration_id,
                "identity": B64.encode(b.identity),
                "signed_prekey": {
                    "id": b.signed_prekey.id,
                    "public": B64.encode(b.signed_prekey.public),
                    "signature": B64.encode(b.signed_prekey.signature),
                },
                "prekey": prekey,
            }
        }))
    }

    fn encrypt(&mut self, to: &Address, text: &[u8]) -> Ciphertext {
        let r = self.call(
            json!({"op": "encrypt", "name": to.user, "device": to.device,
            "plaintext": B64.encode(text)}),
        );
        assert_eq!(r["ok"], true, "{r}");
        Ciphertext {
            kind: EncType::parse(r["type"].as_str().unwrap()).unwrap(),
            body: B64.decode(r["body"].as_str().unwrap()).unwrap(),
        }
    }

    fn decrypt(&mut self, from: &Address, ct: &Ciphertext) -> Result<Vec<u8>, String> {
        let r = self.call(
            json!({"op": "decrypt", "name": from.user, "device": from.device,
            "type": ct.kind.as_str(), "body": B64.encode(&ct.body)}),
        );
        if r["ok"] == true {
            Ok(B64.decode(r["plaintext"].as_str().unwrap()).unwrap())
        } else {
            Err(r["error"].to_string())
        }
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.child.wait();
    }
}

fn key32(v: &Value) -> [u8; 32] {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

/// Our side: a real store in a temporary state directory.
struct Ours {
    _dir: tempfile::TempDir,
    store: Store,
    addr: Address,
}

impl Ours {
    fn new(user: &str) -> Ours {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.begin().unwrap();
        signal::provision(&txn, &mut rand::rng(), NOW, 5).unwrap();
        txn.commit().unwrap();
        Ours {
            _dir: dir,
            store,
            addr: Address::new(user, 1),
        }
    }

    fn bundle(&self, with_prekey: bool) -> WireBundle {
        let txn = self.store.begin().unwrap();
        let id = with_prekey.then(|| signal::prekey_ids(&txn, 1).unwrap()[0]);
        signal::own_bundle(&txn, id).unwrap()
    }

    fn process_bundle(&self, to: &Address, b: &WireBundle) -> Result<(), signal::SignalError> {
        let txn = self.store.begin().unwrap();
        signal::process_bundle(&txn, to, b, &mut rand::rng(), NOW)?;
        txn.commit().unwrap();
        Ok(())
    }

    fn encrypt(&self, to: &Address, text: &[u8]) -> Ciphertext {
        let txn = self.store.begin().unwrap();
        let ct = signal::encrypt(&txn, to, text, NOW).unwrap();
        txn.commit().unwrap();
        ct
    }

    fn decrypt(&self, from: &Address, ct: &Ciphertext) -> Vec<u8> {
        let txn = self.store.begin().unwrap();
        let d = signal::decrypt(&txn, from, ct, &mut rand::rng(), NOW).unwrap();
        txn.commit().unwrap();
        d.plaintext
    }
}

fn msg(i: usize) -> Vec<u8> {
    format!("message {i} from interop test").into_bytes()
}

fn exchange_both_ways(ours: &Ours, node: &mut NodePeer, rounds: usize) {
    for i in 0..rounds {
        let ct = ours.encrypt(&node.addr, &msg(i));
        assert_eq!(ct.body.first(), Some(&0x33), "version 3 on the wire");
        assert_eq!(node.decrypt(&ours.addr, &ct).unwrap(), msg(i));
        let back = node.encrypt(&ours.addr, &msg(100 + i));
        assert_eq!(ours.decrypt(&node.addr, &back), msg(100 + i));
    }
}

#[test]
fn session_started_by_us_with_one_time_prekey() {
    let ours = Ours::new("house");
    let mut node = NodePeer::start("phone", 1);
    let b = node.bundle(true);
    assert!(b.prekey.is_some());
    ours.process_bundle(&node.addr, &b).unwrap();
    let first = ours.encrypt(&node.addr, b"first");
    assert_eq!(first.kind, EncType::PkMsg);
    assert_eq!(node.decrypt(&ours.addr, &first).unwrap(), b"first");
    exchange_both_ways(&ours, &mut node, 5);
}

#[test]
fn session_started_by_us_without_one_time_prekey() {
    let ours = Ours::new("house");
    let mut node = NodePeer::start("phone", 2);
    let b = node.bundle(false);
    ours.process_bundle(&node.addr, &b).unwrap();
    let first = ours.encrypt(&node.addr, b"first");
    assert_eq!(first.kind, EncType::PkMsg);
    assert_eq!(node.decrypt(&ours.addr, &first).unwrap(), b"first");
    exchange_both_ways(&ours, &mut node, 3);
}

#[test]
fn session_started_by_libsignal_node_with_one_time_prekey() {
    let ours = Ours::new("house");
    let mut node = NodePeer::start("phone", 3);
    let r = node.process_bundle(&ours.addr, &ours.bundle(true));
    assert_eq!(r["ok"], true, "{r}");
    let first = node.encrypt(&ours.addr, b"hello from node");
    assert_eq!(first.kind, EncType::PkMsg);
    assert_eq!(ours.decrypt(&node.addr, &first), b"hello from node");
    // The one-time prekey it used is gone from our store.
    let txn = ours.store.begin().unwrap();
    assert_eq!(signal::prekey_count(&txn).unwrap(), 4);
    drop(txn);
    let reply = ours.encrypt(&node.addr, b"hello node");
    assert_eq!(reply.kind, EncType::Msg);
    assert_eq!(node.decrypt(&ours.addr, &reply).unwrap(), b"hello node");
    for i in 0..5 {
        let back = node.encrypt(&ours.addr, &msg(i));
        assert_eq!(ours.decrypt(&node.addr, &back), msg(i));
        let ct = ours.encrypt(&node.addr, &msg(50 + i));
        assert_eq!(node.decrypt(&ours.addr, &ct).unwrap(), msg(50 + i));
    }
}

#[test]
fn session_started_by_libsignal_node_without_one_time_prekey() {
    let ours = Ours::new("house");
    let mut node = NodePeer::start("phone", 4);
    let r = node.process_bundle(&ours.addr, &ours.bundle(false));
    assert_eq!(r["ok"], true, "{r}");
    let first = node.encrypt(&ours.addr, b"no otk");
    assert_eq!(ours.decrypt(&node.addr, &first), b"no otk");
    let reply = ours.encrypt(&node.addr, b"ack");
    assert_eq!(node.decrypt(&ours.addr, &reply).unwrap(), b"ack");
}

#[test]
fn out_of_order_delivery_in_both_directions() {
    let ours = Ours::new("house");
    let mut node = NodePeer::start("phone", 5);
    let b = node.bundle(true);
    ours.process_bundle(&node.addr, &b).unwrap();
    let first = ours.encrypt(&node.addr, b"start");
    node.decrypt(&ours.addr, &first).unwrap();
    let back = node.encrypt(&ours.addr, b"started");
    ours.decrypt(&node.addr, &back);

    // Ours -> node, delivered shuffled.
    let cts: Vec<_> = (0..6).map(|i| ours.encrypt(&node.addr, &msg(i))).collect();
    for i in [4usize, 0, 5, 2, 1, 3] {
        assert_eq!(node.decrypt(&ours.addr, &cts[i]).unwrap(), msg(i));
    }
    // Node -> ours, delivered shuffled, across a ratchet step.
    let cts: Vec<_> = (0..6)
        .map(|i| node.encrypt(&ours.addr, &msg(10 + i)))
        .collect();
    for i in [5usize, 3, 0, 4, 1, 2] {
        assert_eq!(ours.decrypt(&node.addr, &cts[i]), msg(10 + i));
    }
    // A replay is refused by both.
    let ct = ours.encrypt(&node.addr, b"once");
    node.decrypt(&ours.addr, &ct).unwrap();
    assert!(node.decrypt(&ours.addr, &ct).is_err());
    let ct = node.encrypt(&ours.addr, b"once");
    ours.decrypt(&node.addr, &ct);
    let txn = ours.store.begin().unwrap();
    assert!(matches!(
        signal::decrypt(&txn, &node.addr, &ct, &mut rand::rng(), NOW),
        Err(signal::SignalError::Duplicate)
    ));
}

#[test]
fn bad_signed_prekey_signature_is_rejected_by_both_sides() {
    let ours = Ours::new("house");
    let mut node = NodePeer::start("phone", 6);
    let mut theirs = node.bundle(true);
    theirs.signed_prekey.signature[0] ^= 0x80;
    assert!(matches!(
        ours.process_bundle(&node.addr, &theirs),
        Err(signal::SignalError::BadSignature)
    ));
    let mut mine = ours.bundle(true);
    mine.signed_prekey.signature[63] ^= 0x01;
    let r = node.process_bundle(&ours.addr, &mine);
    assert_eq!(r["ok"], false, "node must refuse a bad signature: {r}");
}
