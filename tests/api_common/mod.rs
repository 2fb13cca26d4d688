//! Helpers shared by the `api_*` integration tests: a raw HTTP/1.1 client over loopback
//! (so each test controls every header byte) and a config for a daemon whose gatekeeper is
//! unreachable.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A config whose gatekeeper is an unreachable loopback port, pinned to an all-zero SPKI hash,
/// with an optional `[webhook]` section.
pub fn config_text(state: &Path, api: &str, webhook: Option<(&str, &str)>) -> String {
    let mut text = format!(
        "[account]\nintegrator = \"acme\"\nuser = \"home\"\ntoken = \"provider-token\"\n\n\
         [gatekeeper]\naddress = \"127.0.0.1:1\"\nspki_sha256 = \"{}\"\n\n\
         [api]\nlisten = \"{api}\"\n\n[state]\ndir = \"{}\"\n",
        "0".repeat(64),
        state.display()
    );
    if let Some((url, secret)) = webhook {
        text.push_str(&format!(
            "\n[webhook]\nurl = \"{url}\"\nsecret = \"{secret}\"\n"
        ));
    }
    text
}

/// A response: status, head (lowercased header lines), body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.body))
            .to_string()
    }
}

/// Sends `raw` (a whole request that says `Connection: close`) and reads the reply to EOF.
pub fn raw(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_reply(&buf)
}

pub fn parse_reply(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// A request with the right Host and the token (if any), `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

pub fn get(addr: SocketAddr, target: &str, token: &str) -> Reply {
    request(addr, "GET", target, Some(token), &[], b"")
}

pub fn post_json(addr: SocketAddr, target: &str, token: &str, body: &serde_json::Value) -> Reply {
    request(
        addr,
        "POST",
        target,
        Some(token),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
