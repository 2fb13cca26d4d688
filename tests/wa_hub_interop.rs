//! The real `interop-hub` binary on profile `wa` against a client we did not write: pyaileys
//! as published, driven by `tests/wa_peer/hub_client.py` over loopback TCP. pyaileys brings its
//! own Noise handler (certificate check on, its pinned root pointed at the hub's), its own
//! `ClientPayload` classes and its own binary node encoder and decoder; the refusal cases'
//! tokens are signed with PyJWT. Both are installed on first use, pinned (`python_support`).
//!
//! What this shows: a third-party client completes the hub's handshake, logs in with a token
//! from `interop-hub provision`, reads the hub's `<success>` and answers to a ping with its own
//! node codec; the hub refuses an expired token, a token for another account, a token under a
//! key it does not trust and a `devicePairingData.eIdent` other than the Noise static key, each
//! with a `<failure reason>` pyaileys decodes, then a close; and it stays up for the next
//! login. A client pinning another root refuses the hub. No Signal message is exchanged.

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

/// Starts a hub with `acme-home` and `acme-other` provisioned and returns the client's config.
fn hub_and_config(dir: &std::path::Path) -> (HubProc, Value) {
    let hub = HubProc::start(&dir.join("hub"), false);
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
    });
    (hub, config)
}

/// Runs the client for `cases` (one connection each, in order); returns one line per case.
fn client(config: &Value, cases: &[&str]) -> Vec<Value> {
    let out = python_support::python3_with(python_support::PYAILEYS_PYJWT)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/wa_peer/hub_client.py"
        ))
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
    let (_hub, config) = hub_and_config(dir.path());
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
    let (_hub, config) = hub_and_config(dir.path());
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
    let (_hub, config) = hub_and_config(dir.path());
    let lines = client(&config, &["wrong_pin", "login"]);
    let refused = lines[0]["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("signature invalid"), "{}", lines[0]);
    assert_logged_in(&lines[1]);
}
