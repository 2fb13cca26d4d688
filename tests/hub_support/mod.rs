//! Shared helpers for the hub's integration tests: start the real `interop-hub` binary on
//! free loopback ports, provision accounts with its `provision` command, talk to its control
//! API over plain HTTP, and connect library clients over TLS pinned to its CA.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use interopd::client::{Client, Event};
use interopd::link::Connection;
use interopd::store::Store;
use interopd::tls::Pin;

pub const HUB: &str = env!("CARGO_BIN_EXE_interop-hub");
pub const WAIT_MS: u64 = 15_000;
/// Tries at starting a hub on fresh ports before a test gives up.
pub const START_ATTEMPTS: usize = 5;

pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A running `interop-hub`; killed on drop.
pub struct HubProc {
    child: Child,
    pub state: PathBuf,
    pub listen: String,
    pub control: String,
    pub media: Option<String>,
}

impl HubProc {
    pub fn start(state: &Path, demo_users: bool) -> HubProc {
        Self::start_with(state, demo_users, false)
    }

    pub fn start_with(state: &Path, demo_users: bool, with_media: bool) -> HubProc {
        // A port found free by `free_addr` can be taken by another test's socket before the
        // hub binds it; the hub then says so and exits. Try again on fresh ports.
        for _ in 0..START_ATTEMPTS {
            if let Some(hub) = Self::try_start(state, demo_users, with_media) {
                return hub;
            }
        }
        panic!("interop-hub did not start in {START_ATTEMPTS} attempts");
    }

    fn try_start(state: &Path, demo_users: bool, with_media: bool) -> Option<HubProc> {
        let listen = free_addr();
        let control = free_addr();
        let media = with_media.then(free_addr);
        let mut cmd = Command::new(HUB);
        cmd.arg("--state")
            .arg(state)
            .args(["--listen", &listen, "--control", &control])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if demo_users {
            cmd.arg("--demo-users");
        }
        if let Some(m) = &media {
            cmd.args(["--media", m]);
        }
        let mut child = cmd.spawn().unwrap();
        // Ready is the hub's own word that every listener is bound. A probe of the port would
        // not do: another test's hub can hold the same "free" port, answer the probe, and
        // leave this one to fail its bind and exit while the test goes on without it.
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("hub: listening on") {
                    let _ = ready_tx.send(());
                }
                eprintln!("{line}");
            }
        });
        let hub = HubProc {
            child,
            state: state.to_path_buf(),
            listen,
            control,
            media,
        };
        match ready_rx.recv_timeout(Duration::from_millis(WAIT_MS)) {
            Ok(()) => Some(hub),
            // Its stderr closed before it said so: it exited (a port was taken).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("interop-hub did not start within {WAIT_MS} ms")
            }
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One control API request; returns the status and the JSON body.
    pub fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(&self.control).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.control,
            body.len()
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let status: u16 = text[9..12].parse().unwrap();
        let json = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| serde_json::from_str(b).unwrap_or(serde_json::Value::Null))
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub fn pin(&self) -> Pin {
        Pin::CaFile(self.state.join("ca.pem"))
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

thread_local! {
    /// The wire profile this test's daemon speaks (each test runs on a thread of its own).
    static PROFILE: std::cell::Cell<&'static str> = const { std::cell::Cell::new("wa") };
}

/// The profile the daemon harnesses (`daemon_support`, `media_support`) provision for: `wa` unless [`with_profile`] said otherwise.
pub fn profile() -> &'static str {
    PROFILE.with(|p| p.get())
}

/// Runs `test` with the daemon and hub speaking `profile`.
pub fn with_profile(profile: &'static str, test: fn()) {
    PROFILE.with(|p| p.set(profile));
    test();
}

/// Runs each named test function once per wire profile, as `NAME::wa` and
/// `NAME::interop_xml1`: every behaviour must hold on both.
#[macro_export]
macro_rules! on_both_profiles {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn wa() {
                    $crate::hub_support::with_profile("wa", super::$name);
                }
                #[test]
                fn interop_xml1() {
                    $crate::hub_support::with_profile("interop-xml/1", super::$name);
                }
            }
        )*
    };
}

/// Runs `interop-hub provision --profile interop-xml/1` and returns the token from the
/// printed config (these library clients speak `interop-xml/1` unless a test says `wa`).
pub fn provision(state: &Path, account: &str, connect: &str) -> String {
    provision_with(state, account, connect, &[])
}

/// Like [`provision`], with extra arguments (`--profile wa` among them, or else
/// `interop-xml/1` is asked for).
pub fn provision_with(state: &Path, account: &str, connect: &str, extra: &[&str]) -> String {
    let profile: &[&str] = if extra.contains(&"--profile") {
        &[]
    } else {
        &["--profile", "interop-xml/1"]
    };
    let out = Command::new(HUB)
        .arg("provision")
        .arg("--state")
        .arg(state)
        .args(["--account", account, "--connect", connect])
        .args(profile)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = interopd::config::parse(&text, Path::new("/etc/interopd/interopd.conf")).unwrap();
    assert_eq!(cfg.account(), account);
    cfg.token
}

pub fn client(dir: &Path, account: &str) -> Client {
    let store = Store::open(dir).unwrap();
    Client::new(store, account, 1, &mut rand::rng()).unwrap()
}

/// Connects, logs in, and waits for the first prekey upload to be confirmed (first login)
/// or just the login (later ones).
pub async fn online(hub: &HubProc, c: Client, token: &str) -> Connection {
    let mut conn = Connection::open(c, &hub.listen, "localhost", &hub.pin(), token)
        .await
        .unwrap();
    let (ev, _) = conn
        .wait_for(WAIT_MS, |e| matches!(e, Event::LoggedIn(_)))
        .await
        .unwrap();
    if let Event::LoggedIn(l) = ev
        && l.enlisted
    {
        conn.wait_for(WAIT_MS, |e| *e == Event::KeysUploaded)
            .await
            .unwrap();
    }
    conn
}

/// Fetches an `https://` URL from the hub's media store (CA-pinned) and returns the body.
pub async fn https_get(hub: &HubProc, url: &str) -> Vec<u8> {
    let (status, body) = https_get_status(hub, url).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body
}

/// Fetches an `https://` URL from the hub (CA-pinned); returns the status and the body.
pub async fn https_get_status(hub: &HubProc, url: &str) -> (u16, Vec<u8>) {
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("https://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let host = authority.rsplit_once(':').unwrap().0;
    let config = interopd::tls::client_config(&hub.pin()).unwrap();
    let mut s = interopd::tls::connect(authority, host, config)
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status: u16 = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    (status, out[split + 4..].to_vec())
}
