//! Hostile and malformed input against the real `interop-hub` over TLS: every kind gets its
//! documented `<stream:error code>` and a closed connection, and the hub keeps serving.

mod hub_support;

use hub_support::{HubProc, WAIT_MS, client, online, provision};
use interopd::link::Connection;

/// Writes `bytes` on a fresh connection before login and returns the stream error code.
async fn refused(hub: &HubProc, dir: &std::path::Path, bytes: &[u8]) -> Option<String> {
    let c = client(dir, "acme-home");
    let mut conn = Connection::open(c, &hub.listen, "localhost", &hub.pin(), "t")
        .await
        .unwrap();
    // The client's own <login> goes first; the hub answers with a challenge.
    let challenge = conn.next_stanza(WAIT_MS).await.unwrap();
    assert_eq!(challenge.tag, "challenge");
    assert!(conn.write_raw(bytes).await);
    let err = conn.next_stanza(WAIT_MS).await?;
    assert_eq!(err.tag, "stream:error");
    assert!(
        conn.next_stanza(WAIT_MS).await.is_none(),
        "closed after the error"
    );
    err.attr_value("code").map(str::to_owned)
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut v = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8];
    v.extend_from_slice(payload);
    v
}

#[test]
fn every_kind_of_hostile_frame_gets_its_reason_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), false);
    let data = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/data/frames");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            frame(&std::fs::read(data.join("billion_laughs.bin")).unwrap()),
            "doctype",
        ),
        (
            frame(&std::fs::read(data.join("external_entity.bin")).unwrap()),
            "doctype",
        ),
        (
            frame(&std::fs::read(data.join("doctype.bin")).unwrap()),
            "doctype",
        ),
        (
            frame(&std::fs::read(data.join("xml_declaration.bin")).unwrap()),
            "xml_declaration",
        ),
        (
            frame(&std::fs::read(data.join("undefined_entity.bin")).unwrap()),
            "undefined_entity",
        ),
        (
            frame(&std::fs::read(data.join("deep_nesting.bin")).unwrap()),
            "too_deep",
        ),
        (
            frame(&std::fs::read(data.join("bad_utf8.bin")).unwrap()),
            "bad_utf8",
        ),
        (
            frame(&std::fs::read(data.join("too_many_children.bin")).unwrap()),
            "too_many_children",
        ),
        (
            frame(&std::fs::read(data.join("comment_before_root.bin")).unwrap()),
            "comment",
        ),
        (
            frame(&std::fs::read(data.join("cdata_payload.bin")).unwrap()),
            "cdata",
        ),
        (
            frame(&std::fs::read(data.join("mixed_content.bin")).unwrap()),
            "mixed_content",
        ),
        (
            std::fs::read(data.join("oversize_length_header.bin")).unwrap(),
            "frame_too_large",
        ),
        (
            std::fs::read(data.join("zero_length_frame.bin")).unwrap(),
            "empty_frame",
        ),
        (frame(b"<a><b></a>"), "unbalanced_tags"),
        (frame(b"<a/><b/>"), "trailing_content"),
        (frame(b"<a>not base64!</a>"), "not_base64"),
    ];
    smol::block_on(async {
        for (i, (bytes, reason)) in cases.iter().enumerate() {
            let got = refused(&hub, &dir.path().join(format!("c{i}")), bytes).await;
            assert_eq!(got.as_deref(), Some(*reason), "case {i}");
        }
        // The hub still serves after all of that.
        let token = provision(&hub.state, "acme-home", &hub.listen);
        online(&hub, client(&dir.path().join("ok"), "acme-home"), &token).await;
    });
}

#[test]
fn unknown_stanza_after_login_closes_with_unknown_stanza() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub"), false);
    let token = provision(&hub.state, "acme-home", &hub.listen);
    smol::block_on(async {
        let mut conn = online(&hub, client(&dir.path().join("c"), "acme-home"), &token).await;
        let bytes = frame(b"<presence type=\"available\"/>");
        assert!(conn.write_raw(&bytes).await);
        let err = conn.next_stanza(WAIT_MS).await.unwrap();
        assert_eq!(err.tag, "stream:error");
        assert_eq!(err.attr_value("code"), Some("unknown_stanza"));
        assert!(conn.next_stanza(WAIT_MS).await.is_none());
    });
}
