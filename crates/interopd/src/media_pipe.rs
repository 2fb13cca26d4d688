//! The media pipelines between bytes on the wire and blob files on disk (DESIGN.md section 5):
//! the upload pipe (request body → [`Encryptor`] → blob file, with hashes, a size cap and
//! the [`media_meta`](crate::media_meta) probes), the content protobuf for a sent blob
//! ([`media_message`]) and its reverse for a received one ([`media_ref`]), the download of a
//! peer's blob over pinned TLS ([`download`]), and its two-pass check and decryption
//! ([`verify_and_decrypt`]).
//!
//! This file is shell code: it reads sockets and files the caller opened. It does not own the
//! blob format (`media_crypto.rs`), where files live or how long (`media_store.rs`), the API
//! routes (`api/media.rs`) or retry policy (the link): it reports [`PipeError::is_permanent`]
//! and the caller decides. It draws no randomness (the caller passes the media key) and reads
//! no clock except the download's overall timeout.
//!
//! Memory is bounded whatever the file size: one [`MEDIA_CHUNK_BYTES`] read buffer, one output
//! buffer of at most a chunk plus a block and the MAC tag, and the probes' own bounds (at most
//! [`MAX_IMAGE_PREFIX_BYTES`](crate::media_meta::MAX_IMAGE_PREFIX_BYTES) for an image).
//!
//! Files are written with `std::fs` on the calling thread: writes of one chunk go to the page
//! cache and return quickly. [`verify_and_decrypt`] reads a whole file twice; the daemon runs
//! [`verify_and_decrypt_async`], which yields to the executor after every
//! [`VERIFY_SLICE_BYTES`], so a 1 GiB video does not stall the link or the API.

use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use futures_rustls::rustls::ClientConfig;
use sha2::{Digest as _, Sha256};

use crate::content::{
    AudioMessage, ContentKind, DocumentMessage, ImageMessage, Message, VideoMessage,
};
use crate::media_crypto::{
    AES_BLOCK_BYTES, Decryptor, Encryptor, MAC_TRUNCATED_BYTES, MEDIA_CHUNK_BYTES, MEDIA_KEY_BYTES,
    MediaCryptoError, MediaKind, SHA256_BYTES, Verifier,
};
use crate::media_meta::{ImageProbe, MetaError, Mp4Probe, OggProbe};
use crate::media_store::MediaId;
use crate::store::{StoreError, Txn};
use crate::tls;

const MIB: u64 = 1024 * 1024;

/// Largest image, in plaintext bytes: WhatsApp clients send images up to 16 MiB.
pub const MAX_IMAGE_BYTES: u64 = 16 * MIB;
/// Largest voice note, in plaintext bytes: WhatsApp's audio limit of 16 MiB (hours of Opus).
pub const MAX_VOICE_BYTES: u64 = 16 * MIB;
/// Largest audio file, in plaintext bytes: WhatsApp's audio limit of 16 MiB.
pub const MAX_AUDIO_BYTES: u64 = 16 * MIB;
/// Largest video, in plaintext bytes: 2 GiB, WhatsApp's limit for any media since 2022.
/// DESIGN.md section 5 requires a 1 GiB video to pass in bounded memory.
pub const MAX_VIDEO_BYTES: u64 = 2048 * MIB;
/// Largest file (document), in plaintext bytes: 2 GiB, WhatsApp's document limit.
pub const MAX_FILE_BYTES: u64 = 2048 * MIB;
/// The largest per-kind limit, in plaintext bytes: what the local API server must let through
/// to `POST /v1/media`.
pub const MAX_UPLOAD_BYTES: u64 = max_of(&[
    MAX_IMAGE_BYTES,
    MAX_VOICE_BYTES,
    MAX_AUDIO_BYTES,
    MAX_VIDEO_BYTES,
    MAX_FILE_BYTES,
]);
/// Largest response head a media host may send, in bytes.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in a media host's response head.
pub const MAX_RESPONSE_HEADERS: usize = 64;
/// Longest media URL we fetch, in bytes.
pub const MAX_MEDIA_URL_BYTES: usize = 2048;
/// Default port of an `https://` URL without one.
pub const HTTPS_DEFAULT_PORT: u16 = 443;
/// Domain separator of [`incoming_media_id`].
pub const INCOMING_MEDIA_ID_DOMAIN: &[u8] = b"interopd-media-in\0";
/// Row version of a media failure note ([`record_media_failure`]).
pub const MEDIA_FAILURE_ROW_VERSION: u8 = 1;
/// Key prefix of media failure notes in the store's `meta` table.
const MEDIA_FAILURE_KEY_PREFIX: &str = "media_failure/";

const fn max_of(values: &[u64]) -> u64 {
    let mut max = 0;
    let mut i = 0;
    while i < values.len() {
        if values[i] > max {
            max = values[i];
        }
        i += 1;
    }
    max
}

/// The largest blob that a plaintext of `plain_bytes` encrypts to: padding adds 1..=16 bytes
/// and the MAC trailer 10.
pub fn blob_len_bound(plain_bytes: u64) -> u64 {
    plain_bytes
        .saturating_add(AES_BLOCK_BYTES as u64)
        .saturating_add(MAC_TRUNCATED_BYTES as u64)
}

// ---- kinds --------------------------------------------------------------------------------

/// The `kind` of `POST /v1/media`: what the recipient's app shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendKind {
    /// A picture (`imageMessage`).
    Image,
    /// A voice note (`audioMessage` with `ptt`); must be Ogg/Opus.
    Voice,
    /// An audio file (`audioMessage`).
    Audio,
    /// A video (`videoMessage`).
    Video,
    /// Any other file (`documentMessage`).
    File,
}

impl SendKind {
    /// Every kind.
    pub const ALL: [SendKind; 5] = [
        SendKind::Image,
        SendKind::Voice,
        SendKind::Audio,
        SendKind::Video,
        SendKind::File,
    ];

    /// The kind named in the API (`image`, `voice`, `audio`, `video`, `file`).
    pub fn parse(name: &str) -> Option<SendKind> {
        SendKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            SendKind::Image => "image",
            SendKind::Voice => "voice",
            SendKind::Audio => "audio",
            SendKind::Video => "video",
            SendKind::File => "file",
        }
    }

    /// Which key expansion the blob uses.
    pub fn media_kind(self) -> MediaKind {
        match self {
            SendKind::Image => MediaKind::Image,
            SendKind::Voice | SendKind::Audio => MediaKind::Audio,
            SendKind::Video => MediaKind::Video,
            SendKind::File => MediaKind::Document,
        }
    }

    /// The content kind stored in the outbox row.
    pub fn content_kind(self) -> ContentKind {
        match self {
            SendKind::Image => ContentKind::Image,
            SendKind::Voice => ContentKind::Voice,
            SendKind::Audio => ContentKind::Audio,
            SendKind::Video => ContentKind::Video,
            SendKind::File => ContentKind::Document,
        }
    }

    /// Largest plaintext of this kind, in bytes (the `MAX_*_BYTES` above).
    pub fn max_plaintext_bytes(self) -> u64 {
        match self {
            SendKind::Image => MAX_IMAGE_BYTES,
            SendKind::Voice => MAX_VOICE_BYTES,
            SendKind::Audio => MAX_AUDIO_BYTES,
            SendKind::Video => MAX_VIDEO_BYTES,
            SendKind::File => MAX_FILE_BYTES,
        }
    }
}

// ---- errors -------------------------------------------------------------------------------

/// Why a pipe failed. [`PipeError::is_permanent`] tells a download worth retrying from one
/// that never will succeed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PipeError {
    /// API client: the body is over the kind's limit of `max_bytes` plaintext bytes (413).
    TooLarge { max_bytes: u64 },
    /// API client: the body is empty (400).
    EmptyBody,
    /// API client: a voice note that is not Ogg/Opus (415).
    NotOggOpus { detail: &'static str },
    /// API client or its network: the request body could not be read (timeout, closed,
    /// malformed chunking); `source` carries the [`crate::http::HttpError`] when there is one.
    Body { source: io::Error },
    /// Environment: reading or writing a local file failed (`what` names the step); retryable.
    File {
        what: &'static str,
        source: io::Error,
    },
    /// Peer: the media URL is not `https://host[:port]/path`; permanent.
    BadUrl,
    /// Network or media host: connecting, the TLS handshake (pin mismatch included) or the
    /// socket failed; retryable.
    Connect { detail: String },
    /// Media host: it answered `status` instead of 200. 4xx other than 408 and 429 are
    /// permanent (the blob is gone), the rest retryable.
    Status { status: u16 },
    /// Media host: the response head is malformed, chunked, or has no Content-Length;
    /// retryable.
    BadResponse { what: &'static str },
    /// Peer or media host: the blob is `len` bytes, over the `max_bytes` we take; permanent.
    BlobTooLarge { len: u64, max_bytes: u64 },
    /// Network: the connection ended after `got` of `expected` body bytes; retryable.
    Truncated { expected: u64, got: u64 },
    /// Network or media host: the download took over `timeout_ms`; retryable.
    Timeout { timeout_ms: u64 },
    /// Peer (or storage, for `BlobLengthChanged`): the blob failed a check, in the order
    /// fileEncSha256, MAC, decrypt, fileSha256. Permanent except `BlobLengthChanged`.
    Verify { source: MediaCryptoError },
    /// Peer: the plaintext is `actual` bytes but the message announced `announced`;
    /// permanent.
    LengthMismatch { announced: u64, actual: u64 },
}

impl PipeError {
    /// Whether retrying cannot help: the peer's message or blob is bad, or the blob is gone.
    /// The link then records the failure ([`record_media_failure`]) instead of retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            PipeError::BadUrl
            | PipeError::BlobTooLarge { .. }
            | PipeError::LengthMismatch { .. }
            | PipeError::TooLarge { .. }
            | PipeError::EmptyBody
            | PipeError::NotOggOpus { .. } => true,
            PipeError::Status { status } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            PipeError::Verify { source } => {
                !matches!(source, MediaCryptoError::BlobLengthChanged { .. })
            }
            PipeError::Body { .. }
            | PipeError::File { .. }
            | PipeError::Connect { .. }
            | PipeError::BadResponse { .. }
            | PipeError::Truncated { .. }
            | PipeError::Timeout { .. } => false,
        }
    }

    /// Whether the blob itself failed verification (as opposed to being unreachable).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            PipeError::Verify { .. } | PipeError::LengthMismatch { .. }
        )
    }
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipeError::TooLarge { max_bytes } => {
                write!(f, "media is larger than the limit of {max_bytes} bytes")
            }
            PipeError::EmptyBody => f.write_str("media body is empty"),
            PipeError::NotOggOpus { detail } => {
                write!(f, "a voice note must be Ogg/Opus: {detail}")
            }
            PipeError::Body { source } => write!(f, "request body could not be read: {source}"),
            PipeError::File { what, source } => write!(f, "media file {what}: {source}"),
            PipeError::BadUrl => f.write_str("media url is not https://host[:port]/path"),
            PipeError::Connect { detail } => write!(f, "media host unreachable: {detail}"),
            PipeError::Status { status } => write!(f, "media host answered {status}"),
            PipeError::BadResponse { what } => write!(f, "media host response: {what}"),
            PipeError::BlobTooLarge { len, max_bytes } => {
                write!(
                    f,
                    "media blob of {len} bytes is over the limit of {max_bytes}"
                )
            }
            PipeError::Truncated { expected, got } => {
                write!(f, "media download ended after {got} of {expected} bytes")
            }
            PipeError::Timeout { timeout_ms } => {
                write!(f, "media download took over {timeout_ms} ms")
            }
            PipeError::Verify { source } => write!(f, "media blob refused: {source}"),
            PipeError::LengthMismatch { announced, actual } => write!(
                f,
                "media plaintext is {actual} bytes, the message announced {announced}"
            ),
        }
    }
}

impl std::error::Error for PipeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PipeError::Body { source } | PipeError::File { source, .. } => Some(source),
            PipeError::Verify { source } => Some(source),
            _ => None,
        }
    }
}

fn file_error(what: &'static str) -> impl FnOnce(io::Error) -> PipeError {
    move |source| PipeError::File { what, source }
}

// ---- upload -------------------------------------------------------------------------------

/// What the sender puts in the content protobuf, besides url, mimetype and caption. Its
/// `Debug` leaves out the media key.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadFacts {
    pub media_key: [u8; MEDIA_KEY_BYTES],
    pub file_sha256: [u8; SHA256_BYTES],
    pub file_enc_sha256: [u8; SHA256_BYTES],
    /// Plaintext bytes (`fileLength`).
    pub file_length: u64,
    /// Blob bytes written to the file, MAC included.
    pub blob_len: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seconds: Option<u32>,
}

impl fmt::Debug for UploadFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadFacts")
            .field("file_length", &self.file_length)
            .field("blob_len", &self.blob_len)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("seconds", &self.seconds)
            .finish_non_exhaustive()
    }
}

/// The probes one kind runs on its plaintext.
enum Probes {
    Image(ImageProbe),
    Voice(OggProbe),
    Audio(OggProbe, Mp4Probe),
    Video(Mp4Probe),
    None,
}

impl Probes {
    fn for_kind(kind: SendKind) -> Probes {
        match kind {
            SendKind::Image => Probes::Image(ImageProbe::default()),
            SendKind::Voice => Probes::Voice(OggProbe::default()),
            SendKind::Audio => Probes::Audio(OggProbe::default(), Mp4Probe::default()),
            SendKind::Video => Probes::Video(Mp4Probe::default()),
            SendKind::File => Probes::None,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        match self {
            Probes::Image(p) => p.update(chunk),
            Probes::Voice(p) => p.update(chunk),
            Probes::Audio(ogg, mp4) => {
                ogg.update(chunk);
                mp4.update(chunk);
            }
            Probes::Video(p) => p.update(chunk),
            Probes::None => {}
        }
    }

    /// What the probes found, or why a voice note is refused.
    fn finish(self) -> Result<Probed, PipeError> {
        let seconds = |seconds| Probed {
            seconds,
            ..Probed::default()
        };
        Ok(match self {
            Probes::Image(p) => match p.finish() {
                Some((w, h)) => Probed {
                    width: Some(w),
                    height: Some(h),
                    seconds: None,
                },
                None => Probed::default(),
            },
            Probes::Voice(p) => match p.finish() {
                Ok(secs) => seconds(Some(secs)),
                Err(MetaError::NotOggOpus { detail }) => {
                    return Err(PipeError::NotOggOpus { detail });
                }
            },
            Probes::Audio(ogg, mp4) => seconds(ogg.finish().ok().or_else(|| mp4.finish())),
            Probes::Video(p) => seconds(p.finish()),
            Probes::None => Probed::default(),
        })
    }
}

/// Metadata the probes read from a plaintext.
#[derive(Default)]
struct Probed {
    width: Option<u32>,
    height: Option<u32>,
    seconds: Option<u32>,
}

/// The sans-I/O half of the upload pipe: plaintext chunks in, blob bytes out, one chunk at a
/// time. Its output buffer never holds more than the last chunk's blob bytes.
struct Upload {
    encryptor: Encryptor,
    probes: Probes,
    max_bytes: u64,
    plain_len: u64,
    media_key: [u8; MEDIA_KEY_BYTES],
    out: Vec<u8>,
}

impl Upload {
    fn new(kind: SendKind, max_bytes: u64, media_key: &[u8; MEDIA_KEY_BYTES]) -> Upload {
        Upload {
            encryptor: Encryptor::new(media_key, kind.media_kind()),
            probes: Probes::for_kind(kind),
            max_bytes,
            plain_len: 0,
            media_key: *media_key,
            out: Vec::with_capacity(MEDIA_CHUNK_BYTES + AES_BLOCK_BYTES + MAC_TRUNCATED_BYTES),
        }
    }

    /// Takes one plaintext chunk; returns the blob bytes to write.
    fn update(&mut self, chunk: &[u8]) -> Result<&[u8], PipeError> {
        self.plain_len = self.plain_len.saturating_add(chunk.len() as u64);
        if self.plain_len > self.max_bytes {
            return Err(PipeError::TooLarge {
                max_bytes: self.max_bytes,
            });
        }
        self.probes.update(chunk);
        self.out.clear();
        self.encryptor.update(chunk, &mut self.out);
        Ok(&self.out)
    }

    /// Ends the blob; returns the last blob bytes to write and the facts.
    fn finish(mut self) -> Result<(Vec<u8>, UploadFacts), PipeError> {
        if self.plain_len == 0 {
            return Err(PipeError::EmptyBody);
        }
        let Probed {
            width,
            height,
            seconds,
        } = self.probes.finish()?;
        self.out.clear();
        let summary = self.encryptor.finish(&mut self.out);
        let facts = UploadFacts {
            media_key: self.media_key,
            file_sha256: summary.file_sha256,
            file_enc_sha256: summary.file_enc_sha256,
            file_length: summary.file_length,
            blob_len: summary.blob_length,
            width,
            height,
            seconds,
        };
        Ok((self.out, facts))
    }
}

/// Streams `body` through the encryptor into `out` (written from its current position), in
/// chunks of at most [`MEDIA_CHUNK_BYTES`], refusing more than `max_bytes` of plaintext, and
/// runs the kind's probes: image dimensions; Ogg/Opus (required) and duration for a voice
/// note; Ogg or MP4 duration for audio; MP4 duration for video.
///
/// On error `out` holds a partial blob: the caller discards the file.
pub async fn encrypt_body<R: AsyncRead + Unpin>(
    body: &mut R,
    kind: SendKind,
    max_bytes: u64,
    media_key: &[u8; MEDIA_KEY_BYTES],
    out: &mut File,
) -> Result<UploadFacts, PipeError> {
    let mut upload = Upload::new(kind, max_bytes, media_key);
    pump(body, &mut upload, out).await?;
    let (tail, facts) = upload.finish()?;
    out.write_all(&tail).map_err(file_error("write"))?;
    Ok(facts)
}

/// Moves the whole body through `upload` into `out`.
async fn pump<R: AsyncRead + Unpin>(
    body: &mut R,
    upload: &mut Upload,
    out: &mut File,
) -> Result<(), PipeError> {
    let mut buf = vec![0u8; MEDIA_CHUNK_BYTES];
    loop {
        let n = body
            .read(&mut buf)
            .await
            .map_err(|source| PipeError::Body { source })?;
        if n == 0 {
            return Ok(());
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let sealed = upload.update(chunk)?;
        out.write_all(sealed).map_err(file_error("write"))?;
    }
}

// ---- content ------------------------------------------------------------------------------

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

fn array32(bytes: Option<&Vec<u8>>) -> Option<[u8; 32]> {
    bytes?.as_slice().try_into().ok()
}

/// The fields of whichever media message `m` carries, borrowed.
struct Parts<'a> {
    kind: SendKind,
    url: Option<&'a String>,
    direct_path: Option<&'a String>,
    media_key: Option<&'a Vec<u8>>,
    file_sha256: Option<&'a Vec<u8>>,
    file_enc_sha256: Option<&'a Vec<u8>>,
    file_length: Option<u64>,
    mimetype: Option<&'a String>,
    filename: Option<&'a String>,
    caption: Option<&'a String>,
    seconds: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
}

fn parts(m: &Message) -> Option<Parts<'_>> {
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
        ContentKind::Text | ContentKind::Reaction | ContentKind::Unknown => return None,
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

// ---- failure notes ------------------------------------------------------------------------

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

    fn to_byte(self) -> u8 {
        match self {
            MediaFailure::VerificationFailed => 1,
            MediaFailure::Unavailable => 2,
        }
    }

    fn from_byte(b: u8) -> Option<MediaFailure> {
        match b {
            1 => Some(MediaFailure::VerificationFailed),
            2 => Some(MediaFailure::Unavailable),
            _ => None,
        }
    }
}

fn failure_key(id: &MediaId) -> String {
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

// ---- download -----------------------------------------------------------------------------

/// Splits `https://host[:port]/path` into host, port and path (`/` when absent).
pub fn split_https_url(url: &str) -> Option<(&str, u16, &str)> {
    if url.len() > MAX_MEDIA_URL_BYTES || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = if authority.ends_with(']') {
        (authority, HTTPS_DEFAULT_PORT)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => {
                (h, p.parse().ok().filter(|p| *p != 0)?)
            }
            Some(_) => return None,
            None => (authority, HTTPS_DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port, path))
}

/// Status and Content-Length of a complete response head in `buf`, and the head's length;
/// `Ok(None)` while incomplete.
fn parse_response_head(buf: &[u8]) -> Result<Option<(u16, Option<u64>, usize)>, PipeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                return Err(PipeError::BadResponse {
                    what: "chunked body",
                });
            }
            let mut lengths = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
            let len = match (lengths.next(), lengths.next()) {
                (Some(h), None) => Some(
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or(PipeError::BadResponse {
                            what: "bad Content-Length",
                        })?,
                ),
                (None, _) => None,
                (Some(_), Some(_)) => {
                    return Err(PipeError::BadResponse {
                        what: "repeated Content-Length",
                    });
                }
            };
            Ok(Some((resp.code.unwrap_or(0), len, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(PipeError::BadResponse {
            what: "malformed head",
        }),
    }
}

/// Fetches `url` (`https://host[:port]/path`) over TLS with `tls` (pinned by the caller),
/// authenticating the server as `server_name`, and writes the body to `out` from its current
/// position. Requires status 200 and a Content-Length of at most `max_bytes`; the whole fetch
/// (connect, handshake, request, body) must end within `timeout_ms`. Returns the bytes
/// written. On error `out` holds a partial blob: the caller discards the file.
pub async fn download(
    url: &str,
    tls: Arc<ClientConfig>,
    server_name: &str,
    timeout_ms: u64,
    max_bytes: u64,
    out: &mut File,
) -> Result<u64, PipeError> {
    let work = fetch_to_file(url, tls, server_name, max_bytes, out);
    let timeout = async {
        smol::Timer::after(Duration::from_millis(timeout_ms)).await;
        Err(PipeError::Timeout { timeout_ms })
    };
    work.or(timeout).await
}

async fn fetch_to_file(
    url: &str,
    tls: Arc<ClientConfig>,
    server_name: &str,
    max_bytes: u64,
    out: &mut File,
) -> Result<u64, PipeError> {
    let (host, port, path) = split_https_url(url).ok_or(PipeError::BadUrl)?;
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if connect_host.contains(':') {
        format!("[{connect_host}]:{port}")
    } else {
        format!("{connect_host}:{port}")
    };
    let mut stream =
        tls::connect(&addr, server_name, tls)
            .await
            .map_err(|e| PipeError::Connect {
                detail: e.to_string(),
            })?;
    let net = |e: io::Error| PipeError::Connect {
        detail: e.to_string(),
    };
    let host_header = if port == HTTPS_DEFAULT_PORT {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(net)?;
    stream.flush().await.map_err(net)?;

    let mut buf = vec![0u8; MEDIA_CHUNK_BYTES];
    let mut head = Vec::new();
    let (status, len, head_len) = loop {
        let n = stream.read(&mut buf).await.map_err(net)?;
        if n == 0 {
            return Err(PipeError::BadResponse {
                what: "closed before the head ended",
            });
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(parsed) = parse_response_head(&head)? {
            break parsed;
        }
        if head.len() > MAX_RESPONSE_HEAD_BYTES {
            return Err(PipeError::BadResponse {
                what: "head too long",
            });
        }
    };
    if status != 200 {
        return Err(PipeError::Status { status });
    }
    let Some(expected) = len else {
        return Err(PipeError::BadResponse {
            what: "no Content-Length",
        });
    };
    if expected > max_bytes {
        return Err(PipeError::BlobTooLarge {
            len: expected,
            max_bytes,
        });
    }
    let mut got: u64 = 0;
    let mut write_body = |bytes: &[u8], got: &mut u64| -> Result<(), PipeError> {
        let room = usize::try_from(expected - *got).unwrap_or(usize::MAX);
        let take = bytes.get(..room.min(bytes.len())).unwrap_or_default();
        out.write_all(take).map_err(file_error("write"))?;
        *got += take.len() as u64;
        Ok(())
    };
    write_body(head.get(head_len..).unwrap_or_default(), &mut got)?;
    drop(head);
    while got < expected {
        let n = stream.read(&mut buf).await.map_err(net)?;
        if n == 0 {
            return Err(PipeError::Truncated { expected, got });
        }
        write_body(buf.get(..n).unwrap_or_default(), &mut got)?;
    }
    Ok(got)
}

// ---- verify and decrypt -------------------------------------------------------------------

/// Reads `file` from its start in chunks, handing each to `each`.
/// Blob bytes [`VerifyJob::step`] reads before it returns, so the async caller can yield to
/// the executor between slices (about 4 ms of work each on a Raspberry Pi 4).
pub const VERIFY_SLICE_BYTES: usize = 1024 * 1024;

/// Where a [`VerifyJob`] is.
enum VerifyStage {
    /// Pass 1: fileEncSha256 and the MAC, no decryption.
    Check(Box<Verifier>),
    /// Pass 2: decryption, padding and fileSha256.
    Decrypt(Box<Decryptor>),
}

/// The two-pass check and decryption of a downloaded blob (DESIGN.md section 5), cut into
/// slices of at most [`VERIFY_SLICE_BYTES`] so that a large file does not hold the daemon's
/// single thread: [`verify_and_decrypt_async`] yields between slices, [`verify_and_decrypt`]
/// runs them back to back.
pub struct VerifyJob<'a> {
    blob: &'a mut File,
    r: &'a MediaRef,
    plain_out: &'a mut File,
    /// `None` only while a stage is being replaced, or after an error.
    stage: Option<VerifyStage>,
    buf: Vec<u8>,
    plain: Vec<u8>,
}

impl<'a> VerifyJob<'a> {
    /// A job that checks `blob` (read from its start) against `r` and writes the plaintext
    /// to `plain_out` from its current position.
    pub fn new(blob: &'a mut File, r: &'a MediaRef, plain_out: &'a mut File) -> VerifyJob<'a> {
        VerifyJob {
            blob,
            r,
            plain_out,
            stage: Some(VerifyStage::Check(Box::new(Verifier::new(
                &r.media_key,
                r.media_kind(),
            )))),
            buf: vec![0u8; MEDIA_CHUNK_BYTES],
            plain: Vec::with_capacity(MEDIA_CHUNK_BYTES + AES_BLOCK_BYTES),
        }
    }

    /// Does one slice. `Ok(Some(len))` when the blob passed every check (`len` plaintext
    /// bytes written), `Ok(None)` when there is more to do; an error ends the job.
    pub fn step(&mut self) -> Result<Option<u64>, PipeError> {
        let stage = self.stage.take().ok_or(PipeError::File {
            what: "verify blob",
            source: io::Error::other("the check already ended"),
        })?;
        let mut sliced = 0usize;
        match stage {
            VerifyStage::Check(mut verifier) => {
                while sliced < VERIFY_SLICE_BYTES {
                    let n = read_some(self.blob, &mut self.buf)?;
                    if n == 0 {
                        let verified = verifier
                            .finish(&self.r.file_enc_sha256)
                            .map_err(|source| PipeError::Verify { source })?;
                        self.blob
                            .seek(SeekFrom::Start(0))
                            .map_err(file_error("seek blob"))?;
                        self.stage = Some(VerifyStage::Decrypt(Box::new(Decryptor::new(verified))));
                        return Ok(None);
                    }
                    verifier.update(self.buf.get(..n).unwrap_or_default());
                    sliced += n;
                }
                self.stage = Some(VerifyStage::Check(verifier));
                Ok(None)
            }
            VerifyStage::Decrypt(mut decryptor) => {
                while sliced < VERIFY_SLICE_BYTES {
                    let n = read_some(self.blob, &mut self.buf)?;
                    self.plain.clear();
                    if n == 0 {
                        let len = decryptor
                            .finish(&self.r.file_sha256, &mut self.plain)
                            .map_err(|source| PipeError::Verify { source })?;
                        self.plain_out
                            .write_all(&self.plain)
                            .map_err(file_error("write plaintext"))?;
                        if len != self.r.file_length {
                            return Err(PipeError::LengthMismatch {
                                announced: self.r.file_length,
                                actual: len,
                            });
                        }
                        return Ok(Some(len));
                    }
                    decryptor.update(self.buf.get(..n).unwrap_or_default(), &mut self.plain);
                    self.plain_out
                        .write_all(&self.plain)
                        .map_err(file_error("write plaintext"))?;
                    sliced += n;
                }
                self.stage = Some(VerifyStage::Decrypt(decryptor));
                Ok(None)
            }
        }
    }
}

/// One `read` of the blob, retried on `Interrupted`; `0` at its end.
fn read_some(file: &mut File, buf: &mut [u8]) -> Result<usize, PipeError> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(PipeError::File {
                    what: "read blob",
                    source,
                });
            }
            Ok(n) => return Ok(n),
        }
    }
}

/// Checks the downloaded `blob` against `r` and decrypts it into `plain_out` (from its
/// current position), in the order DESIGN.md section 5 requires: pass 1 checks fileEncSha256
/// and the MAC without decrypting; pass 2 decrypts and checks the padding and fileSha256;
/// then the length is compared with fileLength. Returns the plaintext length.
///
/// `plain_out` receives plaintext before the last check passes: the caller writes to a
/// private temporary file and publishes it only on `Ok`. This runs to the end on the calling
/// thread; the daemon uses [`verify_and_decrypt_async`].
pub fn verify_and_decrypt(
    blob: &mut File,
    r: &MediaRef,
    plain_out: &mut File,
) -> Result<u64, PipeError> {
    // The async form only ever waits on its own yields, so polling it to the end here runs
    // the slices back to back.
    futures_lite::future::block_on(verify_and_decrypt_async(blob, r, plain_out))
}

/// [`verify_and_decrypt`], yielding to the executor after every [`VERIFY_SLICE_BYTES`] of
/// blob, so the link's keepalives and the API are served while a large file is checked.
pub async fn verify_and_decrypt_async(
    blob: &mut File,
    r: &MediaRef,
    plain_out: &mut File,
) -> Result<u64, PipeError> {
    blob.seek(SeekFrom::Start(0))
        .map_err(file_error("seek blob"))?;
    let mut job = VerifyJob::new(blob, r, plain_out);
    loop {
        if let Some(len) = job.step()? {
            return Ok(len);
        }
        futures_lite::future::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_crypto::encrypt_all;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    const KEY: [u8; 32] = [7; 32];

    /// An in-memory body that hands out at most `step` bytes per read and counts the largest
    /// read buffer it was offered.
    struct SlowBody {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        largest_read: usize,
    }

    impl SlowBody {
        fn new(data: Vec<u8>, step: usize) -> SlowBody {
            SlowBody {
                data,
                pos: 0,
                step,
                largest_read: 0,
            }
        }
    }

    impl AsyncRead for SlowBody {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.largest_read = self.largest_read.max(buf.len());
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            let start = self.pos;
            buf[..n].copy_from_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    fn temp_file() -> File {
        tempfile::tempfile().unwrap()
    }

    fn read_all(f: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    fn encrypt(data: &[u8], kind: SendKind, step: usize) -> (Result<UploadFacts, PipeError>, File) {
        let mut body = SlowBody::new(data.to_vec(), step);
        let mut out = temp_file();
        let r = smol::block_on(encrypt_body(&mut body, kind, 1 << 30, &KEY, &mut out));
        (r, out)
    }

    fn ogg_page(header_type: u8, granule: u64, body: &[u8]) -> Vec<u8> {
        let mut p = b"OggS\0".to_vec();
        p.push(header_type);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&9u32.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        p.push(1);
        p.push(body.len() as u8);
        p.extend_from_slice(body);
        p
    }

    /// A minimal Ogg/Opus stream of `secs` seconds.
    fn opus(secs: u64) -> Vec<u8> {
        let mut head = b"OpusHead\x01\x01".to_vec();
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut f = ogg_page(0x02, 0, &head);
        f.extend(ogg_page(0, 0, b"OpusTags\0\0\0\0\0\0\0\0"));
        f.extend(ogg_page(0x04, secs * 48_000, &[0x11; 200]));
        f
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut p = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        p.extend_from_slice(&w.to_be_bytes());
        p.extend_from_slice(&h.to_be_bytes());
        p.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0; 500]);
        p
    }

    #[test]
    fn streamed_blob_and_hashes_match_encrypting_in_one_piece() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for step in [1, 15, 4096, MEDIA_CHUNK_BYTES * 3] {
            let data = &data[..if step == 1 { 5000 } else { data.len() }];
            let (facts, mut out) = encrypt(data, SendKind::File, step);
            let facts = facts.unwrap();
            let (blob, summary) = encrypt_all(&KEY, MediaKind::Document, data);
            assert_eq!(read_all(&mut out), blob);
            assert_eq!(facts.file_sha256, summary.file_sha256);
            assert_eq!(facts.file_enc_sha256, summary.file_enc_sha256);
            assert_eq!(facts.file_length, data.len() as u64);
            assert_eq!(facts.blob_len, blob.len() as u64);
            assert_eq!(facts.media_key, KEY);
        }
    }

    #[test]
    fn voice_note_that_is_not_ogg_opus_is_refused() {
        let (r, _) = encrypt(b"RIFF\0\0\0\0WAVEfmt not opus at all", SendKind::Voice, 7);
        assert!(matches!(r, Err(PipeError::NotOggOpus { .. })), "{r:?}");
    }

    #[test]
    fn voice_note_reports_its_duration_and_uses_audio_keys() {
        let data = opus(12);
        let (r, mut out) = encrypt(&data, SendKind::Voice, 100);
        let facts = r.unwrap();
        assert_eq!(facts.seconds, Some(12));
        assert_eq!(
            read_all(&mut out),
            encrypt_all(&KEY, MediaKind::Audio, &data).0
        );
    }

    #[test]
    fn image_dimensions_are_probed() {
        let (r, _) = encrypt(&png(640, 480), SendKind::Image, 3);
        let facts = r.unwrap();
        assert_eq!((facts.width, facts.height), (Some(640), Some(480)));
    }

    #[test]
    fn body_over_the_limit_is_too_large() {
        let mut body = SlowBody::new(vec![0; 10_001], 4000);
        let mut out = temp_file();
        let r = smol::block_on(encrypt_body(
            &mut body,
            SendKind::File,
            10_000,
            &KEY,
            &mut out,
        ));
        assert!(matches!(r, Err(PipeError::TooLarge { max_bytes: 10_000 })));
        let mut body = SlowBody::new(vec![0; 10_000], 4000);
        let r = smol::block_on(encrypt_body(
            &mut body,
            SendKind::File,
            10_000,
            &KEY,
            &mut out,
        ));
        assert!(r.is_ok());
    }

    #[test]
    fn empty_body_is_refused() {
        let (r, _) = encrypt(b"", SendKind::File, 10);
        assert!(matches!(r, Err(PipeError::EmptyBody)));
    }

    #[test]
    fn upload_never_buffers_more_than_one_chunk() {
        // 8 MiB offered through reads as large as the pipe allows.
        let mut body = SlowBody::new(vec![0x5a; 8 << 20], usize::MAX);
        let mut upload = Upload::new(SendKind::Video, u64::MAX, &KEY);
        let cap = upload.out.capacity();
        let mut out = temp_file();
        smol::block_on(pump(&mut body, &mut upload, &mut out)).unwrap();
        assert_eq!(body.largest_read, MEDIA_CHUNK_BYTES);
        assert_eq!(upload.out.capacity(), cap, "output buffer grew");
        assert!(cap <= MEDIA_CHUNK_BYTES + AES_BLOCK_BYTES + MAC_TRUNCATED_BYTES);
    }

    fn facts_for(kind: SendKind) -> UploadFacts {
        UploadFacts {
            media_key: [1; 32],
            file_sha256: [2; 32],
            file_enc_sha256: [3; 32],
            file_length: 12_345,
            blob_len: 12_362,
            width: (kind == SendKind::Image || kind == SendKind::Video).then_some(640),
            height: (kind == SendKind::Image || kind == SendKind::Video).then_some(480),
            seconds: matches!(kind, SendKind::Voice | SendKind::Audio | SendKind::Video)
                .then_some(9),
        }
    }

    #[test]
    fn media_message_and_media_ref_round_trip_for_every_kind() {
        for kind in SendKind::ALL {
            let facts = facts_for(kind);
            let caption = (kind != SendKind::Voice && kind != SendKind::Audio).then_some("look");
            let filename = (kind == SendKind::File).then_some("report.pdf");
            let msg = media_message(
                kind,
                &facts,
                "application/x-test",
                "https://media.example:8443/m/00ff",
                "/m/00ff",
                caption,
                filename,
                1_700_000_000,
            );
            assert_eq!(msg.kind(), kind.content_kind(), "{kind:?}");
            // Through the wire format, as the peer sees it.
            let bytes = prost::Message::encode_to_vec(&msg);
            let back: Message = prost::Message::decode(bytes.as_slice()).unwrap();
            let r = media_ref(&back).unwrap();
            assert_eq!(r.kind, kind);
            assert_eq!(r.url.as_deref(), Some("https://media.example:8443/m/00ff"));
            assert_eq!(r.direct_path.as_deref(), Some("/m/00ff"));
            assert_eq!(r.media_key, facts.media_key);
            assert_eq!(r.file_sha256, facts.file_sha256);
            assert_eq!(r.file_enc_sha256, facts.file_enc_sha256);
            assert_eq!(r.file_length, facts.file_length);
            assert_eq!(r.mimetype, "application/x-test");
            assert_eq!(r.filename.as_deref(), filename);
            assert_eq!(r.caption.as_deref(), caption);
            assert_eq!(r.seconds, facts.seconds);
            assert_eq!((r.width, r.height), (facts.width, facts.height));
        }
    }

    #[test]
    fn voice_sets_ptt_and_key_timestamp_is_carried() {
        let msg = media_message(
            SendKind::Voice,
            &facts_for(SendKind::Voice),
            "audio/ogg; codecs=opus",
            "https://h:1/m/1",
            "/m/1",
            None,
            None,
            42,
        );
        let a = msg.audio_message.unwrap();
        assert_eq!(a.ptt, Some(true));
        assert_eq!(a.media_key_timestamp, Some(42));
    }

    #[test]
    fn media_ref_is_none_for_text_and_for_media_missing_keys() {
        assert!(media_ref(&Message::text("hi")).is_none());
        let mut msg = media_message(
            SendKind::Image,
            &facts_for(SendKind::Image),
            "image/png",
            "https://h:1/m/1",
            "/m/1",
            None,
            None,
            0,
        );
        if let Some(i) = msg.image_message.as_mut() {
            i.media_key = Some(vec![1; 31]);
        }
        assert!(media_ref(&msg).is_none());
    }

    #[test]
    fn incoming_media_id_is_deterministic_and_separates_senders() {
        let a = incoming_media_id("15550100", "ABC");
        assert_eq!(a, incoming_media_id("15550100", "ABC"));
        assert_ne!(a, incoming_media_id("1555010", "0ABC"));
        assert_ne!(a, incoming_media_id("15550100", "ABD"));
    }

    fn media_ref_for(plaintext: &[u8], kind: SendKind) -> (Vec<u8>, MediaRef) {
        let (blob, s) = encrypt_all(&KEY, kind.media_kind(), plaintext);
        let r = MediaRef {
            kind,
            url: Some("https://h:1/m/1".into()),
            direct_path: None,
            media_key: KEY,
            file_sha256: s.file_sha256,
            file_enc_sha256: s.file_enc_sha256,
            file_length: s.file_length,
            mimetype: "video/mp4".into(),
            filename: None,
            caption: None,
            seconds: None,
            width: None,
            height: None,
        };
        (blob, r)
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = temp_file();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn good_blob_verifies_and_decrypts() {
        let plaintext: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (blob, r) = media_ref_for(&plaintext, SendKind::Video);
        let mut out = temp_file();
        let n = verify_and_decrypt(&mut file_with(&blob), &r, &mut out).unwrap();
        assert_eq!(n, plaintext.len() as u64);
        assert_eq!(read_all(&mut out), plaintext);
    }

    /// The async check gives the executor back between slices: a blob of 2.5 slices takes
    /// three slices per pass (plus the pass change), and ends with the same plaintext as the
    /// one-shot call.
    #[test]
    fn verify_job_works_in_bounded_slices_and_async_yields_between_them() {
        let plaintext: Vec<u8> = (0..(VERIFY_SLICE_BYTES * 5 / 2) as u32)
            .map(|i| (i * 13) as u8)
            .collect();
        let (blob, r) = media_ref_for(&plaintext, SendKind::File);
        let mut blob_file = file_with(&blob);
        blob_file.seek(SeekFrom::Start(0)).unwrap();
        let mut out = temp_file();
        let mut job = VerifyJob::new(&mut blob_file, &r, &mut out);
        let mut steps = 0;
        let len = loop {
            steps += 1;
            if let Some(len) = job.step().unwrap() {
                break len;
            }
        };
        assert_eq!(len, plaintext.len() as u64);
        assert!((6..=8).contains(&steps), "{steps} steps");
        assert!(job.step().is_err(), "a finished job does not run again");
        assert_eq!(read_all(&mut out), plaintext);

        // The async form: count the polls that returned Pending (each one a yield).
        let mut out = temp_file();
        let mut blob_file = file_with(&blob);
        let mut yields = 0;
        let len = {
            let mut fut = std::pin::pin!(verify_and_decrypt_async(&mut blob_file, &r, &mut out));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            loop {
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => break result.unwrap(),
                    Poll::Pending => yields += 1,
                }
            }
        };
        assert_eq!(len, plaintext.len() as u64);
        assert!(yields >= 5, "{yields} yields");
        assert_eq!(read_all(&mut out), plaintext);
    }

    #[test]
    fn tampered_blob_is_refused_permanently_before_decrypting() {
        let (mut blob, mut r) = media_ref_for(b"hello media", SendKind::Image);
        blob[3] ^= 1;
        let mut out = temp_file();
        let e = verify_and_decrypt(&mut file_with(&blob), &r, &mut out).unwrap_err();
        assert!(matches!(
            e,
            PipeError::Verify {
                source: MediaCryptoError::EncSha256Mismatch
            }
        ));
        assert!(e.is_permanent() && e.is_verification_failure());
        // A sender who announces the tampered blob's hash still fails the MAC.
        r.file_enc_sha256 = Sha256::digest(&blob).into();
        let e = verify_and_decrypt(&mut file_with(&blob), &r, &mut out).unwrap_err();
        assert!(matches!(
            e,
            PipeError::Verify {
                source: MediaCryptoError::MacMismatch
            }
        ));
        assert!(read_all(&mut out).is_empty(), "nothing decrypted");
    }

    #[test]
    fn wrong_announced_length_is_a_permanent_failure() {
        let (blob, mut r) = media_ref_for(b"twelve bytes", SendKind::File);
        r.file_length = 13;
        let e = verify_and_decrypt(&mut file_with(&blob), &r, &mut temp_file()).unwrap_err();
        assert!(matches!(
            e,
            PipeError::LengthMismatch {
                announced: 13,
                actual: 12
            }
        ));
        assert!(e.is_permanent());
    }

    #[test]
    fn network_and_server_errors_are_retryable_and_gone_blobs_are_not() {
        assert!(!PipeError::Timeout { timeout_ms: 1 }.is_permanent());
        assert!(!PipeError::Status { status: 503 }.is_permanent());
        assert!(!PipeError::Status { status: 429 }.is_permanent());
        assert!(PipeError::Status { status: 404 }.is_permanent());
        assert!(
            !PipeError::Verify {
                source: MediaCryptoError::BlobLengthChanged {
                    verified_len: 1,
                    fed_len: 2
                }
            }
            .is_permanent()
        );
    }

    #[test]
    fn failure_notes_round_trip_in_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(tmp.path()).unwrap();
        let txn = store.begin().unwrap();
        let id = incoming_media_id("15550100", "X1");
        assert_eq!(media_failure(&txn, &id).unwrap(), None);
        record_media_failure(&txn, &id, MediaFailure::VerificationFailed).unwrap();
        assert_eq!(
            media_failure(&txn, &id).unwrap(),
            Some(MediaFailure::VerificationFailed)
        );
        assert_eq!(
            media_failure(&txn, &incoming_media_id("15550100", "X2")).unwrap(),
            None
        );
    }

    #[test]
    fn https_urls_split_into_host_port_and_path() {
        assert_eq!(
            split_https_url("https://media.example:8443/m/ab?x=1"),
            Some(("media.example", 8443, "/m/ab?x=1"))
        );
        assert_eq!(split_https_url("https://h/x"), Some(("h", 443, "/x")));
        assert_eq!(
            split_https_url("https://[::1]:9/p"),
            Some(("[::1]", 9, "/p"))
        );
        assert_eq!(split_https_url("https://[::1]"), Some(("[::1]", 443, "/")));
        for bad in [
            "http://h/x",
            "https://",
            "https://u@h/x",
            "https://h:0/x",
            "https://h:x/",
            "https://h/a b",
        ] {
            assert_eq!(split_https_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn response_heads_need_one_length_and_no_chunking() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response_head(ok).unwrap(), Some((200, Some(5), 38)));
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_response_head(bad).is_err());
        }
    }

    // ---- download against a local TLS server ----

    /// Serves one connection with `response` (raw bytes) on a TLS listener with the hub's
    /// generated certificate; returns the URL base and the client config pinned to it.
    fn tls_server(
        response: Vec<u8>,
    ) -> (String, Arc<ClientConfig>, smol::Task<()>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let hub = tls::ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        let config = tls::client_config(&tls::Pin::Spki(hub.server_spki_sha256())).unwrap();
        let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = hub.server_config();
        let task = smol::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = tls::accept(server, tcp).await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&b[..n]);
            }
            assert!(head.starts_with(b"GET /m/abc HTTP/1.1\r\n"));
            let _ = s.write_all(&response).await;
            let _ = s.flush().await;
            let _ = s.close().await;
        });
        (format!("https://127.0.0.1:{port}"), config, task, dir)
    }

    fn fetch(response: Vec<u8>, max_bytes: u64) -> (Result<u64, PipeError>, File) {
        let (base, config, task, _dir) = tls_server(response);
        let mut out = temp_file();
        let r = smol::block_on(async {
            let r = download(
                &format!("{base}/m/abc"),
                config,
                "localhost",
                10_000,
                max_bytes,
                &mut out,
            )
            .await;
            drop(task);
            r
        });
        (r, out)
    }

    fn ok_response(body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn download_fetches_a_blob_over_pinned_tls_and_it_decrypts() {
        let plaintext = vec![0x42u8; 150_000];
        let (blob, r) = media_ref_for(&plaintext, SendKind::File);
        let (got, mut out) = fetch(ok_response(&blob), r.max_blob_bytes());
        assert_eq!(got.unwrap(), blob.len() as u64);
        let mut plain = temp_file();
        verify_and_decrypt(&mut out, &r, &mut plain).unwrap();
        assert_eq!(read_all(&mut plain), plaintext);
    }

    #[test]
    fn download_refuses_oversized_missing_length_and_error_status() {
        let (r, _) = fetch(ok_response(&[0; 100]), 99);
        assert!(
            matches!(r, Err(PipeError::BlobTooLarge { len: 100, .. })),
            "{r:?}"
        );
        let (r, _) = fetch(b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec(), 99);
        assert!(matches!(r, Err(PipeError::BadResponse { .. })), "{r:?}");
        let (r, _) = fetch(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            99,
        );
        assert!(matches!(r, Err(PipeError::Status { status: 404 })), "{r:?}");
        let (r, _) = fetch(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort".to_vec(),
            99,
        );
        assert!(
            matches!(
                r,
                Err(PipeError::Truncated {
                    expected: 50,
                    got: 5
                })
            ),
            "{r:?}"
        );
        assert!(!r.unwrap_err().is_permanent());
    }

    #[test]
    fn download_with_the_wrong_pin_fails_to_connect() {
        let (base, _, task, _dir) = tls_server(ok_response(b"x"));
        let other = tls::client_config(&tls::Pin::Spki([9; 32])).unwrap();
        let r = smol::block_on(download(
            &format!("{base}/m/abc"),
            other,
            "localhost",
            10_000,
            10,
            &mut temp_file(),
        ));
        drop(task);
        assert!(matches!(r, Err(PipeError::Connect { .. })), "{r:?}");
    }

    proptest! {
        #[test]
        fn verify_and_decrypt_never_panics_on_arbitrary_blobs(
            blob in proptest::collection::vec(any::<u8>(), 0..600),
            kind in 0usize..5,
            file_length in 0u64..700,
        ) {
            let (_, mut r) = media_ref_for(b"x", SendKind::ALL[kind]);
            r.file_length = file_length;
            // Announce the blob's real hash, so the MAC and later checks run too.
            r.file_enc_sha256 = Sha256::digest(&blob).into();
            let e = verify_and_decrypt(&mut file_with(&blob), &r, &mut temp_file());
            prop_assert!(e.is_err());
        }

        #[test]
        fn encrypt_body_matches_encrypt_all_for_any_data_and_chunking(
            data in proptest::collection::vec(any::<u8>(), 1..3000),
            step in 1usize..700,
        ) {
            let (facts, mut out) = encrypt(&data, SendKind::File, step);
            let (blob, s) = encrypt_all(&KEY, MediaKind::Document, &data);
            let facts = facts.unwrap();
            prop_assert_eq!(read_all(&mut out), blob);
            prop_assert_eq!(facts.file_enc_sha256, s.file_enc_sha256);
        }
    }
}
