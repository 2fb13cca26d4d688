//! Trigger URLs end to end with the real binaries: `interopd trigger-url` prints a URL, and a
//! plain GET of it makes the configured message reach the hub's echo contact. A wrong or
//! missing key and an unknown name get the same 401, a rotated key stops the old URL, the
//! configured rate limit answers 429, and the key opens no other route. With an image, the
//! contact decrypts exactly the configured file.

mod api_common;
mod daemon_support;
mod hub_support;
mod media_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use api_common::{Reply, request};
use daemon_support::{Daemon, WAIT, provision_conf_with};
use hub_support::HubProc;

const ECHO: &str = "+15550100";

/// `interopd trigger-url NAME` for the daemon's config, state and API address; returns the
/// URL's path and query (its last line, checked to be the whole URL).
fn trigger_url(conf: &Path, state: &Path, api: &str, name: &str, rotate: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_interopd"));
    cmd.arg("trigger-url")
        .arg(name)
        .arg("--config")
        .arg(conf)
        .arg("--state")
        .arg(state)
        .args(["--api", api]);
    if rotate {
        cmd.arg("--rotate");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let url = stdout.lines().last().unwrap().to_owned();
    let prefix = format!("http://{api}");
    assert!(url.starts_with(&prefix), "{url}");
    url[prefix.len()..].to_owned()
}

/// A GET with the right Host and no token, as a button makes it.
fn get(d: &Daemon, target: &str) -> Reply {
    request(d.api, "GET", target, None, &[], b"")
}

fn texts_received(hub: &HubProc) -> Vec<String> {
    daemon_support::received_texts(&hub.control, ECHO)
}

fn wait_received(hub: &HubProc, text: &str, n: usize) {
    let t0 = Instant::now();
    loop {
        let got = texts_received(hub);
        if got.iter().filter(|t| *t == text).count() >= n {
            return;
        }
        assert!(t0.elapsed() < WAIT, "{text:?} x{n} never arrived: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const DOORBELL: &str = "\n[[trigger]]\nname = \"doorbell\"\nto = \"+15550100\"\ntext = \"Someone is at the door\"\nrate_burst = 2\nrate_interval_secs = 3600\n\n[[trigger]]\nname = \"garage\"\nto = \"+15550100\"\ntext = \"Garage opened\"\n";

#[test]
fn a_trigger_url_sends_its_message_and_its_key_does_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf_with(dir.path(), &hub.state, &hub.listen, "acme-trig", DOORBELL);
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", api_common::free_port())
        .parse()
        .unwrap();
    let d = Daemon::spawn(&conf, &dir.path().join("state"), api);
    d.wait_link_up();

    // The daemon made both keys on its start, private to it.
    for name in ["doorbell", "garage"] {
        let key = d.state.join("trigger-keys").join(name);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let url = trigger_url(&conf, &d.state, &api.to_string(), "doorbell", false);
    assert!(url.starts_with("/v1/triggers/doorbell?key="), "{url}");

    // A plain GET sends exactly the configured text, durably: the id has a status.
    let r = get(&d, &url);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_received(&hub, "Someone is at the door", 1);
    let status = d.wait_status(&id, "read");
    assert_eq!(status["to"], ECHO, "{status}");

    // Wrong key, no key, another trigger's key and an unknown name: one and the same 401.
    let garage = trigger_url(&conf, &d.state, &api.to_string(), "garage", false);
    let garage_key = garage.split_once("?key=").unwrap().1.to_owned();
    let refusals = [
        "/v1/triggers/doorbell?key=0000000000000000000000000000000000000000".to_string(),
        "/v1/triggers/doorbell".to_string(),
        format!("/v1/triggers/doorbell?key={garage_key}"),
        format!("/v1/triggers/nosuch?key={garage_key}"),
        format!("{url}&key={garage_key}"),
    ];
    let first = get(&d, &refusals[0]);
    assert_eq!(first.status, 401, "{}", first.body);
    assert_eq!(first.error_code(), "unauthorized");
    for target in &refusals {
        let r = get(&d, target);
        assert_eq!((r.status, &r.body), (401, &first.body), "{target}");
    }

    // The key opens no other route, with or without the token's rate budget in play.
    let key = url.split_once("?key=").unwrap().1.to_owned();
    for target in [
        format!("/v1/inbox?key={key}"),
        format!("/v1/messages?to=%2B15550100&key={key}"),
        format!("/v1/identity?key={key}"),
    ] {
        let method = if target.starts_with("/v1/messages") {
            "POST"
        } else {
            "GET"
        };
        let r = request(d.api, method, &target, None, &[], b"text");
        assert_eq!(r.status, 401, "{target}: {}", r.body);
        assert_eq!(r.error_code(), "trigger_key_refused", "{target}");
    }
    // A wrong Host is refused before the key is looked at.
    let r = api_common::raw(
        d.api,
        format!("GET {url} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 421, "{}", r.body);

    // rate_burst = 2 with one hour between: the second fire (a POST) passes, the third is 429.
    let r = request(d.api, "POST", &url, None, &[], b"ignored body");
    assert_eq!(r.status, 202, "{}", r.body);
    let r = get(&d, &url);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "trigger_rate_limited");
    assert!(r.head.contains("retry-after: "), "{}", r.head);
    wait_received(&hub, "Someone is at the door", 2);
    // Another trigger has its own budget.
    assert_eq!(get(&d, &garage).status, 202);
    wait_received(&hub, "Garage opened", 1);

    // Rotating: the old URL is refused at once by the running daemon, the new one works.
    let rotated = trigger_url(&conf, &d.state, &api.to_string(), "garage", true);
    assert_ne!(rotated, garage);
    let r = get(&d, &garage);
    assert_eq!((r.status, &r.body), (401, &first.body));
    assert_eq!(get(&d, &rotated).status, 202);
    wait_received(&hub, "Garage opened", 2);

    // /metrics counts each outcome: 4 fired, 7 refused for their key (the 401s above on
    // /v1/triggers; the other routes' 401s are the API's), 1 rate limited.
    let m = d.get("/metrics").body;
    for (result, n) in [("fired", 4), ("refused_key", 7), ("rate_limited", 1)] {
        let line = format!("interopd_trigger_requests_total{{result=\"{result}\"}} {n}");
        assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
    }
}

#[test]
fn an_image_trigger_sends_the_configured_file_with_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    let setup = media_support::provisioned(dir.path(), &hub, "");
    let png = media_support::png(4, 3);
    let img = dir.path().join("door.png");
    std::fs::write(&img, &png).unwrap();
    let mut text = std::fs::read_to_string(&setup.conf).unwrap();
    text.push_str(&format!(
        "\n[[trigger]]\nname = \"camera\"\nto = \"+15550100\"\ntext = \"Motion at the door\"\nmedia_file = \"{}\"\n",
        img.display()
    ));
    std::fs::write(&setup.conf, text).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .arg("check-config")
        .arg("--config")
        .arg(&setup.conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let d = setup.start();
    let url = trigger_url(
        &setup.conf,
        &setup.state,
        &d.api.to_string(),
        "camera",
        false,
    );
    let r = media_support::http(d.api, "GET", &url, None, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let got = media_support::wait_hub_media(&hub, ECHO);
    assert!(got.get("error").is_none(), "{got}");
    assert_eq!(got["sha256_hex"], media_support::sha256_hex(&png), "{got}");
    assert_eq!(got["mimetype"], "image/png", "{got}");
}
