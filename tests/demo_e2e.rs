//! `interopd demo` as a newcomer runs it: start it, run the three curl lines it prints in a
//! shell exactly as printed, and restart it with the same `--state` to see that identity and
//! history survive. Needs `curl` on PATH (CI installs it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    curl_lines: Vec<String>,
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
    };
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(cmd) = line.trim_start().strip_prefix("curl ") {
            demo.curl_lines.push(format!("curl -sS {cmd}"));
            if demo.curl_lines.len() == 3 {
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
