//! The real `interop-hub` binary on profile `wa` against a client we did not write: pyaileys
//! as published, driven by `tests/wa_peer/hub_client.py` and `tests/wa_peer/signal_peer.py`
//! over loopback TCP. pyaileys brings its own Noise handler (certificate check on, its pinned
//! root pointed at the hub's), its own `ClientPayload` classes, its own binary node encoder and
//! decoder and its own Signal layer (pure Python over `cryptography`); the refusal cases'
//! tokens are signed with PyJWT. Both are installed on first use, pinned (`python_support`).
//!
//! What this shows: a third-party client completes the hub's handshake, logs in with a token
//! from `interop-hub provision`, reads the hub's `<success>` and answers to a ping with its own
//! node codec; the hub refuses an expired token, a token for another account, a token under a
//! key it does not trust and a `devicePairingData.eIdent` other than the Noise static key, each
//! with a `<failure reason>` pyaileys decodes, then a close; and it stays up for the next
//! login. A client pinning another root refuses the hub. With its Signal identity as the Noise
//! static key, the client uploads prekeys, fetches the echo user's bundle, and exchanges
//! `pkmsg` and `msg` texts with it both ways, acks and receipts included; a ciphertext it
//! tampers with draws a retry receipt instead of a text, and its resend goes through.

mod hub_support;
mod python_support;

use std::process::Command;

use hub_support::{HUB, HubProc};
use serde_json::{Value, json};

/// The integrator's PKCS#8 signing key, as the hub keeps it (`interop_hub::provider`).
const KEY_DER: &str = "providers/acme/key.der";

/// Runs `interop-hub provision --profile wa` and returns the `token` its config carries, and
/// its `noise_root`.
fn provision_wa(hub: &HubProc, account: &str) -> (String, Option<String>) {
    let out = Command::new(HUB)
        .arg("provision")
        .arg("--state")
        .arg(&hub.state)
        .args(["--account", account, "--connect", &hub.listen])
        .args(["--profile", "wa"])
        .output()
        .expect("run interop-hub provision");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "provision failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: toml::Table = text.parse().expect("provision prints TOML");
    let token = table["account"]["token"]
        .as_str()
        .expect("an [account] token")
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "the wa token is a compact JWT");
    let root = table
        .get("gatekeeper")
        .and_then(|g| g.get("noise_root"))
        .and_then(|r| r.as_str())
        .map(str::to_owned);
    (token, root)
}

/// The hub's Noise root pin (public key, hex) and its serial, read from the keys the hub made
/// in its state on start.
fn noise_root(hub: &HubProc) -> (String, u32) {
    let now_s = interop_hub::server::now_ms() / 1000;
    let noise = interop_hub::server::ensure_hub_noise(&hub.state, now_s).expect("hub noise keys");
    let pin = noise.pin();
    (interop_hub::server::pin_hex(&pin), pin.serial)
}

/// The echo contact of `--demo-users` (CONTRACT.md), as phone digits.
const ECHO: &str = "15550100";

/// Starts a hub (with the demo users if `demo_users`) with `acme-home` and `acme-other`
/// provisioned and returns the client's config.
fn hub_and_config(dir: &std::path::Path, demo_users: bool) -> (HubProc, Value) {
    let hub = HubProc::start(&dir.join("hub"), demo_users);
    let (token, printed_root) = provision_wa(&hub, "acme-home");
    let (other_token, _) = provision_wa(&hub, "acme-other");
    let (root, serial) = noise_root(&hub);
    // The pin the client uses is the one provision printed, and it is the hub's own root.
    assert_eq!(
        printed_root.as_deref(),
        Some(root.as_str()),
        "provision prints the hub's Noise root"
    );
    let port: u16 = hub
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("listen port");
    let config = json!({
        "port": port,
        "root": root,
        "serial": serial,
        "account": "acme-home",
        "account_id": interop_proto::wa_login::account_id("acme-home"),
        "token": token,
        "other_token": other_token,
        "key_der": hub.state.join(KEY_DER),
        "echo": ECHO,
        "control": hub.control,
    });
    (hub, config)
}

/// The login client (`hub_client.py`) and the Signal peer (`signal_peer.py`).
const HUB_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/wa_peer/hub_client.py"
);
const SIGNAL_PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/wa_peer/signal_peer.py"
);

/// Runs the login client for `cases` (one connection each, in order); returns one line per case.
fn client(config: &Value, cases: &[&str]) -> Vec<Value> {
    peer(HUB_CLIENT, config, cases)
}

/// Runs `script` for `cases` (one connection each, in order); returns one line per case.
fn peer(script: &str, config: &Value, cases: &[&str]) -> Vec<Value> {
    let out = python_support::python3_with(python_support::PYAILEYS_PYJWT)
        // signal_peer.py imports hub_client.py: no bytecode cache in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(script)
        .arg(config.to_string())
        .args(cases)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert_eq!(
        lines.len(),
        cases.len(),
        "one line per case: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (line, case) in lines.iter().zip(cases) {
        assert_eq!(line["case"], *case, "{line}");
    }
    lines
}

/// A good login: `<success>` for `acme-home:1@interop`, and the ping answered.
fn assert_logged_in(line: &Value) {
    assert!(line.get("error").is_none(), "pyaileys: {line}");
    let success = &line["success"];
    assert_eq!(success["jid"], "acme-home:1@interop", "{line}");
    let t: u64 = success["t"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("t is a number: {line}"));
    let now_s = interop_hub::server::now_ms() / 1000;
    assert!(t.abs_diff(now_s) < 60, "t {t} is now: {line}");
    let result = &line["result"];
    assert_eq!(result["tag"], "iq", "{line}");
    assert_eq!(result["attrs"]["id"], line["ping_id"], "{line}");
    assert_eq!(result["attrs"]["type"], "result", "{line}");
}

/// A refused login: `<failure reason>`, then the hub closes.
fn assert_refused(line: &Value, reason: &str) {
    assert!(line.get("error").is_none(), "pyaileys: {line}");
    assert_eq!(line["failure"]["reason"], reason, "{line}");
    assert!(
        line["failure"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "a failure says why: {line}"
    );
    assert_eq!(
        line["closed"], true,
        "the hub closes after a failure: {line}"
    );
}

#[test]
fn pyaileys_logs_in_reads_success_and_gets_its_ping_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, config) = hub_and_config(dir.path(), false);
    let lines = client(&config, &["login", "relogin", "login"]);
    for line in &lines {
        assert_logged_in(line);
    }
    // The first login enlists the device with its identity (the Noise static key); the same
    // key again is the same device; a new key enlists it anew.
    assert_eq!(lines[0]["success"]["enlisted"], "true", "{}", lines[0]);
    assert_eq!(lines[1]["static"], lines[0]["static"]);
    assert_eq!(lines[1]["success"]["enlisted"], "false", "{}", lines[1]);
    assert_ne!(lines[2]["static"], lines[0]["static"]);
    assert_eq!(lines[2]["success"]["enlisted"], "true", "{}", lines[2]);
}

#[test]
fn each_bad_login_gets_its_failure_and_a_close_and_the_hub_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, config) = hub_and_config(dir.path(), false);
    let cases = [
        "expired",
        "other_account",
        "foreign_key",
        "foreign_key_hub_kid",
        "bad_ident",
        "login",
    ];
    let lines = client(&config, &cases);
    assert_refused(&lines[0], "token_expired");
    assert_refused(&lines[1], "wrong_account");
    // A key the hub does not know: with its own kid, the JWKS has no such key; with the kid
    // of the hub's key, that key is tried and the signature does not verify.
    assert_refused(&lines[2], "unknown_token_key");
    assert_refused(&lines[3], "bad_token_signature");
    assert_refused(&lines[4], "bad_request");
    assert_logged_in(&lines[5]);
}

#[test]
fn pyaileys_pinning_another_root_refuses_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, config) = hub_and_config(dir.path(), false);
    let lines = client(&config, &["wrong_pin", "login"]);
    let refused = lines[0]["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("signature invalid"), "{}", lines[0]);
    assert_logged_in(&lines[1]);
}

/// The echo contact's user JID. Where a stanza names its device 0 (the phone), the `wa` stream
/// writes this bare user JID, as WhatsApp does (`stanza::wa_jids`), so pyaileys reads `from`
/// as it.
fn echo_user() -> String {
    format!("{ECHO}@s.whatsapp.net")
}

/// The stanzas of `seen` with tag `tag` whose attribute `key` is `value`.
fn with_attr<'a>(seen: &'a [Value], tag: &str, key: &str, value: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|s| s["tag"] == tag && s["attrs"][key] == value)
        .collect()
}

/// The hub's `<ack class="message">` for `id`, without an error.
fn assert_message_acked(seen: &[Value], id: &str) {
    let acks: Vec<_> = with_attr(seen, "ack", "id", id)
        .into_iter()
        .filter(|a| a["attrs"]["class"] == "message")
        .collect();
    assert_eq!(acks.len(), 1, "one ack for {id}: {seen:?}");
    assert!(acks[0]["attrs"].get("error").is_none(), "{}", acks[0]);
    assert_eq!(acks[0]["attrs"]["to"], echo_user(), "{}", acks[0]);
}

/// What the peer saw for one message `id` it sent with `text`: the hub's ack, the echo user's
/// delivery and read receipts, its reply `echo: <text>` decrypted by pyaileys on the session,
/// and the hub's acks of the peer's own delivery and read receipts for that reply.
fn assert_echoed(seen: &[Value], id: &str, text: &str) {
    assert_message_acked(seen, id);
    let receipts = with_attr(seen, "receipt", "id", id);
    let types: Vec<_> = receipts
        .iter()
        .map(|r| r["attrs"]["type"].clone())
        .collect();
    assert_eq!(
        types,
        [Value::Null, json!("read")],
        "delivered, then read: {seen:?}"
    );
    for r in &receipts {
        assert_eq!(r["attrs"]["from"], echo_user(), "{r}");
        assert_eq!(r["attrs"]["to"], "acme-home@interop", "{r}");
    }
    let replies: Vec<_> = seen.iter().filter(|s| s["tag"] == "message").collect();
    assert_eq!(replies.len(), 1, "one reply: {seen:?}");
    let reply = replies[0];
    assert!(reply.get("decrypt_error").is_none(), "pyaileys: {reply}");
    assert_eq!(reply["text"], format!("echo: {text}"), "{reply}");
    assert_eq!(
        reply["enc_type"], "msg",
        "the reply rides the session: {reply}"
    );
    assert_eq!(reply["attrs"]["from"], echo_user(), "{reply}");
    let reply_id = reply["attrs"]["id"].as_str().expect("the reply has an id");
    assert_ne!(reply_id, id);
    let taken: Vec<_> = with_attr(seen, "ack", "id", reply_id)
        .into_iter()
        .filter(|a| a["attrs"]["class"] == "receipt")
        .map(|a| a["attrs"]["type"].clone())
        .collect();
    assert_eq!(
        taken,
        [Value::Null, json!("read")],
        "the hub took both receipts: {seen:?}"
    );
}

/// The control API's record of what the echo user decrypted.
fn received(hub: &HubProc) -> Vec<Value> {
    let (status, list) = hub.control("GET", &format!("/users/+{ECHO}/received"), None);
    assert_eq!(status, 200, "{list}");
    list.as_array().cloned().unwrap_or_default()
}

fn stat(hub: &HubProc, key: &str) -> u64 {
    let (status, stats) = hub.control("GET", "/stats", None);
    assert_eq!(status, 200, "{stats}");
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {stats}"))
}

#[test]
fn pyaileys_exchanges_signal_texts_with_the_echo_user() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, config) = hub_and_config(dir.path(), true);
    let lines = peer(SIGNAL_PEER, &config, &["echo"]);
    let line = &lines[0];
    assert!(line.get("error").is_none(), "pyaileys: {line}");
    assert_eq!(line["success"]["jid"], "acme-home:1@interop", "{line}");
    assert_eq!(line["success"]["enlisted"], "true", "{line}");
    // The bundle carried a one-time prekey, so the session used all four DHs of X3DH.
    assert_eq!(line["bundle"]["has_one_time_key"], true, "{line}");
    let rounds = line["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{line}");
    // The first text starts the session; once the reply has been decrypted the second is a
    // plain `msg` on it, as libsignal's senders do.
    assert_eq!(rounds[0]["sent_type"], "pkmsg", "{line}");
    assert_eq!(rounds[1]["sent_type"], "msg", "{line}");
    for round in rounds {
        let seen = round["seen"].as_array().expect("seen");
        let id = round["id"].as_str().expect("id");
        let text = round["text"].as_str().expect("text");
        assert_echoed(seen, id, text);
    }
    // The echo user decrypted exactly what pyaileys encrypted, from the account.
    let got: Vec<_> = received(&hub)
        .into_iter()
        .map(|m| {
            (
                m["id"].clone(),
                m["from"].clone(),
                m["kind"].clone(),
                m["text"].clone(),
            )
        })
        .collect();
    let want: Vec<_> = rounds
        .iter()
        .map(|r| {
            (
                r["id"].clone(),
                json!("acme-home"),
                json!("text"),
                r["text"].clone(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Every stanza the hub delivered to the peer was acked by it: nothing is left queued.
    assert_eq!(stat(&hub, "offline_queue_depth"), 0);
    assert_eq!(stat(&hub, "retry_receipts_routed"), 0);
}

#[test]
fn a_ciphertext_tampered_by_pyaileys_draws_a_retry_receipt_and_its_resend_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, config) = hub_and_config(dir.path(), true);
    let lines = peer(SIGNAL_PEER, &config, &["tampered"]);
    let line = &lines[0];
    assert!(line.get("error").is_none(), "pyaileys: {line}");
    let id = line["id"].as_str().expect("id");
    let text = line["text"].as_str().expect("text");
    let first = line["first"].as_array().expect("first");
    // The hub routes what it cannot read; the echo user, whose MAC check fails, answers with
    // a retry receipt (count 1, no keys yet) and nothing else: no delivery or read receipt,
    // no reply, no record.
    assert_message_acked(first, id);
    let receipts = with_attr(first, "receipt", "id", id);
    assert_eq!(receipts.len(), 1, "{first:?}");
    let retry = receipts[0];
    assert_eq!(retry["attrs"]["type"], "retry", "{retry}");
    assert_eq!(retry["attrs"]["from"], echo_user(), "{retry}");
    let children = retry["children"].as_array().expect("retry children");
    let tags: Vec<_> = children.iter().map(|c| c["tag"].clone()).collect();
    assert_eq!(tags, [json!("retry"), json!("registration")], "{retry}");
    assert_eq!(children[0]["attrs"]["count"], "1", "{retry}");
    assert_eq!(children[0]["attrs"]["id"], id, "{retry}");
    assert!(
        first.iter().all(|s| s["tag"] != "message"),
        "no reply to a tampered text: {first:?}"
    );
    assert_eq!(line["recorded_after_first"], json!([]), "{line}");
    // The link stayed up: the ping after it was answered on the same connection.
    assert_eq!(first.last().map(|s| s["tag"].clone()), Some(json!("iq")));
    // The resend answers the retry: the same text under the same id, encrypted anew (still a
    // pkmsg, since the echo user never opened a session), goes through and is echoed.
    assert_eq!(line["resend_type"], "pkmsg", "{line}");
    assert_echoed(line["resend"].as_array().expect("resend"), id, text);
    let got: Vec<_> = received(&hub)
        .into_iter()
        .map(|m| (m["id"].clone(), m["text"].clone()))
        .collect();
    assert_eq!(
        got,
        [(json!(id), json!(text))],
        "recorded once, after the resend"
    );
    assert_eq!(stat(&hub, "retry_receipts_routed"), 1);
    assert_eq!(stat(&hub, "resends_routed"), 1);
    assert_eq!(stat(&hub, "offline_queue_depth"), 0);
}
