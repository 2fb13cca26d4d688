//! The daemon's link end to end with the real binaries: `interop-hub --demo-users` on
//! loopback, `interop-hub provision` for the config, and `interopd run` talking to it, driven
//! through the local API as a household device would.

mod api_common;
mod daemon_support;
mod hub_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use api_common::{free_port, request};
use daemon_support::{Daemon, WAIT, hub_at, provision_conf, received_texts, try_send};
use hub_support::HubProc;
use serde_json::json;

fn text_to_echo_contact_is_read_and_the_answer_lands_in_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let id = d.send("+15550100", "Door opened");
    d.wait_status(&id, "read");
    let texts = d.wait_inbox(1);
    assert_eq!(texts, ["echo: Door opened"]);
    assert_eq!(received_texts(&hub.control, "+15550100"), ["Door opened"]);
    let health = d.get("/healthz").json();
    assert_eq!(health["link"], "up");
}

/// Each wire profile as an operator sets it up: `interop-hub provision --profile P`, then
/// `interopd check-config`, then `interopd run`; a text to the echo contact is read and the
/// echo lands in the inbox.
#[test]
fn each_profile_provisions_checks_and_carries_a_text_to_the_echo_contact() {
    for profile in ["wa", "interop-xml/1"] {
        let dir = tempfile::tempdir().unwrap();
        let hub = HubProc::start(&dir.path().join("hub"), true);
        let out = std::process::Command::new(hub_support::HUB)
            .arg("provision")
            .arg("--state")
            .arg(&hub.state)
            .args(["--account", "acme-home", "--connect", &hub.listen])
            .args(["--profile", profile])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&format!("profile = \"{profile}\"")), "{text}");
        assert_eq!(text.contains("noise_root = "), profile == "wa", "{profile}");
        let conf = dir.path().join("interopd.conf");
        std::fs::write(&conf, &text).unwrap();
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_interopd"))
            .arg("check-config")
            .arg("--config")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{profile}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = Daemon::spawn(&conf, &dir.path().join("state"), api);
        let id = d.send("+15550100", "Door opened");
        d.wait_status(&id, "read");
        assert_eq!(d.wait_inbox(1), ["echo: Door opened"], "{profile}");
        assert_eq!(received_texts(&hub.control, "+15550100"), ["Door opened"]);
    }
}

fn hub_restart_mid_conversation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub_state = dir.path().join("hub");
    let (listen, control) = (hub_support::free_addr(), hub_support::free_addr());
    let mut hub = hub_at(&hub_state, &listen, &control);
    let d = Daemon::start_for(dir.path(), &hub_state, &listen, "acme-home");

    let first = d.send("+15550100", "one");
    d.wait_status(&first, "read");
    d.wait_inbox(1);

    let _ = hub.kill();
    let _ = hub.wait();
    // While the hub is down the API still answers and queues.
    let second = d.send("+15550100", "two");
    assert_eq!(
        d.get(&format!("/v1/messages/{second}")).json()["status"],
        "queued"
    );

    hub = hub_at(&hub_state, &listen, &control);
    d.wait_status(&second, "read");
    let texts = d.wait_inbox(2);
    assert_eq!(texts, ["echo: one", "echo: two"]);
    assert_eq!(received_texts(&control, "+15550100"), ["one", "two"]);
    let _ = hub.kill();
    let _ = hub.wait();
}

fn not_opted_in_recipient_fails_with_a_readable_reason() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let (status, _) = hub.control(
        "POST",
        "/users",
        Some(json!({"phone": "+15550199", "devices": 1, "behavior": "not_opted_in"})),
    );
    assert!(status == 200 || status == 201, "{status}");
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let id = d.send("+15550199", "hello?");
    let v = d.wait_status(&id, "failed");
    assert_eq!(v["error"]["code"], "not_opted_in", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
}

#[test]
fn kill_9_in_the_middle_of_200_sends_loses_and_repeats_nothing() {
    const TOTAL: usize = 200;
    const KILLS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf(dir.path(), &hub.state, &hub.listen, "acme-home");
    let state = dir.path().join("state");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut d = Daemon::spawn(&conf, &state, api);

    // Sends run on their own thread while the main thread kills the daemon at uneven points,
    // so kills land during requests, during encryption and during the outbox flush.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = d.token.clone();
    let sender = {
        let (accepted, sent) = (accepted.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while i < TOTAL {
                let text = format!("m{i:03}");
                match try_send(api, &token, "+15550100", &text) {
                    Some(id) => {
                        accepted.lock().unwrap().push((id, text));
                        i += 1;
                        sent.store(i, std::sync::atomic::Ordering::SeqCst);
                    }
                    // Killed mid-request or not yet back: the same text is tried again under
                    // the same idempotency key, so a lost 202 cannot make a second message.
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    for k in 0..KILLS {
        let target = (k + 1) * TOTAL / (KILLS + 1) + k * 7;
        let t0 = Instant::now();
        while sent.load(std::sync::atomic::Ordering::SeqCst) < target {
            assert!(t0.elapsed() < WAIT * 4, "sends stalled at kill {k}");
            std::thread::sleep(Duration::from_millis(5));
        }
        d.child.kill().unwrap(); // SIGKILL
        d.child.wait().unwrap();
        d = Daemon::spawn(&conf, &state, api);
    }
    sender.join().unwrap();

    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), TOTAL);
    for (id, _) in &accepted {
        d.wait_status(id, "read");
    }
    // Every accepted text reached the simulated user exactly once.
    let received = received_texts(&hub.control, "+15550100");
    for (_, text) in &accepted {
        let n = received.iter().filter(|r| *r == text).count();
        assert_eq!(n, 1, "{text} received {n} times");
    }
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), received.len(), "a text arrived twice");
    // Every echo landed in the inbox exactly once and decrypted.
    let inbox = d.wait_inbox(received.len());
    for (_, text) in &accepted {
        let want = format!("echo: {text}");
        let n = inbox.iter().filter(|t| **t == want).count();
        assert_eq!(n, 1, "{want} is in the inbox {n} times");
    }
    assert_eq!(inbox.len(), received.len(), "{inbox:?}");
}

fn a_verified_contacts_new_identity_holds_sends_until_trusted_again() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let first = d.send("+15550100", "before");
    d.wait_status(&first, "read");
    let trust = |d: &Daemon| {
        let r = request(
            d.api,
            "POST",
            "/v1/contacts/%2B15550100/trust",
            Some(&d.token),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    trust(&d);
    assert_eq!(
        d.get("/v1/contacts/%2B15550100").json()["trust"],
        "verified"
    );

    let before = d.get("/v1/contacts/%2B15550100").json()["devices"][0]["fingerprint"].clone();
    assert!(before.is_string(), "{before}");
    let (status, _) = hub.control("POST", "/users/+15550100/reinstall", None);
    assert_eq!(status, 200);
    // The identity notification may trail the send; either way the send must not go out
    // under an identity the household has not accepted.
    let t0 = Instant::now();
    let held = loop {
        let id = d.send("+15550100", "after");
        let v = loop {
            let v = d.get(&format!("/v1/messages/{id}")).json();
            if v["status"] != "queued" || v["error"]["code"] == "identity_changed" {
                break v;
            }
            assert!(t0.elapsed() < WAIT, "never held: {v}");
            std::thread::sleep(Duration::from_millis(100));
        };
        if v["error"]["code"] == "identity_changed" {
            assert_eq!(v["status"], "queued", "{v}");
            break id;
        }
        // Sent before the change was known: only acceptable while the old identity held.
        assert!(t0.elapsed() < WAIT, "never held: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let v = d.get(&format!("/v1/messages/{held}")).json();
    assert_eq!(v["status"], "queued", "a held message moved: {v}");
    let contact = d.get("/v1/contacts/%2B15550100").json();
    assert_eq!(contact["trust"], "changed");
    // The change is an event on the stream (and for webhooks), named once, with both keys.
    let changes = d.logged_events("identity");
    assert_eq!(changes.len(), 1, "{changes:?}");
    let e = &changes[0];
    assert_eq!(e["phone"], "+15550100");
    assert_eq!(e["device"], 0);
    assert_eq!(e["previous_fingerprint"], before);
    assert_ne!(e["fingerprint"], before);
    assert_eq!(e["held"], true);
    let metrics = d.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "interopd_identity_changes_total 1"),
        "{metrics}"
    );
    assert!(
        !received_texts(&hub.control, "+15550100")
            .iter()
            .any(|t| t == "after"),
        "the held text reached the new identity"
    );

    trust(&d);
    d.wait_status(&held, "read");
    assert!(
        received_texts(&hub.control, "+15550100")
            .iter()
            .any(|t| t == "after")
    );
}

fn media_from_a_whatsapp_user_is_downloaded_verified_and_served() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    // Text, so the test's string-bodied HTTP helper can compare it byte for byte.
    let data: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let send = json!({"to": "acme-home", "media": {
        "kind": "file", "mimetype": "application/pdf", "filename": "bill.pdf",
        "data_base64": base64::engine::general_purpose::STANDARD.encode(&data)}});
    // The daemon's API answers before its first login has published its keys; until then
    // the hub has no device of ours to encrypt to.
    let t0 = Instant::now();
    let (status, body) = loop {
        let (status, body) = hub.control("POST", "/users/+15550100/send", Some(send.clone()));
        if status == 400 && body.to_string().contains("no devices with published keys") {
            assert!(t0.elapsed() < WAIT, "the daemon never published its keys");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        break (status, body);
    };
    assert_eq!(status, 200, "{body}");
    let t0 = Instant::now();
    let m = loop {
        let v = d.get("/v1/inbox?after=0").json();
        if let Some(m) = v["messages"].as_array().and_then(|a| a.first()) {
            break m.clone();
        }
        assert!(t0.elapsed() < WAIT, "no media message arrived");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(m["kind"], "file", "{m}");
    assert_eq!(m["media"]["mimetype"], "application/pdf", "{m}");
    assert_eq!(m["media"]["size"], data.len(), "{m}");
    assert_eq!(m["media"]["filename"], "bill.pdf", "{m}");
    let url = m["media"]["url"].as_str().unwrap();
    let r = d.get(url);
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.head.contains("content-type: application/pdf"),
        "{}",
        r.head
    );
    assert_eq!(r.body.as_bytes(), data.as_slice());
    let part = request(
        d.api,
        "GET",
        url,
        Some(&d.token),
        &[("Range", "bytes=100-199")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body.as_bytes(), &data[100..200]);
}

fn a_message_to_an_offline_recipient_is_delivered_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let (status, _) = hub.control(
        "POST",
        "/users",
        Some(json!({"phone": "+15550160", "devices": 1, "behavior": "offline"})),
    );
    assert!(status == 200 || status == 201, "{status}");
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let id = d.send("+15550160", "are you there?");
    // The gatekeeper takes it (sent) and keeps it while the phone is offline.
    d.wait_status(&id, "sent");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.get(&format!("/v1/messages/{id}")).json()["status"],
        "sent"
    );
    assert!(received_texts(&hub.control, "+15550160").is_empty());

    let (status, body) = hub.control(
        "POST",
        "/users/+15550160/behavior",
        Some(json!({"behavior": "echo"})),
    );
    assert_eq!(status, 200, "{body}");
    d.wait_status(&id, "read");
    assert_eq!(
        received_texts(&hub.control, "+15550160"),
        ["are you there?"]
    );
    assert_eq!(d.wait_inbox(1), ["echo: are you there?"]);
}

// ---- retry receipts -----------------------------------------------------------------------

/// The hub's (retry receipts routed, resends routed).
fn retry_stats(hub: &HubProc) -> (u64, u64) {
    let (status, v) = hub.control("GET", "/stats", None);
    assert_eq!(status, 200, "{v}");
    (
        v["retry_receipts_routed"].as_u64().unwrap(),
        v["resends_routed"].as_u64().unwrap(),
    )
}

fn a_contact_that_reinstalled_silently_asks_again_and_gets_the_text_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let first = d.send("+15550100", "before");
    d.wait_status(&first, "read");
    d.wait_inbox(1);

    // No identity notification: the daemon keeps the old session and learns of the
    // reinstall only from the contact's retry receipt.
    let (status, v) = hub.control(
        "POST",
        "/users/+15550100/reinstall",
        Some(json!({"notify": false})),
    );
    assert_eq!(status, 200, "{v}");
    let id = d.send("+15550100", "after");
    d.wait_status(&id, "read");
    assert_eq!(d.wait_inbox(2), ["echo: before", "echo: after"]);
    assert_eq!(
        received_texts(&hub.control, "+15550100"),
        ["before", "after"],
        "each text received exactly once"
    );
    let (retries, resends) = retry_stats(&hub);
    assert!(retries >= 1 && resends >= 1, "({retries}, {resends})");
    // The rebuilt session carries the next text without another retry.
    let next = d.send("+15550100", "again");
    d.wait_status(&next, "read");
    assert_eq!(
        d.wait_inbox(3).last().map(String::as_str),
        Some("echo: again")
    );
    assert_eq!(retry_stats(&hub), (retries, resends));
}

fn the_daemon_asks_again_for_a_message_it_cannot_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let first = d.send("+15550100", "one");
    d.wait_status(&first, "read");
    d.wait_inbox(1);
    drop(d);

    // The daemon loses its session with the contact's device while it is stopped; the
    // contact still holds its own and sends on it.
    let state = dir.path().join("state");
    {
        let store = interopd::store::Store::open(&state).unwrap();
        let txn = store.begin().unwrap();
        let addr = interopd::signal::Address::new("15550100", 0);
        assert!(interopd::signal::has_session(&txn, &addr).unwrap());
        interopd::signal::delete_session(&txn, &addr).unwrap();
        txn.commit().unwrap();
    }
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = Daemon::spawn(&dir.path().join("interopd.conf"), &state, api);
    let before = retry_stats(&hub);
    let (status, v) = hub.control(
        "POST",
        "/users/+15550100/send",
        Some(json!({"to": "acme-home", "text": "ping"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(d.wait_inbox(2), ["echo: one", "ping"]);
    let after = retry_stats(&hub);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "one retry receipt from the daemon, one resend from the contact"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.inbox_texts(), ["echo: one", "ping"], "stored once");
}

/// The value of the metric line that starts with `name` (labels included), if present.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[test]
fn ten_thousand_queued_messages_drain_without_a_link_drop() {
    const TOTAL: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf(dir.path(), &hub.state, &hub.listen, "acme-home");
    let state = dir.path().join("state");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut d = Daemon::spawn(&conf, &state, api);
    let warm = d.send("+15550101", "warm up");
    d.wait_status(&warm, "delivered");
    d.child.kill().unwrap();
    d.child.wait().unwrap();

    // A backlog, as a long outage leaves it: every row queued, none started.
    {
        let store = interopd::store::Store::open(&state).unwrap();
        let txn = store.begin().unwrap();
        for i in 0..TOTAL {
            let text = interopd::content::Message::text(format!("backlog {i}"));
            txn.outbox_insert(&interopd::store::OutboxRow {
                id: format!("3EB0{i:018X}"),
                to: "15550101".into(),
                kind: interopd::content::ContentKind::Text.to_byte(),
                status: interopd::store::OutboxStatus::Queued,
                created_ms: 1,
                updated_ms: 1,
                error_code: String::new(),
                content: prost::Message::encode_to_vec(&text),
                stanza: Vec::new(),
            })
            .unwrap();
        }
        txn.commit().unwrap();
    }

    let t0 = Instant::now();
    let d = Daemon::spawn(&conf, &state, api);
    let delivered = "interopd_messages_total{direction=\"out\",status=\"delivered\"}";
    let reconnects = "interopd_link_reconnects_total";
    loop {
        let m = d.get("/metrics").body;
        assert_eq!(metric(&m, reconnects), Some(0), "the link dropped:\n{m}");
        if metric(&m, delivered) == Some(TOTAL as u64) {
            break;
        }
        assert!(
            t0.elapsed() < WAIT * 5,
            "only {:?} of {TOTAL} delivered",
            metric(&m, delivered)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{TOTAL} queued messages delivered in {:?}", t0.elapsed());
    // And each once: the hub keeps the last of what a user received; none repeats.
    let mut received = received_texts(&hub.control, "+15550101");
    let shown = received.len();
    assert!(shown > 0);
    received.sort();
    received.dedup();
    assert_eq!(received.len(), shown, "a message arrived twice");
}

fn a_second_copy_of_the_account_replaces_the_first_which_then_waits_instead_of_fighting() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf(dir.path(), &hub.state, &hub.listen, "acme-home");
    let api_a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = Daemon::spawn(&conf, &dir.path().join("state-a"), api_a);
    a.wait_link_up();
    let api_b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b = Daemon::spawn(&conf, &dir.path().join("state-b"), api_b);
    b.wait_link_up();

    let t0 = Instant::now();
    while a.get("/healthz").json()["link"] != "replaced" {
        assert!(
            t0.elapsed() < WAIT,
            "the first copy never saw that it was replaced"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = a.get("/metrics").body;
    assert!(m.contains("interopd_link_replaced 1"), "{m}");
    // Well past the old 1.5 s comeback, the second copy still has the device.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(b.get("/healthz").json()["link"], "up");
    assert_eq!(a.get("/healthz").json()["link"], "replaced");
    let id = b.send("+15550101", "from the copy that stays");
    b.wait_status(&id, "delivered");
}

fn a_read_receipt_still_due_when_the_hub_is_killed_is_sent_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub_state = dir.path().join("hub");
    let (listen, control) = (hub_support::free_addr(), hub_support::free_addr());
    let mut hub = hub_at(&hub_state, &listen, &control);
    let addr: SocketAddr = control.parse().unwrap();
    let set = request(
        addr,
        "POST",
        "/users/+15550101/behavior",
        None,
        &[("Content-Type", "application/json")],
        json!({"behavior": "read_after:4"}).to_string().as_bytes(),
    );
    assert_eq!(set.status, 200, "{set:?}");
    let d = Daemon::start_for(dir.path(), &hub_state, &listen, "acme-home");
    let id = d.send("+15550101", "read me later");
    d.wait_status(&id, "delivered");
    // Killed while the read receipt waits in the simulated user's timer.
    let _ = hub.kill();
    let _ = hub.wait();
    hub = hub_at(&hub_state, &listen, &control);
    d.wait_status(&id, "read");
    let _ = hub.kill();
    let _ = hub.wait();
}

// Every behaviour above holds on both wire profiles; the two load tests (kill -9 in 200
// sends, 10,000 queued) run on the default, `wa`.
crate::on_both_profiles!(
    text_to_echo_contact_is_read_and_the_answer_lands_in_the_inbox,
    hub_restart_mid_conversation_loses_nothing,
    not_opted_in_recipient_fails_with_a_readable_reason,
    a_verified_contacts_new_identity_holds_sends_until_trusted_again,
    media_from_a_whatsapp_user_is_downloaded_verified_and_served,
    a_message_to_an_offline_recipient_is_delivered_when_it_comes_back,
    a_contact_that_reinstalled_silently_asks_again_and_gets_the_text_once,
    the_daemon_asks_again_for_a_message_it_cannot_decrypt,
    a_second_copy_of_the_account_replaces_the_first_which_then_waits_instead_of_fighting,
    a_read_receipt_still_due_when_the_hub_is_killed_is_sent_after_its_restart,
);
