//! The primitives we hand the Noise state machine (snow, built with no crypto of its own):
//! X25519 from x25519-dalek, AES-256-GCM from ring, SHA-256 from sha2, and a "random" source
//! that only replays 32 bytes the caller's RNG drew, so the handshake has no randomness of its
//! own. Nothing else in the crate names snow's traits. No I/O, no clock.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::Digest as _;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};

use super::{KEY_BYTES, TAG_BYTES};

/// The resolver for one handshake: it carries the ephemeral key's seed.
pub(super) struct Resolver {
    ephemeral_seed: [u8; KEY_BYTES],
}

impl Resolver {
    pub(super) fn new(ephemeral_seed: [u8; KEY_BYTES]) -> Resolver {
        Resolver { ephemeral_seed }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.ephemeral_seed);
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeedOnce(Some(self.ephemeral_seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        matches!(choice, DHChoice::Curve25519).then(|| Box::new(X25519::default()) as Box<dyn Dh>)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        matches!(choice, HashChoice::SHA256).then(|| Box::new(Sha256::default()) as Box<dyn Hash>)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::AESGCM)
            .then(|| Box::new(AesGcm::default()) as Box<dyn Cipher>)
    }
}

/// Gives out the seed once; XX draws exactly one ephemeral key per side.
struct SeedOnce(Option<[u8; KEY_BYTES]>);

impl Random for SeedOnce {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(seed) if dest.len() == KEY_BYTES => {
                dest.copy_from_slice(&seed);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

impl Drop for SeedOnce {
    fn drop(&mut self) {
        if let Some(seed) = &mut self.0 {
            zeroize::Zeroize::zeroize(seed);
        }
    }
}

#[derive(Default)]
struct X25519 {
    private: [u8; KEY_BYTES],
    public: [u8; KEY_BYTES],
}

impl Drop for X25519 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private);
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        KEY_BYTES
    }
    fn priv_len(&self) -> usize {
        KEY_BYTES
    }
    fn set(&mut self, privkey: &[u8]) {
        // snow passes priv_len() bytes; anything else leaves a key that no peer shares.
        if let Ok(bytes) = <[u8; KEY_BYTES]>::try_from(privkey) {
            self.private = bytes;
            let secret = x25519_dalek::StaticSecret::from(bytes);
            self.public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        }
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = [0u8; KEY_BYTES];
        rng.try_fill_bytes(&mut bytes)?;
        self.set(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow passes its whole key buffer (longer than 32 bytes); the key is at its start.
        let their: [u8; KEY_BYTES] = pubkey
            .get(..KEY_BYTES)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let secret = x25519_dalek::StaticSecret::from(self.private);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(their));
        // A low-order peer key gives all zeros; refuse it rather than key a session on it.
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..KEY_BYTES)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// The Noise AESGCM nonce: 4 zero bytes, then the counter as 8 big-endian bytes. WhatsApp
/// writes the counter into the last 4 bytes; the bytes agree below 2^32.
pub(super) fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
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

#[derive(Default)]
struct AesGcm {
    key: Option<LessSafeKey>,
}

impl Cipher for AesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }
    fn set(&mut self, key: &[u8; 32]) {
        self.key = Some(aead_key(key));
    }
    fn encrypt(&self, n: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        // snow sizes `out` for plaintext and tag and sets the key before it encrypts; if
        // either did not hold we write nothing, and the peer's decryption fails.
        let (Some(key), Some(body)) = (&self.key, out.get_mut(..len + TAG_BYTES)) else {
            return 0;
        };
        let (text, tag_out) = body.split_at_mut(len);
        text.copy_from_slice(plaintext);
        match key.seal_in_place_separate_tag(nonce(n), Aad::from(authtext), text) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                len + TAG_BYTES
            }
            Err(_) => 0,
        }
    }
    fn decrypt(
        &self,
        n: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Decrypt)?;
        let mut buf = ciphertext.to_vec();
        let plain = key
            .open_in_place(nonce(n), Aad::from(authtext), &mut buf)
            .map_err(|_| snow::Error::Decrypt)?;
        let len = plain.len();
        out.get_mut(..len)
            .ok_or(snow::Error::Decrypt)?
            .copy_from_slice(plain);
        Ok(len)
    }
}

#[derive(Default)]
struct Sha256(sha2::Sha256);

impl Hash for Sha256 {
    fn name(&self) -> &'static str {
        "SHA256"
    }
    fn block_len(&self) -> usize {
        64
    }
    fn hash_len(&self) -> usize {
        32
    }
    fn reset(&mut self) {
        self.0 = sha2::Sha256::default();
    }
    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn result(&mut self, out: &mut [u8]) {
        let digest = core::mem::take(&mut self.0).finalize();
        if let Some(dst) = out.get_mut(..32) {
            dst.copy_from_slice(&digest);
        }
    }
}
