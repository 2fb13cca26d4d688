//! `POST /v1/media` (send a blob) and `GET /v1/media/{id}` (fetch a received one).
//!
//! A send streams the request body through [`media_pipe::encrypt_body`] into a private
//! temporary file, checks the media quota, persists the blob under a fresh random id (the
//! media host serves it at `{public_url}/m/{hex}`), and only then opens ONE store transaction
//! with the outbox row (the content protobuf naming that URL), the blob's media row and the
//! `Idempotency-Key` record; `202` follows the commit. A crash between persisting and the
//! commit leaves a file without a row, which the media store's sweep deletes.
//!
//! A fetch serves received plaintext with the Content-Type its sender announced, whole or one
//! byte range, and answers 404 for ids that are unknown, outgoing, or past their retention.
//!
//! This file owns the two routes' validation and response shapes. It does not own the blob
//! format (`media_crypto.rs`), the pipe (`media_pipe.rs`) or the files (`media_store.rs`).

use std::rc::Rc;

use super::messages::{self, bad, commit_queued, new_message_id, queued_row, replayed};
use super::{Api, body_error, now_ms, store_error};
use crate::content;
use crate::http::{HttpError, Request, Response};
use crate::media_crypto::MEDIA_KEY_BYTES;
use crate::media_host;
use crate::media_meta::MAX_REPORTED_SECONDS;
use crate::media_pipe::{self, PipeError, SendKind};
use crate::media_store::{self, Direction, MediaId, MediaRow, MediaStoreError};

/// Longest caption, in bytes of UTF-8.
pub const MAX_CAPTION_BYTES: usize = 4096;
/// Longest file name of a `file`, in bytes of UTF-8.
pub const MAX_FILENAME_BYTES: usize = 255;
/// Longest `Content-Type` taken as a mimetype, in bytes (what a media row holds).
pub const MAX_MIMETYPE_BYTES: usize = media_store::MAX_MEDIA_MIMETYPE_BYTES;
/// Largest request body the API server must let through to this route, in bytes: the largest
/// per-kind limit. The daemon sets `ServeOptions::max_body_bytes` to at least this.
pub const MAX_MEDIA_BODY_BYTES: u64 = media_pipe::MAX_UPLOAD_BYTES;

/// A `type/subtype[; parameters]` value made of visible ASCII and spaces.
fn valid_mimetype(m: &str) -> bool {
    let essence = m.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    m.len() <= MAX_MIMETYPE_BYTES
        && m.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s))
}

/// A file name: not empty, no path separators, no control characters.
fn valid_filename(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= MAX_FILENAME_BYTES
        && f != "."
        && f != ".."
        && !f.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// The answer to a media store failure: 507 for the quota, else 503.
fn media_store_error(e: &MediaStoreError) -> Response {
    match e {
        MediaStoreError::QuotaExceeded { used, extra, quota } => Response::json_error(
            507,
            "quota_exceeded",
            &format!(
                "the media store is full: {used} of {quota} bytes used, this blob needs {extra}"
            ),
        ),
        other => {
            log::error!("API: media store: {other}");
            Response::json_error(
                503,
                "media_store_unavailable",
                "the media store is unavailable",
            )
        }
    }
}

/// The answer to a failed upload.
fn pipe_error(e: &PipeError) -> Response {
    match e {
        PipeError::TooLarge { max_bytes } => Response::json_error(
            413,
            "media_too_large",
            &format!("this kind of media is limited to {max_bytes} bytes"),
        ),
        PipeError::EmptyBody => bad("empty_body", "the media body is empty"),
        PipeError::NotOggOpus { detail } => Response::json_error(
            415,
            "unsupported_media",
            &format!("a voice note must be Ogg/Opus ({detail})"),
        ),
        PipeError::Body { source } => match source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<HttpError>())
        {
            Some(h) => body_error(h),
            None => bad("bad_body", "the request body could not be read"),
        },
        other => {
            log::error!("API: media upload: {other}");
            Response::json_error(
                503,
                "media_store_unavailable",
                "the media store is unavailable",
            )
        }
    }
}

/// The validated query of a send (a trigger with an image builds one from its config).
pub(crate) struct SendQuery {
    /// The outbox recipient: a phone's digits, or `{id}@g.us` for a group.
    pub(crate) recipient: String,
    pub(crate) kind: SendKind,
    pub(crate) mimetype: String,
    pub(crate) caption: Option<String>,
    pub(crate) filename: Option<String>,
    pub(crate) seconds: Option<u32>,
}

fn send_query(api: &Api, req: &Request) -> Result<SendQuery, Response> {
    for name in ["to", "group", "kind"] {
        if req.query_param_count(name) > 1 {
            return Err(bad(
                "repeated_parameter",
                &format!("give '{name}' once; it was given more than once"),
            ));
        }
    }
    // The phone is checked here (`Ok(digits)`), the group (`Err(id)`, a store read) once the
    // rest is valid.
    let to = match (req.query_param("to"), req.query_param("group")) {
        (Some(_), Some(_)) => return Err(bad("to_and_group", "give 'to' or 'group', not both")),
        (None, None) => {
            return Err(bad(
                "missing_to",
                "the recipient goes in ?to=%2B<digits> or ?group=<id>",
            ));
        }
        (None, Some(g)) => Err(g),
        (Some(to), None) => match super::query_phone(&to) {
            Some(digits) => Ok(digits),
            None => {
                return Err(bad(
                    "bad_phone",
                    "'to' must be an E.164 number such as +4915112345678",
                ));
            }
        },
    };
    let kind = match req.query_param("kind").as_deref().map(SendKind::parse) {
        Some(Some(k)) => k,
        _ => {
            return Err(bad(
                "bad_kind",
                "'kind' must be one of image, voice, audio, video, file",
            ));
        }
    };
    let mimetype = match req.header("content-type").map(str::trim) {
        None | Some("") => {
            return Err(Response::json_error(
                415,
                "missing_content_type",
                "send the media's mimetype as Content-Type",
            ));
        }
        Some(m) if valid_mimetype(m) => m.to_string(),
        Some(_) => {
            return Err(Response::json_error(
                415,
                "unsupported_media_type",
                "Content-Type must be a mimetype such as image/jpeg",
            ));
        }
    };
    let caption = req.query_param("caption").filter(|c| !c.is_empty());
    if let Some(c) = &caption {
        if matches!(kind, SendKind::Voice | SendKind::Audio) {
            return Err(bad(
                "caption_not_supported",
                "voice notes and audio carry no caption",
            ));
        }
        if c.len() > MAX_CAPTION_BYTES {
            return Err(bad(
                "caption_too_long",
                &format!("'caption' is limited to {MAX_CAPTION_BYTES} bytes"),
            ));
        }
    }
    // The file name travels only with a file; other kinds ignore it.
    let filename = match req.query_param("filename") {
        Some(f) if kind == SendKind::File => {
            if !valid_filename(&f) {
                return Err(bad(
                    "bad_filename",
                    "'filename' must be 1 to 255 bytes with no '/', '\\' or control characters",
                ));
            }
            Some(f)
        }
        _ => None,
    };
    let seconds = match req.query_param("seconds") {
        None => None,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if u64::from(n) <= MAX_REPORTED_SECONDS => Some(n),
            _ => {
                return Err(bad(
                    "bad_seconds",
                    &format!("'seconds' must be an integer from 0 to {MAX_REPORTED_SECONDS}"),
                ));
            }
        },
    };
    let recipient = match to {
        Ok(digits) => digits,
        Err(group) => messages::group_recipient(api, &group)?,
    };
    Ok(SendQuery {
        recipient,
        kind,
        mimetype,
        caption,
        filename,
        seconds,
    })
}

/// `POST /v1/media?to=…|group=…&kind=…[&caption=…][&filename=…][&seconds=…]`.
pub async fn send(api: &Rc<Api>, mut req: Request) -> Response {
    let key = match messages::idempotency_key(&req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let q = match send_query(api, &req) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let declared = req.body.declared_len();
    send_stream(api, key, &q, &mut req.body, declared).await
}

/// A send of `body` (at most `declared` bytes when known) as `q` says, under `key`: the
/// route's path from the replay check to the 202. Triggers with an image use it too.
pub(crate) async fn send_stream<R: futures_lite::AsyncRead + Unpin>(
    api: &Rc<Api>,
    key: Option<String>,
    q: &SendQuery,
    body: &mut R,
    declared: Option<u64>,
) -> Response {
    let Some(public_url) = api.media_public_url.clone() else {
        return Response::json_error(
            503,
            "media_host_off",
            "sending media needs the media host ([media] listen and public_url)",
        );
    };
    // A retry of a send that already committed gets its id without uploading again.
    match api.store.begin() {
        Ok(txn) => {
            if let Some(r) = replayed(api, &txn, key.as_deref()) {
                return r;
            }
        }
        Err(e) => return store_error(&e),
    }
    let max_bytes = q.kind.max_plaintext_bytes();
    if let Some(len) = declared
        && len > max_bytes
    {
        return pipe_error(&PipeError::TooLarge { max_bytes });
    }
    if let Err(e) = api
        .media
        .check_quota(media_pipe::blob_len_bound(declared.unwrap_or(0)))
    {
        return media_store_error(&e);
    }

    let mut rng = rand::rng();
    let mut temp = match api.media.create_temp(&mut rng) {
        Ok(t) => t,
        Err(e) => return media_store_error(&e),
    };
    let mut media_key = [0u8; MEDIA_KEY_BYTES];
    rand::Rng::fill_bytes(&mut rng, &mut media_key);
    let mut facts =
        match media_pipe::encrypt_body(body, q.kind, max_bytes, &media_key, temp.file()).await {
            Ok(f) => f,
            Err(e) => return pipe_error(&e),
        };
    if q.seconds.is_some() {
        facts.seconds = q.seconds;
    }
    if let Err(e) = api.media.check_quota(facts.blob_len) {
        return media_store_error(&e);
    }

    let media_id = MediaId::random(&mut rng);
    let now = now_ms();
    let msg = media_pipe::media_message(
        q.kind,
        &facts,
        &q.mimetype,
        &media_host::blob_url(&public_url, &media_id),
        &media_host::blob_path(&media_id),
        q.caption.as_deref(),
        q.filename.as_deref(),
        i64::try_from(now / 1000).unwrap_or(i64::MAX),
    );
    let bytes = prost::Message::encode_to_vec(&msg);
    if bytes.len() > content::MAX_BODY_BYTES {
        return Response::json_error(
            413,
            "caption_too_long",
            &format!(
                "the encoded message is {} bytes, over the limit of {}",
                bytes.len(),
                content::MAX_BODY_BYTES
            ),
        );
    }
    let blob_len = match api.media.persist(temp, Direction::Outgoing, &media_id) {
        Ok(len) => len,
        Err(e) => return media_store_error(&e),
    };
    let (committed, response) = queue(api, key.as_deref(), q, &media_id, blob_len, now, bytes);
    if !committed {
        // A failed commit, or another request with the same key won: no row names this blob.
        if let Err(e) = api.media.remove(Direction::Outgoing, &media_id) {
            log::warn!("API: removing an unsent media blob: {e}");
        }
    }
    response
}

/// The one transaction of a send: outbox row, media row, idempotency record. Returns whether
/// it committed, and the answer.
fn queue(
    api: &Rc<Api>,
    key: Option<&str>,
    q: &SendQuery,
    media_id: &MediaId,
    blob_len: u64,
    now: u64,
    content: Vec<u8>,
) -> (bool, Response) {
    let txn = match api.store.begin() {
        Ok(t) => t,
        Err(e) => return (false, store_error(&e)),
    };
    if let Some(r) = replayed(api, &txn, key) {
        return (false, r);
    }
    let row = queued_row(
        new_message_id(api, now),
        &q.recipient,
        q.kind.content_kind(),
        now,
        content,
    );
    let media_row = MediaRow {
        direction: Direction::Outgoing,
        len: blob_len,
        created_ms: now,
        expires_ms: now.saturating_add(api.media_blob_expiry_ms),
        mimetype: q.mimetype.clone(),
        message_id: row.id.clone(),
    };
    let committed = commit_queued(api, txn, key, &row, |txn| {
        media_store::put_row(txn, media_id, &media_row)
    });
    match committed {
        // 429 outbox_full commits nothing: the blob is removed like after a failed commit.
        Ok(r) => (r.status == 202, r),
        Err(e) => (false, store_error(&e)),
    }
}

fn not_found() -> Response {
    Response::json_error(404, "unknown_media", "no received media with this id")
}

/// `GET /v1/media/{id}`: received plaintext, whole or one `Range`.
pub fn fetch(api: &Rc<Api>, req: &Request, id: &str) -> Response {
    let Some(media_id) = MediaId::parse_hex(id) else {
        return not_found();
    };
    let row = match api
        .store
        .begin()
        .and_then(|txn| media_store::get_row(&txn, &media_id))
    {
        Ok(Some(row)) => row,
        Ok(None) => return not_found(),
        Err(e) => return store_error(&e),
    };
    if row.direction != Direction::Incoming || row.expires_ms <= now_ms() {
        return not_found();
    }
    let (file, len) = match api.media.open_file(Direction::Incoming, &media_id) {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(),
        Err(e) => return media_store_error(&e),
    };
    let mimetype = if valid_mimetype(&row.mimetype) {
        row.mimetype.as_str()
    } else {
        "application/octet-stream"
    };
    let etag = format!("\"{}\"", media_id.to_hex());
    media_host::file_response(&req.head, file, len, mimetype, Some(&etag))
        .with_header("Cache-Control", "private, no-store")
        .with_header("X-Content-Type-Options", "nosniff")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mimetypes_need_type_and_subtype_and_printable_bytes() {
        for ok in [
            "image/jpeg",
            "audio/ogg; codecs=opus",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ] {
            assert!(valid_mimetype(ok), "{ok}");
        }
        for bad in [
            "",
            "image",
            "/jpeg",
            "image/",
            "image/jpeg\r\nX: y",
            "a b/c",
        ] {
            assert!(!valid_mimetype(bad), "{bad:?}");
        }
    }

    #[test]
    fn file_names_refuse_paths_and_control_characters() {
        assert!(valid_filename("report 2026.pdf"));
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", &"x".repeat(256)] {
            assert!(!valid_filename(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_body_limit_is_the_largest_kind_limit() {
        let largest = SendKind::ALL
            .iter()
            .map(|k| k.max_plaintext_bytes())
            .max()
            .unwrap_or(0);
        assert_eq!(MAX_MEDIA_BODY_BYTES, largest);
        const { assert!(MAX_MEDIA_BODY_BYTES >= 1 << 30, "a 1 GiB file must fit") };
    }

    #[test]
    fn upload_errors_map_to_their_statuses() {
        assert_eq!(
            pipe_error(&PipeError::TooLarge { max_bytes: 1 }).status,
            413
        );
        assert_eq!(pipe_error(&PipeError::EmptyBody).status, 400);
        assert_eq!(
            pipe_error(&PipeError::NotOggOpus { detail: "x" }).status,
            415
        );
        let timeout = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            HttpError::Timeout { phase: "body" },
        );
        assert_eq!(pipe_error(&PipeError::Body { source: timeout }).status, 408);
        let full = MediaStoreError::QuotaExceeded {
            used: 1,
            extra: 2,
            quota: 2,
        };
        assert_eq!(media_store_error(&full).status, 507);
    }
}
