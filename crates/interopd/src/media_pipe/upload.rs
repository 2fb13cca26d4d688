//! Outgoing media: the request body streamed through the probes and encryption to a blob
//! file, in chunks, yielding to the executor between them.

use super::*;

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
pub(super) enum Probes {
    Image(ImageProbe),
    Voice(OggProbe),
    Audio(OggProbe, Mp4Probe),
    Video(Mp4Probe),
    None,
}

impl Probes {
    pub(super) fn for_kind(kind: SendKind) -> Probes {
        match kind {
            SendKind::Image => Probes::Image(ImageProbe::default()),
            SendKind::Voice => Probes::Voice(OggProbe::default()),
            SendKind::Audio => Probes::Audio(OggProbe::default(), Mp4Probe::default()),
            SendKind::Video => Probes::Video(Mp4Probe::default()),
            SendKind::File => Probes::None,
        }
    }

    pub(super) fn update(&mut self, chunk: &[u8]) {
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
    pub(super) fn finish(self) -> Result<Probed, PipeError> {
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
pub(super) struct Probed {
    pub(super) width: Option<u32>,
    pub(super) height: Option<u32>,
    pub(super) seconds: Option<u32>,
}

/// The sans-I/O half of the upload pipe: plaintext chunks in, blob bytes out, one chunk at a
/// time. Its output buffer never holds more than the last chunk's blob bytes.
pub(super) struct Upload {
    pub(super) encryptor: Encryptor,
    pub(super) probes: Probes,
    pub(super) max_bytes: u64,
    pub(super) plain_len: u64,
    pub(super) media_key: [u8; MEDIA_KEY_BYTES],
    pub(super) out: Vec<u8>,
}

impl Upload {
    pub(super) fn new(kind: SendKind, max_bytes: u64, media_key: &[u8; MEDIA_KEY_BYTES]) -> Upload {
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
    pub(super) fn update(&mut self, chunk: &[u8]) -> Result<&[u8], PipeError> {
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
    pub(super) fn finish(mut self) -> Result<(Vec<u8>, UploadFacts), PipeError> {
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
pub(super) async fn pump<R: AsyncRead + Unpin>(
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
