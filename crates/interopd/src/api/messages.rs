//! `POST /v1/messages` (send text) and `GET /v1/messages/{id}` (its status).
//!
//! A send is answered `202` only after one store transaction committed the outbox row (the
//! unpadded protobuf `Message`, status `queued`) and, when the request carried an
//! `Idempotency-Key`, the key → id record (its row format is the store's). Then the link is
//! woken. A retry with the same key finds the record and gets the same id; no second row is
//! written. The record lives as long as the message: retention deletes both.

use std::rc::Rc;

use rand::Rng as _;
use serde::Deserialize;

use super::{Api, MAX_JSON_BODY_BYTES, body_error, now_ms, rfc3339, store_error};
use crate::content::{self, ContentKind, Message};
use crate::http::{Request, Response};
use crate::metrics::Counter;
use crate::store::{OutboxRow, OutboxStatus, StoreError, Txn};

/// Longest `Idempotency-Key`, in bytes (visible ASCII only).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// `Retry-After` of a 429 `outbox_full`, in seconds: about what the link needs to drain a
/// batch when it is up.
const OUTBOX_FULL_RETRY_AFTER_SECS: &str = "5";
/// Longest message id accepted in `reply_to`, in bytes (peers' ids are not all `3EB0…`).
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Longest location `name` or `address`, in characters (Unicode scalar values).
pub const MAX_LOCATION_TEXT_CHARS: usize = 256;

/// The JSON body of `POST /v1/messages` (also the payload of the MQTT `send` topic).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendJson {
    #[serde(default)]
    to: Option<String>,
    /// A group id in place of `to`.
    #[serde(default)]
    group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    text: Option<String>,
    #[serde(default, deserialize_with = "present")]
    location: Option<LocationJson>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    correlation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationJson {
    lat: f64,
    lon: f64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

/// A field that may be absent but, when given, is not `null` (the document says so).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// What a send carries: text, or a place.
pub(crate) enum Body {
    Text(String),
    Location(Box<Message>),
}

/// A checked location, or the 400 naming what is wrong.
fn location(l: LocationJson) -> Result<Message, Response> {
    if !(-90.0..=90.0).contains(&l.lat) {
        return Err(bad("bad_latitude", "'lat' must be from -90 to 90 degrees"));
    }
    if !(-180.0..=180.0).contains(&l.lon) {
        return Err(bad(
            "bad_longitude",
            "'lon' must be from -180 to 180 degrees",
        ));
    }
    for (name, v) in [("name", &l.name), ("address", &l.address)] {
        if v.as_ref()
            .is_some_and(|t| t.chars().count() > MAX_LOCATION_TEXT_CHARS)
        {
            return Err(bad(
                "location_text_too_long",
                &format!("location '{name}' is over {MAX_LOCATION_TEXT_CHARS} characters"),
            ));
        }
    }
    Ok(Message::location(l.lat, l.lon, l.name, l.address))
}

/// A correlation as a send takes it: 1 to [`crate::store::MAX_CORRELATION_BYTES`] printable
/// ASCII characters (so its bound in bytes and in characters is the same).
fn check_correlation(c: Option<&str>) -> Result<(), Response> {
    match c {
        Some(c) if c.len() > crate::store::MAX_CORRELATION_BYTES => Err(bad(
            "correlation_too_long",
            &format!(
                "'correlation' is {} bytes, over the limit of {}",
                c.len(),
                crate::store::MAX_CORRELATION_BYTES
            ),
        )),
        Some(c) if c.is_empty() || !c.bytes().all(|b| (b' '..=b'~').contains(&b)) => Err(bad(
            "bad_correlation",
            "'correlation' must be 1 to 64 printable ASCII characters",
        )),
        _ => Ok(()),
    }
}

pub(crate) fn bad(code: &str, message: &str) -> Response {
    Response::json_error(400, code, message)
}

/// The human sentence for a status error code set by the link.
pub fn error_message(code: &str) -> String {
    match code {
        "not_opted_in" => "the recipient has not opted in to third-party chats".into(),
        "unknown_user" => "the recipient is not a WhatsApp user".into(),
        "identity_untrusted" | "identity_changed" => {
            "the recipient's verified identity changed; trust it again with POST /v1/contacts/{phone}/trust".into()
        }
        "too_large" => "the message is larger than the gatekeeper accepts".into(),
        "expired" => "the message could not be sent before it expired".into(),
        other => format!("the message could not be delivered ({other})"),
    }
}

/// `POST /v1/messages`.
pub async fn send(api: &Rc<Api>, req: Request) -> Response {
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let content_type = req.head.content_type();
    // The query's `to` and `reply_to` belong to a text body; a JSON body carries its own. They
    // are checked whenever given, so a bad one is never silently ignored.
    for name in ["to", "group", "reply_to", "correlation"] {
        if req.query_param_count(name) > 1 {
            return bad(
                "repeated_parameter",
                &format!("give '{name}' once; it was given more than once"),
            );
        }
    }
    if let Some(t) = req.query_param("to")
        && super::query_phone(&t).is_none()
    {
        return bad(
            "bad_phone",
            "'to' must be an E.164 number such as %2B4915112345678",
        );
    }
    if let Some(r) = req.query_param("reply_to")
        && !valid_message_ref(&r)
    {
        return bad("bad_reply_to", "'reply_to' must be a message id");
    }
    if let Err(r) = check_correlation(req.query_param("correlation").as_deref()) {
        return r;
    }
    let from_query = !matches!(content_type.as_deref(), Some("application/json"));
    let query_group = req.query_param("group");
    let ((to, group), body, reply_to, correlation) = match content_type.as_deref() {
        Some("application/json") => {
            let body: SendJson = match req.body.read_json(MAX_JSON_BODY_BYTES).await {
                Ok(b) => b,
                Err(e) => return body_error(&e),
            };
            match json_parts(body) {
                Ok(parts) => parts,
                Err(r) => return r,
            }
        }
        // `curl -d TEXT` sends form-urlencoded; CONTRACT.md promises that line works, so the
        // body is taken as literal text (not form-decoded), as for text/plain.
        None | Some("text/plain" | "application/x-www-form-urlencoded") => {
            let to = req.query_param("to");
            if to.is_none() && query_group.is_none() {
                return bad(
                    "missing_to",
                    "a text/plain body needs the recipient as ?to=%2B<digits> or ?group=<id>",
                );
            }
            let reply_to = req.query_param("reply_to");
            let correlation = req.query_param("correlation");
            let bytes = match req.body.read_to_vec(MAX_JSON_BODY_BYTES).await {
                Ok(b) => b,
                Err(e) => return body_error(&e),
            };
            let Ok(text) = String::from_utf8(bytes) else {
                return bad("bad_text", "the text/plain body is not UTF-8");
            };
            ((to, query_group), Body::Text(text), reply_to, correlation)
        }
        _ => {
            return Response::json_error(
                415,
                "unsupported_media_type",
                "send application/json, or text/plain with ?to=",
            );
        }
    };
    finish_send(
        api,
        key,
        (to, group),
        body,
        reply_to,
        correlation,
        from_query,
    )
}

/// The recipient of a send: `to` (a phone), or `group` (a group id).
type Recipient = (Option<String>, Option<String>);

/// What a JSON send body asks for: ((to, group), body, reply_to, correlation), or the 400.
fn json_parts(
    body: SendJson,
) -> Result<(Recipient, Body, Option<String>, Option<String>), Response> {
    let what = match (body.text, body.location) {
        (Some(t), None) => Body::Text(t),
        (None, Some(l)) => Body::Location(Box::new(location(l)?)),
        (None, None) => return Err(bad("missing_text", "give 'text' or 'location'")),
        (Some(_), Some(_)) => {
            return Err(bad(
                "text_and_location",
                "give 'text' or 'location', not both",
            ));
        }
    };
    Ok(((body.to, body.group), what, body.reply_to, body.correlation))
}

/// A send whose JSON body came another way (the MQTT `send` topic): the same checks and the
/// same transaction as `POST /v1/messages` with that body and `key` as its Idempotency-Key.
pub(crate) fn send_json(api: &Rc<Api>, key: Option<String>, body: SendJson) -> Response {
    match json_parts(body) {
        Ok((to, body, reply_to, correlation)) => {
            finish_send(api, key, to, body, reply_to, correlation, false)
        }
        Err(r) => r,
    }
}

/// The checks every send shares once its parts are known, then [`queue_send`].
fn finish_send(
    api: &Rc<Api>,
    key: Option<String>,
    (to, group): Recipient,
    body: Body,
    reply_to: Option<String>,
    correlation: Option<String>,
    from_query: bool,
) -> Response {
    let recipient = match (to, group) {
        (Some(_), Some(_)) => return bad("to_and_group", "give 'to' or 'group', not both"),
        (None, None) => return bad("missing_to", "give the recipient as 'to' or 'group'"),
        (None, Some(g)) => match group_recipient(api, &g) {
            Ok(jid) => jid,
            Err(r) => return r,
        },
        (Some(to), None) => match if from_query {
            super::query_phone(&to)
        } else {
            crate::jid::parse_phone(&to).ok()
        } {
            Some(digits) => digits,
            None => {
                return bad(
                    "bad_phone",
                    "'to' must be an E.164 number such as +4915112345678",
                );
            }
        },
    };
    if matches!(&body, Body::Text(t) if t.is_empty()) {
        return bad("empty_text", "'text' must not be empty");
    }
    if let Some(r) = &reply_to
        && !valid_message_ref(r)
    {
        return bad("bad_reply_to", "'reply_to' must be a message id");
    }
    if let Err(r) = check_correlation(correlation.as_deref()) {
        return r;
    }
    queue_send(api, key, &recipient, body, reply_to, correlation)
}

/// The outbox recipient of a send to group `raw`: `{id}@g.us`, for a group we are in.
pub(crate) fn group_recipient(api: &Api, raw: &str) -> Result<String, Response> {
    super::groups::known_group(api, raw).map(|g| g.jid())
}

/// A message id as `reply_to` takes it: 1 to [`MAX_MESSAGE_ID_BYTES`] visible ASCII
/// characters (peers' ids are not all ours).
fn valid_message_ref(r: &str) -> bool {
    !r.is_empty() && r.len() <= MAX_MESSAGE_ID_BYTES && r.bytes().all(|b| b.is_ascii_graphic())
}

/// The `Idempotency-Key` header: absent, or once with 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`]
/// visible ASCII characters (else the 400 to answer). A key that is not ASCII, or a second
/// one, is refused rather than ignored: a retry treated as keyless would queue a duplicate.
pub(crate) fn idempotency_key(req: &Request) -> Result<Option<String>, Response> {
    let mut values = req.head.header_values("idempotency-key");
    let Some(raw) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad(
            "bad_idempotency_key",
            "send one Idempotency-Key header, not several",
        ));
    }
    let k = raw.trim_ascii();
    if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES && k.iter().all(u8::is_ascii_graphic) {
        Ok(Some(String::from_utf8_lossy(k).into_owned()))
    } else {
        Err(bad(
            "bad_idempotency_key",
            "Idempotency-Key must be 1 to 128 visible ASCII characters",
        ))
    }
}

/// The answer for a retry: `Some(202 with the first id)` when `key` was used before (or the
/// 503 if its record is unreadable), `None` when the send is new.
pub(crate) fn replayed(api: &Api, txn: &Txn, key: Option<&str>) -> Option<Response> {
    let k = key?;
    match txn.idempotency(k) {
        Ok(Some(id)) => Some(accepted(&id, existing_status(api, txn, &id))),
        Ok(None) => None,
        Err(e) => Some(store_error(&e)),
    }
}

/// A fresh message id for a message we send at `now_ms`.
pub(crate) fn new_message_id(api: &Api, now_ms: u64) -> String {
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random);
    content::message_id(now_ms / 1000, &api.account, &random)
        .as_str()
        .to_string()
}

/// A `queued` outbox row for `content` (the unpadded protobuf) to `digits`.
pub(crate) fn queued_row(
    id: String,
    digits: &str,
    kind: ContentKind,
    now_ms: u64,
    content: Vec<u8>,
) -> OutboxRow {
    OutboxRow {
        id,
        to: digits.to_string(),
        kind: kind.to_byte(),
        status: OutboxStatus::Queued,
        created_ms: now_ms,
        updated_ms: now_ms,
        error_code: String::new(),
        content,
        stanza: Vec::new(),
    }
}

/// Writes `row`, whatever `also` adds, and the idempotency record in `txn`, commits, wakes
/// the link, and answers 202. Every send route ends here, so a send is one transaction.
pub(crate) fn commit_queued(
    api: &Api,
    txn: Txn,
    key: Option<&str>,
    row: &OutboxRow,
    also: impl FnOnce(&Txn) -> Result<(), StoreError>,
) -> Result<Response, StoreError> {
    if txn.outbox_len()? >= crate::retention::MAX_OUTBOX_ROWS {
        return Ok(Response::json_error(
            429,
            "outbox_full",
            &format!(
                "{} messages are waiting to be sent; try again once the link has caught up",
                crate::retention::MAX_OUTBOX_ROWS
            ),
        )
        .with_header("Retry-After", OUTBOX_FULL_RETRY_AFTER_SECS));
    }
    txn.outbox_insert(row)?;
    also(&txn)?;
    if let Some(k) = key {
        txn.put_idempotency(k, &row.id)?;
    }
    api.metrics.commit(txn)?;
    api.metrics.inc(Counter::MessageOut(OutboxStatus::Queued));
    api.link.wake();
    Ok(accepted(&row.id, OutboxStatus::Queued))
}

/// The one transaction of a text or location send, after validation: replay check, quote,
/// encode, outbox row and note, 202. Triggers send through it too.
pub(crate) fn queue_send(
    api: &Rc<Api>,
    key: Option<String>,
    digits: &str,
    body: Body,
    reply_to: Option<String>,
    correlation: Option<String>,
) -> Response {
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    if let Some(r) = replayed(api, &txn, key.as_deref()) {
        return r;
    }
    let now = now_ms();
    let quote = match &reply_to {
        None => None,
        Some(r) => match quoted(api, &txn, digits, r) {
            Ok(q) => Some(q),
            Err(e) => return store_error(&e),
        },
    };
    let (kind, msg) = match body {
        Body::Text(text) => match quote {
            None => (ContentKind::Text, Message::text(text)),
            Some((participant, original)) => (
                ContentKind::Text,
                Message::reply(
                    text,
                    reply_to.clone().unwrap_or_default(),
                    participant,
                    original,
                ),
            ),
        },
        Body::Location(m) => {
            let mut m = *m;
            if let (Some(loc), Some((participant, original))) = (m.location_message.as_mut(), quote)
            {
                loc.context_info = Some(content::ContextInfo {
                    stanza_id: reply_to.clone(),
                    participant: Some(participant),
                    quoted_message: original.map(Box::new),
                });
            }
            (ContentKind::Location, m)
        }
    };
    let bytes = prost::Message::encode_to_vec(&msg);
    if bytes.len() > content::MAX_BODY_BYTES {
        return Response::json_error(
            413,
            "text_too_long",
            &format!(
                "the encoded message is {} bytes, over the limit of {}",
                bytes.len(),
                content::MAX_BODY_BYTES
            ),
        );
    }
    let row = queued_row(new_message_id(api, now), digits, kind, now, bytes);
    let note = correlation.map(|correlation| crate::store::MessageNote {
        correlation,
        updated_ms: now,
        ..crate::store::MessageNote::default()
    });
    commit_queued(api, txn, key.as_deref(), &row, |t| match &note {
        Some(n) => t.put_note(&row.id, n),
        None => Ok(()),
    })
    .unwrap_or_else(|e| store_error(&e))
}

/// Who wrote message `id` that a reply to `digits` quotes, and a copy of it to show above
/// the reply (`contextInfo.participant` and `quotedMessage`, as WhatsApp clients expect):
/// ours when it is in the outbox, else the peer's from the inbox. The copy is left out when
/// the message is unknown or its content does not decode.
fn quoted(
    api: &Api,
    txn: &Txn,
    digits: &str,
    id: &str,
) -> Result<(String, Option<Message>), StoreError> {
    let decode = |b: &[u8]| <Message as prost::Message>::decode(b).ok();
    if let Some((_, row)) = txn.outbox_by_id(id)? {
        let me = format!("{}@{}", api.account, crate::jid::INTEROP_SERVER);
        return Ok((me, decode(&row.content).map(strip_context)));
    }
    if let Ok(gid) = crate::group::GroupId::parse_jid(digits) {
        // In a group, the quoted message's author is whoever sent it there.
        return Ok(match txn.inbox_by_message_id(id)? {
            Some((_, _, row)) if row.group == gid.as_str() => (
                format!("{}@{}", row.from, crate::jid::WHATSAPP_SERVER),
                decode(&row.content).map(strip_context),
            ),
            _ => (String::new(), None),
        });
    }
    let peer = format!("{digits}@{}", crate::jid::WHATSAPP_SERVER);
    let copy = match txn.inbox_by_message_id(id)? {
        Some((_, _, row)) if row.from == digits => decode(&row.content).map(strip_context),
        _ => None,
    };
    Ok((peer, copy))
}

/// A quoted copy without its own reply context, so quotes do not nest without end.
fn strip_context(mut m: Message) -> Message {
    if let Some(ext) = m.extended_text_message.as_mut() {
        ext.context_info = None;
    }
    m
}

fn existing_status(_api: &Api, txn: &Txn, id: &str) -> OutboxStatus {
    match txn.outbox_by_id(id) {
        Ok(Some((_, row))) => row.status,
        _ => OutboxStatus::Queued,
    }
}

pub(crate) fn accepted(id: &str, status: OutboxStatus) -> Response {
    Response::json(
        202,
        &serde_json::json!({"id": id, "status": status.as_str()}),
    )
}

/// `GET /v1/messages/{id}`.
pub fn status(api: &Rc<Api>, id: &str) -> Response {
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    match txn.outbox_by_id(id) {
        Ok(Some((_, row))) => match txn.note(id) {
            Ok(note) => {
                let mut v = status_json(&row);
                add_note(&mut v, &row, note.as_ref());
                if let Err(e) = add_members(&txn, &mut v, id) {
                    return store_error(&e);
                }
                Response::json(200, &v)
            }
            Err(e) => store_error(&e),
        },
        Ok(None) => Response::json_error(404, "unknown_message", "no message with this id"),
        Err(e) => store_error(&e),
    }
}

/// Adds what the message's note says to its status object: the latest `text` (after an
/// edit; the original text otherwise), `edited` and `revoked`, and its `correlation`.
pub fn add_note(
    v: &mut serde_json::Value,
    row: &OutboxRow,
    note: Option<&crate::store::MessageNote>,
) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    let original = <Message as prost::Message>::decode(row.content.as_slice()).ok();
    let text = match note {
        Some(n) if n.revoked => None,
        Some(n) if n.edited => Some(n.text.clone()),
        _ => original
            .as_ref()
            .and_then(Message::text_body)
            .map(str::to_owned),
    };
    if let Some(t) = text {
        obj.insert("text".into(), t.into());
    }
    obj.insert("edited".into(), note.is_some_and(|n| n.edited).into());
    obj.insert("revoked".into(), note.is_some_and(|n| n.revoked).into());
    if let Some(n) = note.filter(|n| !n.correlation.is_empty()) {
        obj.insert("correlation".into(), n.correlation.as_str().into());
    }
}

/// A group message's `members`: each member's progress, the least of its devices'
/// (`sent`, `delivered`, `read`), by `+phone` (or account name).
fn add_members(txn: &Txn, v: &mut serde_json::Value, id: &str) -> Result<(), StoreError> {
    let Some(devices) = txn.group_receipts(id)? else {
        return Ok(());
    };
    let mut members: std::collections::BTreeMap<String, crate::store::DeviceReceipt> =
        std::collections::BTreeMap::new();
    for (device, state) in devices {
        let Ok(j) = crate::jid::Jid::parse(&device) else {
            continue;
        };
        let name = super::groups::member_name(&j.to_user().to_string());
        let e = members.entry(name).or_insert(state);
        *e = (*e).min(state);
    }
    let map: serde_json::Map<String, serde_json::Value> = members
        .into_iter()
        .map(|(k, s)| {
            let word = match s {
                crate::store::DeviceReceipt::Sent => "sent",
                crate::store::DeviceReceipt::Delivered => "delivered",
                crate::store::DeviceReceipt::Read => "read",
            };
            (k, word.into())
        })
        .collect();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("members".into(), map.into());
    }
    Ok(())
}

/// The status object for an outbox row.
pub fn status_json(row: &OutboxRow) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": row.id,
        "kind": ContentKind::from_byte(row.kind).as_str(),
        "status": row.status.as_str(),
        "updated_at": rfc3339(row.updated_ms),
    });
    if let Some(obj) = v.as_object_mut() {
        match crate::group::GroupId::parse_jid(&row.to) {
            Ok(g) => obj.insert("group".into(), g.as_str().into()),
            Err(_) => obj.insert("to".into(), format!("+{}", row.to).into()),
        };
    }
    if row.status == OutboxStatus::Failed || !row.error_code.is_empty() {
        let code = if row.error_code.is_empty() {
            "failed"
        } else {
            row.error_code.as_str()
        };
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "error".into(),
                serde_json::json!({"code": code, "message": error_message(code)}),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_status_carries_code_and_sentence() {
        let row = OutboxRow {
            id: "3EB0AA".into(),
            to: "15550100".into(),
            kind: ContentKind::Text.to_byte(),
            status: OutboxStatus::Failed,
            created_ms: 0,
            updated_ms: 1000,
            error_code: "not_opted_in".into(),
            content: vec![],
            stanza: vec![],
        };
        let v = status_json(&row);
        assert_eq!(v["to"], "+15550100");
        assert_eq!(v["kind"], "text");
        assert_eq!(v["error"]["code"], "not_opted_in");
        assert!(v["error"]["message"].as_str().unwrap().contains("opted in"));
        assert_eq!(v["updated_at"], "1970-01-01T00:00:01.000Z");
    }
}
