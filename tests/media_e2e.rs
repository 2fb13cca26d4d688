//! Media end to end with the real binaries over loopback: `interop-hub --demo-users --media`,
//! and `interopd run` with a media host whose pin is registered at the hub. Covers sending
//! each kind to the echo contact and receiving its answer, the API's refusals (415, 413, 507),
//! `Range`, a tampered blob, blob expiry, a crash during an upload, and memory during a large
//! upload.
//!
//! Tests of receiving (the inbox `media` object, `GET /v1/media/{id}`) need the daemon's
//! receive side; the hub-side half of each round trip (the simulated user decrypting what we
//! sent) does not.

mod api_common;
mod hub_support;
mod media_support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use hub_support::HubProc;
use interopd::content::Message;
use interopd::media_store::{self, MediaId};
use interopd::store::Store;
use media_support::{
    ACCOUNT, Daemon, ECHO, Noise, SILENT, Setup, WAIT, mp4, ogg_opus, png, provisioned, sha256_hex,
    standalone, stream_post,
};
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// A hub with the demo users and a media store, and a daemon provisioned for it.
struct Env {
    d: Daemon,
    setup: Setup,
    hub: HubProc,
    _dir: tempfile::TempDir,
}

fn env(extra_media: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    let setup = provisioned(dir.path(), &hub, extra_media);
    let d = setup.start();
    Env {
        d,
        setup,
        hub,
        _dir: dir,
    }
}

/// Sends `body` as `kind` to the echo contact: the simulated user fetched our blob through
/// the hub's proxy and decrypted exactly these bytes. Then restarts the daemon, reading on the
/// way the content protobuf it queued (what its probes found). The echo's answer may arrive
/// while it is down; the hub keeps it.
fn send_to_echo(kind: &str, mimetype: &str, body: &[u8], extra: &str) -> (Env, Message) {
    let mut e = env("");
    let r = e.d.upload(ECHO, kind, mimetype, body, extra);
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "queued", "{v}");
    let id = v["id"].as_str().unwrap().to_owned();

    let got = media_support::wait_hub_media(&e.hub, ECHO);
    assert!(
        got.get("error").is_none(),
        "the echo contact could not open it: {got}"
    );
    assert_eq!(got["sha256_hex"], sha256_hex(body), "{got}");
    assert_eq!(got["size"], body.len(), "{got}");
    assert_eq!(got["mimetype"], mimetype, "{got}");
    e.d.wait_status(&id, "read");

    e.d.kill();
    let msg = {
        let store = Store::open(&e.setup.state).unwrap();
        let txn = store.begin().unwrap();
        let (_, row) = txn.outbox_by_id(&id).unwrap().unwrap();
        prost::Message::decode(row.content.as_slice()).unwrap()
    };
    e.d = e.setup.start();
    (e, msg)
}

/// The echo's answer in kind lands in the inbox, downloaded, verified and decrypted, and
/// `GET /v1/media/{id}` serves exactly `body`. Returns the inbox message.
fn echo_received(e: &Env, kind: &str, mimetype: &str, body: &[u8]) -> Value {
    let want_kind = kind;
    let m = e.d.wait_inbox(&format!("a {want_kind} from {ECHO}"), |m| {
        m["from"] == ECHO && m["kind"] == want_kind && m.get("media").is_some()
    });
    let media = &m["media"];
    assert!(media.get("error").is_none(), "received media failed: {m}");
    assert_eq!(media["mimetype"], mimetype, "{m}");
    assert_eq!(media["size"], body.len(), "{m}");
    let url = media["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url: {m}"));
    assert!(url.starts_with("/v1/media/"), "{url}");
    let f = e.d.get(url);
    assert_eq!(f.status, 200, "{}", f.text());
    assert_eq!(
        f.header("content-type").as_deref(),
        Some(mimetype.to_ascii_lowercase().as_str())
    );
    assert_eq!(f.body.len(), body.len());
    assert_eq!(sha256_hex(&f.body), sha256_hex(body));
    m
}

fn an_image_reaches_the_echo_contact_decrypted_and_its_echo_is_served_byte_exact() {
    let image = png(40, 30);
    let (e, msg) = send_to_echo("image", "image/png", &image, "&caption=a%20gradient");
    let im = msg.image_message.unwrap();
    assert_eq!(
        (im.width, im.height),
        (Some(40), Some(30)),
        "read from the PNG header"
    );
    assert_eq!(im.file_length, Some(image.len() as u64));
    assert_eq!(im.caption.as_deref(), Some("a gradient"));
    echo_received(&e, "image", "image/png", &image);
}

fn a_voice_note_reaches_the_echo_contact_with_its_duration_and_comes_back() {
    let note = ogg_opus(3);
    let (e, msg) = send_to_echo("voice", "audio/ogg; codecs=opus", &note, "");
    let a = msg.audio_message.unwrap();
    assert_eq!(a.ptt, Some(true));
    assert_eq!(
        a.seconds,
        Some(3),
        "Ogg/Opus duration: (granule - pre-skip) / 48 kHz"
    );
    let m = echo_received(&e, "voice", "audio/ogg; codecs=opus", &note);
    if let Some(s) = m["media"].get("seconds") {
        assert_eq!(s, 3, "{m}");
    }
}

#[test]
fn a_video_reaches_the_echo_contact_with_its_mvhd_duration_and_comes_back() {
    let video = mp4(4500, 4096);
    let (e, msg) = send_to_echo("video", "video/mp4", &video, "");
    assert_eq!(
        msg.video_message.unwrap().seconds,
        Some(5),
        "4500 ms rounds up to 5 s"
    );
    let m = echo_received(&e, "video", "video/mp4", &video);
    if let Some(s) = m["media"].get("seconds") {
        assert_eq!(s, 5, "{m}");
    }
}

fn a_file_reaches_the_echo_contact_with_its_name_and_comes_back() {
    let file = Noise::new(42).bytes(300_001);
    let (e, msg) = send_to_echo(
        "file",
        "application/octet-stream",
        &file,
        "&filename=report%202026.bin",
    );
    let doc = msg.document_message.unwrap();
    assert_eq!(doc.file_name.as_deref(), Some("report 2026.bin"));
    assert_eq!(doc.file_length, Some(file.len() as u64));
    let m = echo_received(&e, "file", "application/octet-stream", &file);
    assert_eq!(m["media"]["filename"], "report 2026.bin", "{m}");
}

/// Makes `+15550100` send `data` as `kind` to our account through the hub's control API;
/// returns the message id.
fn sim_send(
    hub: &HubProc,
    kind: &str,
    mimetype: &str,
    data: &[u8],
    filename: Option<&str>,
) -> String {
    let mut media = json!({
        "kind": kind,
        "mimetype": mimetype,
        "data_base64": base64::engine::general_purpose::STANDARD.encode(data),
    });
    if let Some(f) = filename {
        media["filename"] = f.into();
    }
    let (status, v) = hub.control(
        "POST",
        &format!("/users/{ECHO}/send"),
        Some(json!({"to": ACCOUNT, "media": media})),
    );
    assert_eq!(status, 200, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn wait_link_up(d: &Daemon) {
    let t0 = Instant::now();
    while d.get("/healthz").json()["link"] != "up" {
        assert!(t0.elapsed() < WAIT, "the link never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_range_of_received_media_is_served_exactly_with_206_and_content_range() {
    let e = env("");
    wait_link_up(&e.d);
    let data = Noise::new(9).bytes(100_000);
    let id = sim_send(
        &e.hub,
        "file",
        "application/pdf",
        &data,
        Some("minutes.pdf"),
    );
    let m = e.d.wait_inbox("the file", |m| m["id"] == id.as_str());
    let url = m["media"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url: {m}"))
        .to_owned();
    assert_eq!(m["media"]["filename"], "minutes.pdf", "{m}");

    for (range, from, to) in [
        ("bytes=0-0", 0usize, 0usize),
        ("bytes=1000-4999", 1000, 4999),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-16", 99_984, 99_999),
        ("bytes=99000-200000", 99_000, 99_999),
    ] {
        let r = e.d.call("GET", &url, &[("Range", range)], b"");
        assert_eq!(r.status, 206, "{range}: {}", r.text());
        assert_eq!(
            r.header("content-range").as_deref(),
            Some(format!("bytes {from}-{to}/100000").as_str()),
            "{range}"
        );
        assert_eq!(r.body, data[from..=to], "{range}");
    }
    let r = e.d.call("GET", &url, &[("Range", "bytes=100000-")], b"");
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(r.header("content-range").as_deref(), Some("bytes */100000"));
    let whole = e.d.get(&url);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
}

#[test]
fn a_blob_tampered_on_the_media_host_is_refused_and_no_plaintext_is_served() {
    let mut e = env("");
    // One login first, so the simulated user has our device's keys; then stay offline while
    // the hub stores the blobs.
    wait_link_up(&e.d);
    e.d.kill();

    let blob_dir = e.hub.state.join("media");
    let list = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&blob_dir)
            .map(|rd| rd.map(|x| x.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let before = list();
    let bad_plain = png(16, 16);
    let bad = sim_send(&e.hub, "image", "image/png", &bad_plain, None);
    let new: Vec<_> = list().into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let mut blob = std::fs::read(&new[0]).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x01;
    std::fs::write(&new[0], &blob).unwrap();
    // An intact one after it, so the test also sees that receiving works at all.
    let good_plain = png(8, 8);
    let good = sim_send(&e.hub, "image", "image/png", &good_plain, None);

    e.d = e.setup.start();
    let m_bad =
        e.d.wait_inbox("the tampered image", |m| m["id"] == bad.as_str());
    let m_good =
        e.d.wait_inbox("the intact image", |m| m["id"] == good.as_str());
    let media = &m_bad["media"];
    assert_eq!(
        media["error"]["code"], "media_verification_failed",
        "{m_bad}"
    );
    assert!(media.get("url").is_none(), "{m_bad}");
    assert_eq!(media["size"], bad_plain.len(), "{m_bad}");
    let in_id = interopd::media_pipe::incoming_media_id("15550100", &bad).to_hex();
    let r = e.d.get(&format!("/v1/media/{in_id}"));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "unknown_media");

    let url = m_good["media"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url: {m_good}"));
    assert_eq!(sha256_hex(&e.d.get(url).body), sha256_hex(&good_plain));
    // Only the intact image's plaintext is on disk.
    assert_eq!(
        e.d.media_files("in").len(),
        1,
        "{:?}",
        e.d.media_files("in")
    );
}

// ---- the API's refusals (no gatekeeper needed) ---------------------------------------------

/// A `POST /v1/media` head with `Content-Length: len` and no body: the answer the route gives
/// before reading one.
fn post_head_only(d: &Daemon, target: &str, mimetype: &str, len: u64) -> media_support::Http {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {mimetype}\r\nContent-Length: {len}\r\n\r\n",
        d.api, d.token
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    media_support::parse_http(&out)
}

#[test]
fn a_voice_note_that_is_not_ogg_opus_is_refused_with_415_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = standalone(dir.path(), "").start();
    let note = ogg_opus(2);
    for (what, body) in [
        ("a PNG", png(4, 4)),
        ("an MP4", mp4(1000, 64)),
        (
            "a truncated Ogg/Opus stream",
            note[..note.len() - 1].to_vec(),
        ),
        ("an Ogg stream whose first packet is not OpusHead", {
            let mut b = note.clone();
            b[28..36].copy_from_slice(b"OpusTags");
            b
        }),
    ] {
        let r = d.upload(SILENT, "voice", "audio/ogg", &body, "");
        assert_eq!(r.status, 415, "{what}: {}", r.text());
        assert_eq!(r.error_code(), "unsupported_media", "{what}");
    }
    // The same bytes are fine as a file, and the real note is fine as a voice note.
    assert_eq!(
        d.upload(SILENT, "file", "image/png", &png(4, 4), "").status,
        202
    );
    let r = d.upload(SILENT, "voice", "audio/ogg; codecs=opus", &note, "");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(d.media_files("out").len(), 2);
    assert!(
        d.media_files("tmp").is_empty(),
        "{:?}",
        d.media_files("tmp")
    );
}

#[test]
fn media_over_its_kinds_limit_is_refused_with_413_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = standalone(dir.path(), "").start();
    for (kind, limit) in [
        ("image", interopd::media_pipe::MAX_IMAGE_BYTES),
        ("voice", interopd::media_pipe::MAX_VOICE_BYTES),
        ("audio", interopd::media_pipe::MAX_AUDIO_BYTES),
        ("video", interopd::media_pipe::MAX_VIDEO_BYTES),
        ("file", interopd::media_pipe::MAX_FILE_BYTES),
    ] {
        let target = format!("/v1/media?to=%2B15550101&kind={kind}");
        let r = post_head_only(&d, &target, "application/octet-stream", limit + 1);
        assert_eq!(r.status, 413, "{kind}: {}", r.text());
        // At the largest kind limit the HTTP layer's own body cap (the same number) may
        // answer first, with its code.
        let code = r.error_code();
        let at_server_cap = limit >= interopd::api::media::MAX_MEDIA_BODY_BYTES;
        assert!(
            code == "media_too_large" || (at_server_cap && code == "body_too_large"),
            "{kind}: {code}"
        );
    }
    // A body that grows past the limit without announcing it in advance is cut off too.
    let target = "/v1/media?to=%2B15550101&kind=image";
    let r = chunked_post(&d, target, "image/png", 16 * MIB + 64 * 1024);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.error_code(), "media_too_large");
    assert!(d.media_files("out").is_empty());
}

/// A chunked `POST` of `len` zero bytes (no `Content-Length`); the reply, read while sending
/// so an early answer is not lost to a reset.
fn chunked_post(d: &Daemon, target: &str, mimetype: &str, len: u64) -> media_support::Http {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let reply = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    let _ = write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {mimetype}\r\nTransfer-Encoding: chunked\r\n\r\n",
        d.api, d.token
    );
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(chunk.len() as u64) as usize;
        if write!(s, "{n:x}\r\n").is_err()
            || s.write_all(&chunk[..n]).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += n as u64;
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let _ = s.shutdown(std::net::Shutdown::Write);
    media_support::parse_http(&reply.join().unwrap())
}

#[test]
fn uploads_past_the_media_quota_are_refused_with_507() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest quota the config takes: 1 MiB.
    let d = standalone(dir.path(), "quota_bytes = 1048576").start();
    let target = "/v1/media?to=%2B15550101&kind=file";
    let r = post_head_only(&d, target, "application/octet-stream", 2 * MIB);
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.error_code(), "quota_exceeded");

    let first = Noise::new(1).bytes(600 * 1024);
    let r = d.upload(SILENT, "file", "application/octet-stream", &first, "");
    assert_eq!(r.status, 202, "{}", r.text());
    // Announced: refused before the body.
    let r = post_head_only(&d, target, "application/octet-stream", 600 * 1024);
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.error_code(), "quota_exceeded");
    // Not announced (chunked): refused once the blob's size is known.
    let r = chunked_post(&d, target, "application/octet-stream", 600 * 1024);
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.error_code(), "quota_exceeded");
    assert_eq!(d.media_files("out").len(), 1);
    assert!(
        d.media_files("tmp").is_empty(),
        "{:?}",
        d.media_files("tmp")
    );
    // What still fits is taken.
    let r = d.upload(SILENT, "file", "application/octet-stream", &[7u8; 1000], "");
    assert_eq!(r.status, 202, "{}", r.text());
}

// ---- the media host -----------------------------------------------------------------------

/// The id of the only blob in `<state>/media/out/`.
fn only_blob(d: &Daemon) -> (String, std::path::PathBuf) {
    let files = d.media_files("out");
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    (name, files[0].clone())
}

#[test]
fn the_media_host_serves_our_blob_pinned_whole_and_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let d = standalone(dir.path(), "").start();
    let plain = Noise::new(3).bytes(200_000);
    let r = d.upload(SILENT, "file", "application/octet-stream", &plain, "");
    assert_eq!(r.status, 202, "{}", r.text());
    let (id, path) = only_blob(&d);
    let on_disk = std::fs::read(&path).unwrap();
    // AES-CBC with PKCS7 padding plus the 10-byte MAC.
    assert_eq!(on_disk.len(), (200_000 / 16 + 1) * 16 + 10);

    let whole = d.media_host_get(&format!("/m/{id}"), &[]);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(
        whole.body, on_disk,
        "the host serves the blob, not the plaintext"
    );
    assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
    let len = on_disk.len();
    let r = d.media_host_get(&format!("/m/{id}"), &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{len}"))
    );
    assert_eq!(r.body, on_disk[100..200]);
    let r = d.media_host_get(&format!("/m/{id}"), &[("Range", "bytes=-10")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, on_disk[len - 10..], "the MAC trailer");
    let r = d.media_host_get(
        &format!("/m/{id}"),
        &[("Range", format!("bytes={len}-").as_str())],
    );
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some(format!("bytes */{len}")));
    let r = d.media_host_get(&format!("/m/{}", "0".repeat(32)), &[]);
    assert_eq!(r.status, 404);
}

#[test]
fn an_expired_blob_answers_404_and_its_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let setup = standalone(dir.path(), "");
    let mut d = setup.start();
    let r = d.upload(SILENT, "image", "image/png", &png(10, 10), "");
    assert_eq!(r.status, 202, "{}", r.text());
    let (id, path) = only_blob(&d);
    assert_eq!(d.media_host_get(&format!("/m/{id}"), &[]).status, 200);

    // The shortest configurable lifetime is a minute; instead of waiting it out, move the
    // blob's expiry into the past while the daemon is stopped.
    d.kill();
    {
        let store = Store::open(&setup.state).unwrap();
        let txn = store.begin().unwrap();
        let media_id = MediaId::parse_hex(&id).unwrap();
        let mut row = media_store::get_row(&txn, &media_id).unwrap().unwrap();
        row.expires_ms = 1;
        media_store::put_row(&txn, &media_id, &row).unwrap();
        txn.commit().unwrap();
    }
    let d = setup.start();
    let r = d.media_host_get(&format!("/m/{id}"), &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "not_found");
    let t0 = Instant::now();
    while path.exists() {
        assert!(t0.elapsed() < WAIT, "the expired blob's file stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "waits out the minimum blob lifetime (MIN_MEDIA_LIFETIME_SECS = 60 s) in real time"]
fn an_expired_blob_answers_404_and_is_deleted_in_real_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = standalone(dir.path(), "blob_expiry_secs = 60").start();
    let t0 = Instant::now();
    let r = d.upload(SILENT, "image", "image/png", &png(10, 10), "");
    assert_eq!(r.status, 202, "{}", r.text());
    let (id, path) = only_blob(&d);
    assert_eq!(d.media_host_get(&format!("/m/{id}"), &[]).status, 200);
    std::thread::sleep(Duration::from_secs(61).saturating_sub(t0.elapsed()));
    let r = d.media_host_get(&format!("/m/{id}"), &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!path.exists(), "the expired blob's file stayed");
}

// ---- crashes and memory -------------------------------------------------------------------

#[test]
fn kill_9_during_an_upload_queues_nothing_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let setup = standalone(dir.path(), "");
    let mut d = setup.start();
    let (api, token) = (d.api, d.token.clone());
    let mut noise = Noise::new(5);
    let mut seen_tmp = false;
    let state = setup.state.clone();
    let child = &mut d.child;
    let reply = stream_post(
        api,
        "/v1/media?to=%2B15550101&kind=video",
        &token,
        "video/mp4",
        32 * MIB,
        256 * 1024,
        Duration::from_millis(20),
        |buf| noise.fill(buf),
        |sent| {
            if sent < 8 * MIB {
                return true;
            }
            seen_tmp = !media_support::media_files(&state, "tmp").is_empty();
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            false
        },
    );
    assert!(
        seen_tmp,
        "the upload was not being written to media/tmp when killed"
    );
    if let Some(r) = &reply {
        assert_ne!(r.status, 202, "a killed upload was accepted: {}", r.text());
    }

    let d = setup.start_at(api);
    assert!(
        d.media_files("tmp").is_empty(),
        "{:?}",
        d.media_files("tmp")
    );
    assert!(
        d.media_files("out").is_empty(),
        "{:?}",
        d.media_files("out")
    );
    assert!(d.inbox().is_empty());
    drop(d);
    let store = Store::open(&setup.state).unwrap();
    let txn = store.begin().unwrap();
    assert!(
        txn.outbox_scan(0, 10).unwrap().is_empty(),
        "a message was queued"
    );
    assert!(
        txn.media_scan(None, 10).unwrap().is_empty(),
        "a media row was written"
    );
    assert_eq!(txn.last_event_seq().unwrap(), 0, "an event was recorded");
}

/// Uploads `total` bytes of noise as a file, streamed in 1 MiB chunks, and returns the
/// daemon's peak RSS (VmHWM, KiB) before and after.
#[cfg(target_os = "linux")]
fn peak_rss_around_upload(d: &Daemon, total: u64) -> (u64, u64) {
    // Warm the upload path once, so one-time allocations count as "before".
    let r = d.upload(
        SILENT,
        "file",
        "application/octet-stream",
        &Noise::new(2).bytes(1 << 20),
        "",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let before = media_support::vm_hwm_kib(d.pid());
    let mut noise = Noise::new(11);
    let r = stream_post(
        d.api,
        "/v1/media?to=%2B15550101&kind=file&filename=big.bin",
        &d.token,
        "application/octet-stream",
        total,
        1 << 20,
        Duration::ZERO,
        |buf| noise.fill(buf),
        |_| true,
    )
    .expect("no reply to the upload");
    assert_eq!(r.status, 202, "{}", r.text());
    let after = media_support::vm_hwm_kib(d.pid());
    (before, after)
}

#[cfg(target_os = "linux")]
#[test]
fn a_256_mib_upload_raises_the_daemons_peak_rss_by_less_than_8_mib() {
    let dir = tempfile::tempdir().unwrap();
    let d = standalone(dir.path(), "").start();
    let (before, after) = peak_rss_around_upload(&d, 256 * MIB);
    eprintln!("VmHWM before {before} KiB, after a 256 MiB upload {after} KiB");
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "peak RSS grew by {} KiB",
        after - before
    );
    let largest = d
        .media_files("out")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max();
    assert_eq!(
        largest,
        Some(256 * MIB + 16 + 10),
        "the blob is on disk whole"
    );
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "writes 1 GiB; run by hand to measure peak RSS"]
fn a_1_gib_upload_keeps_the_daemons_peak_rss_flat() {
    let dir = tempfile::tempdir().unwrap();
    let d = standalone(dir.path(), "quota_bytes = 4294967296").start();
    let t0 = Instant::now();
    let (before, after) = peak_rss_around_upload(&d, 1024 * MIB);
    eprintln!(
        "VmHWM before {before} KiB, after a 1 GiB upload {after} KiB ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(after.saturating_sub(before) < 8 * 1024);
}

// Media in both directions holds on both wire profiles; the other tests here are about the
// daemon's API and media host and run on the default, `wa`.
crate::on_both_profiles!(
    an_image_reaches_the_echo_contact_decrypted_and_its_echo_is_served_byte_exact,
    a_voice_note_reaches_the_echo_contact_with_its_duration_and_comes_back,
    a_file_reaches_the_echo_contact_with_its_name_and_comes_back,
);
