//! WhatsApp-compatible media encryption (DESIGN.md section 5) as a streaming, sans-I/O core.
//!
//! This file owns the media blob format: key expansion of a 32-byte `mediaKey`, AES-256-CBC
//! with PKCS7 padding, the 10-byte truncated HMAC-SHA256 trailer, and the `fileSha256`,
//! `fileEncSha256` and `fileLength` values that travel in the content protobuf. It takes bytes
//! and returns bytes: no I/O, no clock, no randomness (the caller draws the media key). Memory
//! stays bounded whatever the file size: each state machine buffers at most one AES block plus
//! the MAC tag, and output goes to a caller-owned `Vec` that the shell drains after every chunk
//! of [`MEDIA_CHUNK_BYTES`].
//!
//! Blob layout: `ciphertext || HMAC-SHA256(macKey, iv || ciphertext)[..10]`.
//!
//! Sending is one pass:
//!
//! ```text
//! Encryptor::new ──update(plaintext chunk)*──▶ finish ──▶ EncryptSummary
//! ```
//!
//! Receiving is two passes over the same stored blob, because the checks must run in the order
//! fileEncSha256, MAC, decrypt, fileSha256, and a stream cannot be rewound:
//!
//! ```text
//! pass 1: Verifier::new ───────update(blob chunk)*──▶ finish(fileEncSha256) ──▶ VerifiedBlob
//!           checks: fileEncSha256, blob length, MAC, block alignment
//! pass 2: Decryptor::new(VerifiedBlob) ──update(blob chunk)*──▶ finish(fileSha256)
//!           checks: byte count, PKCS7 padding, fileSha256
//! ```
//!
//! A [`VerifiedBlob`] can only come from a successful [`Verifier::finish`] and it carries the
//! keys it was checked with, so decrypting unverified bytes, or decrypting with other keys than
//! the ones that passed the MAC check, does not compile. Plaintext that [`Decryptor::update`]
//! emits is already authenticated by the MAC, but it is final only once [`Decryptor::finish`]
//! returns `Ok`: the shell writes it to a private temporary file and publishes it on success only.

use std::fmt;

use cbc::cipher::{Block, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Size of the random `mediaKey` the sender draws and puts in the content protobuf.
pub const MEDIA_KEY_BYTES: usize = 32;
/// Length of the truncated HMAC-SHA256 tag at the end of every blob.
pub const MAC_TRUNCATED_BYTES: usize = 10;
/// Chunk size the shell uses when it streams a blob or a plaintext file through this module.
pub const MEDIA_CHUNK_BYTES: usize = 64 * 1024;
/// AES block size; the ciphertext is a whole number of these.
pub const AES_BLOCK_BYTES: usize = 16;
/// Output length of the HKDF expansion (only the first 80 bytes are used).
pub const EXPANDED_KEY_BYTES: usize = 112;
/// Smallest well-formed blob: one padded block (empty plaintext) plus the MAC tag.
pub const MIN_BLOB_BYTES: usize = AES_BLOCK_BYTES + MAC_TRUNCATED_BYTES;
/// Length of a SHA-256 digest (`fileSha256`, `fileEncSha256`).
pub const SHA256_BYTES: usize = 32;

const IV_BYTES: usize = 16;
const CIPHER_KEY_BYTES: usize = 32;
const MAC_KEY_BYTES: usize = 32;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// The four media kinds; each has its own HKDF info string, so a key for one kind does not
/// decrypt a blob announced as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

impl MediaKind {
    /// Every kind, in protobuf-message order.
    pub const ALL: [MediaKind; 4] = [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Audio,
        MediaKind::Document,
    ];

    /// The HKDF `info` string that separates the keys of this kind.
    pub fn hkdf_info(self) -> &'static [u8] {
        match self {
            MediaKind::Image => b"WhatsApp Image Keys",
            MediaKind::Video => b"WhatsApp Video Keys",
            MediaKind::Audio => b"WhatsApp Audio Keys",
            MediaKind::Document => b"WhatsApp Document Keys",
        }
    }
}

/// Errors of the receiving side, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaCryptoError {
    /// Storage or transit corrupted the blob, or the sender announced a wrong fileEncSha256:
    /// the SHA-256 of the blob differs; the shell discards the blob and may fetch it again.
    EncSha256Mismatch,
    /// The sender built a malformed blob (its hash matched): `len` blob bytes are fewer than
    /// [`MIN_BLOB_BYTES`]; the shell drops the media.
    BlobTooShort { len: u64 },
    /// The sender forged or mis-keyed the blob, or the media kind is wrong: the MAC trailer
    /// does not authenticate the ciphertext; the shell drops the media without decrypting.
    MacMismatch,
    /// The sender's encryptor is broken (the MAC was valid): the `len` ciphertext bytes are
    /// not a whole number of AES blocks; the shell drops the media.
    LengthNotBlockAligned { len: u64 },
    /// The sender's encryptor is broken (the MAC was valid): the last block does not end in
    /// PKCS7 padding; the shell drops the media.
    BadPadding,
    /// The sender announced a fileSha256 that does not match the plaintext it encrypted; the
    /// shell drops the media and deletes what it wrote.
    FileSha256Mismatch,
    /// Storage changed between the two passes, or the shell fed pass 2 differently: pass 1
    /// verified a blob of `verified_len` bytes, pass 2 got `fed_len` bytes (it accepts the
    /// blob with or without its MAC trailer); the shell deletes the output and retries.
    BlobLengthChanged { verified_len: u64, fed_len: u64 },
}

impl fmt::Display for MediaCryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaCryptoError::EncSha256Mismatch => {
                f.write_str("media blob does not match its fileEncSha256")
            }
            MediaCryptoError::BlobTooShort { len } => write!(
                f,
                "media blob of {len} bytes is shorter than the minimum {MIN_BLOB_BYTES}"
            ),
            MediaCryptoError::MacMismatch => f.write_str("media blob MAC does not verify"),
            MediaCryptoError::LengthNotBlockAligned { len } => write!(
                f,
                "media ciphertext of {len} bytes is not a multiple of {AES_BLOCK_BYTES}"
            ),
            MediaCryptoError::BadPadding => f.write_str("media plaintext has bad PKCS7 padding"),
            MediaCryptoError::FileSha256Mismatch => {
                f.write_str("decrypted media does not match its fileSha256")
            }
            MediaCryptoError::BlobLengthChanged {
                verified_len,
                fed_len,
            } => write!(
                f,
                "media blob verified with {verified_len} bytes but {fed_len} bytes were decrypted"
            ),
        }
    }
}

impl std::error::Error for MediaCryptoError {}

/// The keys expanded from one `mediaKey` for one [`MediaKind`].
///
/// Debug output never shows the key bytes, and they are overwritten when the value drops
/// (best effort: the AES key schedule inside the cipher state is not wiped).
pub struct MediaKeys {
    iv: [u8; IV_BYTES],
    cipher_key: [u8; CIPHER_KEY_BYTES],
    mac_key: [u8; MAC_KEY_BYTES],
}

impl MediaKeys {
    /// HKDF-SHA256 with no salt over `media_key`, info from `kind`, 112 bytes of output:
    /// iv = [0..16], cipherKey = [16..48], macKey = [48..80].
    pub fn derive(media_key: &[u8; MEDIA_KEY_BYTES], kind: MediaKind) -> MediaKeys {
        let mut expanded = [0u8; EXPANDED_KEY_BYTES];
        Hkdf::<Sha256>::new(None, media_key)
            .expand(kind.hkdf_info(), &mut expanded)
            // INVARIANT: 112 bytes is far below HKDF-SHA256's limit of 255 * 32 bytes.
            .expect("HKDF-SHA256 can expand to 112 bytes");
        let mut keys = MediaKeys {
            iv: [0; IV_BYTES],
            cipher_key: [0; CIPHER_KEY_BYTES],
            mac_key: [0; MAC_KEY_BYTES],
        };
        // INVARIANT: constant ranges inside the fixed 112-byte array, each as long as its target.
        keys.iv.copy_from_slice(&expanded[0..16]);
        keys.cipher_key.copy_from_slice(&expanded[16..48]);
        keys.mac_key.copy_from_slice(&expanded[48..80]);
        wipe(&mut expanded);
        keys
    }

    /// The CBC initialisation vector.
    pub fn iv(&self) -> &[u8; IV_BYTES] {
        &self.iv
    }

    /// The AES-256 key.
    pub fn cipher_key(&self) -> &[u8; CIPHER_KEY_BYTES] {
        &self.cipher_key
    }

    /// The HMAC-SHA256 key.
    pub fn mac_key(&self) -> &[u8; MAC_KEY_BYTES] {
        &self.mac_key
    }

    fn cbc_encryptor(&self) -> Aes256CbcEnc {
        Aes256CbcEnc::new((&self.cipher_key).into(), (&self.iv).into())
    }

    fn cbc_decryptor(&self) -> Aes256CbcDec {
        Aes256CbcDec::new((&self.cipher_key).into(), (&self.iv).into())
    }

    /// An HMAC over `iv || ...`, ready for the ciphertext.
    fn mac_after_iv(&self) -> HmacSha256 {
        // INVARIANT: HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.mac_key).expect("HMAC takes any key length");
        mac.update(&self.iv);
        mac
    }
}

impl fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKeys { .. }")
    }
}

impl Drop for MediaKeys {
    fn drop(&mut self) {
        wipe(&mut self.iv);
        wipe(&mut self.cipher_key);
        wipe(&mut self.mac_key);
    }
}

/// Overwrites secret bytes; `black_box` keeps the compiler from dropping the dead stores.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// Byte counts are `u64` in the format; a `usize` always fits on supported targets.
fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Less than one AES block of input waiting for the rest of its block.
#[derive(Default)]
struct PartialBlock {
    bytes: [u8; AES_BLOCK_BYTES],
    len: usize,
}

impl PartialBlock {
    /// Appends to `out` every whole block of `self ++ input` and keeps the remainder.
    fn drain_whole_blocks(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.len > 0 {
            let take = (AES_BLOCK_BYTES - self.len).min(input.len());
            let (head, rest) = input.split_at(take);
            // INVARIANT: self.len + take <= AES_BLOCK_BYTES by the choice of take.
            self.bytes[self.len..self.len + take].copy_from_slice(head);
            self.len += take;
            input = rest;
            if self.len < AES_BLOCK_BYTES {
                return;
            }
            out.extend_from_slice(&self.bytes);
            self.len = 0;
        }
        let whole_len = input.len() - input.len() % AES_BLOCK_BYTES;
        let (blocks, rest) = input.split_at(whole_len);
        out.extend_from_slice(blocks);
        // INVARIANT: rest.len() < AES_BLOCK_BYTES, the size of self.bytes.
        self.bytes[..rest.len()].copy_from_slice(rest);
        self.len = rest.len();
    }
}

/// Encrypts whole blocks in place; `bytes.len()` is a multiple of [`AES_BLOCK_BYTES`].
fn encrypt_blocks_in_place(cipher: &mut Aes256CbcEnc, bytes: &mut [u8]) {
    let (blocks, rest) = <Block<Aes256CbcEnc>>::slice_as_chunks_mut(bytes);
    debug_assert!(rest.is_empty(), "callers pass whole blocks only");
    cipher.encrypt_blocks(blocks);
}

/// Decrypts whole blocks in place; `bytes.len()` is a multiple of [`AES_BLOCK_BYTES`].
fn decrypt_blocks_in_place(cipher: &mut Aes256CbcDec, bytes: &mut [u8]) {
    let (blocks, rest) = <Block<Aes256CbcDec>>::slice_as_chunks_mut(bytes);
    debug_assert!(rest.is_empty(), "callers pass whole blocks only");
    cipher.decrypt_blocks(blocks);
}

/// What the sender puts in the content protobuf besides the media key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptSummary {
    /// SHA-256 of the plaintext (`fileSha256`).
    pub file_sha256: [u8; SHA256_BYTES],
    /// SHA-256 of the whole blob, MAC included (`fileEncSha256`).
    pub file_enc_sha256: [u8; SHA256_BYTES],
    /// Plaintext length in bytes (`fileLength`).
    pub file_length: u64,
    /// Blob length in bytes, MAC included.
    pub blob_length: u64,
}

/// Streaming sender side: plaintext in, blob out.
pub struct Encryptor {
    cipher: Aes256CbcEnc,
    mac: HmacSha256,
    file_sha: Sha256,
    enc_sha: Sha256,
    partial: PartialBlock,
    file_length: u64,
    blob_length: u64,
}

impl Encryptor {
    /// Starts a blob for `media_key`, which the caller drew at random for this file only.
    pub fn new(media_key: &[u8; MEDIA_KEY_BYTES], kind: MediaKind) -> Encryptor {
        let keys = MediaKeys::derive(media_key, kind);
        Encryptor {
            cipher: keys.cbc_encryptor(),
            mac: keys.mac_after_iv(),
            file_sha: Sha256::new(),
            enc_sha: Sha256::new(),
            partial: PartialBlock::default(),
            file_length: 0,
            blob_length: 0,
        }
    }

    /// Takes the next plaintext chunk and appends the ciphertext of every block completed so
    /// far to `out`; fewer than [`AES_BLOCK_BYTES`] bytes stay buffered.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        self.file_sha.update(plaintext);
        self.file_length = self.file_length.saturating_add(len_u64(plaintext.len()));
        let start = out.len();
        self.partial.drain_whole_blocks(plaintext, out);
        // INVARIANT: start <= out.len(); the vector only grew.
        self.seal(&mut out[start..]);
    }

    /// Appends the padded last block and the MAC tag to `out` and returns the hashes.
    pub fn finish(mut self, out: &mut Vec<u8>) -> EncryptSummary {
        let used = self.partial.len;
        let pad_len = AES_BLOCK_BYTES - used;
        let mut last = self.partial.bytes;
        // INVARIANT: used < AES_BLOCK_BYTES, and pad_len is 1..=16 so it fits in a byte.
        last[used..].fill(pad_len as u8);
        self.seal(&mut last);
        out.extend_from_slice(&last);

        let tag = self.mac.finalize().into_bytes();
        // INVARIANT: HMAC-SHA256 output is 32 bytes, longer than the truncated tag.
        let tag = &tag[..MAC_TRUNCATED_BYTES];
        self.enc_sha.update(tag);
        out.extend_from_slice(tag);
        self.blob_length = self
            .blob_length
            .saturating_add(len_u64(MAC_TRUNCATED_BYTES));

        EncryptSummary {
            file_sha256: self.file_sha.finalize().into(),
            file_enc_sha256: self.enc_sha.finalize().into(),
            file_length: self.file_length,
            blob_length: self.blob_length,
        }
    }

    /// Encrypts whole plaintext blocks in place and feeds the ciphertext to MAC and hash.
    fn seal(&mut self, blocks: &mut [u8]) {
        encrypt_blocks_in_place(&mut self.cipher, blocks);
        let blocks: &[u8] = blocks;
        self.mac.update(blocks);
        self.enc_sha.update(blocks);
        self.blob_length = self.blob_length.saturating_add(len_u64(blocks.len()));
    }
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("file_length", &self.file_length)
            .field("blob_length", &self.blob_length)
            .finish_non_exhaustive()
    }
}

/// Receiving pass 1: hashes the whole blob and checks its MAC without decrypting anything.
///
/// Feed the blob in chunks of any size; the last [`MAC_TRUNCATED_BYTES`] bytes are held back
/// as the tag, so no more than that is buffered.
pub struct Verifier {
    keys: MediaKeys,
    mac: HmacSha256,
    enc_sha: Sha256,
    tail: [u8; MAC_TRUNCATED_BYTES],
    tail_len: usize,
    blob_len: u64,
}

impl Verifier {
    /// Starts checking a blob announced with `media_key` as media of `kind`.
    pub fn new(media_key: &[u8; MEDIA_KEY_BYTES], kind: MediaKind) -> Verifier {
        let keys = MediaKeys::derive(media_key, kind);
        Verifier {
            mac: keys.mac_after_iv(),
            keys,
            enc_sha: Sha256::new(),
            tail: [0; MAC_TRUNCATED_BYTES],
            tail_len: 0,
            blob_len: 0,
        }
    }

    /// Takes the next chunk of the blob.
    pub fn update(&mut self, blob_chunk: &[u8]) {
        self.enc_sha.update(blob_chunk);
        self.blob_len = self.blob_len.saturating_add(len_u64(blob_chunk.len()));
        if let Some(body_len) = blob_chunk.len().checked_sub(MAC_TRUNCATED_BYTES) {
            // The chunk alone refills the tag, so everything held before is ciphertext.
            // INVARIANT: tail_len <= MAC_TRUNCATED_BYTES always.
            self.mac.update(&self.tail[..self.tail_len]);
            let (body, tag) = blob_chunk.split_at(body_len);
            self.mac.update(body);
            self.tail.copy_from_slice(tag);
            self.tail_len = MAC_TRUNCATED_BYTES;
        } else {
            // Short chunk: the oldest held bytes that no longer fit in the tag are ciphertext.
            let released = (self.tail_len + blob_chunk.len()).saturating_sub(MAC_TRUNCATED_BYTES);
            // INVARIANT: released <= tail_len, since blob_chunk.len() < MAC_TRUNCATED_BYTES.
            self.mac.update(&self.tail[..released]);
            self.tail.copy_within(released..self.tail_len, 0);
            self.tail_len -= released;
            // INVARIANT: tail_len + blob_chunk.len() <= MAC_TRUNCATED_BYTES after the release.
            self.tail[self.tail_len..self.tail_len + blob_chunk.len()].copy_from_slice(blob_chunk);
            self.tail_len += blob_chunk.len();
        }
    }

    /// Checks, in this order: fileEncSha256, blob length, MAC, block alignment. Only a blob
    /// that passes them all yields the [`VerifiedBlob`] that [`Decryptor::new`] requires.
    pub fn finish(
        self,
        expected_file_enc_sha256: &[u8; SHA256_BYTES],
    ) -> Result<VerifiedBlob, MediaCryptoError> {
        let Verifier {
            keys,
            mac,
            enc_sha,
            tail,
            tail_len,
            blob_len,
        } = self;
        let enc_sha256: [u8; SHA256_BYTES] = enc_sha.finalize().into();
        if enc_sha256 != *expected_file_enc_sha256 {
            return Err(MediaCryptoError::EncSha256Mismatch);
        }
        if blob_len < len_u64(MIN_BLOB_BYTES) {
            return Err(MediaCryptoError::BlobTooShort { len: blob_len });
        }
        debug_assert_eq!(tail_len, MAC_TRUNCATED_BYTES, "a long blob fills the tag");
        // Constant-time comparison of the first 10 bytes of the HMAC.
        if mac.verify_truncated_left(&tail).is_err() {
            return Err(MediaCryptoError::MacMismatch);
        }
        let ciphertext_len = blob_len - len_u64(MAC_TRUNCATED_BYTES);
        if !ciphertext_len.is_multiple_of(len_u64(AES_BLOCK_BYTES)) {
            return Err(MediaCryptoError::LengthNotBlockAligned {
                len: ciphertext_len,
            });
        }
        Ok(VerifiedBlob {
            keys,
            ciphertext_len,
        })
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("blob_len", &self.blob_len)
            .finish_non_exhaustive()
    }
}

/// Proof that a blob passed its fileEncSha256 and MAC checks: only [`Verifier::finish`] makes
/// one. It carries the keys the MAC was checked with and the ciphertext length, and it is
/// consumed by [`Decryptor::new`].
///
/// ```compile_fail
/// // Decrypting without verifying first does not compile: the fields are private.
/// let token = interop_proto::media_crypto::VerifiedBlob { ciphertext_len: 16 };
/// ```
pub struct VerifiedBlob {
    keys: MediaKeys,
    ciphertext_len: u64,
}

impl VerifiedBlob {
    /// Ciphertext bytes in the blob: a non-zero multiple of [`AES_BLOCK_BYTES`].
    pub fn ciphertext_len(&self) -> u64 {
        self.ciphertext_len
    }

    /// Bytes in the whole blob, MAC trailer included.
    pub fn blob_len(&self) -> u64 {
        self.ciphertext_len
            .saturating_add(len_u64(MAC_TRUNCATED_BYTES))
    }
}

impl fmt::Debug for VerifiedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedBlob")
            .field("ciphertext_len", &self.ciphertext_len)
            .finish_non_exhaustive()
    }
}

/// Receiving pass 2: decrypts a verified blob.
///
/// Feed the same blob again from its first byte, in chunks of any size. The decryptor knows
/// the ciphertext length from the [`VerifiedBlob`] and ignores the MAC trailer, so the caller
/// may feed the whole blob or stop after the ciphertext. The last decrypted block is held back
/// until [`Decryptor::finish`] strips its padding, so at most two blocks are buffered.
pub struct Decryptor {
    cipher: Aes256CbcDec,
    file_sha: Sha256,
    partial: PartialBlock,
    held: Option<[u8; AES_BLOCK_BYTES]>,
    ciphertext_len: u64,
    consumed_len: u64,
    fed_len: u64,
    file_length: u64,
}

impl Decryptor {
    /// Starts decrypting the blob that `verified` vouches for, with the keys that verified it.
    pub fn new(verified: VerifiedBlob) -> Decryptor {
        Decryptor {
            cipher: verified.keys.cbc_decryptor(),
            file_sha: Sha256::new(),
            partial: PartialBlock::default(),
            held: None,
            ciphertext_len: verified.ciphertext_len,
            consumed_len: 0,
            fed_len: 0,
            file_length: 0,
        }
    }

    /// Takes the next chunk of the blob and appends the plaintext decrypted so far to `out`.
    /// Bytes past the ciphertext (the MAC trailer) are counted but not decrypted.
    pub fn update(&mut self, blob_chunk: &[u8], out: &mut Vec<u8>) {
        self.fed_len = self.fed_len.saturating_add(len_u64(blob_chunk.len()));
        let remaining = self.ciphertext_len.saturating_sub(self.consumed_len);
        let take = usize::try_from(remaining).map_or(blob_chunk.len(), |r| r.min(blob_chunk.len()));
        let (ciphertext, _trailer) = blob_chunk.split_at(take);
        self.consumed_len = self.consumed_len.saturating_add(len_u64(take));

        // The block held from the last call goes out first if any new block completes.
        let start = out.len();
        if let Some(held) = &self.held {
            out.extend_from_slice(held);
        }
        let new_start = out.len();
        self.partial.drain_whole_blocks(ciphertext, out);
        if out.len() == new_start {
            out.truncate(start);
            return;
        }
        // INVARIANT: new_start <= out.len(), and out grew by at least one whole block.
        decrypt_blocks_in_place(&mut self.cipher, &mut out[new_start..]);
        let last_start = out.len() - AES_BLOCK_BYTES;
        let mut last = [0u8; AES_BLOCK_BYTES];
        last.copy_from_slice(&out[last_start..]);
        out.truncate(last_start);
        self.held = Some(last);

        self.file_sha.update(&out[start..]);
        self.file_length = self.file_length.saturating_add(len_u64(out.len() - start));
    }

    /// Strips the PKCS7 padding, appends the last plaintext bytes to `out` and checks the
    /// plaintext against `expected_file_sha256`. Returns the plaintext length (`fileLength`).
    pub fn finish(
        self,
        expected_file_sha256: &[u8; SHA256_BYTES],
        out: &mut Vec<u8>,
    ) -> Result<u64, MediaCryptoError> {
        let verified_len = self
            .ciphertext_len
            .saturating_add(len_u64(MAC_TRUNCATED_BYTES));
        if self.consumed_len != self.ciphertext_len || self.fed_len > verified_len {
            return Err(MediaCryptoError::BlobLengthChanged {
                verified_len,
                fed_len: self.fed_len,
            });
        }
        // A VerifiedBlob holds at least one block, and all of it was fed, so one block is held.
        let Some(last) = self.held else {
            return Err(MediaCryptoError::BadPadding);
        };
        let plaintext_len = unpadded_len(&last).ok_or(MediaCryptoError::BadPadding)?;
        let (plaintext, _padding) = last.split_at(plaintext_len);

        let mut file_sha = self.file_sha;
        file_sha.update(plaintext);
        let file_sha256: [u8; SHA256_BYTES] = file_sha.finalize().into();
        if file_sha256 != *expected_file_sha256 {
            return Err(MediaCryptoError::FileSha256Mismatch);
        }
        out.extend_from_slice(plaintext);
        Ok(self.file_length.saturating_add(len_u64(plaintext_len)))
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("ciphertext_len", &self.ciphertext_len)
            .field("consumed_len", &self.consumed_len)
            .field("fed_len", &self.fed_len)
            .finish_non_exhaustive()
    }
}

/// Length of the plaintext in the last block, or `None` if it does not end in PKCS7 padding.
fn unpadded_len(last: &[u8; AES_BLOCK_BYTES]) -> Option<usize> {
    let pad_len = usize::from(last[AES_BLOCK_BYTES - 1]);
    let plaintext_len = AES_BLOCK_BYTES.checked_sub(pad_len)?;
    if pad_len == 0 {
        return None;
    }
    let (_plaintext, padding) = last.split_at(plaintext_len);
    padding
        .iter()
        .all(|&byte| usize::from(byte) == pad_len)
        .then_some(plaintext_len)
}

/// Encrypts a small plaintext held in memory; returns the blob and its summary.
pub fn encrypt_all(
    media_key: &[u8; MEDIA_KEY_BYTES],
    kind: MediaKind,
    plaintext: &[u8],
) -> (Vec<u8>, EncryptSummary) {
    let mut blob = Vec::with_capacity(plaintext.len() + AES_BLOCK_BYTES + MAC_TRUNCATED_BYTES);
    let mut encryptor = Encryptor::new(media_key, kind);
    encryptor.update(plaintext, &mut blob);
    let summary = encryptor.finish(&mut blob);
    (blob, summary)
}

/// Verifies and decrypts a small blob held in memory, with the checks in the required order.
pub fn decrypt_all(
    media_key: &[u8; MEDIA_KEY_BYTES],
    kind: MediaKind,
    blob: &[u8],
    expected_file_enc_sha256: &[u8; SHA256_BYTES],
    expected_file_sha256: &[u8; SHA256_BYTES],
) -> Result<Vec<u8>, MediaCryptoError> {
    let mut verifier = Verifier::new(media_key, kind);
    verifier.update(blob);
    let verified = verifier.finish(expected_file_enc_sha256)?;
    let mut plaintext = Vec::with_capacity(blob.len());
    let mut decryptor = Decryptor::new(verified);
    decryptor.update(blob, &mut plaintext);
    decryptor.finish(expected_file_sha256, &mut plaintext)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTORS: &str = include_str!("../../../tests/data/media/vectors.txt");

    struct Vector {
        kind: MediaKind,
        media_key: [u8; MEDIA_KEY_BYTES],
        plaintext: Vec<u8>,
        expanded: Vec<u8>,
        blob: Vec<u8>,
        file_sha256: [u8; SHA256_BYTES],
        file_enc_sha256: [u8; SHA256_BYTES],
        file_length: u64,
    }

    fn hex(text: &str) -> Vec<u8> {
        assert!(text.len().is_multiple_of(2), "odd hex length");
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    fn hex_array<const N: usize>(text: &str) -> [u8; N] {
        hex(text).try_into().expect("hex of the right length")
    }

    fn vectors() -> Vec<Vector> {
        let mut out = Vec::new();
        for record in VECTORS.split("\n\n") {
            let fields: std::collections::HashMap<&str, &str> = record
                .lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .map(|line| line.split_once('=').expect("key=value line"))
                .collect();
            if fields.is_empty() {
                continue;
            }
            let kind = match fields["kind"] {
                "image" => MediaKind::Image,
                "video" => MediaKind::Video,
                "audio" => MediaKind::Audio,
                "document" => MediaKind::Document,
                other => panic!("unknown kind {other}"),
            };
            out.push(Vector {
                kind,
                media_key: hex_array(fields["media_key"]),
                plaintext: hex(fields["plaintext"]),
                expanded: hex(fields["expanded"]),
                blob: hex(fields["blob"]),
                file_sha256: hex_array(fields["file_sha256"]),
                file_enc_sha256: hex_array(fields["file_enc_sha256"]),
                file_length: fields["file_length"].parse().expect("decimal length"),
            });
        }
        out
    }

    /// Feeds `data` to `feed` in chunks whose sizes cycle through `sizes`.
    fn in_chunks(data: &[u8], sizes: &[usize], mut feed: impl FnMut(&[u8])) {
        let mut rest = data;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
            feed(chunk);
            rest = tail;
        }
    }

    fn encrypt_chunked(
        key: &[u8; 32],
        kind: MediaKind,
        plaintext: &[u8],
        sizes: &[usize],
    ) -> (Vec<u8>, EncryptSummary) {
        let mut encryptor = Encryptor::new(key, kind);
        let mut blob = Vec::new();
        in_chunks(plaintext, sizes, |chunk| encryptor.update(chunk, &mut blob));
        let summary = encryptor.finish(&mut blob);
        (blob, summary)
    }

    fn decrypt_chunked(
        key: &[u8; 32],
        kind: MediaKind,
        blob: &[u8],
        summary: &EncryptSummary,
        sizes: &[usize],
    ) -> Result<Vec<u8>, MediaCryptoError> {
        let mut verifier = Verifier::new(key, kind);
        in_chunks(blob, sizes, |chunk| verifier.update(chunk));
        let verified = verifier.finish(&summary.file_enc_sha256)?;
        let mut decryptor = Decryptor::new(verified);
        let mut plaintext = Vec::new();
        in_chunks(blob, sizes, |chunk| decryptor.update(chunk, &mut plaintext));
        let length = decryptor.finish(&summary.file_sha256, &mut plaintext)?;
        assert_eq!(length, len_u64(plaintext.len()));
        Ok(plaintext)
    }

    fn sha256(bytes: &[u8]) -> [u8; SHA256_BYTES] {
        Sha256::digest(bytes).into()
    }

    /// Builds a blob with a valid MAC around arbitrary `ciphertext`, as a broken or hostile
    /// sender holding the media key could; returns the blob and its fileEncSha256.
    fn blob_with_valid_mac(
        key: &[u8; 32],
        kind: MediaKind,
        ciphertext: &[u8],
    ) -> (Vec<u8>, [u8; 32]) {
        let keys = MediaKeys::derive(key, kind);
        let mut mac = keys.mac_after_iv();
        mac.update(ciphertext);
        let tag = mac.finalize().into_bytes();
        let mut blob = ciphertext.to_vec();
        blob.extend_from_slice(&tag[..MAC_TRUNCATED_BYTES]);
        let enc_sha = sha256(&blob);
        (blob, enc_sha)
    }

    /// AES-256-CBC without padding, for building malformed plaintext blocks.
    fn raw_cbc(key: &[u8; 32], kind: MediaKind, plaintext_blocks: &[u8]) -> Vec<u8> {
        let keys = MediaKeys::derive(key, kind);
        let mut bytes = plaintext_blocks.to_vec();
        encrypt_blocks_in_place(&mut keys.cbc_encryptor(), &mut bytes);
        bytes
    }

    fn arb_kind() -> impl Strategy<Value = MediaKind> {
        prop::sample::select(MediaKind::ALL.to_vec())
    }

    fn arb_chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(1usize..700, 1..8)
    }

    #[test]
    fn hkdf_info_strings_match_whatsapp() {
        assert_eq!(MediaKind::Image.hkdf_info(), b"WhatsApp Image Keys");
        assert_eq!(MediaKind::Video.hkdf_info(), b"WhatsApp Video Keys");
        assert_eq!(MediaKind::Audio.hkdf_info(), b"WhatsApp Audio Keys");
        assert_eq!(MediaKind::Document.hkdf_info(), b"WhatsApp Document Keys");
    }

    #[test]
    fn openssl_vectors_cover_every_kind_and_size() {
        let vectors = vectors();
        assert_eq!(vectors.len(), 24);
        for kind in MediaKind::ALL {
            assert_eq!(vectors.iter().filter(|v| v.kind == kind).count(), 6);
        }
    }

    #[test]
    fn key_expansion_matches_openssl_hkdf() {
        for v in vectors() {
            let keys = MediaKeys::derive(&v.media_key, v.kind);
            assert_eq!(keys.iv(), &v.expanded[0..16]);
            assert_eq!(keys.cipher_key(), &v.expanded[16..48]);
            assert_eq!(keys.mac_key(), &v.expanded[48..80]);
        }
    }

    #[test]
    fn encryption_matches_openssl_blob_and_hashes() {
        for v in vectors() {
            let (blob, summary) = encrypt_all(&v.media_key, v.kind, &v.plaintext);
            assert_eq!(blob, v.blob, "{:?} {} bytes", v.kind, v.file_length);
            assert_eq!(summary.file_sha256, v.file_sha256);
            assert_eq!(summary.file_enc_sha256, v.file_enc_sha256);
            assert_eq!(summary.file_length, v.file_length);
            assert_eq!(summary.blob_length, len_u64(v.blob.len()));
        }
    }

    #[test]
    fn byte_by_byte_encryption_matches_openssl() {
        for v in vectors() {
            let (blob, summary) = encrypt_chunked(&v.media_key, v.kind, &v.plaintext, &[1]);
            assert_eq!(blob, v.blob);
            assert_eq!(summary.file_enc_sha256, v.file_enc_sha256);
        }
    }

    #[test]
    fn openssl_blobs_decrypt_to_their_plaintext() {
        for v in vectors() {
            let plaintext = decrypt_all(
                &v.media_key,
                v.kind,
                &v.blob,
                &v.file_enc_sha256,
                &v.file_sha256,
            );
            assert_eq!(plaintext, Ok(v.plaintext.clone()));
            let summary = EncryptSummary {
                file_sha256: v.file_sha256,
                file_enc_sha256: v.file_enc_sha256,
                file_length: v.file_length,
                blob_length: len_u64(v.blob.len()),
            };
            let chunked = decrypt_chunked(&v.media_key, v.kind, &v.blob, &summary, &[1, 3, 16]);
            assert_eq!(chunked, Ok(v.plaintext));
        }
    }

    #[test]
    fn empty_plaintext_makes_one_padding_block_and_a_tag() {
        let (blob, summary) = encrypt_all(&[7; 32], MediaKind::Audio, b"");
        assert_eq!(blob.len(), MIN_BLOB_BYTES);
        assert_eq!(summary.file_length, 0);
        assert_eq!(summary.blob_length, len_u64(MIN_BLOB_BYTES));
    }

    #[test]
    fn checks_run_enc_sha_then_mac_then_padding_then_file_sha() {
        let key = [3u8; 32];
        let kind = MediaKind::Image;
        // A valid MAC around a last block whose padding byte is 0x00 (bad padding).
        let ciphertext = raw_cbc(&key, kind, &[0u8; 32]);
        let (bad_padding_blob, bad_padding_enc_sha) = blob_with_valid_mac(&key, kind, &ciphertext);
        let wrong_file_sha = [0u8; 32];

        // Everything is wrong but the blob hash is checked first.
        let mut forged = bad_padding_blob.clone();
        forged[0] ^= 1;
        assert_eq!(
            decrypt_all(&key, kind, &forged, &bad_padding_enc_sha, &wrong_file_sha),
            Err(MediaCryptoError::EncSha256Mismatch)
        );
        // With a matching blob hash, the MAC is checked before any decryption.
        let forged_enc_sha = sha256(&forged);
        assert_eq!(
            decrypt_all(&key, kind, &forged, &forged_enc_sha, &wrong_file_sha),
            Err(MediaCryptoError::MacMismatch)
        );
        // With a valid MAC, decryption (padding) is checked before the plaintext hash.
        assert_eq!(
            decrypt_all(
                &key,
                kind,
                &bad_padding_blob,
                &bad_padding_enc_sha,
                &wrong_file_sha
            ),
            Err(MediaCryptoError::BadPadding)
        );
        // With good padding, the plaintext hash is the last check.
        let (blob, summary) = encrypt_all(&key, kind, b"hello");
        assert_eq!(
            decrypt_all(&key, kind, &blob, &summary.file_enc_sha256, &wrong_file_sha),
            Err(MediaCryptoError::FileSha256Mismatch)
        );
    }

    #[test]
    fn decryptor_emits_nothing_for_a_blob_whose_only_block_has_bad_padding() {
        let key = [4u8; 32];
        let kind = MediaKind::Video;
        let ciphertext = raw_cbc(&key, kind, &[0x11; 16]);
        let (blob, enc_sha) = blob_with_valid_mac(&key, kind, &ciphertext);
        let mut verifier = Verifier::new(&key, kind);
        verifier.update(&blob);
        let verified = verifier.finish(&enc_sha).expect("valid MAC");
        let mut decryptor = Decryptor::new(verified);
        let mut out = Vec::new();
        decryptor.update(&blob, &mut out);
        assert!(out.is_empty(), "the last block waits for finish");
        assert_eq!(
            decryptor.finish(&[0; 32], &mut out),
            Err(MediaCryptoError::BadPadding)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn padding_longer_than_a_block_is_rejected() {
        let key = [5u8; 32];
        let kind = MediaKind::Document;
        let ciphertext = raw_cbc(&key, kind, &[0x11; 16]);
        let (blob, enc_sha) = blob_with_valid_mac(&key, kind, &ciphertext);
        assert_eq!(
            decrypt_all(&key, kind, &blob, &enc_sha, &[0; 32]),
            Err(MediaCryptoError::BadPadding)
        );
        let mut uneven = [0x03u8; 16];
        uneven[13] = 0x02;
        let ciphertext = raw_cbc(&key, kind, &uneven);
        let (blob, enc_sha) = blob_with_valid_mac(&key, kind, &ciphertext);
        assert_eq!(
            decrypt_all(&key, kind, &blob, &enc_sha, &[0; 32]),
            Err(MediaCryptoError::BadPadding)
        );
    }

    #[test]
    fn blob_shorter_than_one_block_and_tag_is_rejected_after_hash_check() {
        for len in 0..MIN_BLOB_BYTES {
            let blob = vec![0xA5; len];
            assert_eq!(
                decrypt_all(&[1; 32], MediaKind::Image, &blob, &sha256(&blob), &[0; 32]),
                Err(MediaCryptoError::BlobTooShort { len: len_u64(len) })
            );
        }
    }

    #[test]
    fn ciphertext_not_a_whole_number_of_blocks_is_rejected_after_mac_check() {
        let key = [6u8; 32];
        let kind = MediaKind::Audio;
        let (blob, enc_sha) = blob_with_valid_mac(&key, kind, &[0x42; 17]);
        assert_eq!(
            decrypt_all(&key, kind, &blob, &enc_sha, &[0; 32]),
            Err(MediaCryptoError::LengthNotBlockAligned { len: 17 })
        );
    }

    #[test]
    fn decryptor_accepts_blob_with_or_without_trailer() {
        let key = [8u8; 32];
        let kind = MediaKind::Image;
        let (blob, summary) = encrypt_all(&key, kind, &[9u8; 100]);
        let ciphertext_len = blob.len() - MAC_TRUNCATED_BYTES;
        for fed_len in ciphertext_len..=blob.len() {
            let mut verifier = Verifier::new(&key, kind);
            verifier.update(&blob);
            let mut decryptor =
                Decryptor::new(verifier.finish(&summary.file_enc_sha256).expect("valid"));
            let mut out = Vec::new();
            decryptor.update(&blob[..fed_len], &mut out);
            assert_eq!(decryptor.finish(&summary.file_sha256, &mut out), Ok(100));
            assert_eq!(out, [9u8; 100]);
        }
    }

    #[test]
    fn decryptor_rejects_a_blob_that_changed_length_between_passes() {
        let key = [8u8; 32];
        let kind = MediaKind::Image;
        let (blob, summary) = encrypt_all(&key, kind, &[9u8; 100]);
        let verified_len = len_u64(blob.len());
        let mut longer = blob.clone();
        longer.push(0);
        let shorter = &blob[..blob.len() - MAC_TRUNCATED_BYTES - 1];
        for (fed, fed_len) in [
            (&longer[..], verified_len + 1),
            (shorter, verified_len - 11),
        ] {
            let mut verifier = Verifier::new(&key, kind);
            verifier.update(&blob);
            let mut decryptor =
                Decryptor::new(verifier.finish(&summary.file_enc_sha256).expect("valid"));
            let mut out = Vec::new();
            decryptor.update(fed, &mut out);
            assert_eq!(
                decryptor.finish(&summary.file_sha256, &mut out),
                Err(MediaCryptoError::BlobLengthChanged {
                    verified_len,
                    fed_len
                })
            );
        }
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let media_key = [0xABu8; 32];
        let kind = MediaKind::Image;
        let keys = MediaKeys::derive(&media_key, kind);
        let secrets: Vec<String> = [&keys.iv()[..], keys.cipher_key(), keys.mac_key()]
            .iter()
            .map(|bytes| format!("{:?}", &bytes[..4]))
            .collect();
        let (blob, summary) = encrypt_all(&media_key, kind, b"x");
        let mut verifier = Verifier::new(&media_key, kind);
        let verifier_debug = format!("{verifier:?}");
        verifier.update(&blob);
        let verified = verifier.finish(&summary.file_enc_sha256).expect("valid");
        let verified_debug = format!("{verified:?}");
        let decryptor_debug = format!("{:?}", Decryptor::new(verified));
        let printed = [
            format!("{keys:?}"),
            format!("{:?}", Encryptor::new(&media_key, kind)),
            verifier_debug,
            verified_debug,
            decryptor_debug,
        ];
        for text in &printed {
            assert!(!text.contains("171"), "media key byte in {text}");
            for secret in &secrets {
                assert!(!text.contains(secret.trim_matches(['[', ']'])), "{text}");
            }
        }
    }

    #[test]
    fn large_stream_stays_within_one_block_of_buffering() {
        let key = [0x5Au8; 32];
        let kind = MediaKind::Video;
        let chunk: Vec<u8> = (0..MEDIA_CHUNK_BYTES).map(|i| (i % 251) as u8).collect();
        let chunks = 16; // 1 MiB
        let mut encryptor = Encryptor::new(&key, kind);
        let mut out = Vec::new();
        let mut blob = Vec::new();
        let mut fed = 0usize;
        for _ in 0..chunks {
            encryptor.update(&chunk[..MEDIA_CHUNK_BYTES - 3], &mut out);
            fed += MEDIA_CHUNK_BYTES - 3;
            assert_eq!(blob.len() + out.len(), fed - fed % AES_BLOCK_BYTES);
            blob.append(&mut out);
        }
        let summary = encryptor.finish(&mut out);
        blob.append(&mut out);
        assert_eq!(summary.blob_length, len_u64(blob.len()));

        let mut verifier = Verifier::new(&key, kind);
        for piece in blob.chunks(MEDIA_CHUNK_BYTES) {
            verifier.update(piece);
        }
        let mut decryptor =
            Decryptor::new(verifier.finish(&summary.file_enc_sha256).expect("valid"));
        let mut emitted = 0usize;
        let mut seen = 0usize;
        for piece in blob.chunks(MEDIA_CHUNK_BYTES) {
            decryptor.update(piece, &mut out);
            seen += piece.len();
            emitted += out.len();
            assert!(seen.min(blob.len() - MAC_TRUNCATED_BYTES) - emitted <= 2 * AES_BLOCK_BYTES);
            out.clear();
        }
        let length = decryptor.finish(&summary.file_sha256, &mut out);
        assert_eq!(length, Ok(len_u64(fed)));
    }

    proptest! {
        #[test]
        fn chunked_round_trip_restores_plaintext(
            plaintext in prop::collection::vec(any::<u8>(), 0..5000),
            key in any::<[u8; 32]>(),
            kind in arb_kind(),
            encrypt_sizes in arb_chunk_sizes(),
            decrypt_sizes in arb_chunk_sizes(),
        ) {
            let (blob, summary) = encrypt_chunked(&key, kind, &plaintext, &encrypt_sizes);
            let (whole_blob, whole_summary) = encrypt_all(&key, kind, &plaintext);
            prop_assert_eq!(&blob, &whole_blob);
            prop_assert_eq!(summary, whole_summary);
            prop_assert_eq!(summary.file_length, len_u64(plaintext.len()));
            prop_assert_eq!(summary.file_sha256, sha256(&plaintext));
            prop_assert_eq!(summary.file_enc_sha256, sha256(&blob));
            let decrypted = decrypt_chunked(&key, kind, &blob, &summary, &decrypt_sizes);
            prop_assert_eq!(decrypted, Ok(plaintext));
        }

        #[test]
        fn any_flipped_blob_byte_fails_the_enc_sha_check(
            plaintext in prop::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 32]>(),
            kind in arb_kind(),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (mut blob, summary) = encrypt_all(&key, kind, &plaintext);
            let at = position.index(blob.len());
            blob[at] ^= flip;
            prop_assert_eq!(
                decrypt_all(&key, kind, &blob, &summary.file_enc_sha256, &summary.file_sha256),
                Err(MediaCryptoError::EncSha256Mismatch)
            );
        }

        #[test]
        fn any_flipped_blob_byte_with_rehashed_blob_fails_the_mac_check(
            plaintext in prop::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 32]>(),
            kind in arb_kind(),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (mut blob, summary) = encrypt_all(&key, kind, &plaintext);
            let at = position.index(blob.len());
            blob[at] ^= flip;
            prop_assert_eq!(
                decrypt_all(&key, kind, &blob, &sha256(&blob), &summary.file_sha256),
                Err(MediaCryptoError::MacMismatch)
            );
        }

        #[test]
        fn decrypting_as_another_kind_fails_the_mac_check(
            plaintext in prop::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 32]>(),
            kind in arb_kind(),
            other in arb_kind(),
        ) {
            prop_assume!(kind != other);
            let (blob, summary) = encrypt_all(&key, kind, &plaintext);
            prop_assert_eq!(
                decrypt_all(&key, other, &blob, &summary.file_enc_sha256, &summary.file_sha256),
                Err(MediaCryptoError::MacMismatch)
            );
        }

        #[test]
        fn arbitrary_blobs_never_panic_and_never_decrypt_unverified(
            blob in prop::collection::vec(any::<u8>(), 0..200),
            key in any::<[u8; 32]>(),
            kind in arb_kind(),
        ) {
            let result = decrypt_all(&key, kind, &blob, &sha256(&blob), &[0; 32]);
            let expected = if blob.len() < MIN_BLOB_BYTES {
                Err(MediaCryptoError::BlobTooShort { len: len_u64(blob.len()) })
            } else {
                Err(MediaCryptoError::MacMismatch)
            };
            prop_assert_eq!(result, expected);
        }
    }
}
