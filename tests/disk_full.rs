//! A full disk, with the real binaries: `interopd run` keeps its state directory on a small
//! tmpfs of its own (a user and mount namespace made with `unshare -rm`), talking to a real
//! `interop-hub`. The test fills the tmpfs until the store fails, checks that the daemon says
//! so (507 on send, 503 `store: failed` on `/healthz`, `interopd_store_up 0`), frees the space
//! and checks that the daemon reopens its store by itself, sends again, and lost nothing it
//! had acked. Where a tmpfs cannot be mounted (no `unshare`, user namespaces disabled), the
//! test says so and passes without running.

mod api_common;
mod daemon_support;
mod hub_support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_common::{free_port, get, request};
use daemon_support::{WAIT, provision_conf, received_texts};
use hub_support::HubProc;
use serde_json::json;

/// The tmpfs size: room for the store, its growth, and little else.
const TMPFS_BYTES: u64 = 12 * 1024 * 1024;

struct Contained {
    child: Child,
    /// The tmpfs mount point as this process sees it.
    mount_seen: PathBuf,
    api: SocketAddr,
    token: String,
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `interopd run` with its state on a fresh tmpfs at `mount`, or `None` (with the
/// reason printed) where that cannot be done here.
fn start_contained(conf: &Path, mount: &Path) -> Option<Contained> {
    std::fs::create_dir_all(mount).unwrap();
    let state = mount.join("state");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spawned = Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size={TMPFS_BYTES} tmpfs \"$0\" && exec \"$@\""
        ))
        .arg(mount)
        .arg(env!("CARGO_BIN_EXE_interopd"))
        .arg("run")
        .arg("--config")
        .arg(conf)
        .arg("--state")
        .arg(&state)
        .args(["--api", &api.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping the full-disk test: cannot run unshare: {e}");
            return None;
        }
    };
    let root = PathBuf::from(format!("/proc/{}/root", child.id()));
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let (state_seen, mount_seen) = (inside(&state), inside(mount));
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "skipping the full-disk test: no tmpfs could be mounted in a user namespace \
                 here (`unshare -rm sh -c 'mount -t tmpfs ...'` exited with {status})"
            );
            return None;
        }
        if let Ok(token) = std::fs::read_to_string(state_seen.join("api-token"))
            && std::net::TcpStream::connect(api).is_ok()
        {
            return Some(Contained {
                child,
                mount_seen,
                api,
                token: token.trim().to_owned(),
            });
        }
        assert!(t0.elapsed() < WAIT, "interopd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Contained {
    fn send(&self, text: &str) -> (u16, serde_json::Value) {
        let r = request(
            self.api,
            "POST",
            "/v1/messages",
            Some(&self.token),
            &[("Content-Type", "application/json")],
            json!({"to": "+15550100", "text": text})
                .to_string()
                .as_bytes(),
        );
        let v = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    fn get(&self, target: &str) -> api_common::Reply {
        loop {
            let r = get(self.api, target, &self.token);
            if r.status != 429 {
                return r;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn status_of(&self, id: &str) -> String {
        self.get(&format!("/v1/messages/{id}")).json()["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn wait_read(&self, ids: &[String]) {
        let t0 = Instant::now();
        for id in ids {
            while self.status_of(id) != "read" {
                assert!(t0.elapsed() < WAIT, "message {id} never reached read");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Fills the file system holding `dir` until a write fails with ENOSPC; the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "the filler stopped with {e}");
                break;
            }
        }
    }
    path
}

#[test]
fn a_full_disk_fails_sends_clearly_and_the_store_comes_back_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf(dir.path(), &hub.state, &hub.listen, "acme-home");
    let Some(d) = start_contained(&conf, &dir.path().join("tmpfs")) else {
        return;
    };
    let t0 = Instant::now();
    while d.get("/healthz").json()["link"] != "up" {
        assert!(t0.elapsed() < WAIT, "the link never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // (id, text) of every message the API acked with 202.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut ack = |text: String, v: &serde_json::Value| {
        acked.push((v["id"].as_str().unwrap().to_owned(), text));
    };
    for i in 0..3 {
        let text = format!("before {i}");
        let (status, v) = d.send(&text);
        assert_eq!(status, 202, "{v}");
        ack(text, &v);
    }

    let filler = fill(&d.mount_seen);
    // The store fails at its next write that needs a page the file system cannot give.
    let mut refused = None;
    for i in 0..5000 {
        let text = format!("full {i}");
        let (status, v) = d.send(&text);
        match status {
            202 => ack(text, &v),
            _ => {
                refused = Some((status, v));
                break;
            }
        }
    }
    let (status, v) = refused.expect("5000 sends on a full disk were all accepted");
    assert_eq!(status, 507, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_storage", "{v}");
    let health = get(d.api, "/healthz", &d.token);
    assert_eq!(health.status, 503, "{}", health.body);
    let h = health.json();
    assert_eq!(
        (h["status"].as_str(), h["store"].as_str()),
        (Some("failed"), Some("failed"))
    );
    assert_eq!(h["error"]["code"], "insufficient_storage");
    let metrics = d.get("/metrics").body;
    assert!(
        metrics.lines().any(|l| l == "interopd_store_up 0"),
        "{metrics}"
    );
    // Still full: it stays failed, however often it tries.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.send("still full").0, 507);

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let back = loop {
        let (status, v) = d.send("after");
        if status == 202 {
            ack("after".to_owned(), &v);
            break freed.elapsed();
        }
        assert_eq!(status, 507, "{v}");
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "never recovered: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("the store recovered {back:?} after space was freed");
    assert_eq!(get(d.api, "/healthz", &d.token).status, 200);

    // Nothing acked was lost: every message reaches the contact, once.
    let ids: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    d.wait_read(&ids);
    let got = received_texts(&hub.control, "+15550100");
    for (_, text) in &acked {
        assert_eq!(
            got.iter().filter(|t| *t == text).count(),
            1,
            "{text}: {got:?}"
        );
    }
    assert_eq!(got.len(), acked.len(), "{got:?}");
    eprintln!("{} acked messages, all delivered once", acked.len());
    let metrics = d.get("/metrics").body;
    assert!(
        metrics.lines().any(|l| l == "interopd_store_up 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "interopd_store_reopens_total 1"),
        "{metrics}"
    );
}
