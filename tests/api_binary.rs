//! The local API against the real `interopd run` binary over loopback, with the link down
//! (the gatekeeper is an unreachable port): every documented error answers its JSON error and
//! never stops the daemon, a slow-loris client is dropped while others are served, an
//! `Idempotency-Key` retry gives the same id, `/metrics` parses with Prometheus' own parser
//! (installed on first use, `python_support`), and SIGTERM stops the daemon with status 0.

mod api_common;
mod python_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_common::*;
use serde_json::json;

struct Daemon {
    child: Child,
    addr: SocketAddr,
    token: String,
    _dir: tempfile::TempDir,
    state: PathBuf,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = dir.path().join("interopd.conf");
        // The config names another address; --api and --state override it, as documented.
        std::fs::write(
            &conf,
            config_text(&dir.path().join("unused"), "127.0.0.1:8787", None),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_interopd"))
            .args(["run", "--config"])
            .arg(&conf)
            .arg("--state")
            .arg(&state)
            .args(["--api", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(addr).is_ok() && state.join("api-token").exists() {
                break;
            }
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(state.join("api-token"))
            .unwrap()
            .trim()
            .to_string();
        Daemon {
            child,
            addr,
            token,
            _dir: dir,
            state,
        }
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "daemon exited");
        let r = request(self.addr, "GET", "/healthz", None, &[], b"");
        assert_eq!(r.status, 200, "{r:?}");
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn health_needs_no_token_and_reports_the_link_down() {
    let mut d = Daemon::start();
    let r = request(d.addr, "GET", "/healthz", None, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": "ok", "link": "down", "store": "ok"})
    );
    d.assert_alive();
}

#[test]
fn token_file_is_private_and_every_other_route_needs_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Daemon::start();
    let mode = std::fs::metadata(d.state.join("api-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for (method, target) in [
        ("GET", "/v1/identity"),
        ("GET", "/v1/inbox"),
        ("POST", "/v1/messages"),
        ("GET", "/metrics"),
        ("GET", "/v1/no-such-route"),
    ] {
        let r = request(d.addr, method, target, None, &[], b"");
        assert_eq!(r.status, 401, "{method} {target}: {r:?}");
        assert_eq!(r.error_code(), "unauthorized");
        let r = request(
            d.addr,
            method,
            target,
            Some("wrong-token-wrong-token"),
            &[],
            b"",
        );
        assert_eq!(r.status, 401, "{method} {target}: {r:?}");
    }
    d.assert_alive();
}

#[test]
fn a_foreign_host_header_gets_421() {
    let mut d = Daemon::start();
    let req = format!(
        "GET /v1/identity HTTP/1.1\r\nHost: rebind.attacker.example\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        d.token
    );
    let r = raw(d.addr, req.as_bytes());
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(r.error_code(), "misdirected_request");
    let req = format!(
        "GET /v1/identity HTTP/1.1\r\nHost: localhost:{}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        d.addr.port(),
        d.token
    );
    assert_eq!(raw(d.addr, req.as_bytes()).status, 200);
    d.assert_alive();
}

#[test]
fn bad_requests_get_their_documented_json_errors() {
    let mut d = Daemon::start();
    let (a, t) = (d.addr, d.token.clone());
    let json_ct = [("Content-Type", "application/json")];

    let r = request(a, "POST", "/v1/messages", Some(&t), &json_ct, b"{\"to\": ");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "bad_json"),
        "{r:?}"
    );

    let r = post_json(a, "/v1/messages", &t, &json!({"to": "12", "text": "x"}));
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_phone"));

    let r = get(a, "/v1/nothing/here", &t);
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));

    let r = get(a, "/v1/messages/3EB0000000000000000000", &t);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_message")
    );

    let big = json!({"to": "+4915112345678", "text": "x".repeat(200 * 1024)});
    let r = post_json(a, "/v1/messages", &t, &big);
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));

    let r = request(
        a,
        "POST",
        "/v1/messages?to=%2B4915112345678",
        Some(&t),
        &[("Content-Type", "application/xml")],
        b"<x/>",
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (415, "unsupported_media_type")
    );

    let r = get(a, "/v1/inbox?after=minus-one", &t);
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
    d.assert_alive();
}

#[test]
fn text_plain_and_json_sends_are_queued_and_have_a_status() {
    let mut d = Daemon::start();
    let r = request(
        d.addr,
        "POST",
        "/v1/messages?to=%2B4915112345678",
        Some(&d.token),
        &[("Content-Type", "text/plain")],
        b"Door opened",
    );
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("3EB0") && id.len() == 22, "{id}");
    assert_eq!(r.json()["status"], "queued");
    let s = get(d.addr, &format!("/v1/messages/{id}"), &d.token);
    assert_eq!(s.status, 200);
    let v = s.json();
    assert_eq!(v["to"], "+4915112345678");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["kind"], "text");
    assert!(v["updated_at"].as_str().unwrap().ends_with('Z'));
    d.assert_alive();
}

#[test]
fn the_contract_curl_line_with_a_form_content_type_sends_the_literal_text() {
    let mut d = Daemon::start();
    // What `curl -d 'Door opened' 'localhost:8787/v1/messages?to=%2B49…'` sends.
    let r = request(
        d.addr,
        "POST",
        "/v1/messages?to=%2B4915112345678",
        Some(&d.token),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"Door opened & closed",
    );
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let status = d.terminate();
    assert_eq!(status.code(), Some(0));
    let store = interopd::store::Store::open(&d.state).unwrap();
    let txn = store.begin().unwrap();
    let (_, row) = txn.outbox_by_id(&id).unwrap().unwrap();
    let msg: interopd::content::Message = prost::Message::decode(row.content.as_slice()).unwrap();
    assert_eq!(msg.text_body(), Some("Door opened & closed"));
    assert_eq!(row.to, "4915112345678");
}

#[test]
fn the_same_idempotency_key_gives_the_same_id_and_one_message() {
    let mut d = Daemon::start();
    let send = |key: &str| {
        request(
            d.addr,
            "POST",
            "/v1/messages",
            Some(&d.token),
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            json!({"to": "+4915112345678", "text": "once"})
                .to_string()
                .as_bytes(),
        )
    };
    let first = send("doorbell-42");
    let again = send("doorbell-42");
    let other = send("doorbell-43");
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_ne!(first.json()["id"], other.json()["id"]);
    // One message per key: the queued counter counts two, not three.
    let m = get(d.addr, "/metrics", &d.token);
    assert!(
        m.body
            .contains("interopd_messages_total{direction=\"out\",status=\"queued\"} 2"),
        "{}",
        m.body
    );
    d.assert_alive();
}

#[test]
fn the_outbox_queued_gauge_counts_messages_waiting_while_the_link_is_down() {
    let d = Daemon::start();
    let gauge = || {
        let m = get(d.addr, "/metrics", &d.token);
        m.body
            .lines()
            .find_map(|l| l.strip_prefix("interopd_outbox_queued "))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no interopd_outbox_queued in {}", m.body))
    };
    assert_eq!(gauge(), "0");
    for text in ["one", "two", "three"] {
        let body = json!({"to": "+4915112345678", "text": text}).to_string();
        let r = request(
            d.addr,
            "POST",
            "/v1/messages",
            Some(&d.token),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 202, "{r:?}");
    }
    // The link is down, so all three wait.
    assert_eq!(gauge(), "3");
}

#[test]
fn a_key_that_is_not_ascii_or_given_twice_is_refused_not_ignored() {
    let d = Daemon::start();
    let body = json!({"to": "+4915112345678", "text": "once"}).to_string();
    let send = |key_lines: &[&[u8]]| {
        let mut req = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            d.addr,
            d.token,
            body.len()
        )
        .into_bytes();
        for line in key_lines {
            req.extend_from_slice(b"Idempotency-Key: ");
            req.extend_from_slice(line);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body.as_bytes());
        raw(d.addr, &req)
    };
    for (what, lines) in [
        ("Latin-1", &[&b"t\xfcr-1"[..]][..]),
        ("UTF-8", &["tür-1".as_bytes()][..]),
        ("twice", &[&b"door-1"[..], &b"door-2"[..]][..]),
    ] {
        let r = send(lines);
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert_eq!(r.json()["error"]["code"], "bad_idempotency_key", "{what}");
    }
    // Nothing was queued by any of them.
    let m = get(d.addr, "/metrics", &d.token);
    let queued: Vec<&str> = m
        .body
        .lines()
        .filter(|l| l.starts_with("interopd_messages_total{direction=\"out\",status=\"queued\"}"))
        .collect();
    assert!(
        queued.iter().all(|l| l.ends_with(" 0")),
        "{queued:?}\n{}",
        m.body
    );

    let twice = request(
        d.addr,
        "POST",
        "/v1/media?to=%2B4915112345678&to=%2B4915100000000&kind=file",
        Some(&d.token),
        &[("Content-Type", "application/octet-stream")],
        b"data",
    );
    assert_eq!(twice.status, 400, "{twice:?}");
    assert_eq!(twice.json()["error"]["code"], "repeated_parameter");
}

#[test]
fn too_many_requests_get_429_with_retry_after() {
    let mut d = Daemon::start();
    let mut limited = None;
    for _ in 0..400 {
        let r = get(d.addr, "/v1/identity", &d.token);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("no 429 within 400 requests");
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.head.contains("retry-after:"), "{}", r.head);
    d.assert_alive();
}

#[test]
fn a_slow_loris_client_is_dropped_while_others_are_served() {
    let mut d = Daemon::start();
    let mut slow = TcpStream::connect(d.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let started = Instant::now();
    // Others are served while the slow head is pending.
    for _ in 0..5 {
        let r = request(d.addr, "GET", "/healthz", None, &[], b"");
        assert_eq!(r.status, 200);
    }
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = Vec::new();
    // Trickle a byte a second: progress inside the head must not extend its time limit.
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(16) {
        if slow.write_all(b"s").is_err() {
            closed = true;
            break;
        }
        slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut chunk = [0u8; 512];
        match slow.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "slow client still connected after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    if !buf.is_empty() {
        assert_eq!(parse_reply(&buf).status, 408);
    }
    d.assert_alive();
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let mut d = Daemon::start();
    post_json(
        d.addr,
        "/v1/messages",
        &d.token,
        &json!({"to": "+4915112345678", "text": "m"}),
    );
    let r = get(d.addr, "/metrics", &d.token);
    assert_eq!(r.status, 200);
    assert!(r.head.contains("content-type: text/plain; version=0.0.4"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &r.body).unwrap();
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
names = set()
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    names.add(fam.name)
    for s in fam.samples:
        assert s.value >= 0, s
need = {"interopd_messages", "interopd_link_up", "interopd_link_reconnects",
        "interopd_outbox_queued", "interopd_webhook_pending", "interopd_webhook_failures",
        "interopd_webhook_dead_letters", "interopd_store_commit_seconds"}
missing = need - names
assert not missing, missing
print("ok", len(names))
"#;
    let out = python_support::python3_with(python_support::PROMETHEUS_CLIENT)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "prometheus_client parser refused /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.body
    );
    d.assert_alive();
}

#[test]
fn sigterm_stops_the_daemon_with_status_zero_and_state_survives() {
    let mut d = Daemon::start();
    let r = post_json(
        d.addr,
        "/v1/messages",
        &d.token,
        &json!({"to": "+4915112345678", "text": "kept"}),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let status = d.terminate();
    assert_eq!(status.code(), Some(0));
    // The store lock is released: a second process can open it and finds the message.
    let store = interopd::store::Store::open(&d.state).unwrap();
    let txn = store.begin().unwrap();
    assert!(txn.outbox_by_id(&id).unwrap().is_some());
}

#[test]
fn a_damaged_store_exits_1_naming_the_file_and_what_to_do_never_a_panic() {
    let mut d = Daemon::start();
    for i in 0..20 {
        let r = post_json(
            d.addr,
            "/v1/messages",
            &d.token,
            &json!({"to": "+4915112345678", "text": format!("message {i}")}),
        );
        assert_eq!(r.status, 202, "{r:?}");
    }
    assert_eq!(d.terminate().code(), Some(0));
    let db = d.state.join("interopd.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 4..len * 3 / 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    let conf = d._dir.path().join("interopd.conf");
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["run", "--config"])
        .arg(&conf)
        .arg("--state")
        .arg(&d.state)
        .args(["--api", &d.addr.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A panic in redb exits 101 here (134 with the release profile's abort).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is damaged", db.display())),
        "{stderr}"
    );
    assert!(stderr.contains("move the file away"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_emptied_store_refuses_to_start_over_unless_told_to() {
    let mut d = Daemon::start();
    let r = post_json(
        d.addr,
        "/v1/messages",
        &d.token,
        &json!({"to": "+4915112345678", "text": "queued before the loss"}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(d.terminate().code(), Some(0));
    assert!(d.state.join("identity-created").exists());
    let db = d.state.join("interopd.redb");
    let conf = d._dir.path().join("interopd.conf");
    let run = |extra: &[&str]| -> Child {
        Command::new(env!("CARGO_BIN_EXE_interopd"))
            .args(["run", "--config"])
            .arg(&conf)
            .arg("--state")
            .arg(&d.state)
            .args(["--api", &d.addr.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for what in ["emptied", "deleted"] {
        if what == "emptied" {
            std::fs::write(&db, b"").unwrap();
        } else {
            std::fs::remove_file(&db).unwrap();
        }
        let out = run(&[]).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("holds no identity"), "{what}: {stderr}");
        assert!(
            stderr.contains("identity-created exists"),
            "{what}: {stderr}"
        );
        assert!(stderr.contains("--reset-identity"), "{what}: {stderr}");
    }

    // On purpose, it starts over, and says so.
    // On purpose, it starts over, and says so.
    let out = serve_then_stop(run(&["--reset-identity"]), d.addr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("starting with a new identity"), "{stderr}");

    // The new identity is the store's now: a plain restart keeps it, without a word.
    let out = serve_then_stop(run(&[]), d.addr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("new identity"), "{stderr}");
}

/// Waits until `child` answers `/healthz` on `addr`, then stops it with SIGTERM.
fn serve_then_stop(mut child: Child, addr: SocketAddr) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err()
        || request(addr, "GET", "/healthz", None, &[], b"").status != 200
    {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("exited {status}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait_with_output().unwrap()
}

/// Sends a request and reads only the status line and headers (an SSE body never ends).
fn head_only(addr: SocketAddr, method: &str, target: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap() == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _ = s.read_to_end(&mut rest);
    let reply = parse_reply(&[buf, rest].concat());
    (reply.status, reply.body)
}

#[test]
fn every_route_in_the_route_table_is_served() {
    let mut d = Daemon::start();
    for (method, template) in interopd::api::ROUTES {
        let target = template
            .replace("{id}", "3EB0000000000000000000")
            .replace("{cursor}", "1")
            .replace("{phone}", "%2B15550100");
        let (status, body) = head_only(d.addr, method, &target, &d.token);
        assert_ne!(status, 405, "{method} {template}");
        assert!(
            !body.contains("\"not_found\""),
            "{method} {template} is not routed: {status} {body}"
        );
    }
    d.assert_alive();
}

#[test]
fn run_exits_78_on_bad_config_and_1_when_the_api_address_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "[account]\nintegrator = \"acme\"\n").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["run", "--config"])
        .arg(&conf)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(78));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let conf = dir.path().join("good.conf");
    std::fs::write(&conf, config_text(&dir.path().join("state"), &addr, None)).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["run", "--config"])
        .arg(&conf)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));

    let status = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["run", "--config"])
        .arg(&conf)
        .args(["--api", "0.0.0.0:8787"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(78),
        "a LAN --api needs the config's consent"
    );
}

/// What one slow attacker connection sends first; the rest it trickles a byte at a time.
enum Slow {
    /// A head without a token that never ends.
    Head,
    /// A whole head with the token, then a body far slower than the minimum rate.
    Body,
}

/// Holds `n` slow connections of `kind` open against `addr` until `stop`, trickling a byte
/// to each every 300 ms; with `reconnect`, one that the daemon closed is opened again. Sends
/// on `opened` once all `n` were first opened.
fn slow_clients(
    addr: SocketAddr,
    token: String,
    kind: Slow,
    n: usize,
    reconnect: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let start = |token: &str| -> Option<TcpStream> {
            let mut s = TcpStream::connect(addr).ok()?;
            let first = match kind {
                Slow::Head => format!("GET /v1/inbox HTTP/1.1\r\nHost: {addr}\r\nX-Pad: "),
                Slow::Body => format!(
                    "POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                ),
            };
            s.write_all(first.as_bytes()).ok()?;
            Some(s)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| start(&token)).collect();
        let _ = opened.send(());
        let mut opened = n;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for c in conns.iter_mut() {
                let alive = c.as_mut().is_some_and(|s| s.write_all(b" ").is_ok());
                if !alive {
                    *c = None;
                    if reconnect {
                        *c = start(&token);
                        opened += 1;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        opened
    })
}

#[test]
fn three_hundred_slow_connections_leave_a_prompt_client_fully_served() {
    let mut d = Daemon::start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, all_open) = std::sync::mpsc::channel();
    let heads = slow_clients(
        d.addr,
        d.token.clone(),
        Slow::Head,
        300,
        true,
        stop.clone(),
        tx.clone(),
    );
    let bodies = slow_clients(
        d.addr,
        d.token.clone(),
        Slow::Body,
        70,
        false,
        stop.clone(),
        tx,
    );
    for _ in 0..2 {
        all_open.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    // A body counts as busy for its first second (a real upload may start slowly); after it,
    // one that trickles is idle and gives its slot up. (Authenticated clients that really are
    // busy, 64 long-polls say, can fill every slot: that is what the token allows.)
    std::thread::sleep(Duration::from_millis(1500));
    let mut failures = Vec::new();
    let total = 50;
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        let asked = Instant::now();
        let r = if i % 2 == 0 {
            request(d.addr, "GET", "/v1/identity", Some(&d.token), &[], b"")
        } else {
            let body = json!({"to": "+15550100", "text": format!("prompt {i}")}).to_string();
            request(
                d.addr,
                "POST",
                "/v1/messages",
                Some(&d.token),
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
        };
        slowest = slowest.max(asked.elapsed());
        if !(200..300).contains(&r.status) {
            failures.push((i, r.status, r.body.clone()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = request(d.addr, "GET", "/metrics", Some(&d.token), &[], b"");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reopened = heads.join().unwrap();
    bodies.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} prompt requests failed under 370 slow connections: {failures:?}",
        failures.len()
    );
    let evicted = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("interopd_api_connections_evicted_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        evicted > 0,
        "the slow connections were never in the way:\n{}",
        metrics.body
    );
    eprintln!(
        "{total}/{total} served, the slowest in {slowest:?}; {evicted} idle connections \
         evicted; {reopened} slow heads opened"
    );
    d.assert_alive();
}
