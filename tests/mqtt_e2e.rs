//! The MQTT bridge end to end: the real `interopd` and `interop-hub` binaries, a real
//! `mosquitto` on a loopback port with a password file, and MQTT clients that are not ours
//! (`mosquitto_sub`, `mosquitto_pub`). What Home Assistant would see (discovery configs with
//! the keys its platforms document, availability, link, outbox), commands that go through the
//! API's send path and reach the echo contact, whose answer arrives on `inbox`; the last will
//! after a SIGKILL; a broker outage with messages arriving meanwhile; a wrong password; bad
//! and oversized payloads; a command published while the daemon is dead, run once it is back;
//! a contact's entity removed when the config drops it; and `mqtts://`.
//! Without mosquitto (and without root to install it) every test here skips, saying so.

mod api_common;
mod daemon_support;
mod hub_support;
mod mqtt_support;

use std::time::{Duration, Instant};

use daemon_support::{Daemon, WAIT, provision_conf_with, wait_log};
use hub_support::HubProc;
use mqtt_support::{Broker, PASSWORD};
use serde_json::Value;

const ECHO: &str = "+15550100";
const BASE: &str = "interopd/home";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// A hub, a broker, and a daemon whose config has `[mqtt]` (with `extra` keys); its log is
/// written to `dir/daemon.log`.
struct Setup {
    _dir: tempfile::TempDir,
    hub: HubProc,
    broker: Broker,
    daemon: Daemon,
    log: std::path::PathBuf,
}

fn setup(account: &str, password: &str, extra: &str) -> Setup {
    setup_with(account, password, extra, false)
}

/// [`setup`]; with `tls` the daemon reaches the broker over `mqtts://localhost`, pinned to the
/// broker's CA.
fn setup_with(account: &str, password: &str, extra: &str, tls: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let broker = Broker::start_with(&dir.path().join("broker"), tls);
    let mut section = broker.daemon_section(dir.path(), password, extra);
    if let Some(port) = broker.tls_port {
        let ca = dir.path().join("broker").join("ca.pem");
        section = section.replace(
            &broker.url(),
            &format!("mqtts://localhost:{port}\"\nca_file = \"{}", ca.display()),
        );
    }
    let conf = provision_conf_with(dir.path(), &hub.state, &hub.listen, account, &section);
    let log = dir.path().join("daemon.log");
    let daemon = Daemon::spawn_logged(&conf, &dir.path().join("state"), &log);
    daemon.wait_link_up();
    Setup {
        _dir: dir,
        hub,
        broker,
        daemon,
        log,
    }
}

fn wait_received(hub: &HubProc, text: &str, n: usize) {
    let t0 = Instant::now();
    loop {
        let got = daemon_support::received_texts(&hub.control, ECHO);
        if got.iter().filter(|t| *t == text).count() >= n {
            return;
        }
        assert!(
            t0.elapsed() < WAIT,
            "{text:?} x{n} never reached the echo contact: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that a discovery config has what Home Assistant's MQTT platform needs: the keys
/// every entity shares, and the platform's own required and typed keys.
fn check_config(component: &str, v: &Value) {
    for key in ["name", "unique_id", "object_id", "availability_topic"] {
        assert!(v[key].is_string(), "{component}: {key} in {v}");
    }
    let device = &v["device"];
    assert!(
        device["identifiers"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{v}"
    );
    for key in ["name", "model", "sw_version"] {
        assert!(device[key].is_string(), "{component}: device.{key} in {v}");
    }
    assert_eq!(v["availability_topic"], format!("{BASE}/availability"));
    // Home Assistant refuses keys that are not in a platform's schema; these are the ones
    // its notify, event, binary_sensor and sensor platforms document.
    let common = [
        "name",
        "unique_id",
        "object_id",
        "device",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "icon",
        "qos",
        "entity_category",
    ];
    let own: &[&str] = match component {
        "notify" => &["command_topic"],
        "event" => &["state_topic", "event_types", "value_template"],
        "binary_sensor" => &["state_topic", "payload_on", "payload_off", "device_class"],
        "sensor" => &["state_topic", "unit_of_measurement", "state_class"],
        other => panic!("unexpected component {other}"),
    };
    for key in v.as_object().unwrap().keys() {
        assert!(
            common.contains(&key.as_str()) || own.contains(&key.as_str()),
            "{component}: {key} is not a documented key"
        );
    }
    for key in own {
        assert!(!v[key].is_null(), "{component}: {key} missing in {v}");
    }
    match component {
        "event" => assert_eq!(v["event_types"], serde_json::json!(["message"])),
        "binary_sensor" => assert_eq!(v["device_class"], "connectivity"),
        _ => {}
    }
}

#[test]
fn home_assistant_sees_the_device_and_its_commands_reach_the_echo_contact() {
    if !mqtt_support::available() {
        return;
    }
    let s = setup("acme-mqtt1", PASSWORD, "contacts = [\"+15550100\"]\n");
    let b = &s.broker;
    b.wait_retained(&format!("{BASE}/availability"), "online");
    b.wait_retained(&format!("{BASE}/link"), "up");
    b.wait_retained(&format!("{BASE}/outbox"), "0");

    // The four entities' retained configs, as Home Assistant reads them.
    let t0 = Instant::now();
    let configs = loop {
        let c = b.retained("homeassistant/#");
        if c.len() >= 4 {
            break c;
        }
        assert!(t0.elapsed() < WAIT, "discovery configs: {c:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut components: Vec<&str> = Vec::new();
    for (topic, payload) in &configs {
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(
            (parts.len(), parts[0], parts[2], parts[4]),
            (5, "homeassistant", "home", "config"),
            "{topic}"
        );
        let v = json(payload);
        check_config(parts[1], &v);
        components.push(parts[1]);
    }
    components.sort();
    assert_eq!(components, ["binary_sensor", "event", "notify", "sensor"]);
    let notify = configs
        .iter()
        .find(|(t, _)| t.contains("/notify/"))
        .map(|(_, p)| json(p))
        .unwrap();
    assert_eq!(notify["command_topic"], format!("{BASE}/notify/15550100"));

    let sub = b.subscribe(&[
        &format!("{BASE}/inbox"),
        &format!("{BASE}/send/result"),
        &format!("{BASE}/status"),
    ]);

    // The notify entity's command: plain text to the contact, whose echo arrives on inbox.
    b.publish(
        &format!("{BASE}/notify/15550100"),
        b"hello from the doorbell",
        false,
    );
    wait_received(&s.hub, "hello from the doorbell", 1);
    let inbox = sub.wait_for(&format!("{BASE}/inbox"), 1, |p| {
        json(p)["text"] == "echo: hello from the doorbell"
    });
    let echo = inbox
        .iter()
        .map(|p| json(p))
        .find(|v| v["text"] == "echo: hello from the doorbell")
        .unwrap();
    assert_eq!(echo["from"], ECHO);
    assert!(echo["cursor"].as_u64().is_some_and(|c| c > 0), "{echo}");
    assert!(echo["id"].is_string());

    // `send` takes the body of POST /v1/messages; the result carries the request_id, and the
    // message goes through the API's path to delivered (its status is the API's).
    let body = serde_json::json!({"to": ECHO, "text": "via mqtt send", "request_id": "r-1"});
    b.publish(&format!("{BASE}/send"), body.to_string().as_bytes(), false);
    let results = sub.wait_for(&format!("{BASE}/send/result"), 1, |p| {
        json(p)["request_id"] == "r-1"
    });
    let first = json(&results[0]);
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["status"], "queued");
    wait_received(&s.hub, "via mqtt send", 1);
    let status = s.daemon.wait_status(&id, "read");
    assert_eq!(status["to"], ECHO);
    // Status events for it on `status`.
    sub.wait_for(&format!("{BASE}/status"), 1, |p| {
        json(p)["id"] == id.as_str()
    });

    // The same request_id again (a redelivery) gets the same id and sends nothing new.
    b.publish(&format!("{BASE}/send"), body.to_string().as_bytes(), false);
    let results = sub.wait_for(&format!("{BASE}/send/result"), 2, |p| {
        json(p)["request_id"] == "r-1"
    });
    assert_eq!(json(&results[1])["id"], id.as_str(), "{results:?}");

    // A malformed payload and one over the bound: an error on send/result, nothing queued.
    b.publish(
        &format!("{BASE}/send"),
        b"{\"to\": \"+15550100\", \"txt\": \"typo\", \"request_id\": \"r-2\"}",
        false,
    );
    let r2 = sub.wait_for(&format!("{BASE}/send/result"), 1, |p| {
        json(p)["request_id"] == "r-2"
    });
    let r2 = json(r2.iter().find(|p| json(p)["request_id"] == "r-2").unwrap());
    assert_eq!(r2["error"]["code"], "bad_json", "{r2}");
    assert!(r2.get("id").is_none());
    b.publish(&format!("{BASE}/send"), b"not json", false);
    sub.wait_for(&format!("{BASE}/send/result"), 1, |p| {
        json(p)["error"]["code"] == "bad_json" && json(p).get("request_id").is_none()
    });
    let big = serde_json::json!({"to": ECHO, "text": "x".repeat(70 * 1024)});
    b.publish(&format!("{BASE}/send"), big.to_string().as_bytes(), false);
    sub.wait_for(&format!("{BASE}/send/result"), 1, |p| {
        json(p)["error"]["code"] == "payload_too_large"
    });
    // The bridge is still connected and serving: a marker goes through, and the echo contact
    // got "via mqtt send" once and never the refused texts.
    b.publish(&format!("{BASE}/notify/15550100"), b"marker", false);
    wait_received(&s.hub, "marker", 1);
    let got = daemon_support::received_texts(&s.hub.control, ECHO);
    assert_eq!(
        got.iter().filter(|t| *t == "via mqtt send").count(),
        1,
        "{got:?}"
    );
    assert!(
        !got.iter().any(|t| t == "typo" || t.starts_with("xxxx")),
        "{got:?}"
    );
    // Nothing secret in the log.
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(!log.contains(PASSWORD), "the MQTT password was logged");
    assert!(
        !log.contains("hello from the doorbell"),
        "a message body was logged"
    );
}

#[test]
fn a_sigkilled_daemon_reads_offline_and_messages_from_a_broker_outage_arrive_after_it() {
    if !mqtt_support::available() {
        return;
    }
    let mut s = setup("acme-mqtt2", PASSWORD, "");
    let inbox = format!("{BASE}/inbox");
    s.broker
        .wait_retained(&format!("{BASE}/availability"), "online");
    // A consumer with a persistent session, so that the broker keeps what it misses.
    let sub = s.broker.subscribe_as(Some("outage-watch"), &[&inbox]);
    s.daemon.send(ECHO, "before");
    sub.wait_for(&inbox, 1, |p| json(p)["text"] == "echo: before");

    s.broker.stop();
    for text in ["down-1", "down-2", "down-3"] {
        s.daemon.send(ECHO, text);
    }
    let t0 = Instant::now();
    while s
        .daemon
        .inbox_texts()
        .iter()
        .filter(|t| t.starts_with("echo: down-"))
        .count()
        < 3
    {
        assert!(t0.elapsed() < WAIT, "the echoes never reached the inbox");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.broker.restart();
    let got = sub.wait_for(&inbox, 3, |p| {
        json(p)["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("echo: down-"))
    });
    // No gap: the cursors are the inbox's, in order, each at least once.
    let api: Vec<u64> = s
        .daemon
        .inbox_entries()
        .iter()
        .map(|m| m["cursor"].as_u64().unwrap())
        .collect();
    let mut seen: Vec<u64> = Vec::new();
    for c in got.iter().map(|p| json(p)["cursor"].as_u64().unwrap()) {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    assert_eq!(seen, api, "published cursors {seen:?}, inbox {api:?}");

    // SIGKILL: no goodbye, the broker publishes the last will. (A second first, for the
    // bridge to commit the cursor of the last PUBACK: a kill before it would legitimately
    // publish that message again, at least once.)
    std::thread::sleep(Duration::from_secs(1));
    s.daemon.kill();
    s.broker
        .wait_retained(&format!("{BASE}/availability"), "offline");
    // A command published while the daemon is dead waits in its persistent session.
    let body =
        serde_json::json!({"to": ECHO, "text": "while the daemon was down", "request_id": "off-1"});
    s.broker
        .publish(&format!("{BASE}/send"), body.to_string().as_bytes(), false);
    // A restart resumes from the durable cursor: nothing new is published again.
    let before = sub.on(&inbox).len();
    s.daemon.restart();
    s.broker
        .wait_retained(&format!("{BASE}/availability"), "online");
    wait_received(&s.hub, "while the daemon was down", 1);
    s.daemon.send(ECHO, "after");
    sub.wait_for(&inbox, 1, |p| json(p)["text"] == "echo: after");
    let after: Vec<String> = sub.on(&inbox)[before..].to_vec();
    assert!(
        after.iter().all(|p| json(p)["text"] == "echo: after"
            || json(p)["text"] == "echo: while the daemon was down"),
        "republished after the restart: {after:?}"
    );
}

#[test]
fn a_wrong_password_is_logged_clearly_and_retried_while_the_api_works() {
    if !mqtt_support::available() {
        return;
    }
    let s = setup("acme-mqtt3", "not-the-password", "");
    let line = wait_log(&s.log, "refused the login");
    assert!(line.contains("retrying in"), "{line}");
    assert!(
        !line.contains("not-the-password"),
        "the password was logged"
    );
    // It tries again with backoff: a second refusal is logged.
    let t0 = Instant::now();
    while std::fs::read_to_string(&s.log)
        .unwrap()
        .matches("refused the login")
        .count()
        < 2
    {
        assert!(t0.elapsed() < WAIT, "no retry");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        s.broker.log().contains("not authorised"),
        "{}",
        s.broker.log()
    );
    // The API is unaffected.
    let id = s.daemon.send(ECHO, "api still works");
    s.daemon.wait_status(&id, "read");
}

#[test]
fn a_contact_dropped_from_the_config_loses_its_notify_entity() {
    if !mqtt_support::available() {
        return;
    }
    let mut s = setup(
        "acme-mqtt4",
        PASSWORD,
        "contacts = [\"+15550100\", \"+15550101\"]\n",
    );
    let topic = |d: &str| format!("homeassistant/notify/home/notify_{d}/config");
    let t0 = Instant::now();
    while s.broker.retained("homeassistant/notify/#").len() < 2 {
        assert!(
            t0.elapsed() < WAIT,
            "{:?}",
            s.broker.retained("homeassistant/#")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the bridge record what it published (it does once the broker acknowledged it).
    std::thread::sleep(Duration::from_secs(1));
    let conf = std::fs::read_to_string(&s.daemon.conf).unwrap();
    std::fs::write(
        &s.daemon.conf,
        conf.replace(
            "contacts = [\"+15550100\", \"+15550101\"]",
            "contacts = [\"+15550100\"]",
        ),
    )
    .unwrap();
    s.daemon.kill();
    s.daemon.restart();
    let t0 = Instant::now();
    loop {
        let notify: Vec<String> = s
            .broker
            .retained("homeassistant/notify/#")
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        if notify == [topic("15550100")] {
            break;
        }
        assert!(t0.elapsed() < WAIT, "notify configs: {notify:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.broker.retained("homeassistant/#").len(), 4);
}

#[test]
fn over_mqtts_the_bridge_trusts_the_configured_ca_and_comes_online() {
    if !mqtt_support::available() {
        return;
    }
    let s = setup_with("acme-mqtt5", PASSWORD, "", true);
    s.broker
        .wait_retained(&format!("{BASE}/availability"), "online");
    s.broker.wait_retained(&format!("{BASE}/link"), "up");
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("mqtt: connected to localhost:"), "{log}");
}
