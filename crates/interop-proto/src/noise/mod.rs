//! The transport of wire profile `wa`: WhatsApp's Noise XX handshake, its certificate chain,
//! its 3-byte length framing and the sealed frames after the handshake, both sides.
//!
//! This module does no I/O, reads no clock (certificate windows are checked against the
//! `now_unix_s` the caller passes) and has no randomness of its own (ephemeral keys and
//! signatures come from the caller's RNG). It knows nothing of what travels inside the frames
//! (the node encoding) or of how the `ClientPayload`'s token is checked: the responder hands
//! the decrypted payload back to its caller. The protocol is written down in
//! `docs/protocol-wa.md`.
//!
//! ```text
//!   client (ClientHandshake)                               server (ServerHandshake)
//!   'W','A',6,3  frame(HandshakeMessage{clientHello{e}})   ──▶  ExpectClientHello
//!   ExpectServerHello  ◀──  frame(serverHello{e, enc(s), enc(CertChain)})
//!     verify chain against the pin → ServerCertVerified
//!   frame(clientFinish{enc(s), enc(ClientPayload)})        ──▶  ExpectClientFinish
//!   NoiseTransport                                              NoiseTransport
//!   frame(seal(bytes)) ◀──────────────────────────────────────▶ frame(seal(bytes))
//! ```
//!
//! Files: [`frame`] (the byte stream), [`wire`] (the protobuf messages), [`cert`] (issuing and
//! verifying certificate chains), [`handshake`] (both roles, token by token, and the
//! transport), and the private `symmetric` (Noise's `CipherState` and `SymmetricState`).

use core::fmt;

pub mod cert;
pub mod frame;
pub mod handshake;
mod symmetric;
pub mod wire;

#[cfg(test)]
mod tests;

pub use cert::{CertIssuer, CertWindow, RootPin, ServerCertVerified, issue_chain, verify_chain};
pub use frame::{FrameReader, MAX_WA_FRAME_BYTES, WA_PROLOGUE, encode_frame};
pub use handshake::{
    ClientFinished, ClientHandshake, ExpectClientFinish, ExpectClientHello, ExpectServerHello,
    NoiseTransport, SendClientFinish, ServerHandshake,
};

/// The Noise protocol name. WhatsApp pads it with NULs to 32 bytes and uses it as `h` (and
/// `ck`); that is the Noise rule for a name of at most HASHLEN bytes. Our state machine
/// (`handshake.rs` over `symmetric.rs`) follows WhatsApp where it departs from this pattern:
/// after the first message's `e` it does not `MixHash` that message's empty payload, as
/// standard Noise would. The unmodified pyaileys client completes the handshake with our
/// responder (docs/protocol-wa.md, `tests/wa_noise_interop.rs`).
pub const NOISE_PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";

/// Length of a Curve25519 key, public or private, in bytes.
pub const KEY_BYTES: usize = 32;

/// Length of an AES-GCM tag, in bytes.
pub const TAG_BYTES: usize = 16;

/// Largest handshake message (the protobuf inside one frame), in bytes. The Noise spec caps a
/// handshake message at 65,535 bytes; the real ones are a few hundred.
pub const MAX_HANDSHAKE_MESSAGE_BYTES: usize = 65_535;

/// A Curve25519 private key. Its `Debug` prints no bytes, and it is wiped when dropped.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_BYTES]);

impl crate::signal::LocalIdentity {
    /// Our identity key pair as the `wa` profile's Noise static key (`wa_login.rs`): the
    /// same Curve25519 private key, so the handshake proves we hold the identity.
    pub fn noise_static(&self) -> PrivateKey {
        PrivateKey::from_bytes(self.private_key_bytes())
    }
}

impl PrivateKey {
    /// A fresh key from the caller's RNG.
    pub fn generate<R: rand::Rng + rand::CryptoRng>(rng: &mut R) -> PrivateKey {
        let mut bytes = [0u8; KEY_BYTES];
        rng.fill_bytes(&mut bytes);
        PrivateKey(bytes)
    }

    /// A key from stored bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> PrivateKey {
        PrivateKey(bytes)
    }

    /// The bytes, for the caller's store. Never log them.
    pub fn to_bytes(&self) -> [u8; KEY_BYTES] {
        self.0
    }

    /// The matching public key (X25519 base point multiplication, clamped as usual).
    pub fn public(&self) -> [u8; KEY_BYTES] {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        x25519_dalek::PublicKey::from(&secret).to_bytes()
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// Which certificate of the chain failed, for [`NoiseError::ChainInvalid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Leaf,
    Intermediate,
}

impl CertRole {
    fn as_str(self) -> &'static str {
        match self {
            CertRole::Leaf => "leaf",
            CertRole::Intermediate => "intermediate",
        }
    }
}

/// What went wrong in the `wa` transport. Every variant but [`NoiseError::ApiMisuse`] and
/// [`NoiseError::Rng`] is the peer's fault; the shell logs [`NoiseError::reason`] at `warn`
/// and closes the connection. No variant carries key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoiseError {
    /// Peer: the stream did not start with `'W','A',6,3`.
    PeerBadPrologue,
    /// Peer: a handshake frame was not the `HandshakeMessage` this step expects (bad protobuf,
    /// missing or wrongly sized field), or its Noise part did not decrypt.
    PeerBadHandshakeMessage,
    /// Peer: a public key it sent is a low-order point, so our X25519 with it gave all zeros.
    PeerLowOrderKey,
    /// Peer (server): a certificate's details do not parse, its signature does not verify, or
    /// its serials do not link up to the one above it.
    ChainInvalid { which: CertRole },
    /// Peer (server): the intermediate is not issued by the pinned root (key or serial).
    PinMismatch,
    /// Peer (server): the leaf certificate names a key other than the handshake's server static.
    LeafKeyNotServerStatic,
    /// Peer (server) or our clock: `now_unix_s` is outside a certificate's window.
    CertExpired { which: CertRole },
    /// Peer: a frame's GCM tag does not verify. The counter is implicit, so this also covers a
    /// frame that was replayed, reordered or dropped before it.
    DecryptFailed,
    /// Peer: a frame announces more bytes than the bound the caller chose.
    FrameTooLarge { len: usize, max: usize },
    /// Bug (ours): a call the state does not allow, such as sealing more than a frame holds.
    ApiMisuse { detail: &'static str },
    /// Environment: the caller's RNG failed to provide bytes.
    Rng,
}

impl NoiseError {
    /// A short fixed code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            NoiseError::PeerBadPrologue => "bad-prologue",
            NoiseError::PeerBadHandshakeMessage => "bad-handshake-message",
            NoiseError::PeerLowOrderKey => "low-order-key",
            NoiseError::ChainInvalid { .. } => "chain-invalid",
            NoiseError::PinMismatch => "pin-mismatch",
            NoiseError::LeafKeyNotServerStatic => "leaf-key-not-server-static",
            NoiseError::CertExpired { .. } => "cert-expired",
            NoiseError::DecryptFailed => "decrypt-failed",
            NoiseError::FrameTooLarge { .. } => "frame-too-large",
            NoiseError::ApiMisuse { .. } => "api-misuse",
            NoiseError::Rng => "rng",
        }
    }
}

impl fmt::Display for NoiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoiseError::ChainInvalid { which } => {
                write!(f, "noise: {} certificate invalid", which.as_str())
            }
            NoiseError::CertExpired { which } => {
                write!(
                    f,
                    "noise: {} certificate outside its window",
                    which.as_str()
                )
            }
            NoiseError::FrameTooLarge { len, max } => {
                write!(f, "noise: frame of {len} bytes exceeds {max}")
            }
            NoiseError::ApiMisuse { detail } => write!(f, "noise: api misuse: {detail}"),
            NoiseError::PeerLowOrderKey => {
                f.write_str("noise: the peer sent a low-order public key (all-zero X25519)")
            }
            other => write!(f, "noise: {}", other.reason()),
        }
    }
}

impl std::error::Error for NoiseError {}
