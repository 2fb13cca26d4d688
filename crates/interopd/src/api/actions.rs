//! Acting on an earlier message: `POST /v1/messages/{id}/reactions` (react to ours or
//! theirs), `PATCH /v1/messages/{id}` (edit our text within [`EDIT_WINDOW_MS`]) and
//! `DELETE /v1/messages/{id}` (delete ours for everyone); and `POST /v1/chats/{phone}/typing`,
//! which is not stored: it goes to the link at once or not at all.
//!
//! Each is one new outbox row, queued in the same transaction as the note it changes
//! (`message_notes`: the latest text, edited/revoked), and answered `202 {"id", "status"}`
//! like any send; the original row is never rewritten. Every refusal is a JSON error with
//! its own code and changes nothing.

use std::rc::Rc;

use serde::Deserialize;

use super::messages::{bad, commit_queued, idempotency_key, new_message_id, queued_row, replayed};
use super::{Api, MAX_JSON_BODY_BYTES, body_error, now_ms, store_error};
use crate::content::{self, ContentKind, Message, MessageKey, ReactionFault};
use crate::http::{Request, Response};
use crate::store::{OutboxRow, Txn};

/// How long after sending we may still edit a text, in milliseconds: WhatsApp's 15 minutes.
pub const EDIT_WINDOW_MS: u64 = 15 * 60 * 1000;
/// Typing notices in a burst, over all chats, before [`TYPING_PER_SEC`] applies (at the
/// default API rate; a raised `api.rate_burst_requests` raises it to a twentieth of that).
pub const TYPING_BURST: u32 = 5;
/// Typing notices per second, over all chats, after a burst.
pub const TYPING_PER_SEC: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingJson {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactJson {
    emoji: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditJson {
    text: String,
}

/// The message an action names, and the chat it lives in.
enum Target {
    /// One we sent: its row.
    Ours(OutboxRow),
    /// One we received: the sender's digits.
    Theirs { from: String },
}

fn find(txn: &Txn, id: &str) -> Result<Option<Target>, Response> {
    match txn.outbox_by_id(id) {
        Ok(Some((_, row))) => return Ok(Some(Target::Ours(row))),
        Ok(None) => {}
        Err(e) => return Err(store_error(&e)),
    }
    match txn.inbox_by_message_id(id) {
        Ok(Some((_, _, row))) => Ok(Some(Target::Theirs { from: row.from })),
        Ok(None) => Ok(None),
        Err(e) => Err(store_error(&e)),
    }
}

fn unknown() -> Response {
    Response::json_error(404, "unknown_message", "no message with this id")
}

fn whatsapp_jid(digits: &str) -> String {
    format!("{digits}@{}", crate::jid::WHATSAPP_SERVER)
}

/// The key naming our message `row` in its chat.
fn our_key(row: &OutboxRow) -> MessageKey {
    MessageKey {
        remote_jid: Some(whatsapp_jid(&row.to)),
        from_me: Some(true),
        id: Some(row.id.clone()),
        participant: None,
    }
}

/// Queues `msg` (of `kind`) to `digits`, runs `also` in the same transaction, answers 202.
fn queue(
    api: &Api,
    txn: Txn,
    key: Option<&str>,
    digits: &str,
    kind: ContentKind,
    msg: &Message,
    also: impl FnOnce(&Txn) -> Result<(), crate::store::StoreError>,
) -> Response {
    let now = now_ms();
    let row = queued_row(
        new_message_id(api, now),
        digits,
        kind,
        now,
        prost::Message::encode_to_vec(msg),
    );
    commit_queued(api, txn, key, &row, also).unwrap_or_else(|e| store_error(&e))
}

/// `POST /v1/messages/{id}/reactions {"emoji"}`; `""` removes our reaction.
pub async fn react(api: &Rc<Api>, req: Request, id: &str) -> Response {
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if req.head.content_type().as_deref() != Some("application/json") {
        return Response::json_error(415, "unsupported_media_type", "send application/json");
    }
    let body: ReactJson = match req.body.read_json(MAX_JSON_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    if let Some(r) = replayed(api, &txn, key.as_deref()) {
        return r;
    }
    let (digits, msg_key) = match find(&txn, id) {
        Err(r) => return r,
        Ok(None) => return unknown(),
        Ok(Some(Target::Ours(row))) => (row.to.clone(), our_key(&row)),
        Ok(Some(Target::Theirs { from })) => {
            let k = MessageKey {
                remote_jid: Some(whatsapp_jid(&from)),
                from_me: Some(false),
                id: Some(id.to_owned()),
                participant: None,
            };
            (from, k)
        }
    };
    match content::check_reaction(&body.emoji) {
        Ok(()) => {}
        Err(ReactionFault::TooLong { len }) => {
            return bad(
                "emoji_too_long",
                &format!(
                    "'emoji' is {len} bytes, over the limit of {}",
                    content::MAX_REACTION_BYTES
                ),
            );
        }
        Err(ReactionFault::NotOneGrapheme) => {
            return bad("bad_emoji", "'emoji' must be one emoji, or \"\" to remove");
        }
    }
    let ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    let msg = Message::reaction(msg_key, body.emoji, ms);
    queue(
        api,
        txn,
        key.as_deref(),
        &digits,
        ContentKind::Reaction,
        &msg,
        |_| Ok(()),
    )
}

/// Our text message `id`, open to an edit or a delete, or the refusal.
fn own_text(txn: &Txn, id: &str, action: &str) -> Result<OutboxRow, Response> {
    let row = match find(txn, id)? {
        None => return Err(unknown()),
        Some(Target::Theirs { .. }) => {
            return Err(Response::json_error(
                409,
                "not_our_message",
                &format!("only a message we sent can be {action}"),
            ));
        }
        Some(Target::Ours(row)) => row,
    };
    match txn.note(id) {
        Ok(Some(n)) if n.revoked => Err(Response::json_error(
            409,
            "message_revoked",
            "the message was deleted for everyone",
        )),
        Ok(_) => Ok(row),
        Err(e) => Err(store_error(&e)),
    }
}

/// `PATCH /v1/messages/{id} {"text"}`: edits our text message within [`EDIT_WINDOW_MS`].
pub async fn edit(api: &Rc<Api>, req: Request, id: &str) -> Response {
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if req.head.content_type().as_deref() != Some("application/json") {
        return Response::json_error(415, "unsupported_media_type", "send application/json");
    }
    let body: EditJson = match req.body.read_json(MAX_JSON_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    if body.text.is_empty() {
        return bad(
            "empty_text",
            "'text' must not be empty; DELETE removes a message",
        );
    }
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    if let Some(r) = replayed(api, &txn, key.as_deref()) {
        return r;
    }
    let row = match own_text(&txn, id, "edited") {
        Ok(r) => r,
        Err(r) => return r,
    };
    if ContentKind::from_byte(row.kind) != ContentKind::Text {
        return Response::json_error(409, "not_text", "only a text message can be edited");
    }
    let now = now_ms();
    if now.saturating_sub(row.created_ms) > EDIT_WINDOW_MS {
        return Response::json_error(
            409,
            "edit_window_closed",
            "a message can be edited for 15 minutes after it was sent",
        );
    }
    let ms = i64::try_from(now).unwrap_or(i64::MAX);
    let msg = Message::edit(our_key(&row), Message::text(body.text.clone()), ms);
    if prost::Message::encoded_len(&msg) > content::MAX_BODY_BYTES {
        return Response::json_error(413, "text_too_long", "the edited text is too long");
    }
    let (to, text) = (row.to.clone(), body.text);
    queue(
        api,
        txn,
        key.as_deref(),
        &to,
        ContentKind::Edit,
        &msg,
        |t| t.amend(id, Some(&text), now),
    )
}

/// `DELETE /v1/messages/{id}`: deletes our message for everyone.
pub fn revoke(api: &Rc<Api>, id: &str) -> Response {
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return store_error(&e),
    };
    let row = match own_text(&txn, id, "deleted for everyone") {
        Ok(r) => r,
        Err(r) => return r,
    };
    if matches!(
        ContentKind::from_byte(row.kind),
        ContentKind::Reaction | ContentKind::Edit | ContentKind::Revoke
    ) {
        return Response::json_error(
            409,
            "not_deletable",
            "a reaction, an edit or a delete cannot itself be deleted",
        );
    }
    let now = now_ms();
    let msg = Message::revoke(our_key(&row));
    queue(api, txn, None, &row.to, ContentKind::Revoke, &msg, |t| {
        t.amend(id, None, now)
    })
}

/// `POST /v1/chats/{phone}/typing {"state": "composing"|"paused"}`: shows typing now. Not
/// stored or queued; 503 `link_down` when the link cannot send it, 429 over the bucket.
pub async fn typing(api: &Rc<Api>, req: Request, phone: &str) -> Response {
    let Some(digits) = super::query_phone(phone) else {
        return bad(
            "bad_phone",
            "the path must end in an E.164 number such as %2B4915112345678",
        );
    };
    if req.head.content_type().as_deref() != Some("application/json") {
        return Response::json_error(415, "unsupported_media_type", "send application/json");
    }
    let body: TypingJson = match req.body.read_json(MAX_JSON_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let composing = match body.state.as_str() {
        "composing" => true,
        "paused" => false,
        _ => return bad("bad_state", "'state' must be \"composing\" or \"paused\""),
    };
    if let Err(wait_secs) = api.typing_rate.borrow_mut().check(now_ms()) {
        return Response::json_error(
            429,
            "typing_rate_limited",
            "too many typing notices; wait a moment",
        )
        .with_header("Retry-After", &wait_secs.to_string());
    }
    if !api.link.typing(&digits, composing) {
        return Response::json_error(
            503,
            "link_down",
            "the link is not up, so typing cannot be shown now (it is never queued)",
        );
    }
    Response::json(
        202,
        &serde_json::json!({"to": format!("+{digits}"), "state": body.state}),
    )
}
