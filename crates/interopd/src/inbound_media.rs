//! The daemon's receive side for media: a received media message is committed as a pending
//! row (`pending_inbox`, with its Signal session, before the ack), and this worker downloads
//! its blob from the URL it names, over TLS pinned like the link, checks it in DESIGN order
//! (fileEncSha256, MAC, decrypt, fileSha256), keeps the plaintext in the media store, and then
//! moves the message into the inbox together with its media row and its event, in one
//! transaction. So an API consumer never sees a media message whose file is not ready.
//!
//! A blob that fails verification, or a download that is still failing after
//! [`MAX_DOWNLOAD_ATTEMPTS`], puts the message in the inbox with a media error instead
//! (`media_verification_failed`, `media_unavailable`), never with unverified bytes. This file
//! owns the retry schedule; the download and the checks are [`crate::media_pipe`]'s, the files
//! [`crate::media_store`]'s.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::clock::now_ms;
use crate::content::Message;
use crate::events::EventBus;
use crate::media_pipe::{self, MediaFailure, MediaRef, PipeError};
use crate::media_store::{self, Direction, MediaRow, MediaStore};
use crate::store::{PendingInbox, Store, StoreError};

/// Longest one download (connect, handshake, request, whole body) may take, in milliseconds.
pub const DOWNLOAD_TIMEOUT_MS: u64 = 300_000;
/// Download attempts before a message is delivered with `media_unavailable`.
pub const MAX_DOWNLOAD_ATTEMPTS: u32 = 8;
/// Delay before retry number n (1-based; the last entry repeats), in milliseconds: 5 s, 30 s,
/// 2 min, 10 min, 1 h. Eight attempts span about four hours.
pub const DOWNLOAD_RETRY_SCHEDULE_MS: [u64; 5] = [5_000, 30_000, 120_000, 600_000, 3_600_000];
/// Pending messages looked at per pass.
pub const DOWNLOAD_BATCH: usize = 16;
/// Longest the worker sleeps between passes when nothing wakes it, in milliseconds.
const IDLE_POLL_MS: u64 = 5_000;

/// The worker's handle: the link wakes it when a media message was committed as pending.
#[derive(Default)]
pub struct InboundMedia {
    woken: Cell<bool>,
    wake: event_listener::Event,
}

impl InboundMedia {
    /// Asks the worker to look at pending messages now.
    pub fn wake(&self) {
        self.woken.set(true);
        self.wake.notify(usize::MAX);
    }
}

/// Everything the worker needs.
pub struct Parts {
    pub store: Rc<Store>,
    pub media: Rc<MediaStore>,
    pub bus: Rc<EventBus>,
    /// Client TLS config pinned like the link's.
    pub tls: Arc<rustls::ClientConfig>,
    /// How long received media is kept, in milliseconds.
    pub retention_ms: u64,
}

/// What became of one pending message.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Failed(MediaFailure),
    Retry,
}

/// Runs the worker forever.
pub async fn run(handle: Rc<InboundMedia>, parts: Parts) {
    loop {
        handle.woken.set(false);
        let next_due = match pass(&parts).await {
            Ok(next) => next,
            Err(e) => {
                log::error!("media: pending downloads unreadable: {e}");
                Some(now_ms().saturating_add(IDLE_POLL_MS))
            }
        };
        if handle.woken.get() {
            continue;
        }
        let listener = handle.wake.listen();
        if handle.woken.get() {
            continue;
        }
        let wait_ms = next_due
            .map(|t| t.saturating_sub(now_ms()))
            .unwrap_or(IDLE_POLL_MS)
            .min(IDLE_POLL_MS);
        let timer = async {
            smol::Timer::after(Duration::from_millis(wait_ms)).await;
        };
        listener.or(timer).await;
    }
}

/// Works through the due pending messages; returns when the next one falls due, if any.
async fn pass(parts: &Parts) -> Result<Option<u64>, StoreError> {
    let pending = parts.store.begin()?.pending_inbox(DOWNLOAD_BATCH)?;
    let mut next_due: Option<u64> = None;
    for (key, p) in pending {
        let now = now_ms();
        if p.next_ms > now {
            next_due = Some(next_due.map_or(p.next_ms, |t| t.min(p.next_ms)));
            continue;
        }
        let outcome = fetch(parts, &p).await;
        finish(parts, &key, p, outcome)?;
    }
    Ok(next_due)
}

/// Downloads, verifies and stores one message's media.
async fn fetch(parts: &Parts, p: &PendingInbox) -> Outcome {
    let Ok(message) = <Message as prost::Message>::decode(p.row.content.as_slice()) else {
        return Outcome::Failed(MediaFailure::Unavailable);
    };
    let Some(r) = media_pipe::media_ref(&message) else {
        return Outcome::Failed(MediaFailure::Unavailable);
    };
    let id = media_pipe::incoming_media_id(&p.row.from, &p.row.id);
    match download_verified(parts, &r, &id).await {
        Ok(len) => {
            log::info!(
                "media: message {} from {}: {len} bytes verified",
                p.row.id,
                p.row.from
            );
            Outcome::Delivered
        }
        Err(e) if e.is_permanent() => {
            log::warn!("media: message {} from {}: {e}", p.row.id, p.row.from);
            Outcome::Failed(MediaFailure::from_error(&e))
        }
        Err(e) => {
            log::warn!(
                "media: message {} from {}: attempt {} failed: {e}",
                p.row.id,
                p.row.from,
                p.attempts + 1
            );
            Outcome::Retry
        }
    }
}

async fn download_verified(
    parts: &Parts,
    r: &MediaRef,
    id: &media_store::MediaId,
) -> Result<u64, PipeError> {
    let url = r.url.as_deref().ok_or(PipeError::BadUrl)?;
    let (host, _, _) = media_pipe::split_https_url(url).ok_or(PipeError::BadUrl)?;
    let server_name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let io = |e: media_store::MediaStoreError| PipeError::File {
        what: "media store",
        source: std::io::Error::other(e.to_string()),
    };
    parts.media.check_quota(r.file_length).map_err(io)?;
    let mut blob = parts.media.create_temp(&mut rand::rng()).map_err(io)?;
    media_pipe::download(
        url,
        Arc::clone(&parts.tls),
        &server_name,
        DOWNLOAD_TIMEOUT_MS,
        r.max_blob_bytes(),
        blob.file(),
    )
    .await?;
    let mut plain = parts.media.create_temp(&mut rand::rng()).map_err(io)?;
    media_pipe::verify_and_decrypt_async(blob.file(), r, plain.file()).await?;
    drop(blob);
    parts.media.check_quota(r.file_length).map_err(io)?;
    parts
        .media
        .persist(plain, Direction::Incoming, id)
        .map_err(io)
}

/// Records the outcome: the message enters the inbox with its media row or failure note and
/// its event, or waits for its next attempt.
fn finish(
    parts: &Parts,
    key: &str,
    mut p: PendingInbox,
    outcome: Outcome,
) -> Result<(), StoreError> {
    let now = now_ms();
    let id = media_pipe::incoming_media_id(&p.row.from, &p.row.id);
    let outcome = match outcome {
        Outcome::Retry if p.attempts.saturating_add(1) >= MAX_DOWNLOAD_ATTEMPTS => {
            Outcome::Failed(MediaFailure::Unavailable)
        }
        o => o,
    };
    let txn = parts.store.begin()?;
    match outcome {
        Outcome::Retry => {
            let step = usize::try_from(p.attempts).unwrap_or(usize::MAX);
            let delay = DOWNLOAD_RETRY_SCHEDULE_MS
                .get(step)
                .or(DOWNLOAD_RETRY_SCHEDULE_MS.last())
                .copied()
                .unwrap_or(IDLE_POLL_MS);
            p.attempts = p.attempts.saturating_add(1);
            p.next_ms = now.saturating_add(delay);
            txn.pending_inbox_put(key, &p)?;
            return txn.commit();
        }
        Outcome::Delivered => {
            let len = match parts.media.open_file(Direction::Incoming, &id) {
                Ok(Some((_, len))) => len,
                _ => 0,
            };
            let mimetype = <Message as prost::Message>::decode(p.row.content.as_slice())
                .ok()
                .and_then(|m| media_pipe::media_ref(&m))
                .map(|r| r.mimetype)
                .unwrap_or_default();
            media_store::put_row(
                &txn,
                &id,
                &MediaRow {
                    direction: Direction::Incoming,
                    len,
                    created_ms: now,
                    expires_ms: now.saturating_add(parts.retention_ms),
                    mimetype: truncate(mimetype, media_store::MAX_MEDIA_MIMETYPE_BYTES),
                    message_id: p.row.id.clone(),
                },
            )?;
        }
        Outcome::Failed(f) => media_pipe::record_media_failure(&txn, &id, f)?,
    }
    let Some(cursor) = txn.pending_inbox_release(key)? else {
        return Ok(());
    };
    parts.bus.record_message(&txn, cursor, now)?;
    txn.commit()?;
    parts.bus.publish_message(cursor);
    Ok(())
}

/// A peer's mimetype cut to the row's bound at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_schedule_grows_and_ends_within_a_day() {
        assert!(DOWNLOAD_RETRY_SCHEDULE_MS.windows(2).all(|w| w[0] < w[1]));
        let last = *DOWNLOAD_RETRY_SCHEDULE_MS.last().unwrap();
        let total: u64 = (0..MAX_DOWNLOAD_ATTEMPTS as usize)
            .map(|i| *DOWNLOAD_RETRY_SCHEDULE_MS.get(i).unwrap_or(&last))
            .sum();
        assert!(total < 24 * 3_600_000, "{total}");
    }

    #[test]
    fn long_mimetypes_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("image/png".into(), 255), "image/png");
        assert_eq!(truncate("aé".into(), 2), "a");
    }
}
