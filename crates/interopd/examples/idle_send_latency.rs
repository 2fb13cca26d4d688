//! Measures how long a message waits on an idle link: from `POST /v1/messages` to its
//! `status: sent` event (the gatekeeper's ack is in), through the real API, engine, store,
//! link and hub, all on loopback.
//!
//! Method: `interopd demo` (hub and daemon in this process, release build) in a temporary
//! directory. One SSE stream (`GET /v1/events`) stays open. Each round sends one text to the
//! silent contact (+15550101, so no echo traffic follows), then reads the stream until that
//! id's `sent` status arrives, and sleeps 300 ms so the next send again meets an idle link
//! (the old loop polled in 200 ms ticks). The reference, measured in the same run on the same
//! machine, is what the path cannot avoid: one HTTP round trip to the API (`GET /healthz`)
//! plus one durable redb commit of a 400-byte row, each measured on its own and added.
//! Report the ratio; absolute numbers swing on a shared machine.
//!
//! Run: `cargo run --release --example idle_send_latency [ROUNDS]` (default 200).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn request(api: SocketAddr, token: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(api).expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("demo");
    let api = free_port();
    let demo_state = state.clone();
    std::thread::spawn(move || {
        interopd::demo::run(&demo_state, api, None, interopd::demo::DEMO_PROFILE)
    });

    // Wait for the link.
    let token_file = state.join("daemon/api-token");
    let t0 = Instant::now();
    let token = loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "demo did not start");
        if let Ok(t) = std::fs::read_to_string(&token_file)
            && request(api, t.trim(), "GET", "/healthz", "").contains("\"link\":\"up\"")
        {
            break t.trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let mut events = TcpStream::connect(api).expect("connect events");
    write!(
        events,
        "GET /v1/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("write");
    let mut events = BufReader::new(events);

    let mut send_ms = Vec::with_capacity(rounds);
    for i in 0..rounds {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let body = format!("{{\"to\": \"+15550101\", \"text\": \"idle {i}\"}}");
        let answer = request(api, &token, "POST", "/v1/messages", &body);
        let id = answer
            .split("\"id\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("an id in the 202")
            .to_owned();
        let mut line = String::new();
        loop {
            line.clear();
            events.read_line(&mut line).expect("events stream");
            if line.contains(&id) && line.contains("\"status\":\"sent\"") {
                break;
            }
        }
        send_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // Reference: one API round trip plus one durable commit, each the median of `rounds`.
    let mut rtt_ms: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            request(api, &token, "GET", "/healthz", "");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let db = redb::Database::create(dir.path().join("ref.redb")).expect("ref db");
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let row = [7u8; 400];
    let mut commit_ms: Vec<f64> = (0..rounds as u64)
        .map(|k| {
            let t = Instant::now();
            let w = db.begin_write().expect("begin");
            w.open_table(T)
                .expect("table")
                .insert(k, &row[..])
                .expect("insert");
            w.commit().expect("commit");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();

    let reference = median(&mut rtt_ms) + median(&mut commit_ms);
    let p50 = median(&mut send_ms);
    println!("rounds: {rounds}");
    println!(
        "POST -> sent on an idle link: p50 {p50:.2} ms, p90 {:.2} ms, max {:.2} ms",
        percentile(&send_ms, 0.9),
        percentile(&send_ms, 1.0)
    );
    println!(
        "reference (API round trip {:.2} ms + one commit {:.2} ms): {reference:.2} ms",
        median(&mut rtt_ms),
        median(&mut commit_ms)
    );
    println!("ratio p50 / reference: {:.2}", p50 / reference);
}
