//! Receiving: `GET /v1/inbox` (long-poll by cursor), `POST /v1/inbox/{cursor}/read` (mark a
//! message read, which makes the link send the read receipt), and `GET /v1/events` (SSE from
//! the durable event log, resumable with `Last-Event-ID`). Also the JSON shapes of the message
//! and event objects, shared with the webhook worker.
//!
//! Waiting never holds a store transaction: a waiter makes an [`EventBus`] listener, reads the
//! store, and sleeps on the listener only if nothing new was there.
//!
//! [`EventBus`]: crate::events::EventBus

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{FutureExt as _, stream};
use smol::Timer;

use super::{Api, now_ms, rfc3339, store_error};
use crate::content::{ContentKind, Message};
use crate::events::Event;
use crate::http::{Body, Request, Response};
use crate::media_pipe::{self, MediaFailure, MediaInfo};
use crate::media_store;
use crate::store::{InboxRow, Reader, StoreError, Txn};

/// Messages per inbox page when `limit` is absent.
pub const DEFAULT_INBOX_LIMIT: usize = 50;
/// Largest `limit` for one inbox page; a larger one gets 400.
pub const MAX_INBOX_LIMIT: usize = 500;
/// Largest cursor or event id the API takes: `i64::MAX`, so that clients whose integers are
/// signed 64-bit (Java, Go's `int64`, SQL) hold every value. Larger ones get 400.
pub const MAX_CURSOR: u64 = i64::MAX as u64;
/// Events read from the log per SSE batch.
pub const SSE_BATCH_EVENTS: usize = 100;
/// Row version of a `read_marks` value (docs/store.md).
pub const READ_MARK_ROW_VERSION: u8 = 1;

/// The message object of the inbox, SSE and webhooks. `txn` is read for the `media` object of
/// a media message.
pub fn message_json(
    txn: &Txn,
    cursor: u64,
    row: &InboxRow,
) -> Result<serde_json::Value, StoreError> {
    let msg: Option<Message> = prost::Message::decode(row.content.as_slice()).ok();
    let kind = msg.as_ref().map_or(ContentKind::Unknown, Message::kind);
    let mut v = serde_json::json!({
        "cursor": cursor,
        "id": row.id,
        "from": format!("+{}", row.from),
        "t": row.t_secs,
        "kind": kind.as_str(),
    });
    if !row.group.is_empty()
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("group".into(), row.group.as_str().into());
    }
    if let (Some(obj), Some(m)) = (v.as_object_mut(), msg.as_ref()) {
        if let Some(text) = m.text_body() {
            obj.insert("text".into(), text.into());
        }
        if let Some(r) = m.reply_to() {
            obj.insert("reply_to".into(), r.into());
        }
        if let Some(r) = &m.reaction_message {
            if let Some(text) = &r.text {
                obj.insert("text".into(), text.as_str().into());
            }
            if let Some(id) = r.key.as_ref().and_then(|k| k.id.as_ref()) {
                obj.insert("reply_to".into(), id.as_str().into());
            }
        }
        if let Some((id, text)) = m.edit_of() {
            obj.insert("edits".into(), id.into());
            if let Some(t) = text {
                obj.insert("text".into(), t.into());
            }
        }
        if let Some(id) = m.revoke_of() {
            obj.insert("revokes".into(), id.into());
        }
        if let Some(loc) = &m.location_message {
            obj.insert("location".into(), location_json(loc));
        }
        if let Some(c) = correlation(txn, row, m)? {
            obj.insert("correlation".into(), c.into());
        }
        // The latest state of this message itself, after the sender edited or deleted it.
        let dedupe = format!("{}@{}|{}", row.from, crate::jid::WHATSAPP_SERVER, row.id);
        if let Some(n) = txn.note(&dedupe)? {
            if n.revoked {
                obj.remove("text");
            } else if n.edited {
                obj.insert("text".into(), n.text.as_str().into());
            }
            obj.insert("edited".into(), n.edited.into());
            obj.insert("revoked".into(), n.revoked.into());
        }
        if let Some(info) = media_pipe::media_info(m) {
            if let Some(caption) = &info.caption {
                obj.insert("text".into(), caption.as_str().into());
            }
            obj.insert("media".into(), media_json(txn, row, &info, now_ms())?);
        }
    }
    Ok(v)
}

/// The `location` object of a received location: `lat`, `lon`, and `name` and `address`
/// when given. Degrees that are absent or not finite read as 0 (JSON has no NaN).
fn location_json(loc: &crate::content::LocationMessage) -> serde_json::Value {
    let deg = |d: Option<f64>| d.filter(|d| d.is_finite()).unwrap_or(0.0);
    let mut v = serde_json::json!({
        "lat": deg(loc.degrees_latitude),
        "lon": deg(loc.degrees_longitude),
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(n) = &loc.name {
            obj.insert("name".into(), n.as_str().into());
        }
        if let Some(a) = &loc.address {
            obj.insert("address".into(), a.as_str().into());
        }
    }
    v
}

/// The correlation of the message that `m` replies or reacts to, when that is a message we
/// sent to the same contact with one. Asking the contact is what makes the answer count: a
/// stranger who learns the id gets nothing.
fn correlation(txn: &Txn, row: &InboxRow, m: &Message) -> Result<Option<String>, StoreError> {
    let Some(target) = m.refers_to() else {
        return Ok(None);
    };
    match txn.outbox_by_id(target)? {
        Some((_, ours)) if ours.to == row.from => {}
        _ => return Ok(None),
    }
    Ok(txn
        .note(target)?
        .map(|n| n.correlation)
        .filter(|c| !c.is_empty()))
}

/// The `media` object of a received media message: where to fetch it once its download
/// finished, or why it never will be (`error`).
///
/// The link puts a media message in the inbox only after its blob was verified and stored
/// (an Incoming media row under [`media_pipe::incoming_media_id`]) or failed for good (a
/// [`media_pipe::record_media_failure`] note; none means "unavailable").
pub fn media_json(
    txn: &Txn,
    row: &InboxRow,
    info: &MediaInfo,
    now_ms: u64,
) -> Result<serde_json::Value, StoreError> {
    let id = media_pipe::incoming_media_id(&row.from, &row.id);
    let stored =
        media_store::get_row(txn, &id)?.filter(|r| r.direction == media_store::Direction::Incoming);
    let mut v = serde_json::Map::new();
    let failure = match &stored {
        Some(r) if r.expires_ms > now_ms => {
            v.insert("id".into(), id.to_hex().into());
            v.insert("url".into(), format!("/v1/media/{}", id.to_hex()).into());
            None
        }
        Some(_) => Some((
            "media_expired",
            "the media passed its retention time and was deleted",
        )),
        None => {
            let f = media_pipe::media_failure(txn, &id)?.unwrap_or(MediaFailure::Unavailable);
            Some((f.code(), f.message()))
        }
    };
    let (mimetype, size) = match &stored {
        Some(r) => (r.mimetype.as_str(), r.len),
        None => (info.mimetype.as_str(), info.file_length),
    };
    v.insert("mimetype".into(), mimetype.into());
    v.insert("size".into(), size.into());
    if let Some(f) = &info.filename {
        v.insert("filename".into(), f.as_str().into());
    }
    if let Some(s) = info.seconds {
        v.insert("seconds".into(), s.into());
    }
    if let Some((code, message)) = failure {
        v.insert(
            "error".into(),
            serde_json::json!({"code": code, "message": message}),
        );
    }
    Ok(serde_json::Value::Object(v))
}

/// The JSON data of a logged event, or `None` if what it names is gone.
pub fn event_json(txn: &Txn, event: &Event) -> Result<Option<serde_json::Value>, StoreError> {
    match event {
        Event::Message { cursor } => match txn.inbox_get(*cursor)? {
            Some(r) => message_json(txn, *cursor, &r).map(Some),
            None => Ok(None),
        },
        Event::Status {
            id,
            status,
            error_code,
            updated_ms,
        } => {
            let mut v = match txn.outbox_by_id(id)? {
                Some((_, row)) => super::messages::status_json(&row),
                None => serde_json::json!({"id": id}),
            };
            if let Some(obj) = v.as_object_mut() {
                // The event reports the status at the time of the event, not the current one.
                obj.insert("status".into(), status.as_str().into());
                obj.insert("updated_at".into(), rfc3339(*updated_ms).into());
                obj.remove("error");
                if !error_code.is_empty() {
                    obj.insert(
                        "error".into(),
                        serde_json::json!({
                            "code": error_code,
                            "message": super::messages::error_message(error_code),
                        }),
                    );
                }
            }
            Ok(Some(v))
        }
        Event::Identity {
            user,
            device,
            previous,
            current,
            held,
            at_ms,
        } => Ok(Some(serde_json::json!({
            "phone": format!("+{user}"),
            "device": device,
            "previous_fingerprint": crate::signal::fingerprint(previous, user),
            "fingerprint": crate::signal::fingerprint(current, user),
            "held": held,
            "changed_at": rfc3339(*at_ms),
        }))),
        Event::Group {
            group,
            change,
            members,
            at_ms,
        } => Ok(Some(serde_json::json!({
            "group": group,
            "change": change,
            "members": members.iter().map(|m| super::groups::member_name(m)).collect::<Vec<_>>(),
            "at": rfc3339(*at_ms),
        }))),
        Event::Typing {
            user,
            composing,
            at_ms,
        } => Ok(Some(serde_json::json!({
            "phone": format!("+{user}"),
            "state": if *composing { "composing" } else { "paused" },
            "at": rfc3339(*at_ms),
        }))),
    }
}

/// A decimal integer from `min` to `max`, written as digits only (no sign, no spaces), or the
/// 400 that names `what`. The OpenAPI document states the same ranges.
pub(crate) fn parse_bounded(text: &str, min: u64, max: u64, what: &str) -> Result<u64, Response> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Response::json_error(
                400,
                "bad_query",
                &format!("'{what}' must be an integer from {min} to {max}"),
            )
        })
}

fn bounded_param(req: &Request, name: &str, min: u64, max: u64) -> Result<Option<u64>, Response> {
    req.query_param(name)
        .map(|v| parse_bounded(&v, min, max, name))
        .transpose()
}

/// `GET /v1/inbox?after=CURSOR&limit=N&wait=SECONDS`.
pub async fn long_poll(api: &Rc<Api>, req: &Request) -> Response {
    let (after, limit, wait) = match (
        bounded_param(req, "after", 0, MAX_CURSOR),
        bounded_param(req, "limit", 1, MAX_INBOX_LIMIT as u64),
        bounded_param(req, "wait", 0, api.limits.max_long_poll_wait_secs),
    ) {
        (Ok(a), Ok(l), Ok(w)) => (
            a.unwrap_or(0),
            // INVARIANT: `l` is at most MAX_INBOX_LIMIT, which is a usize.
            l.map_or(DEFAULT_INBOX_LIMIT, |l| {
                usize::try_from(l).unwrap_or(MAX_INBOX_LIMIT)
            }),
            w.unwrap_or(0),
        ),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let listener = api.bus.listen();
        let page = api.store.begin().and_then(|txn| {
            let rows = txn.inbox_after(after, limit)?;
            if rows.is_empty() && Instant::now() < deadline {
                return Ok(None);
            }
            let next = rows.last().map_or(after, |(c, _)| *c);
            let messages = rows
                .iter()
                .map(|(c, r)| message_json(&txn, *c, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(
                serde_json::json!({"messages": messages, "next": next}),
            ))
        });
        match page {
            Ok(Some(body)) => return Response::json(200, &body),
            Ok(None) => {}
            Err(e) => return store_error(&e),
        }
        async {
            listener.await;
        }
        .or(async {
            Timer::at(deadline).await;
        })
        .await;
    }
}

/// A consumer's request to mark an inbox message read, kept until the link has sent the
/// read receipt. The store deletes it with the inbox row (`Txn::inbox_remove`), so there is
/// at most one per inbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    /// The inbox cursor of the message.
    pub cursor: u64,
    /// The sender's phone digits.
    pub from: String,
    /// The message id.
    pub id: String,
    /// When the consumer asked, ms since the epoch.
    pub requested_ms: u64,
    /// When the link sent the receipt (0: not yet).
    pub sent_ms: u64,
}

impl ReadMark {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![READ_MARK_ROW_VERSION];
        v.extend_from_slice(&self.requested_ms.to_be_bytes());
        v.extend_from_slice(&self.sent_ms.to_be_bytes());
        for s in [&self.from, &self.id] {
            v.extend_from_slice(&(s.len() as u32).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v
    }

    fn decode(cursor: u64, b: &[u8]) -> Result<ReadMark, StoreError> {
        let mut r = Reader::new(b, "read_marks");
        r.version(READ_MARK_ROW_VERSION)?;
        let requested_ms = r.u64()?;
        let sent_ms = r.u64()?;
        let from = r.string()?;
        let id = r.string()?;
        r.end()?;
        Ok(ReadMark {
            cursor,
            from,
            id,
            requested_ms,
            sent_ms,
        })
    }
}

/// For the link: read marks whose receipt is not sent yet, in cursor order, at most `limit`.
/// Call it after each login and send a `<receipt type="read">` for each.
pub fn pending_read_marks(txn: &Txn, limit: usize) -> Result<Vec<ReadMark>, StoreError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = txn.read_marks(after, 256)?;
        let Some((last, _)) = batch.last() else {
            return Ok(out);
        };
        after = *last;
        for (cursor, row) in batch {
            let mark = ReadMark::decode(cursor, &row)?;
            if mark.sent_ms == 0 {
                out.push(mark);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
}

/// For the link: records that the read receipt for inbox `cursor` was sent (acked by the
/// server), in the caller's transaction. Unknown cursors are ignored.
pub fn read_mark_sent(txn: &Txn, cursor: u64, now_ms: u64) -> Result<(), StoreError> {
    if let Some(row) = txn.read_mark(cursor)? {
        let mut mark = ReadMark::decode(cursor, &row)?;
        mark.sent_ms = now_ms.max(1);
        txn.put_read_mark(cursor, &mark.encode())?;
    }
    Ok(())
}

/// `POST /v1/inbox/{cursor}/read`.
pub fn mark_read(api: &Rc<Api>, cursor: &str) -> Response {
    let cursor = match parse_bounded(cursor, 1, MAX_CURSOR, "cursor") {
        Ok(c) => c,
        Err(_) => {
            return Response::json_error(
                400,
                "bad_cursor",
                &format!("the cursor must be an integer from 1 to {MAX_CURSOR}"),
            );
        }
    };
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    let row = match txn.inbox_get(cursor) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Response::json_error(404, "unknown_cursor", "no inbox message at this cursor");
        }
        Err(e) => return store_error(&e),
    };
    let existing = match txn.read_mark(cursor) {
        Ok(e) => e,
        Err(e) => return store_error(&e),
    };
    if existing.is_none() {
        let mark = ReadMark {
            cursor,
            from: row.from.clone(),
            id: row.id.clone(),
            requested_ms: now_ms(),
            sent_ms: 0,
        };
        if let Err(e) = txn.put_read_mark(cursor, &mark.encode()) {
            return store_error(&e);
        }
        if let Err(e) = api.metrics.commit(txn) {
            return store_error(&e);
        }
        api.link.mark_read(&row.from, &row.id);
    }
    Response::json(
        202,
        &serde_json::json!({"cursor": cursor, "id": row.id, "read": "queued"}),
    )
}

/// Counts an open SSE stream while alive.
struct SseGuard(Rc<Cell<usize>>);

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

struct SseState {
    api: Rc<Api>,
    after: u64,
    pending: VecDeque<Vec<u8>>,
    _guard: SseGuard,
}

/// Renders one SSE frame.
pub fn sse_frame(seq: u64, name: &str, data: &serde_json::Value) -> Vec<u8> {
    format!("id: {seq}\nevent: {name}\ndata: {data}\n\n").into_bytes()
}

/// `GET /v1/events`: every event after `Last-Event-ID` (or `?after=`), then live ones. Without
/// either, only events from now on.
pub fn events(api: &Rc<Api>, req: &Request) -> Response {
    // Both are checked when both are given, so a bad value is never hidden by a good one;
    // the header wins, as the SSE specification has it.
    let header = req.header("last-event-id").map(str::trim);
    let query = req.query_param("after");
    let mut resume = None;
    for v in [query.as_deref(), header].into_iter().flatten() {
        match parse_bounded(v, 0, MAX_CURSOR, "Last-Event-ID") {
            Ok(n) => resume = Some(n),
            Err(_) => {
                return Response::json_error(
                    400,
                    "bad_last_event_id",
                    "Last-Event-ID and 'after' must be an event id from this stream",
                );
            }
        }
    }
    let after = match resume {
        Some(n) => n,
        None => match api.store.begin().and_then(|t| t.last_event_seq()) {
            Ok(n) => n,
            Err(e) => return store_error(&e),
        },
    };
    if api.sse_clients.get() >= api.limits.max_sse_clients {
        return Response::json_error(
            429,
            "too_many_streams",
            "too many event streams are open; close one and retry",
        )
        .with_header("Retry-After", "5");
    }
    api.sse_clients.set(api.sse_clients.get() + 1);
    let state = SseState {
        api: Rc::clone(api),
        after,
        pending: VecDeque::from([b"retry: 2000\n\n".to_vec()]),
        _guard: SseGuard(Rc::clone(&api.sse_clients)),
    };
    let body = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((Ok(chunk), st));
            }
            let listener = st.api.bus.listen();
            match next_frames(&st.api, st.after) {
                Ok((frames, last)) => {
                    if last > st.after {
                        st.after = last;
                        st.pending.extend(frames);
                        continue;
                    }
                }
                Err(e) => {
                    log::error!("SSE: {e}");
                    return Some((Err(io::Error::other("store unavailable")), st));
                }
            }
            let keepalive = Duration::from_millis(st.api.limits.sse_keepalive_ms);
            let woke = async {
                listener.await;
                true
            }
            .or(async {
                Timer::after(keepalive).await;
                false
            })
            .await;
            if !woke {
                return Some((Ok(b": keep-alive\n\n".to_vec()), st));
            }
        }
    });
    Response::empty(200)
        .with_header("Content-Type", "text/event-stream")
        .with_header("Cache-Control", "no-store")
        .with_body(Body::Stream(Box::pin(body)))
}

/// Frames for the events after `after`, and the last sequence read.
fn next_frames(api: &Api, after: u64) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
    let txn = api.store.begin()?;
    let rows = txn.events_after(after, SSE_BATCH_EVENTS)?;
    let mut last = after;
    let mut frames = Vec::with_capacity(rows.len());
    for (seq, bytes) in rows {
        last = seq;
        let event = Event::decode(&bytes)?;
        if let Some(data) = event_json(&txn, &event)? {
            frames.push(sse_frame(seq, event.name(), &data));
        }
    }
    Ok((frames, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_integers_refuse_signs_spaces_and_values_out_of_range() {
        assert_eq!(parse_bounded("0", 0, MAX_CURSOR, "after").ok(), Some(0));
        assert_eq!(
            parse_bounded("9223372036854775807", 0, MAX_CURSOR, "after").ok(),
            Some(MAX_CURSOR)
        );
        for bad in [
            "-1",
            "+1",
            " 1",
            "1 ",
            "",
            "9223372036854775808",
            "1e3",
            "0x10",
        ] {
            assert!(
                parse_bounded(bad, 0, MAX_CURSOR, "after").is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_bounded("0", 1, 500, "limit").is_err());
        assert!(parse_bounded("501", 1, 500, "limit").is_err());
        assert!(parse_bounded("61", 0, 60, "wait").is_err());
        assert_eq!(parse_bounded("60", 0, 60, "wait").ok(), Some(60));
    }
    use crate::media_pipe::{SendKind, UploadFacts};
    use crate::media_store::{Direction, MediaRow};

    fn temp_store() -> (tempfile::TempDir, crate::store::Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(tmp.path()).unwrap();
        (tmp, store)
    }

    fn media_row(msg: &Message) -> InboxRow {
        InboxRow {
            group: String::new(),
            id: "3EB0MEDIA".into(),
            from: "15550100".into(),
            t_secs: 5,
            received_ms: 6,
            content: prost::Message::encode_to_vec(msg),
        }
    }

    fn document() -> Message {
        let facts = UploadFacts {
            media_key: [1; 32],
            file_sha256: [2; 32],
            file_enc_sha256: [3; 32],
            file_length: 1234,
            blob_len: 1258,
            width: None,
            height: None,
            seconds: None,
        };
        media_pipe::media_message(
            SendKind::File,
            &facts,
            "application/pdf",
            "https://mmg.example/d/1",
            "/d/1",
            Some("minutes"),
            Some("minutes.pdf"),
            0,
        )
    }

    #[test]
    fn downloaded_media_renders_its_local_url_and_the_stored_size() {
        let (_tmp, store) = temp_store();
        let txn = store.begin().unwrap();
        let row = media_row(&document());
        let id = media_pipe::incoming_media_id(&row.from, &row.id);
        let stored = MediaRow {
            direction: Direction::Incoming,
            len: 1234,
            created_ms: 1,
            expires_ms: u64::MAX,
            mimetype: "application/pdf".into(),
            message_id: row.id.clone(),
        };
        media_store::put_row(&txn, &id, &stored).unwrap();
        let v = message_json(&txn, 9, &row).unwrap();
        assert_eq!(v["kind"], "file");
        assert_eq!(v["text"], "minutes");
        let m = &v["media"];
        assert_eq!(m["url"], format!("/v1/media/{}", id.to_hex()));
        assert_eq!(m["id"], id.to_hex());
        assert_eq!(m["mimetype"], "application/pdf");
        assert_eq!(m["size"], 1234);
        assert_eq!(m["filename"], "minutes.pdf");
        assert!(m.get("error").is_none());
    }

    #[test]
    fn media_without_a_stored_file_renders_an_error_and_no_url() {
        let (_tmp, store) = temp_store();
        let txn = store.begin().unwrap();
        let row = media_row(&document());
        let v = message_json(&txn, 9, &row).unwrap();
        assert!(v["media"].get("url").is_none());
        assert_eq!(v["media"]["error"]["code"], "media_unavailable");
        assert_eq!(v["media"]["size"], 1234);
        let id = media_pipe::incoming_media_id(&row.from, &row.id);
        media_pipe::record_media_failure(&txn, &id, MediaFailure::VerificationFailed).unwrap();
        let v = message_json(&txn, 9, &row).unwrap();
        assert_eq!(v["media"]["error"]["code"], "media_verification_failed");
    }

    #[test]
    fn text_messages_have_no_media_object() {
        let (_tmp, store) = temp_store();
        let row = media_row(&Message::text("hi"));
        let v = message_json(&store.begin().unwrap(), 1, &row).unwrap();
        assert!(v.get("media").is_none());
    }

    #[test]
    fn message_object_renders_text_and_reply() {
        let msg = Message::reply("hi", "3EB0AB", "1@s.whatsapp.net", None);
        let row = InboxRow {
            group: String::new(),
            id: "ABC".into(),
            from: "15550100".into(),
            t_secs: 5,
            received_ms: 6,
            content: prost::Message::encode_to_vec(&msg),
        };
        let (_tmp, store) = temp_store();
        let v = message_json(&store.begin().unwrap(), 3, &row).unwrap();
        assert_eq!(v["cursor"], 3);
        assert_eq!(v["from"], "+15550100");
        assert_eq!(v["kind"], "text");
        assert_eq!(v["text"], "hi");
        assert_eq!(v["reply_to"], "3EB0AB");
    }

    #[test]
    fn undecodable_content_renders_as_unknown_kind() {
        let row = InboxRow {
            group: String::new(),
            id: "X".into(),
            from: "1".into(),
            t_secs: 0,
            received_ms: 0,
            content: vec![0xff, 0xff, 0xff],
        };
        let (_tmp, store) = temp_store();
        let v = message_json(&store.begin().unwrap(), 1, &row).unwrap();
        assert_eq!(v["kind"], "unknown");
        assert!(v.get("text").is_none());
    }

    #[test]
    fn read_marks_round_trip_and_pending_ones_are_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(tmp.path()).unwrap();
        let txn = store.begin().unwrap();
        for cursor in 1..=3 {
            let m = ReadMark {
                cursor,
                from: "15550100".into(),
                id: format!("ID{cursor}"),
                requested_ms: 10,
                sent_ms: 0,
            };
            txn.put_read_mark(cursor, &m.encode()).unwrap();
        }
        read_mark_sent(&txn, 2, 99).unwrap();
        let pending = pending_read_marks(&txn, 10).unwrap();
        let ids: Vec<_> = pending.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["ID1", "ID3"]);
        assert_eq!(pending_read_marks(&txn, 1).unwrap().len(), 1);
    }

    #[test]
    fn sse_frames_carry_id_event_and_one_data_line() {
        let f = sse_frame(7, "status", &serde_json::json!({"id": "a\nb"}));
        let text = String::from_utf8(f).unwrap();
        assert_eq!(text, "id: 7\nevent: status\ndata: {\"id\":\"a\\nb\"}\n\n");
    }
}
