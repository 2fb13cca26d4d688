//! Groups end to end with the real binaries on both wire profiles: a group made through the
//! local API, a text to it that both simulated members decrypt with our sender key, the echo
//! contact's answer in the inbox with the group id, per-member receipts adding up to the
//! message's status, an image to the group that both members fetch from our media host and
//! decrypt, a removal that rotates our key, a group the gatekeeper tells us about, and the
//! API's refusals.

mod api_common;
mod daemon_support;
mod hub_support;
mod media_support;

use std::time::{Duration, Instant};

use api_common::{Reply, request};
use daemon_support::{Daemon, WAIT, received};
use hub_support::HubProc;
use serde_json::{Value, json};

const ECHO: &str = "+15550100";
const SILENT: &str = "+15550101";

fn call(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> Reply {
    loop {
        let bytes = body.as_ref().map(Value::to_string).unwrap_or_default();
        let r = request(
            d.api,
            method,
            path,
            Some(&d.token),
            &[("Content-Type", "application/json")],
            bytes.as_bytes(),
        );
        if r.status != 429 {
            return r;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `POST /v1/groups`, waiting for the link first; returns the group object.
fn create_group(d: &Daemon, subject: &str, members: &[&str]) -> Value {
    d.wait_link_up();
    let r = call(
        d,
        "POST",
        "/v1/groups",
        Some(json!({"subject": subject, "members": members})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn send_group(d: &Daemon, group: &str, text: &str) -> String {
    let r = call(
        d,
        "POST",
        "/v1/messages",
        Some(json!({"group": group, "text": text})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < WAIT, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `phone` decrypted of group `group` with text `text`.
fn group_copy(hub: &HubProc, phone: &str, group: &str, text: &str) -> Option<Value> {
    received(&hub.control, phone)
        .into_iter()
        .find(|m| m["group"] == group && m["text"] == text)
}

fn member_phones(g: &Value) -> Vec<String> {
    g["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["phone"].as_str().map(str::to_owned))
        .collect()
}

fn a_group_text_reaches_both_members_the_echo_returns_with_the_group_and_receipts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let g = create_group(&d, "Family", &[ECHO, SILENT]);
    let id = g["id"].as_str().unwrap().to_owned();
    assert_eq!(g["subject"], "Family");
    assert_eq!(member_phones(&g), [ECHO, SILENT]);
    let me: Vec<&Value> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["self"] == true)
        .collect();
    assert_eq!(me.len(), 1, "{g}");
    assert_eq!(me[0]["admin"], true);
    let listed = d.get("/v1/groups").json();
    assert_eq!(listed["groups"][0]["id"], id.as_str(), "{listed}");

    let msg = send_group(&d, &id, "Dinner at 7");
    for phone in [ECHO, SILENT] {
        let copy = wait_until(&format!("{phone} decrypts the group text"), || {
            group_copy(&hub, phone, &id, "Dinner at 7")
        });
        assert_eq!(copy["participant"], "acme-home:1@interop", "{copy}");
    }
    let echo = wait_until("the echo arrives in the inbox", || {
        d.inbox_entries()
            .into_iter()
            .find(|m| m["text"] == "echo: Dinner at 7")
    });
    assert_eq!(echo["group"], id.as_str(), "{echo}");
    assert_eq!(echo["from"], ECHO, "{echo}");
    let status = d.wait_status(&msg, "delivered");
    assert_eq!(status["group"], id.as_str(), "{status}");
    assert!(status.get("to").is_none(), "{status}");
    // The echo contact reads, the silent one only receives: per member, not all read.
    let members = wait_until("the echo contact's read receipt", || {
        let v = d.get(&format!("/v1/messages/{msg}")).json();
        (v["members"][ECHO] == "read").then_some(v)
    });
    assert_eq!(members["members"][SILENT], "delivered", "{members}");
    assert_eq!(members["status"], "delivered", "{members}");

    // A second message goes to holders of our key without a new distribution, and still
    // decrypts on both sides.
    send_group(&d, &id, "Bring bread");
    for phone in [ECHO, SILENT] {
        wait_until(&format!("{phone} decrypts the second text"), || {
            group_copy(&hub, phone, &id, "Bring bread")
        });
    }
}

/// An image sent with `POST /v1/media?group=`: each member fetches the one blob through the
/// hub's proxy from our media host, decrypts exactly these bytes and records it with the
/// group; the message reaches `delivered`. Then the refusals of the group parameter.
fn an_image_to_a_group_is_fetched_and_decrypted_by_both_members_and_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    let setup = media_support::provisioned(dir.path(), &hub, "");
    let d = setup.start();
    let json_call = |method: &str, path: &str, body: &Value| {
        d.call(
            method,
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let made = wait_until("a group once the link is up", || {
        let r = json_call(
            "POST",
            "/v1/groups",
            &json!({"subject": "Door", "members": [ECHO, SILENT]}),
        );
        (r.status == 201).then(|| r.json())
    });
    let id = made["id"].as_str().unwrap().to_owned();

    let image = media_support::png(24, 16);
    let r = d.call(
        "POST",
        &format!("/v1/media?group={id}&kind=image&caption=at%20the%20door"),
        &[("Content-Type", "image/png")],
        &image,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let msg = r.json()["id"].as_str().unwrap().to_owned();
    for phone in [ECHO, SILENT] {
        let got = wait_until(&format!("{phone} records the group image"), || {
            media_support::hub_received(&hub, phone)
                .into_iter()
                .find(|m| m["group"] == id.as_str() && m.get("media").is_some())
        });
        assert_eq!(got["kind"], "image", "{got}");
        assert_eq!(got["participant"], "acme-home:1@interop", "{got}");
        let media = &got["media"];
        assert!(
            media.get("error").is_none(),
            "{phone} could not open it: {got}"
        );
        assert_eq!(
            media["sha256_hex"],
            media_support::sha256_hex(&image),
            "{got}"
        );
        assert_eq!(media["size"], image.len(), "{got}");
        assert_eq!(media["mimetype"], "image/png", "{got}");
    }
    // Both copies came through the proxy from our media host, not from declared fields.
    let (_, stats) = hub.control("GET", "/stats", None);
    assert!(stats["media_proxied"].as_u64().unwrap() >= 2, "{stats}");
    let status = d.wait_status(&msg, "delivered");
    assert_eq!(status["group"], id.as_str(), "{status}");
    assert_eq!(status["kind"], "image", "{status}");

    let cases = [
        (
            format!("/v1/media?group={id}&to=%2B15550100&kind=image"),
            400,
            "to_and_group",
        ),
        ("/v1/media?kind=image".to_owned(), 400, "missing_to"),
        (
            "/v1/media?group=abc&kind=image".to_owned(),
            400,
            "bad_group_id",
        ),
        (
            "/v1/media?group=120363999999999999&kind=image".to_owned(),
            404,
            "unknown_group",
        ),
    ];
    for (target, want, code) in cases {
        let r = d.call("POST", &target, &[("Content-Type", "image/png")], &image);
        assert_eq!(r.status, want, "{target}: {}", r.text());
        assert_eq!(r.error_code(), code, "{target}: {}", r.text());
    }
}

fn removing_a_member_rotates_our_key_and_the_rest_still_read_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let g = create_group(&d, "Neighbours", &[ECHO, SILENT]);
    let id = g["id"].as_str().unwrap().to_owned();
    send_group(&d, &id, "one");
    wait_until("the silent member reads one", || {
        group_copy(&hub, SILENT, &id, "one")
    });

    let r = call(
        &d,
        "DELETE",
        &format!("/v1/groups/{id}/members/%2B15550101"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(member_phones(&r.json()), [ECHO]);

    let two = send_group(&d, &id, "two");
    wait_until("the echo contact reads two on the new chain", || {
        group_copy(&hub, ECHO, &id, "two")
    });
    wait_until("the echo of two", || {
        d.inbox_entries()
            .into_iter()
            .find(|m| m["text"] == "echo: two")
    });
    let status = d.wait_status(&two, "read");
    assert_eq!(status["members"].as_object().unwrap().len(), 1, "{status}");
    assert!(
        received(&hub.control, SILENT)
            .iter()
            .all(|m| m["text"] != "two"),
        "the removed member got the next message"
    );
}

fn a_group_the_gatekeeper_announces_is_listed_logged_and_its_messages_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    d.wait_link_up();
    let (status, made) = hub.control(
        "POST",
        "/groups",
        Some(json!({"subject": "Street", "members": [ECHO, "acme-home", SILENT]})),
    );
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let g = wait_until("the daemon learns of the group", || {
        let r = d.get(&format!("/v1/groups/{id}"));
        (r.status == 200).then(|| r.json())
    });
    assert_eq!(g["subject"], "Street");
    assert_eq!(member_phones(&g), [ECHO, SILENT]);
    let event = wait_until("a group event", || {
        d.logged_events("group")
            .into_iter()
            .find(|e| e["group"] == id.as_str())
    });
    assert_eq!(event["change"], "create", "{event}");

    let (status, sent) = hub.control(
        "POST",
        &format!("/users/{ECHO}/send"),
        Some(json!({"group": id, "text": "Bins go out tonight"})),
    );
    assert_eq!(status, 200, "{sent}");
    let got = wait_until("the member's group text in the inbox", || {
        d.inbox_entries()
            .into_iter()
            .find(|m| m["text"] == "Bins go out tonight")
    });
    assert_eq!(got["group"], id.as_str(), "{got}");
    assert_eq!(got["from"], ECHO, "{got}");
}

/// A kill -9 right after a burst of group sends were accepted: after the restart every one
/// reaches both members, and each echo is in the inbox once.
fn a_kill_during_a_group_burst_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let mut d = Daemon::start(dir.path(), &hub, "acme-home");
    let g = create_group(&d, "Burst", &[ECHO, SILENT]);
    let id = g["id"].as_str().unwrap().to_owned();
    let texts: Vec<String> = (0..12).map(|i| format!("burst {i}")).collect();
    let ids: Vec<String> = texts.iter().map(|t| send_group(&d, &id, t)).collect();
    d.kill();
    d.restart();
    for t in &texts {
        for phone in [ECHO, SILENT] {
            wait_until(&format!("{phone} decrypts {t}"), || {
                group_copy(&hub, phone, &id, t)
            });
        }
    }
    for m in &ids {
        d.wait_status(m, "delivered");
    }
    let echoes = wait_until("every echo", || {
        let got: Vec<String> = d
            .inbox_entries()
            .into_iter()
            .filter(|m| m["group"] == id.as_str())
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect();
        (got.len() >= texts.len()).then_some(got)
    });
    let mut sorted = echoes.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        echoes.len(),
        "an echo was stored twice: {echoes:?}"
    );
    for t in &texts {
        assert!(
            echoes.contains(&format!("echo: {t}")),
            "{t} missing: {echoes:?}"
        );
    }
}

fn bad_group_requests_get_their_own_codes_and_queue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    d.wait_link_up();
    let cases = [
        (
            "POST",
            "/v1/groups",
            Some(json!({"subject": " ", "members": [ECHO]})),
            400,
            "empty_subject",
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"subject": "x".repeat(101), "members": [ECHO]})),
            400,
            "subject_too_long",
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"subject": "Big", "members": vec![ECHO; 1024]})),
            400,
            "too_many_members",
        ),
        (
            "POST",
            "/v1/groups",
            Some(json!({"subject": "Ok", "members": ["+12"]})),
            400,
            "bad_phone",
        ),
        (
            "GET",
            "/v1/groups/120363999999999999",
            None,
            404,
            "unknown_group",
        ),
        ("GET", "/v1/groups/abc", None, 400, "bad_group_id"),
        (
            "POST",
            "/v1/messages",
            Some(json!({"group": "120363999999999999", "text": "hi"})),
            404,
            "unknown_group",
        ),
        (
            "POST",
            "/v1/messages",
            Some(json!({"group": "120363999999999999", "to": ECHO, "text": "hi"})),
            400,
            "to_and_group",
        ),
        (
            "POST",
            "/v1/groups/120363999999999999/members",
            Some(json!({"phone": ECHO})),
            404,
            "unknown_group",
        ),
    ];
    for (method, path, body, want, code) in cases {
        let r = call(&d, method, path, body);
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        assert_eq!(
            r.json()["error"]["code"],
            code,
            "{method} {path}: {}",
            r.body
        );
    }
    // A member the gatekeeper does not know is refused by it, with its own code.
    let r = call(
        &d,
        "POST",
        "/v1/groups",
        Some(json!({"subject": "Ghosts", "members": ["+15559999"]})),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unknown_user", "{}", r.body);
    assert_eq!(d.get("/v1/groups").json()["groups"], json!([]));
    assert!(received(&hub.control, ECHO).is_empty());
}

crate::on_both_profiles!(
    a_group_text_reaches_both_members_the_echo_returns_with_the_group_and_receipts_add_up,
    an_image_to_a_group_is_fetched_and_decrypted_by_both_members_and_is_delivered,
    removing_a_member_rotates_our_key_and_the_rest_still_read_what_follows,
    a_group_the_gatekeeper_announces_is_listed_logged_and_its_messages_arrive,
    a_kill_during_a_group_burst_loses_and_duplicates_nothing,
    bad_group_requests_get_their_own_codes_and_queue_nothing,
);
