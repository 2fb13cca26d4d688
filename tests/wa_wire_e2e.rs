//! The `wa` profile on the wire between the real binaries: what travels between `interopd run`
//! and `interop-hub` is Meta's transport and nothing else, and a daemon pinned to the wrong
//! Noise root refuses the gatekeeper but keeps its store and its queue.

mod api_common;
mod daemon_support;
mod hub_support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_common::free_port;
use daemon_support::{Daemon, provision_conf, received_texts};
use hub_support::HubProc;

/// Bytes seen on the relay, one buffer per direction of each connection.
type Seen = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

fn pipe(mut from: TcpStream, mut to: TcpStream, upstream: bool, seen: Seen) {
    let mut buf = [0u8; 16 * 1024];
    let slot = {
        let mut s = seen.lock().unwrap();
        s.push((upstream, Vec::new()));
        s.len() - 1
    };
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            Ok(n) => {
                seen.lock().unwrap()[slot].1.extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP relay to `target` that records every byte both ways.
fn relay(target: String) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (c2, s3) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (a, b) = (s2.clone(), s2.clone());
            std::thread::spawn(move || pipe(client, server, true, a));
            std::thread::spawn(move || pipe(s3, c2, false, b));
        }
    });
    (addr, seen)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn between_daemon_and_hub_there_is_only_wa_no_xml_no_tls_and_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let (relay_addr, seen) = relay(hub.listen.clone());
    let conf = provision_conf(dir.path(), &hub.state, &relay_addr.to_string(), "acme-home");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("profile = \"wa\""), "{text}");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = Daemon::spawn(&conf, &dir.path().join("state"), api);
    let id = d.send("+15550100", "Garage door left open");
    d.wait_status(&id, "read");
    assert_eq!(d.wait_inbox(1), ["echo: Garage door left open"]);
    assert_eq!(
        received_texts(&hub.control, "+15550100"),
        ["Garage door left open"]
    );
    drop(d);
    let seen = seen.lock().unwrap();
    let up: Vec<&Vec<u8>> = seen.iter().filter(|(u, _)| *u).map(|(_, b)| b).collect();
    let down: Vec<&Vec<u8>> = seen.iter().filter(|(u, _)| !*u).map(|(_, b)| b).collect();
    assert!(!up.is_empty(), "the daemon dialled through the relay");
    for bytes in &up {
        assert!(
            bytes.starts_with(b"WA\x06\x03"),
            "each connection opens with the wa prologue: {:02x?}",
            &bytes[..bytes.len().min(8)]
        );
    }
    let total: usize = seen.iter().map(|(_, b)| b.len()).sum();
    assert!(
        total > 1000,
        "a login, keys, a message and receipts crossed: {total} bytes"
    );
    for bytes in up.iter().chain(down.iter()) {
        for text in [
            &b"<message"[..],
            b"<iq",
            b"<receipt",
            b"<success",
            b"xmlns",
            b"Garage door",
            b"echo: ",
            b"acme-home",
        ] {
            assert!(
                !contains(bytes, text),
                "{:?} crossed the wire in clear",
                String::from_utf8_lossy(text)
            );
        }
        // A TLS record would start with a content type 0x14..=0x17 and version 3.x.
        assert!(
            !bytes.starts_with(&[0x16, 0x03]),
            "no TLS handshake on the wa link"
        );
    }
}

#[test]
fn a_wrong_noise_root_keeps_the_link_down_and_the_queue_intact_until_the_pin_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf(dir.path(), &hub.state, &hub.listen, "acme-home");
    let good = std::fs::read_to_string(&conf).unwrap();
    let root = good
        .lines()
        .find_map(|l| l.strip_prefix("noise_root = \""))
        .and_then(|r| r.strip_suffix('"'))
        .expect("a noise_root line")
        .to_owned();
    let wrong: String = root.chars().rev().collect();
    assert_ne!(wrong, root);
    std::fs::write(&conf, good.replace(&root, &wrong)).unwrap();
    let state = dir.path().join("state");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = Daemon::spawn(&conf, &state, api);
    let id = d.send("+15550100", "queued while the pin is wrong");
    // The link tries, refuses the chain, and stays down; the API keeps answering.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert_ne!(d.get("/healthz").json()["link"], "up");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        d.get(&format!("/v1/messages/{id}")).json()["status"],
        "queued"
    );
    let (_, stats) = hub.control("GET", "/stats", None);
    assert_eq!(
        stats["logins"], 0,
        "no login got past the chain check: {stats}"
    );
    drop(d);
    // The right pin: the same state delivers what was queued.
    std::fs::write(&conf, &good).unwrap();
    let d = Daemon::spawn(&conf, &state, api);
    d.wait_status(&id, "read");
    assert_eq!(d.wait_inbox(1), ["echo: queued while the pin is wrong"]);
}
