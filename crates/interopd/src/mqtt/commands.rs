//! The MQTT command topics, turned into the sends `POST /v1/messages` makes: `send` takes
//! that route's JSON body plus an optional `request_id`, `notify/<digits>` takes plain text.
//! Both go through the API's own checks and its one store transaction
//! (`api::messages::send_json` and `queue_send`), which commits the outbox row and wakes the
//! link; the bridge PUBACKs the broker only after that commit. `request_id` is the send's
//! idempotency key (prefixed [`REQUEST_ID_KEY_PREFIX`]), so a publish the broker delivers
//! again finds its first message id instead of queueing a second one.
//!
//! This file owns the payload checks and the `send/result` shapes; it does no I/O beyond the
//! API's store transaction.

use std::rc::Rc;

use crate::api::Api;
use crate::api::messages::{self, Body, SendJson};
use crate::http::{self, Response};

/// Largest `send` or `notify` payload, in bytes: the API's JSON body bound.
pub const MAX_COMMAND_PAYLOAD_BYTES: usize = crate::api::MAX_JSON_BODY_BYTES;
/// What a `request_id` becomes as an idempotency key: this prefix and the id, so that MQTT
/// ids and the API's `Idempotency-Key`s never meet.
pub const REQUEST_ID_KEY_PREFIX: &str = "mqtt:";
/// Longest `request_id`, in bytes (visible ASCII): the idempotency key's bound less the
/// prefix.
pub const MAX_REQUEST_ID_BYTES: usize =
    messages::MAX_IDEMPOTENCY_KEY_BYTES - REQUEST_ID_KEY_PREFIX.len();

/// What handling a command gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// PUBACK the broker: the command was committed, or it can never succeed (a bad payload).
    /// False only when the store failed, so that the broker delivers it again.
    pub ack: bool,
    /// The object to publish on `send/result` (for `send`), with `request_id` when given.
    pub result: serde_json::Value,
}

/// The `send/result` object for a refused command.
pub fn error_result(request_id: Option<&str>, code: &str, message: &str) -> serde_json::Value {
    let mut v = serde_json::json!({"error": {"code": code, "message": message}});
    if let (Some(obj), Some(r)) = (v.as_object_mut(), request_id) {
        obj.insert("request_id".into(), r.into());
    }
    v
}

/// The outcome for a payload over [`MAX_COMMAND_PAYLOAD_BYTES`] (`len` bytes), which the
/// session skipped unread.
pub fn too_large(len: usize) -> Outcome {
    Outcome {
        ack: true,
        result: error_result(
            None,
            "payload_too_large",
            &format!(
                "the payload is about {len} bytes, over the limit of {MAX_COMMAND_PAYLOAD_BYTES}"
            ),
        ),
    }
}

/// The `send` topic: `payload` is the JSON body of `POST /v1/messages`, with an optional
/// `request_id`.
pub fn send(api: &Rc<Api>, payload: &[u8]) -> Outcome {
    let refuse = |request_id: Option<&str>, code: &str, message: &str| Outcome {
        ack: true,
        result: error_result(request_id, code, message),
    };
    if payload.len() > MAX_COMMAND_PAYLOAD_BYTES {
        return too_large(payload.len());
    }
    let mut value: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => {
            return refuse(None, "bad_json", "the payload is not a JSON object");
        }
    };
    let Some(obj) = value.as_object_mut() else {
        return refuse(None, "bad_json", "the payload is not a JSON object");
    };
    let request_id = match obj.remove("request_id") {
        None => None,
        Some(serde_json::Value::String(r)) if valid_request_id(&r) => Some(r),
        Some(_) => {
            return refuse(
                None,
                "bad_request_id",
                &format!(
                    "'request_id' must be 1 to {MAX_REQUEST_ID_BYTES} visible ASCII characters"
                ),
            );
        }
    };
    let rid = request_id.as_deref();
    let body: SendJson = match serde_json::from_value(value) {
        Ok(b) => b,
        Err(e) => {
            // serde's sentence names the field; it never quotes the message text.
            return refuse(rid, "bad_json", &format!("the payload does not fit: {e}"));
        }
    };
    let key = request_id
        .as_ref()
        .map(|r| format!("{REQUEST_ID_KEY_PREFIX}{r}"));
    outcome(rid, messages::send_json(api, key, body))
}

/// The `notify/<digits>` topic: `payload` is the text to send to `+<digits>`.
pub fn notify(api: &Rc<Api>, digits: &str, payload: &[u8]) -> Outcome {
    let refuse = |code: &str, message: &str| Outcome {
        ack: true,
        result: error_result(None, code, message),
    };
    if payload.len() > MAX_COMMAND_PAYLOAD_BYTES {
        return too_large(payload.len());
    }
    let Ok(digits) = crate::jid::parse_phone(&format!("+{digits}")) else {
        return refuse(
            "bad_phone",
            "the topic's last level must be E.164 digits without '+'",
        );
    };
    let Ok(text) = std::str::from_utf8(payload) else {
        return refuse("bad_text", "the payload is not UTF-8");
    };
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return refuse("empty_text", "the payload must not be empty");
    }
    outcome(
        None,
        messages::queue_send(api, None, &digits, Body::Text(text.to_string()), None, None),
    )
}

/// Whether `r` may be a `request_id`.
fn valid_request_id(r: &str) -> bool {
    !r.is_empty() && r.len() <= MAX_REQUEST_ID_BYTES && r.bytes().all(|b| b.is_ascii_graphic())
}

/// The outcome of the API's answer: 202 gives `{"id", "status"}`, anything else the API's
/// `error` object; only a 5xx (the store failed) is left unacknowledged.
fn outcome(request_id: Option<&str>, response: Response) -> Outcome {
    let body: serde_json::Value = match &response.body {
        http::Body::Bytes(b) => serde_json::from_slice(b).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let mut result = if response.status == 202 {
        serde_json::json!({"id": body["id"], "status": body["status"]})
    } else {
        serde_json::json!({"error": body["error"]})
    };
    if let (Some(obj), Some(r)) = (result.as_object_mut(), request_id) {
        obj.insert("request_id".into(), r.into());
    }
    Outcome {
        ack: response.status < 500,
        result,
    }
}
