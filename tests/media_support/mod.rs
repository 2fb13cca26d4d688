//! Helpers for the media end-to-end tests: start `interopd run` with a `[media]` section (its
//! media host's pin registered at the hub with `interop-hub provision --media-host
//! --media-pin`), a byte-exact HTTP/1.1 client for binary bodies and streamed uploads, a
//! pinned HTTPS client for the media host, and small but well-formed media files made in
//! memory (PNG, Ogg/Opus, MP4) so no test depends on external tools.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::api_common::{config_text, free_port};
use crate::hub_support::{HUB, HubProc};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_interopd");
/// How long a test waits for anything asynchronous (a start, a delivery, an echo).
pub const WAIT: Duration = Duration::from_secs(60);
/// Echo contact and silent contact of `interop-hub --demo-users`.
pub const ECHO: &str = "+15550100";
pub const SILENT: &str = "+15550101";
pub const ACCOUNT: &str = "acme-home";

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- the daemon ---------------------------------------------------------------------------

/// The `[media]` section for a media host on loopback port `port`, plus `extra` lines.
pub fn media_section(port: u16, extra: &str) -> String {
    format!(
        "\n[media]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://127.0.0.1:{port}\"\n{extra}\n"
    )
}

/// `text` without its `[media]` section (if a provisioning tool ever prints one), so ours can
/// be appended without a duplicate table.
fn without_media_section(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            skipping = t == "[media]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The media host's pin for config `conf` and state `state`: what `interopd media-pin`
/// prints. The identity is made on first use and kept in `<state>/media-host/`.
pub fn media_pin(conf: &Path, state: &Path) -> String {
    let out = Command::new(DAEMON)
        .arg("media-pin")
        .arg("--config")
        .arg(conf)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "media-pin failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.starts_with("sha256//"),
        "media-pin printed {printed:?}"
    );
    printed
}

/// The 32-byte SPKI hash of a `sha256//BASE64` pin.
pub fn pin_hash(pin: &str) -> [u8; 32] {
    interopd::tls::parse_spki_pin(pin).unwrap()
}

/// A running `interopd run`; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub api: SocketAddr,
    pub token: String,
    pub conf: PathBuf,
    pub state: PathBuf,
    /// The media host's `127.0.0.1:PORT`.
    pub media_addr: String,
    /// `sha256//BASE64` of the media host's key.
    pub pin: String,
}

/// Where a daemon's config and state live and how its media host is reached.
pub struct Setup {
    pub conf: PathBuf,
    pub state: PathBuf,
    pub media_addr: String,
    pub pin: String,
}

/// A config for a daemon of account [`ACCOUNT`] at `hub`, with a media host whose pin is
/// registered at the hub; `extra` are more `[media]` lines (`quota_bytes = …`).
pub fn provisioned(dir: &Path, hub: &HubProc, extra: &str) -> Setup {
    let state = dir.join("state");
    let port = free_port();
    let section = media_section(port, extra);
    // media-pin needs a config with the [media] section; the provisioned one comes after it.
    let pin_conf = dir.join("pin.conf");
    let mut text = config_text(&state, "127.0.0.1:8787", None);
    text.push_str(&section);
    std::fs::write(&pin_conf, text).unwrap();
    let pin = media_pin(&pin_conf, &state);
    let media_url = format!("https://127.0.0.1:{port}");
    let out = Command::new(HUB)
        .arg("provision")
        .arg("--state")
        .arg(&hub.state)
        .args(["--account", ACCOUNT, "--connect", &hub.listen])
        .args(["--media-host", &media_url, "--media-pin", &pin])
        .args(["--profile", crate::hub_support::profile()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conf_text = without_media_section(&String::from_utf8(out.stdout).unwrap());
    conf_text.push_str(&section);
    let conf = dir.join("interopd.conf");
    std::fs::write(&conf, conf_text).unwrap();
    Setup {
        conf,
        state,
        media_addr: format!("127.0.0.1:{port}"),
        pin,
    }
}

/// A config for a daemon whose gatekeeper is unreachable, with a media host (for the API's
/// own checks: limits, quota, crashes, memory).
pub fn standalone(dir: &Path, extra: &str) -> Setup {
    let state = dir.join("state");
    let port = free_port();
    let mut text = config_text(&state, "127.0.0.1:8787", None);
    text.push_str(&media_section(port, extra));
    let conf = dir.join("interopd.conf");
    std::fs::write(&conf, text).unwrap();
    let pin = media_pin(&conf, &state);
    Setup {
        conf,
        state,
        media_addr: format!("127.0.0.1:{port}"),
        pin,
    }
}

impl Setup {
    /// Starts the daemon on a fresh API port.
    pub fn start(&self) -> Daemon {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        self.start_at(api)
    }

    /// Starts the daemon with API address `api`.
    pub fn start_at(&self, api: SocketAddr) -> Daemon {
        let child = Command::new(DAEMON)
            .arg("run")
            .arg("--config")
            .arg(&self.conf)
            .arg("--state")
            .arg(&self.state)
            .args(["--api", &api.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            api,
            token: String::new(),
            conf: self.conf.clone(),
            state: self.state.clone(),
            media_addr: self.media_addr.clone(),
            pin: self.pin.clone(),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(token) = std::fs::read_to_string(self.state.join("api-token"))
                && TcpStream::connect(api).is_ok()
                && TcpStream::connect(&self.media_addr).is_ok()
            {
                d.token = token.trim().to_owned();
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("interopd exited at start: {status}");
            }
            assert!(t0.elapsed() < WAIT, "interopd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A request with the token; waits out the API's rate limit (429) as a polite client does.
    pub fn call(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Http {
        loop {
            let r = http(self.api, method, target, Some(&self.token), headers, body);
            if r.status != 429 {
                return r;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn get(&self, target: &str) -> Http {
        self.call("GET", target, &[], b"")
    }

    /// `POST /v1/media?to=…&kind=…{extra}` with the whole body.
    pub fn upload(&self, to: &str, kind: &str, mimetype: &str, body: &[u8], extra: &str) -> Http {
        let target = format!("/v1/media?to={}&kind={kind}{extra}", to.replace('+', "%2B"));
        self.call("POST", &target, &[("Content-Type", mimetype)], body)
    }

    /// Polls message `id` until its status is `want`.
    pub fn wait_status(&self, id: &str, want: &str) -> serde_json::Value {
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

    /// The whole inbox, in cursor order.
    pub fn inbox(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let v = self
                .get(&format!("/v1/inbox?after={after}&limit=100"))
                .json();
            let page = v["messages"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
            after = v["next"].as_u64().unwrap();
        }
    }

    /// Polls the inbox until a message satisfies `pred`; returns it.
    pub fn wait_inbox(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let inbox = self.inbox();
            if let Some(m) = inbox.iter().find(|m| pred(m)) {
                return m.clone();
            }
            assert!(
                t0.elapsed() < WAIT,
                "the inbox never showed {what}: {}",
                serde_json::Value::from(inbox)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The files in `<state>/media/{sub}` (`tmp`, `out`, `in`).
    pub fn media_files(&self, sub: &str) -> Vec<PathBuf> {
        media_files(&self.state, sub)
    }

    /// `GET {path}` on the media host over TLS pinned to its key, with extra headers.
    pub fn media_host_get(&self, path: &str, headers: &[(&str, &str)]) -> Http {
        media_host_get(&self.media_addr, &self.pin, path, headers)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn media_files(state: &Path, sub: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(state.join("media").join(sub)) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// `VmRSS` of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

// ---- the hub ------------------------------------------------------------------------------

/// `GET /users/{phone}/received` at the hub.
pub fn hub_received(hub: &HubProc, phone: &str) -> Vec<serde_json::Value> {
    let (status, v) = hub.control("GET", &format!("/users/{phone}/received"), None);
    assert_eq!(status, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Polls what `phone` received until a record with `media` shows up; returns that object.
pub fn wait_hub_media(hub: &HubProc, phone: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let got = hub_received(hub, phone);
        if let Some(r) = got.iter().find(|r| r.get("media").is_some()) {
            return r["media"].clone();
        }
        assert!(
            t0.elapsed() < WAIT,
            "{phone} never received media: {}",
            serde_json::Value::from(got)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- HTTP ---------------------------------------------------------------------------------

/// A response with its body as bytes.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    /// The head, header names and values lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

impl Http {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.text()))
            .to_owned()
    }

    /// The value of header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    }
}

/// Splits a whole response (read to EOF) into status, head and body.
pub fn parse_http(buf: &[u8]) -> Http {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Http {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

fn request_head(
    addr: &str,
    method: &str,
    target: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> String {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req
}

/// One request (`Connection: close`), the reply read to EOF.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Http {
    let mut req = request_head(&addr.to_string(), method, target, token, headers);
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer and close before the whole body is written (413 at once).
    let _ = s.write_all(&bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_http(&buf)
}

/// A streamed `POST`: `total` bytes made by `fill` in chunks of `chunk` bytes, with
/// `pause` after each, sent with `Content-Length`. `progress(sent)` runs after each chunk and
/// stops the upload when it returns false. Returns the reply, or `None` when the connection
/// broke before one came.
#[allow(clippy::too_many_arguments)]
pub fn stream_post(
    addr: SocketAddr,
    target: &str,
    token: &str,
    mimetype: &str,
    total: u64,
    chunk: usize,
    pause: Duration,
    mut fill: impl FnMut(&mut [u8]),
    mut progress: impl FnMut(u64) -> bool,
) -> Option<Http> {
    let mut head = request_head(
        &addr.to_string(),
        "POST",
        target,
        Some(token),
        &[("Content-Type", mimetype)],
    );
    head.push_str(&format!("Content-Length: {total}\r\n\r\n"));
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    s.write_all(head.as_bytes()).ok()?;
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    while sent < total {
        let n = usize::try_from((total - sent).min(chunk as u64)).unwrap();
        fill(&mut buf[..n]);
        if s.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if !progress(sent) {
            break;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if out.is_empty() {
        return None;
    }
    Some(parse_http(&out))
}

/// Deterministic pseudo-random bytes (xorshift64*), cheap enough for gigabytes.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// `GET path` on the media host at `addr` (`127.0.0.1:PORT`), TLS pinned to `pin`.
pub fn media_host_get(addr: &str, pin: &str, path: &str, headers: &[(&str, &str)]) -> Http {
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = interopd::tls::client_config(&interopd::tls::Pin::Spki(pin_hash(pin))).unwrap();
    let mut req = request_head(addr, "GET", path, None, headers);
    req.push_str("\r\n");
    smol::block_on(async {
        let mut s = interopd::tls::connect(addr, "127.0.0.1", config)
            .await
            .unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        parse_http(&out)
    })
}

// ---- media made in memory -----------------------------------------------------------------

/// CRC-32 (ISO-HDLC, reflected 0xEDB88320), as PNG and zlib use it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial value 0, no final xor
/// (RFC 3533 section 6).
pub fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A complete `width`×`height` 8-bit RGB PNG (IHDR, one IDAT of stored deflate blocks,
/// IEND), with a colour gradient; decodable by any PNG reader.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[
                (x * 255 / width.max(1)) as u8,
                (y * 255 / height.max(1)) as u8,
                0x80,
            ]);
        }
    }
    // zlib: header, stored blocks of at most 65535 bytes, Adler-32.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(b.len()).unwrap();
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for &b in &raw {
        a = (a + u32::from(b)) % 65_521;
        s = (s + a) % 65_521;
    }
    z.extend_from_slice(&((s << 16) | a).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // depth 8, RGB, deflate, adaptive, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &z);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// One Ogg page with a correct CRC. `packets` must each be under 255 bytes (one lacing
/// value each).
fn ogg_page(flags: u8, granule: u64, serial: u32, seq: u32, packets: &[&[u8]]) -> Vec<u8> {
    let mut p = b"OggS".to_vec();
    p.push(0); // version
    p.push(flags);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]); // CRC, filled below
    p.push(u8::try_from(packets.len()).unwrap());
    for pk in packets {
        p.push(u8::try_from(pk.len()).unwrap());
    }
    for pk in packets {
        p.extend_from_slice(pk);
    }
    let crc = ogg_crc(&p);
    p[22..26].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Opus pre-skip written in the OpusHead of [`ogg_opus`], in 48 kHz samples.
pub const OPUS_PRE_SKIP: u16 = 312;

/// A valid mono Ogg/Opus stream (RFC 7845) of `seconds` seconds: OpusHead, OpusTags, then
/// 20 ms CELT silence frames (TOC 0xF8: fullband, 20 ms, one frame), 50 to a page, the last
/// page flagged end-of-stream. Every page carries its CRC.
pub fn ogg_opus(seconds: u32) -> Vec<u8> {
    const SERIAL: u32 = 0x1d0c_7e57;
    const FRAME_SAMPLES: u64 = 960; // 20 ms at 48 kHz
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&OPUS_PRE_SKIP.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes()); // input rate
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // mapping family
    let mut tags = b"OpusTags".to_vec();
    let vendor = b"interopd tests";
    tags.extend_from_slice(&u32::try_from(vendor.len()).unwrap().to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes()); // no comments

    let mut out = ogg_page(0x02, 0, SERIAL, 0, &[&head]);
    out.extend(ogg_page(0x00, 0, SERIAL, 1, &[&tags]));
    let frame: &[u8] = &[0xf8, 0xff, 0xfe];
    let frames = u64::from(seconds) * 50;
    let mut done = 0u64;
    let mut seq = 2;
    while done < frames {
        let n = (frames - done).min(50);
        done += n;
        let packets: Vec<&[u8]> = (0..n).map(|_| frame).collect();
        let granule = u64::from(OPUS_PRE_SKIP) + done * FRAME_SAMPLES;
        let flags = if done == frames { 0x04 } else { 0x00 };
        out.extend(ogg_page(flags, granule, SERIAL, seq, &packets));
        seq += 1;
    }
    out
}

fn mp4_box(kind: &[u8; 4], content: &[u8]) -> Vec<u8> {
    let mut b = u32::try_from(8 + content.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(kind);
    b.extend_from_slice(content);
    b
}

/// A minimal MP4 (ISO/IEC 14496-12): `ftyp`, `moov` holding a version-0 `mvhd` with
/// timescale 1000 and the given duration in milliseconds, and an `mdat` of `payload` bytes.
pub fn mp4(duration_ms: u32, payload: usize) -> Vec<u8> {
    let mut ftyp = b"isom".to_vec();
    ftyp.extend_from_slice(&0x200u32.to_be_bytes());
    ftyp.extend_from_slice(b"isommp41");
    let mut mvhd = vec![0u8; 4]; // version 0, flags 0
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // creation time
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // modification time
    mvhd.extend_from_slice(&1000u32.to_be_bytes()); // timescale
    mvhd.extend_from_slice(&duration_ms.to_be_bytes()); // duration
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
    mvhd.extend_from_slice(&[0; 10]); // reserved
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        mvhd.extend_from_slice(&v.to_be_bytes()); // unity matrix
    }
    mvhd.extend_from_slice(&[0; 24]); // pre_defined
    mvhd.extend_from_slice(&2u32.to_be_bytes()); // next track id
    let moov = mp4_box(b"moov", &mp4_box(b"mvhd", &mvhd));
    let mut out = mp4_box(b"ftyp", &ftyp);
    out.extend(moov);
    out.extend(mp4_box(b"mdat", &Noise::new(7).bytes(payload)));
    out
}

#[test]
fn media_checksums_match_their_published_check_values() {
    // Ogg's CRC is CRC-32/CKSUM (check value 0x765E7680) without its final inversion and
    // without the length suffix; PNG's is CRC-32/ISO-HDLC (check value 0xCBF43926).
    assert_eq!(ogg_crc(b"123456789"), 0x89a1_897f);
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}
