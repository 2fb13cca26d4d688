//! Failure notes for received media: why a blob could not be had, kept in `meta` so the
//! inbox can say so.

use super::*;

/// Why a received message's media will never be available; the inbox shows the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFailure {
    /// The blob failed fileEncSha256, MAC, padding, fileSha256 or length checks.
    VerificationFailed,
    /// The blob could not be fetched (gone, too large, bad URL) or the link gave up retrying.
    Unavailable,
}

impl MediaFailure {
    /// The `error.code` of the inbox `media` object.
    pub fn code(self) -> &'static str {
        match self {
            MediaFailure::VerificationFailed => "media_verification_failed",
            MediaFailure::Unavailable => "media_unavailable",
        }
    }

    /// The `error.message` of the inbox `media` object.
    pub fn message(self) -> &'static str {
        match self {
            MediaFailure::VerificationFailed => {
                "the sender's media did not pass its integrity checks and was discarded"
            }
            MediaFailure::Unavailable => "the sender's media could not be downloaded",
        }
    }

    /// The failure a permanent [`PipeError`] means.
    pub fn from_error(e: &PipeError) -> MediaFailure {
        if e.is_verification_failure() {
            MediaFailure::VerificationFailed
        } else {
            MediaFailure::Unavailable
        }
    }

    pub(super) fn to_byte(self) -> u8 {
        match self {
            MediaFailure::VerificationFailed => 1,
            MediaFailure::Unavailable => 2,
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<MediaFailure> {
        match b {
            1 => Some(MediaFailure::VerificationFailed),
            2 => Some(MediaFailure::Unavailable),
            _ => None,
        }
    }
}

pub(super) fn failure_key(id: &MediaId) -> String {
    format!("{MEDIA_FAILURE_KEY_PREFIX}{}", id.to_hex())
}

/// Notes, in the caller's transaction (the one that puts the message in the inbox), that
/// received media `id` ([`incoming_media_id`]) failed for good. A note is two bytes
/// (version, reason) in the store's `meta` table; there is at most one per received media
/// message, so the notes grow no faster than the inbox.
pub fn record_media_failure(
    txn: &Txn,
    id: &MediaId,
    failure: MediaFailure,
) -> Result<(), StoreError> {
    txn.put_str_key(
        crate::store::META,
        &failure_key(id),
        &[MEDIA_FAILURE_ROW_VERSION, failure.to_byte()],
    )
}

/// The failure noted for received media `id`, if any.
pub fn media_failure(txn: &Txn, id: &MediaId) -> Result<Option<MediaFailure>, StoreError> {
    let Some(row) = txn.get_str_key(crate::store::META, &failure_key(id))? else {
        return Ok(None);
    };
    match row.as_slice() {
        [MEDIA_FAILURE_ROW_VERSION, b] => {
            MediaFailure::from_byte(*b)
                .map(Some)
                .ok_or(StoreError::Corrupt {
                    table: "meta",
                    detail: "unknown media failure reason",
                })
        }
        _ => Err(StoreError::Corrupt {
            table: "meta",
            detail: "bad media failure note",
        }),
    }
}
