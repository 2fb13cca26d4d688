//! The hub's media store: blobs that simulated WhatsApp users send, encrypted exactly as
//! WhatsApp encrypts media ([`interop_proto::media_crypto`]) and kept as files
//! `<state>/media/{id}.blob`, where `id` is 32 lowercase hex digits (128 random bits). This
//! file owns the blob files and the media message a simulated user sends for them; it serves
//! nothing (the shell does, at `GET /media/{id}` on `--media ADDR`) and draws randomness only
//! from the caller's RNG.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rand::{CryptoRng, Rng};

use interop_io::state_dir::StoreError;
use interop_proto::content::{AudioMessage, DocumentMessage, ImageMessage, Message, VideoMessage};
use interop_proto::media_crypto::{self, MEDIA_KEY_BYTES, MediaKind};

/// Directory of blobs inside the hub's state directory.
pub const MEDIA_DIR: &str = "media";
/// Largest plaintext a simulated user sends, in bytes.
pub const MAX_SIM_MEDIA_BYTES: usize = 16 * 1024 * 1024;
/// Length of a blob id, in hex digits.
pub const MEDIA_ID_HEX_CHARS: usize = 32;

/// Why a media message could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum MediaError {
    /// Caller: the kind is not image, voice, audio, video or file.
    BadKind,
    /// Caller: the data is empty or over [`MAX_SIM_MEDIA_BYTES`].
    BadSize { len: usize },
    /// Environment: the blob could not be written.
    Store(StoreError),
}

impl std::fmt::Display for MediaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaError::BadKind => {
                f.write_str("media.kind must be image, voice, audio, video or file")
            }
            MediaError::BadSize { len } => write!(
                f,
                "media data is {len} bytes; it must be 1..={MAX_SIM_MEDIA_BYTES}"
            ),
            MediaError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MediaError {}

/// Blob files under `<state>/media/`, served at `{base_url}/media/{id}`.
pub struct MediaStore {
    dir: PathBuf,
    base_url: String,
}

/// Whether `id` is a well-formed blob id (so it can become a file name).
pub fn valid_id(id: &str) -> bool {
    id.len() == MEDIA_ID_HEX_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl MediaStore {
    /// A store in `<state_dir>/media/` whose blobs are served under `base_url`
    /// (`https://host:port`).
    pub fn new(state_dir: &Path, base_url: &str) -> MediaStore {
        MediaStore {
            dir: state_dir.join(MEDIA_DIR),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The file of blob `id`, if the id is well formed.
    pub fn path(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(format!("{id}.blob")))
    }

    fn put(&self, id: &str, blob: &[u8]) -> Result<(), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
        let path = self.dir.join(format!("{id}.blob"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(blob).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Encrypts `data`, stores the blob, and returns the media message that refers to it.
    pub fn message<R: Rng + CryptoRng>(
        &self,
        kind: &str,
        mimetype: &str,
        data: &[u8],
        filename: Option<&str>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Message, MediaError> {
        let crypto_kind = match kind {
            "image" => MediaKind::Image,
            "voice" | "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "file" => MediaKind::Document,
            _ => return Err(MediaError::BadKind),
        };
        if data.is_empty() || data.len() > MAX_SIM_MEDIA_BYTES {
            return Err(MediaError::BadSize { len: data.len() });
        }
        let mut media_key = [0u8; MEDIA_KEY_BYTES];
        rng.fill_bytes(&mut media_key);
        let mut raw_id = [0u8; MEDIA_ID_HEX_CHARS / 2];
        rng.fill_bytes(&mut raw_id);
        let id: String = raw_id.iter().map(|b| format!("{b:02x}")).collect();
        let (blob, sum) = media_crypto::encrypt_all(&media_key, crypto_kind, data);
        self.put(&id, &blob).map_err(MediaError::Store)?;
        let direct_path = format!("/media/{id}");
        let url = Some(format!("{}{direct_path}", self.base_url));
        let ts = Some(i64::try_from(now_ms / 1000).unwrap_or(i64::MAX));
        let mime = Some(mimetype.to_owned());
        let (sha, enc, len) = (
            Some(sum.file_sha256.to_vec()),
            Some(sum.file_enc_sha256.to_vec()),
            Some(sum.file_length),
        );
        let key = Some(media_key.to_vec());
        let dp = Some(direct_path);
        let mut m = Message::default();
        match kind {
            "image" => {
                m.image_message = Some(ImageMessage {
                    url,
                    mimetype: mime,
                    file_sha256: sha,
                    file_length: len,
                    media_key: key,
                    file_enc_sha256: enc,
                    direct_path: dp,
                    media_key_timestamp: ts,
                    ..ImageMessage::default()
                })
            }
            "voice" | "audio" => {
                m.audio_message = Some(AudioMessage {
                    url,
                    mimetype: mime,
                    file_sha256: sha,
                    file_length: len,
                    ptt: Some(kind == "voice"),
                    media_key: key,
                    file_enc_sha256: enc,
                    direct_path: dp,
                    media_key_timestamp: ts,
                    ..AudioMessage::default()
                })
            }
            "video" => {
                m.video_message = Some(VideoMessage {
                    url,
                    mimetype: mime,
                    file_sha256: sha,
                    file_length: len,
                    media_key: key,
                    file_enc_sha256: enc,
                    direct_path: dp,
                    media_key_timestamp: ts,
                    ..VideoMessage::default()
                })
            }
            _ => {
                m.document_message = Some(DocumentMessage {
                    url,
                    mimetype: mime,
                    file_sha256: sha,
                    file_length: len,
                    media_key: key,
                    file_name: filename.map(str::to_owned),
                    file_enc_sha256: enc,
                    direct_path: dp,
                    media_key_timestamp: ts,
                    ..DocumentMessage::default()
                })
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_blob_decrypts_to_the_sent_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = MediaStore::new(dir.path(), "https://127.0.0.1:9/");
        let data = b"\x89PNG not really".to_vec();
        let m = store
            .message("image", "image/png", &data, None, 1_000, &mut rand::rng())
            .unwrap();
        let img = m.image_message.unwrap();
        let url = img.url.unwrap();
        let id = url.strip_prefix("https://127.0.0.1:9/media/").unwrap();
        assert!(valid_id(id));
        let blob = fs::read(store.path(id).unwrap()).unwrap();
        let key: [u8; 32] = img.media_key.unwrap().try_into().unwrap();
        let enc: [u8; 32] = img.file_enc_sha256.unwrap().try_into().unwrap();
        let sha: [u8; 32] = img.file_sha256.unwrap().try_into().unwrap();
        let plain = media_crypto::decrypt_all(&key, MediaKind::Image, &blob, &enc, &sha).unwrap();
        assert_eq!(plain, data);
    }

    #[test]
    fn voice_is_ptt_audio_and_bad_kinds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = MediaStore::new(dir.path(), "https://h");
        let m = store
            .message("voice", "audio/ogg", b"x", None, 0, &mut rand::rng())
            .unwrap();
        assert_eq!(m.kind(), interop_proto::content::ContentKind::Voice);
        assert!(matches!(
            store.message("gif", "x", b"x", None, 0, &mut rand::rng()),
            Err(MediaError::BadKind)
        ));
        assert!(store.path("../etc/passwd").is_none());
    }
}
