//! Verifying and decrypting a downloaded blob in slices, so a large file never stalls the
//! daemon's one thread.

use super::*;

/// Reads `file` from its start in chunks, handing each to `each`.
/// Blob bytes [`VerifyJob::step`] reads before it returns, so the async caller can yield to
/// the executor between slices (about 4 ms of work each on a Raspberry Pi 4).
pub const VERIFY_SLICE_BYTES: usize = 1024 * 1024;

/// Where a [`VerifyJob`] is.
pub(super) enum VerifyStage {
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
    pub(super) blob: &'a mut File,
    pub(super) r: &'a MediaRef,
    pub(super) plain_out: &'a mut File,
    /// `None` only while a stage is being replaced, or after an error.
    pub(super) stage: Option<VerifyStage>,
    pub(super) buf: Vec<u8>,
    pub(super) plain: Vec<u8>,
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
pub(super) fn read_some(file: &mut File, buf: &mut [u8]) -> Result<usize, PipeError> {
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
