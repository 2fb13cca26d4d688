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
//! - [`login`]: the login handshake, both sides, and its proof string.
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
