//! Noise's `CipherState` and `SymmetricState` (Noise spec sections 5.1 and 5.2) for
//! `Noise_XX_25519_AESGCM_SHA256`, and X25519 that refuses low-order keys. The handshake
//! patterns themselves (which token runs when, and WhatsApp's one departure) are in
//! `handshake.rs`. X25519 from x25519-dalek, AES-256-GCM from ring, SHA-256 and HKDF from
//! sha2/hkdf. No I/O, no clock, no randomness. Every secret here is wiped when dropped, and
//! nothing here implements `Debug`.

use hkdf::Hkdf;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroize as _;

use super::{KEY_BYTES, NOISE_PATTERN, NoiseError, PrivateKey, TAG_BYTES};

/// Length of a SHA-256 output (`HASHLEN`), in bytes.
pub(super) const HASH_BYTES: usize = 32;

/// Length of an AES-GCM nonce, in bytes.
const NONCE_BYTES: usize = 12;

/// The Noise AESGCM nonce: 4 zero bytes, then the counter as 8 big-endian bytes. WhatsApp
/// writes the counter into the last 4 bytes; the bytes agree below 2^32.
pub(super) fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_BYTES];
    let (_, counter) = bytes.split_at_mut(NONCE_BYTES - 8);
    counter.copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// An AES-256-GCM key for ring.
pub(super) fn aead_key(key: &[u8; KEY_BYTES]) -> LessSafeKey {
    #[allow(clippy::expect_used)]
    // INVARIANT: AES-256-GCM takes exactly 32 key bytes, which the array type guarantees,
    // and that is the only way `UnboundKey::new` fails.
    let unbound = UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key");
    LessSafeKey::new(unbound)
}

/// X25519 of our `private` key and the peer's `public` key. An all-zero result means the
/// peer sent a low-order point, which would key the session on a value anyone knows.
pub(super) fn dh(
    private: &PrivateKey,
    public: &[u8; KEY_BYTES],
) -> Result<[u8; KEY_BYTES], NoiseError> {
    let secret = x25519_dalek::StaticSecret::from(*private.bytes());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(NoiseError::PeerLowOrderKey);
    }
    Ok(shared.to_bytes())
}

/// `HKDF(chaining_key, ikm)` with two outputs (Noise spec section 4.3): RFC 5869 HKDF-SHA256
/// with the chaining key as salt and empty info, 64 bytes cut in two.
fn hkdf2(chaining_key: &[u8; HASH_BYTES], ikm: &[u8]) -> ([u8; HASH_BYTES], [u8; HASH_BYTES]) {
    let mut okm = [0u8; 2 * HASH_BYTES];
    #[allow(clippy::expect_used)]
    // INVARIANT: HKDF-SHA256 can expand up to 255 * 32 bytes; we ask for 64.
    Hkdf::<Sha256>::new(Some(chaining_key), ikm)
        .expand(&[], &mut okm)
        .expect("64 bytes is within HKDF-SHA256's limit");
    let mut first = [0u8; HASH_BYTES];
    let mut second = [0u8; HASH_BYTES];
    let (a, b) = okm.split_at(HASH_BYTES);
    first.copy_from_slice(a);
    second.copy_from_slice(b);
    okm.zeroize();
    (first, second)
}

/// A key (once one is mixed in) and its nonce counter. The counter restarts at 0 with each
/// new key; a handshake uses a handful of nonces, so it never nears its end.
struct CipherState {
    key: Option<[u8; KEY_BYTES]>,
    n: u64,
}

impl Drop for CipherState {
    fn drop(&mut self) {
        if let Some(key) = &mut self.key {
            key.zeroize();
        }
    }
}

/// The handshake's chaining key `ck`, its hash `h`, and its cipher.
pub(super) struct SymmetricState {
    ck: [u8; HASH_BYTES],
    h: [u8; HASH_BYTES],
    cipher: CipherState,
}

impl Drop for SymmetricState {
    fn drop(&mut self) {
        self.ck.zeroize();
        self.h.zeroize();
    }
}

/// The two transport keys of `Split()`: initiator to responder, then responder to initiator.
pub(super) struct SplitKeys {
    pub(super) initiator_to_responder: [u8; KEY_BYTES],
    pub(super) responder_to_initiator: [u8; KEY_BYTES],
}

impl Drop for SplitKeys {
    fn drop(&mut self) {
        self.initiator_to_responder.zeroize();
        self.responder_to_initiator.zeroize();
    }
}

impl SymmetricState {
    /// `InitializeSymmetric(NOISE_PATTERN)` then `MixHash(prologue)`. The name is 28 bytes,
    /// at most `HASHLEN`, so `h` is the name padded with zeros, and `ck = h`.
    pub(super) fn new(prologue: &[u8]) -> SymmetricState {
        let mut h = [0u8; HASH_BYTES];
        let name = NOISE_PATTERN.as_bytes();
        if let Some(dst) = h.get_mut(..name.len()) {
            dst.copy_from_slice(name);
        }
        let mut state = SymmetricState {
            ck: h,
            h,
            cipher: CipherState { key: None, n: 0 },
        };
        state.mix_hash(prologue);
        state
    }

    /// `MixHash(data)`: `h = SHA256(h || data)`.
    pub(super) fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(self.h);
        hasher.update(data);
        self.h = hasher.finalize().into();
    }

    /// `MixKey(dh)`: `ck, k = HKDF(ck, dh)`; the nonce restarts at 0.
    pub(super) fn mix_key(&mut self, mut dh: [u8; KEY_BYTES]) {
        let (ck, k) = hkdf2(&self.ck, &dh);
        dh.zeroize();
        self.ck.zeroize();
        self.ck = ck;
        if let Some(old) = &mut self.cipher.key {
            old.zeroize();
        }
        self.cipher = CipherState { key: Some(k), n: 0 };
    }

    /// `EncryptAndHash(plaintext)`, with `h` as associated data. Every message we encrypt
    /// comes after a `MixKey`, so having no key is a bug of ours.
    pub(super) fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let misuse = NoiseError::ApiMisuse {
            detail: "handshake encryption without a key or past its nonces",
        };
        let key = self.cipher.key.as_ref().ok_or(misuse.clone())?;
        let mut out = plaintext.to_vec();
        aead_key(key)
            .seal_in_place_append_tag(nonce(self.cipher.n), Aad::from(self.h), &mut out)
            .map_err(|_| misuse.clone())?;
        self.cipher.n = self.cipher.n.checked_add(1).ok_or(misuse)?;
        self.mix_hash(&out);
        Ok(out)
    }

    /// `DecryptAndHash(ciphertext)`, with `h` as associated data. A ciphertext that does not
    /// open, or is shorter than its tag, is the peer's.
    pub(super) fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let key = self.cipher.key.as_ref().ok_or(NoiseError::ApiMisuse {
            detail: "handshake decryption without a key",
        })?;
        if ciphertext.len() < TAG_BYTES {
            return Err(NoiseError::PeerBadHandshakeMessage);
        }
        let mut buf = ciphertext.to_vec();
        let len = aead_key(key)
            .open_in_place(nonce(self.cipher.n), Aad::from(self.h), &mut buf)
            .map_err(|_| NoiseError::PeerBadHandshakeMessage)?
            .len();
        self.cipher.n = self.cipher.n.checked_add(1).ok_or(NoiseError::ApiMisuse {
            detail: "handshake nonces exhausted",
        })?;
        buf.truncate(len);
        self.mix_hash(ciphertext);
        Ok(buf)
    }

    /// `Split()`: the transport keys from `HKDF(ck, "")`. Consumes the state, so nothing
    /// can encrypt with the handshake keys afterwards.
    pub(super) fn split(self) -> SplitKeys {
        let (initiator_to_responder, responder_to_initiator) = hkdf2(&self.ck, &[]);
        SplitKeys {
            initiator_to_responder,
            responder_to_initiator,
        }
    }

    /// The handshake hash `h`, for tests that pin it.
    #[cfg(test)]
    pub(super) fn handshake_hash(&self) -> [u8; HASH_BYTES] {
        self.h
    }
}
