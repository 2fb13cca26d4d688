//! `interopd demo` as a newcomer runs it: start it, run the three curl lines it prints in a
//! shell exactly as printed, and restart it with the same `--state` to see that identity and
//! history survive. Its doorbell trigger: `interopd trigger-url doorbell` with the config file
//! the demo prints gives a URL whose plain GET reaches the echo contact, as does the printed
//! doorbell line, and the key opens nothing else. Needs `curl` on PATH (CI installs it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    curl_lines: Vec<String>,
    /// The rest of the banner: `label: value` lines after the curl lines.
    banner: Vec<String>,
}

impl Demo {
    /// The banner line's text after `label`, trimmed.
    fn banner_value(&self, label: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("the demo printed no {label:?} line: {:?}", self.banner))
            .trim()
            .to_string()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &std::path::Path, api: &str) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .arg("demo")
        .arg("--state")
        .arg(state)
        .args(["--api", api])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = Demo {
        child,
        curl_lines: Vec::new(),
        banner: Vec::new(),
    };
    // The banner is printed at once; its last example is the doorbell line.
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(cmd) = line.trim_start().strip_prefix("curl ") {
            demo.curl_lines.push(format!("curl -sS {cmd}"));
        } else {
            let last = line.trim_start().starts_with("doorbell (GET):");
            demo.banner.push(line);
            if last {
                break;
            }
        }
    }
    assert_eq!(
        demo.curl_lines.len(),
        3,
        "the demo must print three curl lines"
    );
    // The API is up once /healthz answers with the link up.
    let t0 = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{api}/healthz")])
            .output();
        let out = out.expect("the demo test needs curl on PATH");
        if String::from_utf8_lossy(&out.stdout).contains("\"link\":\"up\"") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "demo never reported link up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    demo
}

fn sh(line: &str) -> String {
    let out = Command::new("sh").args(["-c", line]).output().unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_api() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn printed_curl_lines_work_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("interopd-demo");
    let api = free_api();
    let demo = start(&state, &api);
    let sent = sh(&demo.curl_lines[0]);
    assert!(sent.contains("\"status\":\"queued\""), "{sent}");
    let inbox = sh(&demo.curl_lines[1]);
    assert!(inbox.contains("echo: Hello from the demo"), "{inbox}");
    let contacts = sh(&demo.curl_lines[2]);
    assert!(contacts.contains("+15550100"), "{contacts}");
    let token_cmd = demo.curl_lines[2].replace("/v1/contacts", "/v1/identity");
    let identity = sh(&token_cmd);
    drop(demo);

    let demo = start(&state, &api);
    assert_eq!(sh(&token_cmd), identity, "identity must survive a restart");
    let inbox = sh(&demo.curl_lines[1]);
    assert!(
        inbox.contains("echo: Hello from the demo"),
        "history must survive: {inbox}"
    );
}

/// The demo's group: the printed line sends to it, both contacts decrypt it, and the echo
/// comes back into the inbox with the group's id.
#[test]
fn the_printed_group_line_reaches_both_contacts_and_the_echo_returns_with_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("interopd-demo");
    let api = free_api();
    let demo = start(&state, &api);
    let line = demo.banner_value("group:");
    let users = demo.banner_value("hub control:");
    let group = std::fs::read_to_string(state.join("demo-group")).unwrap();
    assert!(line.contains(&format!("\"group\": \"{group}\"")), "{line}");
    let sent = sh(&line);
    assert!(sent.contains("\"status\":\"queued\""), "{sent}");
    let inbox = demo.curl_lines[1].clone();
    let t0 = Instant::now();
    loop {
        let got = sh(&inbox);
        if got.contains("echo: Hello family") {
            assert!(got.contains(&format!("\"group\":\"{group}\"")), "{got}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no group echo: {got}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for phone in ["+15550100", "+15550101"] {
        let url = users.replace("/users", &format!("/users/{phone}/received"));
        let (_, body) = curl_status(&url);
        assert!(
            body.contains("Hello family") && body.contains(&group),
            "{phone}: {body}"
        );
    }
}

/// `curl` of `url` with the status code as the output's last line.
fn curl_status(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// The texts the echo contact decrypted, from the hub's control API.
fn echo_received(control_users: &str) -> Vec<String> {
    let out = sh(&format!("curl -sS '{control_users}/+15550100/received'"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect()
}

fn wait_doorbells(control_users: &str, n: usize) {
    let t0 = Instant::now();
    loop {
        let got = echo_received(control_users);
        let rings = got
            .iter()
            .filter(|t| *t == "Someone is at the door")
            .count();
        if rings >= n {
            assert_eq!(rings, n, "{got:?}");
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the echo contact saw {rings} of {n} doorbells: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_demo_doorbell_url_reaches_the_echo_contact_and_its_key_opens_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("interopd-demo");
    let api = free_api();
    let demo = start(&state, &api);
    let conf = demo.banner_value("config file:");
    let users = demo.banner_value("hub control:");
    assert!(users.ends_with("/users"), "{users}");

    // `interopd trigger-url doorbell --config <the printed file>` prints the URL last.
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["trigger-url", "doorbell", "--config", &conf])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let url = printed.lines().last().unwrap().trim().to_string();
    assert!(
        url.starts_with(&format!("http://{api}/v1/triggers/doorbell?key=")),
        "{url}"
    );

    // A plain GET, no token: 202, and the configured text reaches the echo contact.
    let (status, body) = curl_status(&url);
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"id\""), "{body}");
    wait_doorbells(&users, 1);

    // The printed doorbell line works as printed, too.
    let line = demo.banner_value("doorbell (GET):");
    let fired = sh(&line.replacen("curl ", "curl -sS ", 1));
    assert!(fired.contains("\"id\""), "{fired}");
    wait_doorbells(&users, 2);

    // A wrong key: 401. The right key on another route: 401, and nothing was sent.
    let (path, key) = url.split_once("?key=").unwrap();
    let flipped = if key.starts_with('0') { '1' } else { '0' };
    let (status, body) = curl_status(&format!("{path}?key={flipped}{}", &key[1..]));
    assert_eq!(status, 401, "{body}");
    let (status, body) = curl_status(&format!("http://{api}/v1/inbox?key={key}"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("trigger_key_refused"), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    wait_doorbells(&users, 2);
}
