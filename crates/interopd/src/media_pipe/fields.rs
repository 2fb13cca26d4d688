//! WhatsApp's media fields: the `imageMessage`/`audioMessage`/… content of an upload, and
//! reading them back from a received message (the blob's URL, keys and digests).

use super::*;

/// The content protobuf for a blob we host: `url` (what the gatekeeper's proxy fetches),
/// `direct_path`, keys, hashes, length, `mimetype`, `media_key_timestamp` (seconds), and per
/// kind: caption (image, video, file), width/height (image, video), seconds (audio, video),
/// `ptt` (voice), fileName and title (file).
#[allow(clippy::too_many_arguments)]
pub fn media_message(
    kind: SendKind,
    facts: &UploadFacts,
    mimetype: &str,
    url: &str,
    direct_path: &str,
    caption: Option<&str>,
    filename: Option<&str>,
    key_timestamp_secs: i64,
) -> Message {
    let url = Some(url.to_string());
    let mimetype = Some(mimetype.to_string());
    let file_sha256 = Some(facts.file_sha256.to_vec());
    let file_enc_sha256 = Some(facts.file_enc_sha256.to_vec());
    let media_key = Some(facts.media_key.to_vec());
    let file_length = Some(facts.file_length);
    let direct_path = Some(direct_path.to_string());
    let media_key_timestamp = Some(key_timestamp_secs);
    let caption = caption.map(str::to_string);
    let mut msg = Message::default();
    match kind {
        SendKind::Image => {
            msg.image_message = Some(ImageMessage {
                url,
                mimetype,
                caption,
                file_sha256,
                file_length,
                height: facts.height,
                width: facts.width,
                media_key,
                file_enc_sha256,
                direct_path,
                media_key_timestamp,
                context_info: None,
            });
        }
        SendKind::Voice | SendKind::Audio => {
            msg.audio_message = Some(AudioMessage {
                url,
                mimetype,
                file_sha256,
                file_length,
                seconds: facts.seconds,
                ptt: (kind == SendKind::Voice).then_some(true),
                media_key,
                file_enc_sha256,
                direct_path,
                media_key_timestamp,
                context_info: None,
            });
        }
        SendKind::Video => {
            msg.video_message = Some(VideoMessage {
                url,
                mimetype,
                file_sha256,
                file_length,
                seconds: facts.seconds,
                media_key,
                caption,
                height: facts.height,
                width: facts.width,
                file_enc_sha256,
                direct_path,
                media_key_timestamp,
                context_info: None,
            });
        }
        SendKind::File => {
            msg.document_message = Some(DocumentMessage {
                url,
                mimetype,
                title: filename.map(str::to_string),
                file_sha256,
                file_length,
                media_key,
                file_name: filename.map(str::to_string),
                file_enc_sha256,
                direct_path,
                media_key_timestamp,
                context_info: None,
                caption,
            });
        }
    }
    msg
}

/// What a received media message says about its blob: enough to fetch, check and show it.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: SendKind,
    pub url: Option<String>,
    pub direct_path: Option<String>,
    pub media_key: [u8; MEDIA_KEY_BYTES],
    pub file_sha256: [u8; SHA256_BYTES],
    pub file_enc_sha256: [u8; SHA256_BYTES],
    /// Announced plaintext bytes (`fileLength`).
    pub file_length: u64,
    /// Empty when the sender gave none.
    pub mimetype: String,
    pub filename: Option<String>,
    pub caption: Option<String>,
    pub seconds: Option<u32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

impl MediaRef {
    /// Which key expansion the blob uses.
    pub fn media_kind(&self) -> MediaKind {
        self.kind.media_kind()
    }

    /// The largest blob worth downloading for this reference: the announced length
    /// encrypted, and never over the kind's limit.
    pub fn max_blob_bytes(&self) -> u64 {
        blob_len_bound(self.file_length.min(self.kind.max_plaintext_bytes()))
    }
}

impl fmt::Debug for MediaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The media key decrypts the blob: never print it.
        f.debug_struct("MediaRef")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("direct_path", &self.direct_path)
            .field("file_length", &self.file_length)
            .field("mimetype", &self.mimetype)
            .finish_non_exhaustive()
    }
}

pub(super) fn array32(bytes: Option<&Vec<u8>>) -> Option<[u8; 32]> {
    bytes?.as_slice().try_into().ok()
}

/// The fields of whichever media message `m` carries, borrowed.
pub(super) struct Parts<'a> {
    pub(super) kind: SendKind,
    pub(super) url: Option<&'a String>,
    pub(super) direct_path: Option<&'a String>,
    pub(super) media_key: Option<&'a Vec<u8>>,
    file_sha256: Option<&'a Vec<u8>>,
    file_enc_sha256: Option<&'a Vec<u8>>,
    pub(super) file_length: Option<u64>,
    pub(super) mimetype: Option<&'a String>,
    pub(super) filename: Option<&'a String>,
    pub(super) caption: Option<&'a String>,
    pub(super) seconds: Option<u32>,
    pub(super) width: Option<u32>,
    pub(super) height: Option<u32>,
}

pub(super) fn parts(m: &Message) -> Option<Parts<'_>> {
    Some(match m.kind() {
        ContentKind::Image => {
            let i = m.image_message.as_ref()?;
            Parts {
                kind: SendKind::Image,
                url: i.url.as_ref(),
                direct_path: i.direct_path.as_ref(),
                media_key: i.media_key.as_ref(),
                file_sha256: i.file_sha256.as_ref(),
                file_enc_sha256: i.file_enc_sha256.as_ref(),
                file_length: i.file_length,
                mimetype: i.mimetype.as_ref(),
                filename: None,
                caption: i.caption.as_ref(),
                seconds: None,
                width: i.width,
                height: i.height,
            }
        }
        ContentKind::Audio | ContentKind::Voice => {
            let a = m.audio_message.as_ref()?;
            Parts {
                kind: if a.ptt == Some(true) {
                    SendKind::Voice
                } else {
                    SendKind::Audio
                },
                url: a.url.as_ref(),
                direct_path: a.direct_path.as_ref(),
                media_key: a.media_key.as_ref(),
                file_sha256: a.file_sha256.as_ref(),
                file_enc_sha256: a.file_enc_sha256.as_ref(),
                file_length: a.file_length,
                mimetype: a.mimetype.as_ref(),
                filename: None,
                caption: None,
                seconds: a.seconds,
                width: None,
                height: None,
            }
        }
        ContentKind::Video => {
            let v = m.video_message.as_ref()?;
            Parts {
                kind: SendKind::Video,
                url: v.url.as_ref(),
                direct_path: v.direct_path.as_ref(),
                media_key: v.media_key.as_ref(),
                file_sha256: v.file_sha256.as_ref(),
                file_enc_sha256: v.file_enc_sha256.as_ref(),
                file_length: v.file_length,
                mimetype: v.mimetype.as_ref(),
                filename: None,
                caption: v.caption.as_ref(),
                seconds: v.seconds,
                width: v.width,
                height: v.height,
            }
        }
        ContentKind::Document => {
            let d = m.document_message.as_ref()?;
            Parts {
                kind: SendKind::File,
                url: d.url.as_ref(),
                direct_path: d.direct_path.as_ref(),
                media_key: d.media_key.as_ref(),
                file_sha256: d.file_sha256.as_ref(),
                file_enc_sha256: d.file_enc_sha256.as_ref(),
                file_length: d.file_length,
                mimetype: d.mimetype.as_ref(),
                filename: d.file_name.as_ref().or(d.title.as_ref()),
                caption: d.caption.as_ref(),
                seconds: None,
                width: None,
                height: None,
            }
        }
        ContentKind::Text
        | ContentKind::Reaction
        | ContentKind::Edit
        | ContentKind::Revoke
        | ContentKind::Location
        | ContentKind::Unknown => return None,
    })
}

/// What a media message shows, whether or not its blob can be fetched: for the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub kind: SendKind,
    /// Empty when the sender gave none.
    pub mimetype: String,
    /// Announced plaintext bytes (0 when the sender gave none).
    pub file_length: u64,
    pub filename: Option<String>,
    pub caption: Option<String>,
    pub seconds: Option<u32>,
}

/// The shown fields of a media message; `None` for a message that is not media.
pub fn media_info(m: &Message) -> Option<MediaInfo> {
    let p = parts(m)?;
    Some(MediaInfo {
        kind: p.kind,
        mimetype: p.mimetype.cloned().unwrap_or_default(),
        file_length: p.file_length.unwrap_or(0),
        filename: p.filename.cloned(),
        caption: p.caption.cloned(),
        seconds: p.seconds,
    })
}

/// The blob reference of a received message; `None` for a message that is not media, and for
/// media without what a download needs (a url or directPath, a 32-byte mediaKey, both
/// 32-byte hashes, fileLength). The link stores such a message at once with a
/// [`MediaFailure::Unavailable`] note.
pub fn media_ref(m: &Message) -> Option<MediaRef> {
    let p = parts(m)?;
    if p.url.is_none() && p.direct_path.is_none() {
        return None;
    }
    Some(MediaRef {
        kind: p.kind,
        url: p.url.cloned(),
        direct_path: p.direct_path.cloned(),
        media_key: array32(p.media_key)?,
        file_sha256: array32(p.file_sha256)?,
        file_enc_sha256: array32(p.file_enc_sha256)?,
        file_length: p.file_length?,
        mimetype: p.mimetype.cloned().unwrap_or_default(),
        filename: p.filename.cloned(),
        caption: p.caption.cloned(),
        seconds: p.seconds,
        width: p.width,
        height: p.height,
    })
}

/// The id under which received media is kept: the first 16 bytes of
/// SHA-256(`"interopd-media-in\0"` ‖ sender ‖ `"\0"` ‖ message id). Deterministic, so a
/// redelivered message maps to the same file and the inbox finds it without an index.
pub fn incoming_media_id(from_user: &str, message_id: &str) -> MediaId {
    let digest = Sha256::new()
        .chain_update(INCOMING_MEDIA_ID_DOMAIN)
        .chain_update(from_user.as_bytes())
        .chain_update([0u8])
        .chain_update(message_id.as_bytes())
        .finalize();
    let mut id = [0u8; 16];
    // INVARIANT: a SHA-256 digest is 32 bytes, longer than 16.
    id.copy_from_slice(&digest[..16]);
    MediaId(id)
}
