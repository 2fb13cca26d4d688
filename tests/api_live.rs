//! The receiving side of the local API against the real binaries: `interop-hub --demo-users`
//! on loopback, `interop-hub provision` for the config, and `interopd run` connected to it.
//! Inbound traffic comes from the hub's simulated WhatsApp user `+15550100` (control API
//! `POST /users/+15550100/send`), status events from texts we send to that echo contact.
//! Shows, end to end: a long-poll started before a message exists returns as soon as it
//! arrives; SSE resumes from `Last-Event-ID` with no gap and no duplicate, across a
//! disconnect and across a kill of the daemon; a webhook receiver that fails three times gets
//! every event exactly once, correctly signed, across a `kill -9` with deliveries pending.
//! `tests/api_events.rs` shows the same in-process with a fake link.

mod api_common;
mod daemon_support;
mod hub_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_common::{free_port, get};
use daemon_support::{Daemon, provision_conf_with};
use hmac::{Hmac, KeyInit, Mac};
use hub_support::HubProc;
use serde_json::{Value, json};

/// How long any one expected thing may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);
/// The simulated WhatsApp user that sends to us and echoes what we send.
const SIM: &str = "+15550100";
/// Our account at the hub.
const ACCOUNT: &str = "acme-home";

/// Provisions the account at `hub`, appends `extra` to the printed config and starts the
/// daemon on a free API port; waits until its link is up.
fn start(dir: &Path, hub: &HubProc, extra: &str) -> Daemon {
    let conf = provision_conf_with(dir, &hub.state, &hub.listen, ACCOUNT, extra);
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = Daemon::spawn(&conf, &dir.join("state"), api);
    d.wait_link_up();
    d
}

/// Waits until the inbox holds every text in `want`.
fn wait_inbox_holds(d: &Daemon, want: &[&str]) {
    wait_until(&format!("the inbox to hold {want:?}"), || {
        let have = d.inbox_texts();
        want.iter().all(|w| have.iter().any(|h| h == w))
    });
}

/// The simulated user sends `text` to our account.
fn sim_send(hub: &HubProc, text: &str) {
    let (status, body) = hub.control(
        "POST",
        &format!("/users/{SIM}/send"),
        Some(json!({"to": ACCOUNT, "text": text})),
    );
    assert_eq!(status, 200, "{body}");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn long_poll_started_before_a_whatsapp_message_returns_as_soon_as_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let d = start(dir.path(), &hub, "");
    let empty = d.get("/v1/inbox?after=0");
    assert_eq!(empty.json(), json!({"messages": [], "next": 0}));

    let mut next = 0;
    for (n, text) in ["ding dong", "second ring"].into_iter().enumerate() {
        let (api, token) = (d.api, d.token.clone());
        let target = format!("/v1/inbox?after={next}&wait=25");
        let started = Instant::now();
        let waiter = std::thread::spawn(move || (get(api, &target, &token), started.elapsed()));
        // The poll is parked on an empty inbox before the message exists.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !waiter.is_finished(),
            "the long-poll returned before a message"
        );
        sim_send(&hub, text);
        let (r, elapsed) = waiter.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        // Returned on arrival, not when the 25 s wait ran out.
        assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
        let v = r.json();
        let messages = v["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "{v}");
        assert_eq!(messages[0]["from"], SIM, "{v}");
        assert_eq!(messages[0]["text"], text, "{v}");
        assert_eq!(messages[0]["kind"], "text", "{v}");
        assert_eq!(messages[0]["cursor"], n + 1, "{v}");
        assert_eq!(v["next"], n + 1, "{v}");
        next = v["next"].as_u64().unwrap();
    }
}

/// One SSE frame: id, event name, data.
type Frame = (u64, String, Value);

/// Opens `GET /v1/events`, resuming after `last_id` when given.
fn open_sse(d: &Daemon, last_id: Option<u64>) -> BufReader<TcpStream> {
    let t0 = Instant::now();
    loop {
        let mut s = TcpStream::connect(d.api).unwrap();
        // Longer than the daemon's 15 s keep-alive comments.
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let resume = last_id.map_or(String::new(), |i| format!("Last-Event-ID: {i}\r\n"));
        write!(
            s,
            "GET /v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n{resume}\r\n",
            d.api, d.token
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        if status.contains(" 200 ") {
            return reader;
        }
        // The rate limit or a stream of ours the daemon has not noticed closed yet.
        assert!(status.contains(" 429 "), "{status}");
        assert!(t0.elapsed() < WAIT, "no event stream: {status}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Reads frames into `frames` until `done(frames)` holds.
fn read_until(
    reader: &mut BufReader<TcpStream>,
    frames: &mut Vec<Frame>,
    done: impl Fn(&[Frame]) -> bool,
) {
    let t0 = Instant::now();
    let (mut id, mut event) = (None, String::new());
    let mut line = String::new();
    while !done(frames) {
        assert!(t0.elapsed() < WAIT, "events stopped short: {frames:?}");
        line.clear();
        let got = reader.read_line(&mut line).unwrap();
        assert!(got > 0, "stream ended after {frames:?}");
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ") {
            id = Some(v.parse::<u64>().unwrap());
        } else if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = l.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(v).unwrap();
            frames.push((id.take().unwrap(), std::mem::take(&mut event), data));
        }
    }
}

/// True when `frames` hold an inbound message with each text of `texts`.
fn has_messages(frames: &[Frame], texts: &[&str]) -> bool {
    texts
        .iter()
        .all(|t| frames.iter().any(|f| f.1 == "message" && f.2["text"] == *t))
}

/// True when `frames` hold a `read` status event for each message id of `ids`.
fn has_read(frames: &[Frame], ids: &[&str]) -> bool {
    ids.iter().all(|id| {
        frames
            .iter()
            .any(|f| f.1 == "status" && f.2["id"] == *id && f.2["status"] == "read")
    })
}

/// Asserts that `frames` continue `before` exactly: the next id, then one more each time.
fn assert_continues(before: &[Frame], frames: &[Frame]) {
    let first = before.last().map_or(1, |f| f.0 + 1);
    let ids: Vec<u64> = frames.iter().map(|f| f.0).collect();
    let want: Vec<u64> = (first..first + ids.len() as u64).collect();
    assert_eq!(ids, want, "a gap or a repeat after {:?}", before.last());
}

#[test]
fn sse_resumes_from_last_event_id_without_gaps_or_duplicates_across_a_daemon_kill() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let mut d = start(dir.path(), &hub, "");
    let mut all: Vec<Frame> = Vec::new();

    // Live: two inbound texts and one text to the echo contact (its statuses and its echo).
    let mut live = open_sse(&d, Some(0));
    sim_send(&hub, "a1");
    sim_send(&hub, "a2");
    let out_a = d.send(SIM, "out-a");
    let mut frames = Vec::new();
    read_until(&mut live, &mut frames, |f| {
        has_messages(f, &["a1", "a2", "echo: out-a"]) && has_read(f, &[out_a.as_str()])
    });
    assert_continues(&all, &frames);
    all.extend(frames);
    drop(live);

    // Events while no one listens, then a resume: exactly the next ids, then live ones.
    sim_send(&hub, "b1");
    let out_b = d.send(SIM, "out-b");
    sim_send(&hub, "b2");
    d.wait_status(&out_b, "read");
    wait_inbox_holds(&d, &["b1", "b2", "echo: out-b"]);
    let mut resumed = open_sse(&d, all.last().map(|f| f.0));
    let mut frames = Vec::new();
    read_until(&mut resumed, &mut frames, |f| {
        has_messages(f, &["b1", "b2", "echo: out-b"]) && has_read(f, &[out_b.as_str()])
    });
    sim_send(&hub, "c1");
    read_until(&mut resumed, &mut frames, |f| has_messages(f, &["c1"]));
    assert_continues(&all, &frames);
    all.extend(frames);
    drop(resumed);

    // Kill the daemon; the hub keeps what the simulated user sends meanwhile.
    d.kill();
    sim_send(&hub, "d1");
    d.restart();
    let out_d = d.send(SIM, "out-d");
    d.wait_status(&out_d, "read");
    wait_inbox_holds(&d, &["d1", "echo: out-d"]);
    let mut after_restart = open_sse(&d, all.last().map(|f| f.0));
    let mut frames = Vec::new();
    read_until(&mut after_restart, &mut frames, |f| {
        has_messages(f, &["d1", "echo: out-d"]) && has_read(f, &[out_d.as_str()])
    });
    assert_continues(&all, &frames);
    all.extend(frames);
    drop(after_restart);

    // What the pieces saw is the whole log: a full replay gives the same frames.
    let last = all.last().unwrap().0;
    assert_eq!(all.len() as u64, last);
    let mut replay = open_sse(&d, Some(0));
    let mut frames = Vec::new();
    read_until(&mut replay, &mut frames, |f| {
        f.last().is_some_and(|x| x.0 >= last)
    });
    assert_eq!(frames, all);
}

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Hit {
    event: String,
    event_id: u64,
    body: Value,
    signature_valid: bool,
    answered_ok: bool,
}

/// A webhook receiver that answers 500 to its first `fail` requests, then 200.
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Hit>>>,
}

fn start_receiver(secret: &'static str, fail: usize) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            // A request cut short (the daemon killed mid-delivery) is simply not logged.
            let _ = serve_hook(conn, secret, fail, &log2);
        }
    });
    Receiver { url, log }
}

fn serve_hook(
    mut conn: TcpStream,
    secret: &str,
    fail: usize,
    log: &Mutex<Vec<Hit>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(": ") {
            headers.insert(k.to_ascii_lowercase(), v.to_owned());
        }
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut log = log.lock().unwrap();
    let answered_ok = log.len() >= fail;
    log.push(Hit {
        event: headers.get("x-interopd-event").cloned().unwrap_or_default(),
        event_id: headers["x-interopd-event-id"].parse().unwrap(),
        body: serde_json::from_slice(&body).unwrap(),
        signature_valid: headers.get("x-interopd-signature") == Some(&format!("sha256={want}")),
        answered_ok,
    });
    drop(log);
    let status = if answered_ok {
        "200 OK"
    } else {
        "500 Internal Server Error"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[test]
fn webhook_that_fails_three_times_gets_every_event_once_signed_across_a_kill_9() {
    const SECRET: &str = "hook-secret-for-the-live-test";
    let dir = tempfile::tempdir().unwrap();
    let rx = start_receiver(SECRET, 3);
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let section = format!("\n[webhook]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url);
    let mut d = start(dir.path(), &hub, &section);

    // The first event's delivery fails (at 0 s and 1 s) while later events queue behind it.
    sim_send(&hub, "w1");
    let out_1 = d.send(SIM, "out-1");
    wait_until("two failed attempts", || rx.log.lock().unwrap().len() >= 2);
    d.kill(); // with every job still pending
    sim_send(&hub, "w2");
    d.restart();
    let out_2 = d.send(SIM, "out-2");
    sim_send(&hub, "w3");
    for id in [&out_1, &out_2] {
        d.wait_status(id, "read");
    }
    let texts = ["w1", "w2", "w3", "echo: out-1", "echo: out-2"];
    wait_inbox_holds(&d, &texts);

    // The event log, as a full SSE replay shows it.
    let mut replay = open_sse(&d, Some(0));
    let mut events = Vec::new();
    read_until(&mut replay, &mut events, |f| {
        has_messages(f, &texts) && has_read(f, &[out_1.as_str(), out_2.as_str()])
    });
    drop(replay);
    let last = events.last().unwrap().0;
    assert_eq!(events.len() as u64, last, "{events:?}");

    wait_until("every event delivered", || {
        rx.log
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.answered_ok)
            .count()
            >= events.len()
    });
    wait_until("no pending deliveries", || {
        d.get("/metrics")
            .body
            .contains("interopd_webhook_pending 0\n")
    });
    // Nothing more arrives.
    std::thread::sleep(Duration::from_millis(1500));

    let log = rx.log.lock().unwrap().clone();
    let bad: Vec<&Hit> = log.iter().filter(|h| !h.signature_valid).collect();
    assert!(bad.is_empty(), "signatures did not verify: {bad:?}");
    let failed: Vec<u64> = log
        .iter()
        .filter(|h| !h.answered_ok)
        .map(|h| h.event_id)
        .collect();
    assert_eq!(
        failed,
        [1, 1, 1],
        "only the first event is retried: {log:?}"
    );
    let delivered: Vec<&Hit> = log.iter().filter(|h| h.answered_ok).collect();
    let ids: Vec<u64> = delivered.iter().map(|h| h.event_id).collect();
    let want: Vec<u64> = (1..=last).collect();
    assert_eq!(ids, want, "each event once, in order: {log:?}");
    for (hit, (id, name, data)) in delivered.iter().zip(&events) {
        assert_eq!(hit.event, *name);
        assert_eq!(
            hit.body,
            json!({"event": name, "id": id, "data": data}),
            "the webhook body differs from the SSE event"
        );
    }
}
