//! What a household needs beyond text, end to end with the real binaries on both wire
//! profiles: reactions, edits, deletes for everyone, locations, typing and correlation,
//! sent through the local API to the hub's echo contact and back into the inbox.

mod api_common;
mod daemon_support;
mod hub_support;

use std::time::{Duration, Instant};

use api_common::{Reply, request};
use daemon_support::{Daemon, WAIT, received};
use hub_support::HubProc;
use serde_json::{Value, json};

const ECHO: &str = "+15550100";

fn call(d: &Daemon, method: &str, path: &str, body: Value) -> Reply {
    loop {
        let r = request(
            d.api,
            method,
            path,
            Some(&d.token),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        if r.status != 429 || path.ends_with("/typing") {
            return r;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn accepted(r: &Reply) -> String {
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

fn wait_received(hub: &HubProc, phone: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(v) = received(&hub.control, phone).into_iter().find(&pred) {
            return v;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the contact never received it: {:?}",
            received(&hub.control, phone)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_inbox(d: &Daemon, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(v) = d.inbox_entries().into_iter().find(&pred) {
            return v;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the inbox never showed it: {:?}",
            d.inbox_entries()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_reaction_an_edit_and_a_delete_reach_the_contact_which_echoes_the_edit_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let id = d.send(ECHO, "Lights on");
    d.wait_status(&id, "read");
    let echo = wait_inbox(&d, |m| m["text"] == "echo: Lights on");
    let echo_id = echo["id"].as_str().unwrap().to_owned();

    let react = accepted(&call(
        &d,
        "POST",
        &format!("/v1/messages/{id}/reactions"),
        json!({"emoji": "👍"}),
    ));
    let r = wait_received(&hub, ECHO, |m| m["kind"] == "reaction");
    assert_eq!(
        (r["reply_to"].as_str(), r["text"].as_str()),
        (Some(id.as_str()), Some("👍"))
    );
    d.wait_status(&react, "read");

    accepted(&call(
        &d,
        "PATCH",
        &format!("/v1/messages/{id}"),
        json!({"text": "Lights off"}),
    ));
    let e = wait_received(&hub, ECHO, |m| m["kind"] == "edit");
    assert_eq!(
        (e["edits"].as_str(), e["text"].as_str()),
        (Some(id.as_str()), Some("Lights off"))
    );
    let status = d.get(&format!("/v1/messages/{id}")).json();
    assert_eq!(
        (status["text"].as_str(), status["edited"].as_bool()),
        (Some("Lights off"), Some(true))
    );
    // The contact edits its own echo, and that arrives as an edit naming it.
    let echoed = wait_inbox(&d, |m| m["kind"] == "edit");
    assert_eq!(echoed["edits"], echo_id.as_str());
    assert_eq!(echoed["text"], "echo: Lights off");
    let original = wait_inbox(&d, |m| m["id"] == echo_id.as_str() && m["edited"] == true);
    assert_eq!(
        original["text"], "echo: Lights off",
        "the echo shows its latest text"
    );

    accepted(&call(
        &d,
        "DELETE",
        &format!("/v1/messages/{id}"),
        json!({}),
    ));
    let v = wait_received(&hub, ECHO, |m| m["kind"] == "revoke");
    assert_eq!(v["revokes"], id.as_str());
    let revoked = wait_inbox(&d, |m| m["kind"] == "revoke");
    assert_eq!(revoked["revokes"], echo_id.as_str());
    let status = d.get(&format!("/v1/messages/{id}")).json();
    assert_eq!(status["revoked"], true);
    assert!(
        status.get("text").is_none(),
        "a deleted message shows no text: {status}"
    );
    // Editing a deleted message, and a message that is theirs, are refused by code.
    let again = call(
        &d,
        "PATCH",
        &format!("/v1/messages/{id}"),
        json!({"text": "x"}),
    );
    assert_eq!(
        (again.status, again.json()["error"]["code"].clone()),
        (409, json!("message_revoked"))
    );
    let theirs = call(
        &d,
        "PATCH",
        &format!("/v1/messages/{echo_id}"),
        json!({"text": "x"}),
    );
    assert_eq!(
        (theirs.status, theirs.json()["error"]["code"].clone()),
        (409, json!("not_our_message"))
    );
}

fn asking_for_a_reaction_or_a_location_brings_one_back_and_a_reply_keeps_the_correlation() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let door = accepted(&call(
        &d,
        "POST",
        "/v1/messages",
        json!({"to": ECHO, "text": "react: someone is at the door", "correlation": "door-42"}),
    ));
    let reaction = wait_inbox(&d, |m| m["kind"] == "reaction");
    assert_eq!(reaction["reply_to"], door.as_str());
    assert_eq!(reaction["text"], "👍");
    assert_eq!(reaction["correlation"], "door-42");
    assert_eq!(
        d.get(&format!("/v1/messages/{door}")).json()["correlation"],
        "door-42"
    );

    d.send(ECHO, "where");
    let place = wait_inbox(&d, |m| m["kind"] == "location");
    assert!(
        (place["location"]["lat"].as_f64().unwrap() - 52.52).abs() < 0.01,
        "{place}"
    );
    assert!(place["location"]["name"].is_string());

    // The contact showed typing before its echo; typing is an event, never an inbox entry.
    let t0 = Instant::now();
    while d.logged_events("typing").is_empty() {
        assert!(t0.elapsed() < WAIT, "no typing event");
    }
    let typing = d.logged_events("typing");
    assert_eq!(
        (typing[0]["phone"].as_str(), typing[0]["state"].as_str()),
        (Some(ECHO), Some("composing"))
    );
    assert!(d.inbox_entries().iter().all(|m| m["kind"] != "typing"));

    // Sending a location, and typing, go out; the contact records the place it got.
    let loc = accepted(&call(
        &d,
        "POST",
        "/v1/messages",
        json!({"to": ECHO, "location": {"lat": 48.1374, "lon": 11.5755, "name": "Home"}}),
    ));
    let got = wait_received(&hub, ECHO, |m| m["kind"] == "location");
    assert_eq!(got["location"]["name"], "Home");
    d.wait_status(&loc, "read");
    let t = call(
        &d,
        "POST",
        "/v1/chats/%2B15550100/typing",
        json!({"state": "composing"}),
    );
    assert_eq!(t.status, 202, "{}", t.body);
}

/// Each bad input has its own code, and nothing is queued: the contact receives nothing.
fn bad_household_input_gets_its_own_code_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = Daemon::start(dir.path(), &hub, "acme-home");
    let id = d.send(ECHO, "first");
    d.wait_status(&id, "read");
    let before = received(&hub.control, ECHO).len();
    let react = format!("/v1/messages/{id}/reactions");
    let cases = [
        (
            "POST",
            react.as_str(),
            json!({"emoji": "👍👍"}),
            "bad_emoji",
        ),
        (
            "POST",
            react.as_str(),
            json!({"emoji": "👍".repeat(17)}),
            "emoji_too_long",
        ),
        (
            "POST",
            "/v1/messages/3EB0000000000000000000/reactions",
            json!({"emoji": "👍"}),
            "unknown_message",
        ),
        (
            "POST",
            "/v1/messages",
            json!({"to": ECHO, "location": {"lat": 90.5, "lon": 0}}),
            "bad_latitude",
        ),
        (
            "POST",
            "/v1/messages",
            json!({"to": ECHO, "location": {"lat": 0, "lon": -181}}),
            "bad_longitude",
        ),
        (
            "POST",
            "/v1/messages",
            json!({"to": ECHO, "text": "x", "correlation": "c".repeat(65)}),
            "correlation_too_long",
        ),
        (
            "POST",
            "/v1/chats/%2B15550100/typing",
            json!({"state": "shouting"}),
            "bad_state",
        ),
    ];
    for (method, path, body, code) in cases {
        let r = call(&d, method, path, body);
        assert_eq!(
            r.json()["error"]["code"],
            code,
            "{method} {path}: {}",
            r.body
        );
    }
    // A later message arrives right after `first`: nothing refused was queued before it.
    let later = d.send(ECHO, "second");
    d.wait_status(&later, "read");
    let now: Vec<Value> = received(&hub.control, ECHO)
        .into_iter()
        .skip(before)
        .collect();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0]["text"], "second");
}

crate::on_both_profiles!(
    a_reaction_an_edit_and_a_delete_reach_the_contact_which_echoes_the_edit_and_delete,
    asking_for_a_reaction_or_a_location_brings_one_back_and_a_reply_keeps_the_correlation,
    bad_household_input_gets_its_own_code_and_queues_nothing,
);
