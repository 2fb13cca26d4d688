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

use futures_lite::{AsyncRead, AsyncReadExt as _, FutureExt as _};
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

mod download;
mod failures;
mod fields;
mod upload;
mod verify;

pub use download::*;
pub use failures::*;
pub use fields::*;
pub use upload::*;
pub use verify::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_crypto::encrypt_all;
    use futures_lite::AsyncWriteExt as _;
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
