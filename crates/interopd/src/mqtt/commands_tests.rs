//! The command topics against the API's real send path, on a store in a temporary
//! directory: what is queued, what is refused, and that a `request_id` sends once.

use std::rc::Rc;

use super::commands::{self, MAX_COMMAND_PAYLOAD_BYTES};
use crate::api::{Api, ApiLimits, ApiParts};
use crate::events::EventBus;
use crate::link_control::OfflineLink;
use crate::media_store::MediaStore;
use crate::metrics::Metrics;
use crate::store::Store;

struct Fixture {
    _dir: tempfile::TempDir,
    api: Rc<Api>,
    store: Rc<Store>,
    link: Rc<OfflineLink>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Rc::new(Store::open(dir.path()).unwrap());
    let metrics = Rc::new(Metrics::default());
    let link = Rc::new(OfflineLink::default());
    let api = Api::new(ApiParts {
        store: Rc::clone(&store),
        account: "acme-home".into(),
        token: "t".into(),
        listen: "127.0.0.1:8787".parse().unwrap(),
        host_names: Vec::new(),
        bus: EventBus::new(false, Rc::clone(&metrics)),
        metrics,
        link: Rc::clone(&link) as Rc<dyn crate::link_control::LinkControl>,
        limits: ApiLimits::default(),
        media: Rc::new(MediaStore::open(dir.path(), 1 << 20).unwrap()),
        media_public_url: None,
        media_blob_expiry_ms: 1000,
        state_dir: dir.path().to_path_buf(),
        triggers: Vec::new(),
        backups: None,
    });
    Fixture {
        _dir: dir,
        api,
        store,
        link,
    }
}

fn outbox_len(f: &Fixture) -> u64 {
    f.store.begin().unwrap().outbox_len().unwrap()
}

#[test]
fn a_send_is_queued_in_the_outbox_and_wakes_the_link_before_it_is_acked() {
    let f = fixture();
    let o = commands::send(
        &f.api,
        br#"{"to": "+15550100", "text": "hi", "request_id": "a1"}"#,
    );
    assert!(o.ack);
    assert_eq!(o.result["request_id"], "a1");
    assert_eq!(o.result["status"], "queued");
    let id = o.result["id"].as_str().unwrap().to_owned();
    assert_eq!(outbox_len(&f), 1, "committed before the outcome came back");
    assert_eq!(f.link.wakes(), 1);
    let (_, row) = f.store.begin().unwrap().outbox_by_id(&id).unwrap().unwrap();
    assert_eq!(row.to, "15550100");
}

#[test]
fn a_redelivered_send_with_the_same_request_id_is_not_queued_twice() {
    let f = fixture();
    let body = br#"{"to": "+15550100", "text": "hi", "request_id": "same"}"#;
    let first = commands::send(&f.api, body);
    let again = commands::send(&f.api, body);
    assert_eq!(first.result["id"], again.result["id"]);
    assert_eq!(outbox_len(&f), 1);
    // Without a request_id each publish is a new message; a request_id is not an API key.
    commands::send(&f.api, br#"{"to": "+15550100", "text": "hi"}"#);
    commands::send(&f.api, br#"{"to": "+15550100", "text": "hi"}"#);
    assert_eq!(outbox_len(&f), 3);
    let txn = f.store.begin().unwrap();
    assert!(txn.idempotency("same").unwrap().is_none());
    assert!(txn.idempotency("mqtt:same").unwrap().is_some());
}

#[test]
fn bad_payloads_are_acked_with_an_error_and_queue_nothing() {
    let f = fixture();
    let big = format!(
        r#"{{"to": "+15550100", "text": "{}"}}"#,
        "x".repeat(MAX_COMMAND_PAYLOAD_BYTES)
    );
    for (payload, code) in [
        (&b"not json"[..], "bad_json"),
        (b"[1, 2]", "bad_json"),
        (br#"{"to": "+15550100", "txt": "typo"}"#, "bad_json"),
        (
            br#"{"to": "+15550100", "text": "x", "request_id": 7}"#,
            "bad_request_id",
        ),
        (
            br#"{"to": "+15550100", "text": "x", "request_id": ""}"#,
            "bad_request_id",
        ),
        (br#"{"to": "0049", "text": "x"}"#, "bad_phone"),
        (br#"{"to": "+15550100", "text": ""}"#, "empty_text"),
        (br#"{"to": "+15550100"}"#, "missing_text"),
        (big.as_bytes(), "payload_too_large"),
    ] {
        let o = commands::send(&f.api, payload);
        assert!(o.ack, "{code}");
        assert_eq!(o.result["error"]["code"], code, "{}", o.result);
        assert!(o.result["error"]["message"].is_string());
        assert!(o.result.get("id").is_none());
    }
    // The request_id comes back with the error once it could be read.
    let o = commands::send(
        &f.api,
        br#"{"to": "nope", "text": "x", "request_id": "r9"}"#,
    );
    assert_eq!(
        (
            o.result["request_id"].as_str(),
            o.result["error"]["code"].as_str()
        ),
        (Some("r9"), Some("bad_phone"))
    );
    assert_eq!(outbox_len(&f), 0);
    assert_eq!(f.link.wakes(), 0);
}

#[test]
fn notify_sends_its_text_to_the_topics_number() {
    let f = fixture();
    let o = commands::notify(&f.api, "15550100", b"Door opened\n");
    assert!(o.ack && o.result.get("error").is_none(), "{}", o.result);
    let id = o.result["id"].as_str().unwrap().to_owned();
    let (_, row) = f.store.begin().unwrap().outbox_by_id(&id).unwrap().unwrap();
    let msg = <crate::content::Message as prost::Message>::decode(row.content.as_slice()).unwrap();
    assert_eq!(msg.text_body(), Some("Door opened"));
    for (digits, payload, code) in [
        ("+15550100", &b"x"[..], "bad_phone"),
        ("0015550100", b"x", "bad_phone"),
        ("15550100", b"\xff", "bad_text"),
        ("15550100", b"\n", "empty_text"),
    ] {
        let o = commands::notify(&f.api, digits, payload);
        assert_eq!(o.result["error"]["code"], code, "{digits}");
    }
    assert_eq!(outbox_len(&f), 1);
}
