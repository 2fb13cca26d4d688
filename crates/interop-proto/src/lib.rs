//! The protocol core of interopd: everything about the wire and the cryptography that can be
//! said without doing I/O.
//!
//! This crate makes no TCP or TLS connections, opens no files, reads no clock and has no
//! runtime. Callers pass bytes, `now_ms` and an RNG in, and get bytes, typed values and
//! deadlines back. Storage for the Signal engine is a trait ([`signal_store::SignalStore`]),
//! implemented by the daemon on its redb transaction and by tests in memory. Its
//! `Cargo.toml` holds no runtime, database or TLS crate, and `clippy.toml` bans the clock and
//! `std::fs`.
//!
//! # Layout
//!
//! Wire:
//! - [`frame`]: 3-byte length framing and the incremental frame reader.
//! - [`stanza`]: the stanza model and its two encodings, `interop-xml/1` text and the `wa`
//!   profile's binary nodes, with bounds.
//! - [`jid`]: wire addresses (`user:device@server`) and E.164 phone numbers.
//! - [`group`]: group JIDs (`{id}@g.us`), the participant-list hash, group message shapes.
//! - [`login`]: the login handshake, both sides, and its proof string.
//! - [`wa_login`]: profile `wa`'s login: the `ClientPayload` built and read.
//! - [`wa_stream`]: a `wa` connection as a byte pipe for either side: the handshake driven
//!   by arriving bytes, then one binary node per sealed frame.
//! - [`jwt`]: the `wa` login's provider token: a JWT verified against the provider's JWKS.
//! - [`noise`]: profile `wa`'s transport: prologue and 3-byte frames, Noise XX both sides,
//!   the server's certificate chain (issued and verified), and the sealed frames after it.
//! - [`prekeys`]: the `<iq xmlns="encrypt">` key vocabulary (bundles, keys, signed keys).
//! - [`retry`]: retry receipts, built and read.
//!
//! Content and media:
//! - [`content`]: the `Message` protobuf subset, padding, message ids, stanza type names.
//! - [`media_crypto`]: streaming media encryption and verification.
//! - [`media_meta`]: image size and Ogg/Opus and MP4 durations from a passing stream.
//!
//! Signal:
//! - [`signal`]: X3DH + Double Ratchet (v3) via the Signal crate, which no other module names.
//! - [`signal_store`]: the storage trait the engine runs over, and an in-memory store.
//! - [`row`]: the cursor that reads stored rows and refuses corrupt ones.
#![forbid(unsafe_code)]

pub mod content;
pub mod frame;
pub mod group;
pub mod jid;
pub mod jwt;
pub mod login;
pub mod media_crypto;
pub mod media_meta;
pub mod noise;
pub mod prekeys;
pub mod retry;
pub mod row;
pub mod signal;
pub mod signal_store;
pub mod stanza;
pub mod wa_login;
pub mod wa_stream;

/// The two wire profiles a daemon and a gatekeeper can speak (`[gatekeeper] profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireProfile {
    /// Meta's transport: Noise XX, binary nodes, the `ClientPayload` login with a provider JWT
    /// (`docs/protocol-wa.md`).
    #[default]
    Wa,
    /// Our own: textual XML over TLS 1.3 with a challenge/signature login (`docs/protocol.md`).
    InteropXml1,
}

impl WireProfile {
    /// The name as configs and command lines write it.
    pub fn as_str(self) -> &'static str {
        match self {
            WireProfile::Wa => wa_login::WA_PROFILE,
            WireProfile::InteropXml1 => login::PROTOCOL_VERSION,
        }
    }

    /// Reads a name written by [`WireProfile::as_str`].
    pub fn parse(name: &str) -> Option<WireProfile> {
        [WireProfile::Wa, WireProfile::InteropXml1]
            .into_iter()
            .find(|p| p.as_str() == name)
    }
}

impl core::fmt::Display for WireProfile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}
