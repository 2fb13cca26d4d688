//! The hub's media proxy: fetches a blob that a provider hosts, for the WhatsApp side, but only
//! from media hosts registered for that provider, and only within a size and a time limit.
//! This file owns the registrations (`<state>/accounts/{account}.media-hosts`, one
//! `https://HOST:PORT sha256//BASE64` line per host: the origin and the SPKI pin its TLS key
//! must match), the URL check ([`check_url`], sans-I/O), and the fetch itself ([`fetch`], the
//! one piece of network I/O, over [`interop_io::tls`]). The shell serves it at
//! `GET /proxy/{account}?url=...` on the media listener.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::ACCOUNTS_DIR;
use interop_io::state_dir::StoreError;
use interop_io::{http, tls};
use interop_proto::jid;

/// Largest blob the proxy fetches, in bytes; a larger one is refused (`too_large`).
pub const MAX_PROXY_FETCH_BYTES: usize = 64 * 1024 * 1024;
/// Longest a whole proxy fetch (connect, handshake, request, body) may take, in milliseconds.
pub const PROXY_FETCH_TIMEOUT_MS: u64 = 30_000;
/// Largest response head the proxy reads, in bytes.
pub const MAX_PROXY_HEAD_BYTES: usize = 16 * 1024;
/// Most media hosts one provider may register.
pub const MAX_MEDIA_HOSTS: usize = 16;
/// Longest URL the proxy accepts, in bytes.
pub const MAX_PROXY_URL_BYTES: usize = 2048;

/// A registered media host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaHost {
    /// `https://host:port`, lowercase, no trailing slash.
    pub origin: String,
    pub host: String,
    pub port: u16,
    /// SHA-256 of the host's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

/// Why a proxy fetch was refused or failed; each maps to an HTTP status for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// Caller: the URL is not `https://host:port/path` or too long. 400.
    BadUrl,
    /// Caller: the URL's origin is not registered for this provider. 403.
    NotRegistered,
    /// Provider's host: it could not be reached, or its key does not match the pin. 502.
    Connect { detail: String },
    /// Provider's host: it answered something other than 200, or a malformed response. 502.
    Upstream { status: u16 },
    /// Provider's host: the blob is over [`MAX_PROXY_FETCH_BYTES`]. 502.
    TooLarge,
    /// Provider's host: the fetch took longer than [`PROXY_FETCH_TIMEOUT_MS`]. 504.
    Timeout,
    /// Environment: the registrations could not be read. 500.
    Store { detail: String },
}

impl ProxyError {
    /// The HTTP status and error code the proxy route answers with.
    pub fn status_code(&self) -> (u16, &'static str) {
        match self {
            ProxyError::BadUrl => (400, "bad_url"),
            ProxyError::NotRegistered => (403, "host_not_registered"),
            ProxyError::Connect { .. } => (502, "upstream_unreachable"),
            ProxyError::Upstream { .. } => (502, "upstream_error"),
            ProxyError::TooLarge => (502, "too_large"),
            ProxyError::Timeout => (504, "upstream_timeout"),
            ProxyError::Store { .. } => (500, "internal"),
        }
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::BadUrl => f.write_str("url must be https://host:port/path"),
            ProxyError::NotRegistered => {
                f.write_str("that media host is not registered for this provider")
            }
            ProxyError::Connect { detail } => write!(f, "media host unreachable: {detail}"),
            ProxyError::Upstream { status } => write!(f, "media host answered {status}"),
            ProxyError::TooLarge => {
                write!(f, "blob is over {MAX_PROXY_FETCH_BYTES} bytes")
            }
            ProxyError::Timeout => {
                write!(f, "fetch took over {PROXY_FETCH_TIMEOUT_MS} ms")
            }
            ProxyError::Store { detail } => f.write_str(detail),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Splits `https://host:port[/path]` into host, port and path (`/` if absent).
fn split_url(url: &str) -> Option<(String, u16, String)> {
    if url.len() > MAX_PROXY_URL_BYTES || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return None;
    }
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port, path.to_owned()))
}

/// Parses one registration line.
pub fn parse_host_line(line: &str) -> Option<MediaHost> {
    let (origin, pin) = line.trim().split_once(' ')?;
    let (host, port, path) = split_url(origin)?;
    if path != "/" {
        return None;
    }
    Some(MediaHost {
        origin: format!("https://{host}:{port}"),
        host,
        port,
        spki_sha256: tls::parse_spki_pin(pin.trim()).ok()?,
    })
}

/// The registered hosts of `account` (none if the file is absent).
pub fn load_hosts(state_dir: &Path, account: &str) -> Result<Vec<MediaHost>, ProxyError> {
    if jid::check_account(account).is_err() {
        return Ok(Vec::new());
    }
    let path = hosts_path(state_dir, account);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(parse_host_line)
            .take(MAX_MEDIA_HOSTS)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ProxyError::Store {
            detail: format!("{}: {e}", path.display()),
        }),
    }
}

fn hosts_path(state_dir: &Path, account: &str) -> PathBuf {
    state_dir
        .join(ACCOUNTS_DIR)
        .join(format!("{account}.media-hosts"))
}

/// Registers `origin` (`https://host:port`) with its SPKI pin (`sha256//BASE64`) for
/// `account`; registering the same origin again replaces its pin.
pub fn register_host(
    state_dir: &Path,
    account: &str,
    origin: &str,
    pin: &str,
) -> Result<MediaHost, ProxyError> {
    jid::check_account(account).map_err(|_| ProxyError::BadUrl)?;
    let host = parse_host_line(&format!("{origin} {pin}")).ok_or(ProxyError::BadUrl)?;
    let mut hosts = load_hosts(state_dir, account)?;
    hosts.retain(|h| h.origin != host.origin);
    if hosts.len() >= MAX_MEDIA_HOSTS {
        return Err(ProxyError::Store {
            detail: format!("at most {MAX_MEDIA_HOSTS} media hosts per provider"),
        });
    }
    hosts.push(host.clone());
    let text: String = hosts
        .iter()
        .map(|h| format!("{} {}\n", h.origin, tls::spki_pin_to_string(&h.spki_sha256)))
        .collect();
    let path = hosts_path(state_dir, account);
    let store = |e: std::io::Error| ProxyError::Store {
        detail: StoreError::Io {
            path: path.clone(),
            source: e,
        }
        .to_string(),
    };
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(store)?;
    }
    let tmp = path.with_extension("media-hosts.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(store)?;
    f.write_all(text.as_bytes()).map_err(store)?;
    f.sync_all().map_err(store)?;
    fs::rename(&tmp, &path).map_err(store)?;
    Ok(host)
}

/// Checks `url` against the registered hosts; returns the host and the request path.
pub fn check_url<'a>(
    hosts: &'a [MediaHost],
    url: &str,
) -> Result<(&'a MediaHost, String), ProxyError> {
    let (host, port, path) = split_url(url).ok_or(ProxyError::BadUrl)?;
    let origin = format!("https://{host}:{port}");
    hosts
        .iter()
        .find(|h| h.origin == origin)
        .map(|h| (h, path))
        .ok_or(ProxyError::NotRegistered)
}

/// What a failed exchange with a provider's host answers: a lost connection is `Connect`, an
/// oversized body `TooLarge`, anything else malformed `Upstream` with the `status` seen.
fn upstream_error(e: http::ClientError, status: u16) -> ProxyError {
    match e {
        http::ClientError::Io(e) => ProxyError::Connect {
            detail: e.to_string(),
        },
        http::ClientError::BodyTooLarge { .. } => ProxyError::TooLarge,
        _ => ProxyError::Upstream { status },
    }
}

/// Fetches `path` from a registered host, pinned to its SPKI, within the bounds.
pub async fn fetch(host: &MediaHost, path: &str) -> Result<Vec<u8>, ProxyError> {
    let work = async {
        let config = tls::client_config(&tls::Pin::Spki(host.spki_sha256)).map_err(|e| {
            ProxyError::Connect {
                detail: e.to_string(),
            }
        })?;
        let addr = format!("{}:{}", host.host, host.port);
        let name = host.host.trim_start_matches('[').trim_end_matches(']');
        let mut s = tls::connect(&addr, name, config)
            .await
            .map_err(|e| ProxyError::Connect {
                detail: e.to_string(),
            })?;
        let host_header = format!("{}:{}", host.host, host.port);
        let req = http::ClientRequest {
            method: "GET",
            target: path,
            host: &host_header,
            headers: &[],
            body: &[],
        };
        let resp = http::request(&mut s, &req, MAX_PROXY_HEAD_BYTES)
            .await
            .map_err(|e| upstream_error(e, 0))?;
        let status = resp.head.status;
        if status != 200 {
            return Err(ProxyError::Upstream { status });
        }
        // Media hosts answer with a length; a chunked answer is not one we accept.
        resp.read_to_end(MAX_PROXY_FETCH_BYTES as u64)
            .await
            .map_err(|e| upstream_error(e, status))
    };
    let timeout = async {
        smol::Timer::after(Duration::from_millis(PROXY_FETCH_TIMEOUT_MS)).await;
        Err(ProxyError::Timeout)
    };
    work.or(timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PIN: &str = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn only_registered_origins_pass() {
        let dir = tempfile::tempdir().unwrap();
        register_host(dir.path(), "acme-home", "https://Media.Example:8443", PIN).unwrap();
        let hosts = load_hosts(dir.path(), "acme-home").unwrap();
        let (h, path) = check_url(&hosts, "https://media.example:8443/m/abc?x=1").unwrap();
        assert_eq!(h.origin, "https://media.example:8443");
        assert_eq!(path, "/m/abc?x=1");
        assert_eq!(
            check_url(&hosts, "https://media.example:9443/m/abc"),
            Err(ProxyError::NotRegistered)
        );
        assert_eq!(
            check_url(&hosts, "https://evil@media.example:8443/"),
            Err(ProxyError::BadUrl)
        );
        assert_eq!(
            check_url(&hosts, "http://media.example:8443/"),
            Err(ProxyError::BadUrl)
        );
        assert!(load_hosts(dir.path(), "acme-shed").unwrap().is_empty());
    }

    #[test]
    fn registering_again_replaces_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        register_host(dir.path(), "acme-home", "https://h:1", PIN).unwrap();
        let other = "sha256//AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        register_host(dir.path(), "acme-home", "https://h:1", other).unwrap();
        let hosts = load_hosts(dir.path(), "acme-home").unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].spki_sha256, [1; 32]);
    }

    proptest! {
        #[test]
        fn url_and_line_parsers_never_panic(s in "\\PC{0,80}") {
            let _ = split_url(&s);
            let _ = parse_host_line(&s);
        }
    }
}
