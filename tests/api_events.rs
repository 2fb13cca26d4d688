//! Receiving through the API, in-process: the daemon shell runs on its own thread with a fake
//! link that commits inbox rows and status changes exactly as the real link does
//! (`Txn::inbox_insert` / `Txn::outbox_write`, then `EventBus::record_*` in the same
//! transaction, commit, then `EventBus::publish_*`). A second process cannot write the store
//! while the daemon holds its lock, so this is how inbound traffic is simulated without a
//! gatekeeper. Shows: long-poll returns as soon as a message arrives; SSE resumes from
//! `Last-Event-ID` without gaps or duplicates; a webhook receiver that fails three times gets
//! every event once, correctly signed, across a daemon restart.

mod api_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api_common::*;
use hmac::{Hmac, KeyInit, Mac};
use interopd::content::Message;
use interopd::daemon::{self, OfflineLink, Runtime};
use interopd::store::{InboxRow, OutboxStatus};
use serde_json::json;

enum Cmd {
    /// An inbound text from `from` digits with message id `id`.
    Inbound {
        from: String,
        id: String,
        text: String,
    },
    /// The outbox row `id` moves to `status`.
    Status {
        id: String,
        status: OutboxStatus,
    },
    /// A session with device `device` of `user`, from a freshly made peer identity.
    Peer {
        user: String,
        device: u32,
    },
    Stop,
}

struct Daemon {
    addr: SocketAddr,
    token: String,
    cmds: smol::channel::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(state: &Path, webhook: Option<(&str, &str)>) -> Daemon {
        let text = config_text(state, "127.0.0.1:8787", webhook);
        let config = interopd::config::parse(&text, Path::new("/tmp/interopd.conf")).unwrap();
        let (tx, rx) = smol::channel::unbounded::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ex = Rc::new(smol::LocalExecutor::new());
            let ex2 = Rc::clone(&ex);
            smol::block_on(ex.run(async move {
                let mut rt = Runtime::open(config, ex2).unwrap();
                rt.tuning.webhook.backoff_base_ms = 100;
                rt.tuning.webhook.backoff_max_ms = 200;
                let listener = daemon::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = listener.local_addr().unwrap();
                ready_tx.send((addr, rt.token.clone())).unwrap();
                let store = Rc::clone(&rt.store);
                let bus = Rc::clone(&rt.bus);
                // The fake link: the same calls, in the same order, as the real one.
                let fake_link = async move {
                    while let Ok(cmd) = rx.recv().await {
                        match cmd {
                            Cmd::Inbound { from, id, text } => {
                                let row = InboxRow {
                                    id: id.clone(),
                                    from: from.clone(),
                                    group: String::new(),
                                    t_secs: 1_700_000_000,
                                    received_ms: 1_700_000_000_000,
                                    content: prost::Message::encode_to_vec(&Message::text(text)),
                                };
                                let txn = store.begin().unwrap();
                                let cursor = txn
                                    .inbox_insert(&format!("{from}/{id}"), &row)
                                    .unwrap()
                                    .unwrap();
                                bus.record_message(&txn, cursor, interopd::api::now_ms())
                                    .unwrap();
                                txn.commit().unwrap();
                                bus.publish_message(cursor);
                            }
                            Cmd::Status { id, status } => {
                                let txn = store.begin().unwrap();
                                let (seq, mut row) = txn.outbox_by_id(&id).unwrap().unwrap();
                                row.status = status;
                                row.updated_ms = interopd::api::now_ms();
                                txn.outbox_write(seq, &row).unwrap();
                                bus.record_status(&txn, &row).unwrap();
                                txn.commit().unwrap();
                                bus.publish_status(&row.id, row.status);
                            }
                            Cmd::Peer { user, device } => {
                                let peer_dir = tempfile::tempdir().unwrap();
                                let peer = interopd::store::Store::open(peer_dir.path()).unwrap();
                                let ptxn = peer.begin().unwrap();
                                interopd::signal::provision(&ptxn, &mut rand::rng(), 1, 1).unwrap();
                                let bundle = interopd::signal::own_bundle(&ptxn, None).unwrap();
                                ptxn.commit().unwrap();
                                let txn = store.begin().unwrap();
                                interopd::signal::process_bundle(
                                    &txn,
                                    &interopd::signal::Address::new(user, device),
                                    &bundle,
                                    &mut rand::rng(),
                                    interopd::api::now_ms(),
                                )
                                .unwrap();
                                txn.commit().unwrap();
                            }
                            Cmd::Stop => break,
                        }
                    }
                };
                let link = Rc::new(OfflineLink::default());
                daemon::serve(&rt, link, listener, fake_link).await.unwrap();
            }));
        });
        let (addr, token) = ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        Daemon {
            addr,
            token,
            cmds: tx,
            thread: Some(thread),
        }
    }

    fn send(&self, cmd: Cmd) {
        self.cmds.send_blocking(cmd).unwrap();
    }

    fn inbound(&self, from: &str, id: &str, text: &str) {
        self.send(Cmd::Inbound {
            from: from.into(),
            id: id.into(),
            text: text.into(),
        });
    }

    fn stop(mut self) {
        self.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn long_poll_returns_as_soon_as_a_message_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), None);
    let (addr, token) = (d.addr, d.token.clone());
    let empty = get(addr, "/v1/inbox?after=0", &token);
    assert_eq!(empty.json(), json!({"messages": [], "next": 0}));

    let started = Instant::now();
    let waiter = std::thread::spawn(move || get(addr, "/v1/inbox?after=0&wait=30", &token));
    std::thread::sleep(Duration::from_millis(500));
    d.inbound("15550100", "AAA1", "ding dong");
    let r = waiter.join().unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["next"], 1);
    assert_eq!(v["messages"][0]["from"], "+15550100");
    assert_eq!(v["messages"][0]["text"], "ding dong");
    assert_eq!(v["messages"][0]["kind"], "text");
    assert_eq!(v["messages"][0]["cursor"], 1);

    // A long-poll with nothing new returns empty after its wait.
    let started = Instant::now();
    let r = get(d.addr, "/v1/inbox?after=1&wait=1", &d.token);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.json(), json!({"messages": [], "next": 1}));

    // Marking it read is recorded.
    let r = request(d.addr, "POST", "/v1/inbox/1/read", Some(&d.token), &[], b"");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["id"], "AAA1");
    let r = request(d.addr, "POST", "/v1/inbox/9/read", Some(&d.token), &[], b"");
    assert_eq!(r.status, 404);
    d.stop();
}

/// Reads SSE frames from an open stream until `n` frames arrived: (id, event, data).
fn read_frames(
    reader: &mut BufReader<TcpStream>,
    n: usize,
) -> Vec<(u64, String, serde_json::Value)> {
    let mut out = Vec::new();
    let (mut id, mut event) = (None, String::new());
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        let got = reader.read_line(&mut line).unwrap();
        assert!(got > 0, "stream ended after {} frames", out.len());
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ") {
            id = Some(v.parse::<u64>().unwrap());
        } else if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = l.strip_prefix("data: ") {
            let data: serde_json::Value = serde_json::from_str(v).unwrap();
            out.push((id.take().unwrap(), std::mem::take(&mut event), data));
        }
    }
    out
}

fn open_sse(addr: SocketAddr, token: &str, last_id: Option<u64>) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let resume = last_id.map_or(String::new(), |i| format!("Last-Event-ID: {i}\r\n"));
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{resume}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    reader
}

#[test]
fn sse_resumes_from_last_event_id_without_gaps_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), None);
    let sent = post_json(
        d.addr,
        "/v1/messages",
        &d.token,
        &json!({"to": "+15550100", "text": "out"}),
    );
    let out_id = sent.json()["id"].as_str().unwrap().to_string();

    let mut live = open_sse(d.addr, &d.token, None);
    d.inbound("15550100", "M1", "one");
    d.send(Cmd::Status {
        id: out_id.clone(),
        status: OutboxStatus::Sent,
    });
    d.inbound("15550101", "M2", "two");
    let frames = read_frames(&mut live, 3);
    let ids: Vec<u64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(frames[0].1, "message");
    assert_eq!(frames[0].2["text"], "one");
    assert_eq!(frames[1].1, "status");
    assert_eq!(frames[1].2["id"], out_id.as_str());
    assert_eq!(frames[1].2["status"], "sent");
    assert_eq!(frames[2].2["from"], "+15550101");
    drop(live);

    // Events while no one listens, then a resume from id 2: exactly 3, 4, 5, then live 6.
    d.send(Cmd::Status {
        id: out_id.clone(),
        status: OutboxStatus::Delivered,
    });
    d.inbound("15550100", "M3", "three");
    std::thread::sleep(Duration::from_millis(200));
    let mut resumed = open_sse(d.addr, &d.token, Some(2));
    let frames = read_frames(&mut resumed, 3);
    let ids: Vec<u64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(ids, [3, 4, 5]);
    assert_eq!(frames[1].2["status"], "delivered");
    d.inbound("15550100", "M4", "four");
    let frames = read_frames(&mut resumed, 1);
    assert_eq!(frames[0].0, 6);
    assert_eq!(frames[0].2["text"], "four");
    d.stop();
}

/// One request the receiver saw: (event id, body, signature valid, answered 2xx).
type Hit = (u64, String, bool, bool);

/// A webhook receiver that answers 500 to the first `fail` requests, then 200. It records
/// every request as (event id, body, signature valid, answered 2xx).
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
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(": ") {
                    headers.insert(k.to_ascii_lowercase(), v.to_string());
                }
            }
            let len: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&body);
            let want: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let valid = headers.get("x-interopd-signature") == Some(&format!("sha256={want}"));
            let id: u64 = headers["x-interopd-event-id"].parse().unwrap();
            let mut log = log2.lock().unwrap();
            let ok = log.len() >= fail;
            log.push((id, String::from_utf8(body).unwrap(), valid, ok));
            drop(log);
            let status = if ok {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Receiver { url, log }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn webhook_that_fails_three_times_gets_every_event_once_across_a_restart() {
    const SECRET: &str = "hook-secret";
    let dir = tempfile::tempdir().unwrap();
    let rx = start_receiver(SECRET, 3);
    let d = Daemon::start(dir.path(), Some((&rx.url, SECRET)));
    let sent = post_json(
        d.addr,
        "/v1/messages",
        &d.token,
        &json!({"to": "+15550100", "text": "out"}),
    );
    let out_id = sent.json()["id"].as_str().unwrap().to_string();
    d.inbound("15550100", "W1", "first");
    wait_until("two failed attempts", || rx.log.lock().unwrap().len() >= 2);
    d.stop();

    // Restart on the same state: the pending job is still there.
    let d = Daemon::start(dir.path(), Some((&rx.url, SECRET)));
    wait_until("the first success", || {
        rx.log.lock().unwrap().iter().any(|e| e.3)
    });
    d.inbound("15550101", "W2", "second");
    d.send(Cmd::Status {
        id: out_id.clone(),
        status: OutboxStatus::Delivered,
    });
    wait_until("three successes", || {
        rx.log.lock().unwrap().iter().filter(|e| e.3).count() >= 3
    });
    // Nothing more arrives.
    std::thread::sleep(Duration::from_millis(700));
    let metrics = get(d.addr, "/metrics", &d.token).body;
    d.stop();

    let log = rx.log.lock().unwrap().clone();
    assert!(
        log.iter().all(|e| e.2),
        "a signature did not verify: {log:?}"
    );
    let failures = log.iter().filter(|e| !e.3).count();
    assert_eq!(failures, 3, "{log:?}");
    let delivered: Vec<u64> = log.iter().filter(|e| e.3).map(|e| e.0).collect();
    assert_eq!(delivered, [1, 2, 3], "each event once, in order: {log:?}");
    let bodies: Vec<serde_json::Value> = log
        .iter()
        .filter(|e| e.3)
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    assert_eq!(bodies[0]["event"], "message");
    assert_eq!(bodies[0]["data"]["text"], "first");
    assert_eq!(bodies[1]["data"]["text"], "second");
    assert_eq!(bodies[2]["event"], "status");
    assert_eq!(bodies[2]["data"]["id"], out_id.as_str());
    assert_eq!(bodies[2]["data"]["status"], "delivered");
    assert!(
        metrics.contains("interopd_webhook_failures_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("interopd_webhook_pending 0"), "{metrics}");
}

#[test]
fn contacts_show_fingerprints_and_trust_marks_them_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), None);
    let r = get(d.addr, "/v1/contacts", &d.token);
    assert_eq!(r.json(), json!({"contacts": []}));
    let r = get(d.addr, "/v1/contacts/%2B15550100", &d.token);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_contact")
    );

    for (user, device) in [("15550100", 0), ("15550100", 3), ("15550101", 0)] {
        d.send(Cmd::Peer {
            user: user.into(),
            device,
        });
    }
    wait_until("two contacts", || {
        get(d.addr, "/v1/contacts", &d.token).json()["contacts"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    });
    let c = get(d.addr, "/v1/contacts/%2B15550100", &d.token).json();
    assert_eq!(c["phone"], "+15550100");
    assert_eq!(c["trust"], "unverified");
    let devices = c["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1]["device"], 3);
    let fp = devices[0]["fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 35, "{fp}");
    assert!(devices[0]["safety_number"].as_str().unwrap().contains(fp));

    let r = request(
        d.addr,
        "POST",
        "/v1/contacts/%2B15550100/trust",
        Some(&d.token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["trust"], "verified");
    assert_eq!(
        get(d.addr, "/v1/contacts/15550100", &d.token).json()["devices"][1]["trust"],
        "verified"
    );
    let r = request(
        d.addr,
        "POST",
        "/v1/contacts/%2B4900000/trust",
        Some(&d.token),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);

    let me = get(d.addr, "/v1/identity", &d.token).json();
    assert_eq!(me["address"], "acme-home");
    assert_eq!(me["fingerprint"].as_str().unwrap().len(), 35);
    d.stop();
}
