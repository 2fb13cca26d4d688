//! The daemon harness for integration tests with the real binaries: provision an account
//! at a running `interop-hub`, start `interopd run` with that config on a free API port, and
//! drive it through the local API as a household device would (waiting out 429s politely).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api_common::{Reply, free_port, get, request};
use crate::hub_support::{HUB, HubProc};

pub use crate::hub_support::profile;

/// How long any wait in these tests may take on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// A running `interopd run`; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub conf: PathBuf,
    pub state: PathBuf,
    pub api: SocketAddr,
    pub token: String,
}

impl Daemon {
    pub fn start(dir: &Path, hub: &HubProc, account: &str) -> Daemon {
        Daemon::start_for(dir, &hub.state, &hub.listen, account)
    }

    /// Provisions `account` at the hub with state `hub_state` listening on `listen`, and
    /// starts the daemon with that config.
    pub fn start_for(dir: &Path, hub_state: &Path, listen: &str, account: &str) -> Daemon {
        let conf = provision_conf(dir, hub_state, listen, account);
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Daemon::spawn(&conf, &dir.join("state"), api)
    }

    /// Starts `interopd run` with config `conf`, state `state` and API address `api`.
    pub fn spawn(conf: &Path, state: &Path, api: SocketAddr) -> Daemon {
        Daemon::spawn_to(conf, state, api, Stdio::inherit())
    }

    /// [`Daemon::spawn`] with the daemon's log (stderr) written to the file `log`, for a test
    /// that reads log lines back ([`wait_log`]).
    pub fn spawn_logged(conf: &Path, state: &Path, log: &Path) -> Daemon {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let file = std::fs::File::create(log).unwrap();
        Daemon::spawn_to(conf, state, api, Stdio::from(file))
    }

    fn spawn_to(conf: &Path, state: &Path, api: SocketAddr, stderr: Stdio) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_interopd"))
            .arg("run")
            .arg("--config")
            .arg(conf)
            .arg("--state")
            .arg(state)
            .args(["--api", &api.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        // The guard exists before any wait, so a failed start still kills the process.
        let mut d = Daemon {
            child,
            conf: conf.to_path_buf(),
            state: state.to_path_buf(),
            api,
            token: String::new(),
        };
        d.token = wait_token(state, api);
        d
    }

    /// SIGKILLs the process (`kill -9`): no shutdown path runs.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the daemon again on the same config, state and API address; waits for its
    /// link to come up.
    pub fn restart(&mut self) {
        let d = Daemon::spawn(&self.conf, &self.state, self.api);
        *self = d;
        self.wait_link_up();
    }

    /// Waits until `/healthz` says the link to the hub is up.
    pub fn wait_link_up(&self) {
        let t0 = Instant::now();
        while self.get("/healthz").json()["link"] != "up" {
            assert!(t0.elapsed() < WAIT, "the link never came up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn send(&self, to: &str, text: &str) -> String {
        let r = request(
            self.api,
            "POST",
            "/v1/messages",
            Some(&self.token),
            &[("Content-Type", "application/json")],
            json!({"to": to, "text": text}).to_string().as_bytes(),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// GET with the token; waits out the API's rate limit (429) as a polite client does.
    pub fn get(&self, target: &str) -> Reply {
        loop {
            let r = get(self.api, target, &self.token);
            if r.status != 429 {
                return r;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls message `id` until its status is `want`; returns the last status object.
    pub fn wait_status(&self, id: &str, want: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(&format!("/v1/messages/{id}")).json();
            if v["status"] == want {
                return v;
            }
            assert!(
                t0.elapsed() < WAIT,
                "message {id} never reached {want}: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole inbox, in cursor order, page by page.
    pub fn inbox_entries(&self) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut after = 0;
        loop {
            let v = self
                .get(&format!("/v1/inbox?after={after}&limit=100"))
                .json();
            let page = v["messages"].as_array().unwrap();
            if page.is_empty() {
                return entries;
            }
            entries.extend(page.iter().cloned());
            after = v["next"].as_u64().unwrap();
        }
    }

    /// The whole inbox's texts, in cursor order.
    pub fn inbox_texts(&self) -> Vec<String> {
        self.inbox_entries()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// The data of every SSE event named `name` logged so far: reads `/v1/events` from the
    /// start until it has shown every event up to the newest (an SSE stream does not end, so
    /// it stops at a quiet second).
    pub fn logged_events(&self, name: &str) -> Vec<Value> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(self.api).unwrap();
        write!(
            s,
            "GET /v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nLast-Event-ID: 0\r\n\r\n",
            self.api, self.token
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut r = BufReader::new(s);
        let (mut out, mut kind, mut line) = (Vec::new(), String::new(), String::new());
        r.read_line(&mut line).unwrap();
        assert!(line.contains(" 200 "), "/v1/events answered {line}");
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return out,
                Ok(_) => {}
            }
            if let Some(k) = line.trim_end().strip_prefix("event: ") {
                kind = k.to_owned();
            } else if let Some(data) = line.trim_end().strip_prefix("data: ")
                && kind == name
            {
                out.push(serde_json::from_str(data).unwrap());
            }
        }
    }

    /// Polls the inbox until it holds `n` messages; returns their texts.
    pub fn wait_inbox(&self, n: usize) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let texts = self.inbox_texts();
            if texts.len() >= n {
                return texts;
            }
            assert!(
                t0.elapsed() < WAIT,
                "inbox never reached {n} messages: {texts:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends text with the text as its `Idempotency-Key`, as a careful client retries; `None`
/// when the daemon did not answer 202 (it was killed mid-request).
pub fn try_send(api: SocketAddr, token: &str, to: &str, text: &str) -> Option<String> {
    use std::io::{Read, Write};
    let body = json!({"to": to, "text": text}).to_string();
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {text}\r\nContent-Length: {}\r\n\r\n{body}",
        api,
        token,
        body.len()
    );
    let mut s = std::net::TcpStream::connect(api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    if !out.starts_with("HTTP/1.1 202") {
        return None;
    }
    let (_, b) = out.split_once("\r\n\r\n")?;
    let v: Value = serde_json::from_str(b).ok()?;
    Some(v["id"].as_str()?.to_owned())
}

/// Provisions `account` at the hub and writes the printed config to `dir/interopd.conf`.
pub fn provision_conf(dir: &Path, hub_state: &Path, listen: &str, account: &str) -> PathBuf {
    provision_conf_with(dir, hub_state, listen, account, "")
}

/// [`provision_conf`] with `extra` appended to the printed config (a `[webhook]` section).
pub fn provision_conf_with(
    dir: &Path,
    hub_state: &Path,
    listen: &str,
    account: &str,
    extra: &str,
) -> PathBuf {
    let out = Command::new(HUB)
        .arg("provision")
        .arg("--state")
        .arg(hub_state)
        .args(["--account", account, "--connect", listen])
        .args(["--profile", profile()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("profile = \"{}\"", profile())),
        "provision printed no profile {}:\n{text}",
        profile()
    );
    text.push_str(extra);
    let conf = dir.join("interopd.conf");
    std::fs::write(&conf, text).unwrap();
    conf
}

/// Waits until the daemon has written its API token and listens; returns the token.
pub fn wait_token(state: &Path, api: SocketAddr) -> String {
    let token_path: PathBuf = state.join("api-token");
    let t0 = Instant::now();
    loop {
        if let Ok(token) = std::fs::read_to_string(&token_path)
            && std::net::TcpStream::connect(api).is_ok()
        {
            return token.trim().to_owned();
        }
        assert!(t0.elapsed() < WAIT, "interopd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a hub on fixed addresses (for a restart on the same ports and state).
pub fn hub_at(state: &Path, listen: &str, control: &str) -> Child {
    let child = Command::new(HUB)
        .arg("--state")
        .arg(state)
        .args(["--listen", listen, "--control", control, "--demo-users"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(control).is_err() {
        assert!(t0.elapsed() < WAIT, "hub did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Polls the file `log` until it contains `needle`; returns the whole log.
pub fn wait_log(log: &Path, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(t0.elapsed() < WAIT, "{needle:?} never logged:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The texts user `phone` decrypted, as the hub's control API at `hub_control` shows them.
pub fn received_texts(hub_control: &str, phone: &str) -> Vec<String> {
    received(hub_control, phone)
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Everything user `phone` decrypted, as the hub's control API at `hub_control` shows it.
pub fn received(hub_control: &str, phone: &str) -> Vec<Value> {
    let mut s = std::net::TcpStream::connect(hub_control).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /users/{phone}/received HTTP/1.1\r\nHost: {hub_control}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("[]");
    let v: Value = serde_json::from_str(body).unwrap();
    v.as_array().unwrap().clone()
}
