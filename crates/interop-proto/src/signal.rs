//! The Signal engine: classic X3DH + Double Ratchet (message version 3, as WhatsApp speaks it),
//! wrapped around the Signal crate so that no other module names it. Sans-I/O apart from the
//! caller's open store transaction: no clock (callers pass `now_ms`), no sockets, and all
//! randomness comes from the caller's RNG.
//!
//! How a call works (the "buffered store" pattern): the crate's store traits are async and
//! must be `Send + Sync`, so they cannot borrow our redb transaction. Each operation therefore
//! preloads exactly the records it needs from the caller's [`Txn`] into an owned [`Scratch`],
//! runs the crate against it (its futures complete on the first poll, because the scratch
//! answers from memory), then writes every record the crate changed back into the same
//! [`Txn`]. The caller adds its outbox or inbox row and commits once: the session update and
//! the message row land together or not at all (DESIGN.md section 6).
//!
//! Counter leases are waived on every loaded session: we persist before the wire, so the
//! crate's batch lease (which skips 64 counters on every untrusted reload) buys nothing.
//!
//! Wire keys are 32 raw bytes; the crate wants the 0x05 type prefix. [`RawKey`] is the only
//! form that leaves this module.

use std::collections::{HashMap, HashSet};

use futures_lite::future::block_on;
use rand::{CryptoRng, Rng};
use sha2::{Digest, Sha512};
use wacore_libsignal::protocol::{
    self as sp, CiphertextMessage, Direction, GenericSignedPreKey, IdentityChange, IdentityKey,
    IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyBundle, PreKeyId, PreKeyRecord,
    PreKeySignalMessage, PreKeyStore, PrivateKey, ProtocolAddress, PublicKey, SessionRecord,
    SessionStore, SignalMessage, SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord,
    SignedPreKeyStore, Timestamp, UsePQRatchet,
};

use crate::row::{Reader, RowError};
pub use crate::signal_store::{IdTable, KeyTable, SignalStore};
use IdTable::{PreKeys as PREKEYS, SignedPreKeys as SIGNED_PREKEYS};
use KeyTable::{
    LocalIdentity as LOCAL_IDENTITY, RemoteIdentities as REMOTE_IDENTITIES, Sessions as SESSIONS,
};

/// The error of an operation over store `S`.
type Fail<S> = SignalError<<S as SignalStore>::Error>;

/// Most message keys kept for skipped (not yet arrived) messages in one chain, and the largest
/// forward jump a single message may make. A message further ahead is refused with
/// [`SignalError::TooFarAhead`]. Equal to WhatsApp's `signalFutureMessagesMax`.
pub const MAX_SKIPPED_KEYS: usize = 2000;
const _: () = assert!(MAX_SKIPPED_KEYS == sp::consts::MAX_FORWARD_JUMPS);
const _: () = assert!(MAX_SKIPPED_KEYS == sp::consts::MAX_MESSAGE_KEYS);
/// One-time prekeys generated and uploaded per batch (first login and each top-up).
pub const PREKEY_BATCH_SIZE: u32 = 100;
/// Top up when the server reports fewer than this many one-time prekeys left.
pub const PREKEY_REFILL_THRESHOLD: u32 = 20;
/// Prekey ids travel as 3 bytes on the wire; ids run 1..=MAX_PREKEY_ID and then wrap to 1.
pub const MAX_PREKEY_ID: u32 = 0x00FF_FFFF;
/// Rotate the signed prekey after this long.
pub const SIGNED_PREKEY_ROTATION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Keep replaced signed prekeys this many at most, so late pkmsgs made from an older bundle
/// still decrypt for a while after a rotation.
pub const MAX_SIGNED_PREKEYS_KEPT: usize = 4;
/// Registration ids are random 14-bit values.
pub const REGISTRATION_ID_MASK: u32 = 0x3FFF;
/// Signal's key type byte for Curve25519 public keys; sent separately on the wire.
pub const KEY_TYPE_DJB: u8 = 0x05;
/// Iterations of the fingerprint hash (as Signal's numeric fingerprints).
const FINGERPRINT_ITERATIONS: u32 = 5200;

/// The counter that holds the next one-time prekey id ([`SignalStore::counter`]).
pub const META_NEXT_PREKEY_ID: &str = "next_prekey_id";
const META_CURRENT_SIGNED_PREKEY: &str = "current_signed_prekey_id";
const IDENTITY_KEY: &str = "identity";

/// A 32-byte Curve25519 public key as it travels on the wire (no type prefix).
pub type RawKey = [u8; 32];

/// A device address: `user` is the account part of a JID (phone digits for WhatsApp users,
/// `{integrator}-{user}` for ours), `device` its device number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub user: String,
    pub device: u32,
}

impl Address {
    pub fn new(user: impl Into<String>, device: u32) -> Self {
        Address {
            user: user.into(),
            device,
        }
    }

    /// The store key: `user.device`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.user, self.device)
    }

    fn protocol(&self) -> ProtocolAddress {
        ProtocolAddress::new(&self.user, self.device.into())
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.user, self.device)
    }
}

/// The two kinds of ciphertext, named as on the wire (`<enc type=...>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncType {
    /// PreKeySignalMessage: starts a session (the crate's type 3).
    PkMsg,
    /// SignalMessage: continues one (the crate's type 2, "Whisper").
    Msg,
}

impl EncType {
    pub fn as_str(self) -> &'static str {
        match self {
            EncType::PkMsg => "pkmsg",
            EncType::Msg => "msg",
        }
    }

    pub fn parse(s: &str) -> Option<EncType> {
        match s {
            "pkmsg" => Some(EncType::PkMsg),
            "msg" => Some(EncType::Msg),
            _ => None,
        }
    }
}

/// An encrypted message body as carried in `<enc>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub kind: EncType,
    pub body: Vec<u8>,
}

/// A signed prekey as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireSignedPreKey {
    pub id: u32,
    pub public: RawKey,
    pub signature: [u8; 64],
}

/// A one-time prekey as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WirePreKey {
    pub id: u32,
    pub public: RawKey,
}

/// A prekey bundle as fetched from the server for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireBundle {
    pub registration_id: u32,
    pub identity: RawKey,
    pub signed_prekey: WireSignedPreKey,
    pub prekey: Option<WirePreKey>,
}

/// What the household has decided about a contact device's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TrustState {
    /// Seen, never confirmed (trust on first use).
    Unverified = 0,
    /// Confirmed by the household. A change blocks this device until trusted again.
    Verified = 1,
    /// The identity changed since first seen and was accepted (unverified contacts only).
    Changed = 2,
}

impl TrustState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustState::Unverified => "unverified",
            TrustState::Verified => "verified",
            TrustState::Changed => "changed",
        }
    }

    fn from_byte(b: u8) -> Option<TrustState> {
        Some(match b {
            0 => TrustState::Unverified,
            1 => TrustState::Verified,
            2 => TrustState::Changed,
            _ => return None,
        })
    }
}

/// A contact device's identity as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteIdentity {
    pub key: RawKey,
    pub trust: TrustState,
    /// When the key last changed (ms since the epoch), or when first seen.
    pub changed_ms: u64,
    /// A new key offered by a verified device, held until the household trusts it.
    pub pending: Option<RawKey>,
}

/// Whether an operation met a contact identity different from the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityEvent {
    Unchanged,
    /// First time this device's identity was seen.
    New,
    /// The device's identity changed and was accepted (its contact was not verified).
    Changed,
}

/// A decrypted message.
#[derive(Debug)]
pub struct Decrypted {
    pub plaintext: Vec<u8>,
    pub identity: IdentityEvent,
    /// The one-time prekey this pkmsg used; it was deleted in the same transaction.
    pub consumed_prekey: Option<u32>,
}

/// What can go wrong in the Signal engine. Peer-caused errors on decrypt lead the link to send
/// a retry receipt; store errors end the operation and the transaction is dropped.
#[derive(Debug)]
pub enum SignalError<E> {
    /// Peer: the bundle's signed prekey signature does not verify against its identity.
    BadSignature,
    /// Peer: a public key is not a valid Curve25519 point encoding.
    BadKey,
    /// Peer or us: no session with this device; fetch a bundle first.
    NoSession { address: Address },
    /// Household policy: a verified contact's identity changed. Sending and receiving for
    /// this device are held until the household trusts the new identity.
    UntrustedIdentity { address: Address },
    /// Peer (replay or redelivery): this message's key was already used.
    Duplicate,
    /// Peer: the message skips more than [`MAX_SKIPPED_KEYS`] ahead.
    TooFarAhead,
    /// Peer (or session mismatch after a reinstall): authentication failed.
    BadMac,
    /// Peer: the pkmsg names a one-time or signed prekey we do not have (already used).
    UnknownPreKey,
    /// Peer: malformed or unsupported ciphertext.
    InvalidMessage { detail: &'static str },
    /// Environment: the store failed.
    Store(E),
    /// Bug: the crate refused an operation we should not have attempted.
    Internal { detail: String },
}

impl<E: std::fmt::Display> std::fmt::Display for SignalError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadSignature => f.write_str("signed prekey signature does not verify"),
            Self::BadKey => f.write_str("invalid public key"),
            Self::NoSession { address } => write!(f, "no session with {address}"),
            Self::UntrustedIdentity { address } => {
                write!(
                    f,
                    "identity of verified contact device {address} changed; trust it again to continue"
                )
            }
            Self::Duplicate => f.write_str("duplicate message (key already used)"),
            Self::TooFarAhead => {
                write!(f, "message skips more than {MAX_SKIPPED_KEYS} keys ahead")
            }
            Self::BadMac => f.write_str("message authentication failed"),
            Self::UnknownPreKey => f.write_str("message uses an unknown prekey"),
            Self::InvalidMessage { detail } => write!(f, "invalid message: {detail}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Internal { detail } => write!(f, "signal engine: {detail}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for SignalError<E> {}

impl<E> From<E> for SignalError<E> {
    fn from(e: E) -> Self {
        SignalError::Store(e)
    }
}

/// A corrupt row read by the engine is the store's failure.
fn corrupt<E: From<RowError>>(e: RowError) -> SignalError<E> {
    SignalError::Store(E::from(e))
}

fn map_err<E>(e: SignalProtocolError, address: &Address) -> SignalError<E> {
    use SignalProtocolError as E;
    match e {
        E::SignatureValidationFailed => SignalError::BadSignature,
        E::BadKeyType(_) | E::BadKeyLength(..) | E::NoKeyTypeIdentifier => SignalError::BadKey,
        E::SessionNotFound(_) => SignalError::NoSession {
            address: address.clone(),
        },
        E::UntrustedIdentity(_) => SignalError::UntrustedIdentity {
            address: address.clone(),
        },
        E::DuplicatedMessage(..) => SignalError::Duplicate,
        E::BadMac(_) => SignalError::BadMac,
        E::InvalidPreKeyId | E::InvalidSignedPreKeyId => SignalError::UnknownPreKey,
        E::InvalidMessage(_, "message from too far into the future") => SignalError::TooFarAhead,
        E::InvalidMessage(_, detail) => SignalError::InvalidMessage { detail },
        E::CiphertextMessageTooShort(_) => SignalError::InvalidMessage {
            detail: "too short",
        },
        E::LegacyCiphertextVersion(_) | E::UnrecognizedCiphertextVersion(_) => {
            SignalError::InvalidMessage {
                detail: "unsupported version",
            }
        }
        E::InvalidProtobufEncoding => SignalError::InvalidMessage {
            detail: "bad protobuf",
        },
        E::InvalidSessionStructure(detail) => SignalError::InvalidMessage { detail },
        other => SignalError::Internal {
            detail: other.to_string(),
        },
    }
}

// ---- keys at the boundary -------------------------------------------------------------------

fn public_from_raw<E>(raw: &RawKey) -> Result<PublicKey, SignalError<E>> {
    PublicKey::from_djb_public_key_bytes(raw).map_err(|_| SignalError::BadKey)
}

fn raw_from_public<E>(key: &PublicKey) -> Result<RawKey, SignalError<E>> {
    key.public_key_bytes()
        .try_into()
        .map_err(|_| SignalError::Internal {
            detail: "public key is not 32 bytes".into(),
        })
}

fn key_pair_from_raw(private: &[u8; 32], table: &'static str) -> Result<KeyPair, RowError> {
    let corrupt = RowError {
        table,
        detail: "bad private key",
    };
    let private = PrivateKey::deserialize(private).map_err(|_| corrupt)?;
    let public = private.public_key().map_err(|_| RowError {
        table,
        detail: "bad private key",
    })?;
    Ok(KeyPair::new(public, private))
}

/// Verifies an XEdDSA signature made by the identity whose raw public key is `identity`.
pub fn verify_signature(identity: &RawKey, message: &[u8], signature: &[u8]) -> bool {
    match PublicKey::from_djb_public_key_bytes(identity) {
        Ok(k) => k.verify_signature(message, signature),
        Err(_) => false,
    }
}

/// A numeric fingerprint of one identity key: 30 digits in six groups, computed as Signal's
/// displayable fingerprints are (iterated SHA-512 over the key and a stable identifier).
/// Compare the two sides' fingerprints out of band, or use [`safety_number`].
pub fn fingerprint(identity: &RawKey, stable_id: &str) -> String {
    let mut prefixed = [0u8; 33];
    prefixed[0] = KEY_TYPE_DJB;
    prefixed[1..].copy_from_slice(identity);
    let mut h = Sha512::new();
    h.update([0u8, 0u8]);
    h.update(prefixed);
    h.update(stable_id.as_bytes());
    let mut digest = h.finalize();
    for _ in 1..FINGERPRINT_ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(prefixed);
        digest = h.finalize();
    }
    let mut out = String::with_capacity(35);
    for (i, chunk) in digest.chunks_exact(5).take(6).enumerate() {
        let mut n: u64 = 0;
        for b in chunk {
            n = (n << 8) | u64::from(*b);
        }
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{:05}", n % 100_000));
    }
    out
}

/// The safety number both sides display: the two fingerprints, lower one first.
pub fn safety_number(a: (&RawKey, &str), b: (&RawKey, &str)) -> String {
    let fa = fingerprint(a.0, a.1);
    let fb = fingerprint(b.0, b.1);
    if fa <= fb {
        format!("{fa} {fb}")
    } else {
        format!("{fb} {fa}")
    }
}

// ---- our own identity -----------------------------------------------------------------------

/// Our identity key pair and registration id.
pub struct LocalIdentity {
    registration_id: u32,
    key_pair: IdentityKeyPair,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("LocalIdentity")
            .field("registration_id", &self.registration_id)
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// A fresh identity with a random 14-bit registration id (never 0).
    pub fn generate<R: Rng + CryptoRng>(rng: &mut R) -> LocalIdentity {
        let key_pair = IdentityKeyPair::generate(rng);
        let mut registration_id = rng.next_u32() & REGISTRATION_ID_MASK;
        if registration_id == 0 {
            registration_id = 1;
        }
        LocalIdentity {
            registration_id,
            key_pair,
        }
    }

    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// Our raw public identity key.
    pub fn public(&self) -> RawKey {
        let mut out = [0u8; 32];
        let bytes = self.key_pair.identity_key().public_key().public_key_bytes();
        if bytes.len() == 32 {
            out.copy_from_slice(bytes);
        }
        out
    }

    /// An XEdDSA signature by our identity key (used for the login proof).
    pub fn sign<R: Rng + CryptoRng>(
        &self,
        message: &[u8],
        rng: &mut R,
    ) -> Result<[u8; 64], SignalError<std::convert::Infallible>> {
        self.key_pair
            .private_key()
            .calculate_signature(message, rng)
            .map_err(|e| SignalError::Internal {
                detail: e.to_string(),
            })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(69);
        v.push(1);
        v.extend_from_slice(&self.registration_id.to_be_bytes());
        v.extend_from_slice(self.key_pair.private_key().serialize());
        v
    }

    fn decode(b: &[u8]) -> Result<LocalIdentity, RowError> {
        let mut r = Reader::new(b, "local_identity");
        r.version(1)?;
        let registration_id = r.u32()?;
        let private: [u8; 32] = r.array()?;
        r.end()?;
        let kp = key_pair_from_raw(&private, "local_identity")?;
        let key_pair = IdentityKeyPair::new(IdentityKey::new(kp.public_key), kp.private_key);
        Ok(LocalIdentity {
            registration_id,
            key_pair,
        })
    }
}

/// Our identity from the store, creating and storing one on first use.
pub fn ensure_identity<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
) -> Result<LocalIdentity, Fail<S>> {
    if let Some(id) = local_identity(txn)? {
        return Ok(id);
    }
    let id = LocalIdentity::generate(rng);
    txn.put(LOCAL_IDENTITY, IDENTITY_KEY, &id.encode())?;
    Ok(id)
}

/// Our identity, if one was created.
pub fn local_identity<S: SignalStore>(txn: &S) -> Result<Option<LocalIdentity>, Fail<S>> {
    match txn.get(LOCAL_IDENTITY, IDENTITY_KEY)? {
        Some(b) => Ok(Some(LocalIdentity::decode(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

fn require_identity<S: SignalStore>(txn: &S) -> Result<LocalIdentity, Fail<S>> {
    local_identity(txn)?.ok_or(SignalError::Internal {
        detail: "no local identity yet".into(),
    })
}

// ---- prekeys ------------------------------------------------------------------------------

/// Generates `count` one-time prekeys with increasing 24-bit ids (wrapping to 1 after
/// [`MAX_PREKEY_ID`]), stores them, and returns their public halves for upload.
pub fn generate_prekeys<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
    count: u32,
) -> Result<Vec<WirePreKey>, Fail<S>> {
    let mut next = txn.counter(META_NEXT_PREKEY_ID)?.unwrap_or(1);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = next;
        next = if next >= MAX_PREKEY_ID { 1 } else { next + 1 };
        let kp = KeyPair::generate(rng);
        let mut v = Vec::with_capacity(33);
        v.push(1);
        v.extend_from_slice(kp.private_key.serialize());
        txn.put_id(PREKEYS, id, &v)?;
        out.push(WirePreKey {
            id,
            public: raw_from_public(&kp.public_key)?,
        });
    }
    txn.set_counter(META_NEXT_PREKEY_ID, next)?;
    Ok(out)
}

/// How many one-time prekeys we still hold (unused ones).
pub fn prekey_count<S: SignalStore>(txn: &S) -> Result<u64, Fail<S>> {
    Ok(txn.count_ids(PREKEYS)?)
}

fn load_prekey<S: SignalStore>(txn: &S, id: u32) -> Result<Option<PreKeyRecord>, Fail<S>> {
    let Some(b) = txn.get_id(PREKEYS, id)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&b, "prekeys");
    r.version(1).map_err(corrupt)?;
    let private: [u8; 32] = r.array().map_err(corrupt)?;
    r.end().map_err(corrupt)?;
    Ok(Some(PreKeyRecord::new(
        id.into(),
        &key_pair_from_raw(&private, "prekeys").map_err(corrupt)?,
    )))
}

/// Generates a new signed prekey, makes it current, and prunes old ones beyond
/// [`MAX_SIGNED_PREKEYS_KEPT`].
pub fn rotate_signed_prekey<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
    now_ms: u64,
) -> Result<WireSignedPreKey, Fail<S>> {
    let identity = require_identity(txn)?;
    let prev = txn.counter(META_CURRENT_SIGNED_PREKEY)?.unwrap_or(0);
    let id = if prev >= MAX_PREKEY_ID { 1 } else { prev + 1 };
    let kp = KeyPair::generate(rng);
    let signature = identity
        .key_pair
        .private_key()
        .calculate_signature(&kp.public_key.serialize(), rng)
        .map_err(|e| SignalError::Internal {
            detail: e.to_string(),
        })?;
    let mut v = Vec::with_capacity(105);
    v.push(1);
    v.extend_from_slice(&now_ms.to_be_bytes());
    v.extend_from_slice(kp.private_key.serialize());
    v.extend_from_slice(&signature);
    txn.put_id(SIGNED_PREKEYS, id, &v)?;
    txn.set_counter(META_CURRENT_SIGNED_PREKEY, id)?;
    // Prune: keep the newest MAX_SIGNED_PREKEYS_KEPT ids (ids increase, modulo wrap).
    if id as usize > MAX_SIGNED_PREKEYS_KEPT {
        let old = id - MAX_SIGNED_PREKEYS_KEPT as u32;
        txn.remove_id(SIGNED_PREKEYS, old)?;
    }
    Ok(WireSignedPreKey {
        id,
        public: raw_from_public(&kp.public_key)?,
        signature,
    })
}

struct StoredSignedPreKey {
    created_ms: u64,
    record: SignedPreKeyRecord,
    public: RawKey,
    signature: [u8; 64],
}

fn load_signed_prekey<S: SignalStore>(
    txn: &S,
    id: u32,
) -> Result<Option<StoredSignedPreKey>, Fail<S>> {
    let Some(b) = txn.get_id(SIGNED_PREKEYS, id)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&b, "signed_prekeys");
    r.version(1).map_err(corrupt)?;
    let created_ms = r.u64().map_err(corrupt)?;
    let private: [u8; 32] = r.array().map_err(corrupt)?;
    let signature: [u8; 64] = r.array().map_err(corrupt)?;
    r.end().map_err(corrupt)?;
    let kp = key_pair_from_raw(&private, "signed_prekeys").map_err(corrupt)?;
    let record = SignedPreKeyRecord::new(
        id.into(),
        Timestamp::from_epoch_millis(created_ms),
        &kp,
        &signature,
    );
    Ok(Some(StoredSignedPreKey {
        created_ms,
        public: raw_from_public(&kp.public_key)?,
        record,
        signature,
    }))
}

/// The current signed prekey for upload, and when it was made.
pub fn current_signed_prekey<S: SignalStore>(
    txn: &S,
) -> Result<Option<(WireSignedPreKey, u64)>, Fail<S>> {
    let Some(id) = txn.counter(META_CURRENT_SIGNED_PREKEY)? else {
        return Ok(None);
    };
    let Some(s) = load_signed_prekey(txn, id)? else {
        return Err(corrupt(RowError {
            table: "signed_prekeys",
            detail: "current id missing",
        }));
    };
    Ok(Some((
        WireSignedPreKey {
            id,
            public: s.public,
            signature: s.signature,
        },
        s.created_ms,
    )))
}

/// Whether the signed prekey is due for rotation at `now_ms`.
pub fn signed_prekey_due<S: SignalStore>(txn: &S, now_ms: u64) -> Result<bool, Fail<S>> {
    Ok(match current_signed_prekey(txn)? {
        None => true,
        Some((_, created)) => now_ms.saturating_sub(created) >= SIGNED_PREKEY_ROTATION_MS,
    })
}

/// Our bundle as a peer would fetch it, handing out (and NOT deleting: the server hands each
/// out once; we delete on use) the prekey `prekey_id` if given. Used by tests and the hub's
/// simulated users.
pub fn own_bundle<S: SignalStore>(txn: &S, prekey_id: Option<u32>) -> Result<WireBundle, Fail<S>> {
    let identity = require_identity(txn)?;
    let (signed_prekey, _) = current_signed_prekey(txn)?.ok_or(SignalError::Internal {
        detail: "no signed prekey yet".into(),
    })?;
    let prekey = match prekey_id {
        None => None,
        Some(id) => {
            let rec = load_prekey(txn, id)?.ok_or(SignalError::UnknownPreKey)?;
            let public = rec
                .public_key()
                .map_err(|e| map_err(e, &Address::new("", 0)))?;
            Some(WirePreKey {
                id,
                public: raw_from_public(&public)?,
            })
        }
    };
    Ok(WireBundle {
        registration_id: identity.registration_id,
        identity: identity.public(),
        signed_prekey,
        prekey,
    })
}

/// Ids of the one-time prekeys we hold, lowest first (for tests and the hub).
pub fn prekey_ids<S: SignalStore>(txn: &S, limit: usize) -> Result<Vec<u32>, Fail<S>> {
    Ok(txn.first_ids(PREKEYS, limit)?)
}

// ---- remote identities ----------------------------------------------------------------------

fn encode_remote(r: &RemoteIdentity) -> Vec<u8> {
    let mut v = Vec::with_capacity(75);
    v.push(1);
    v.push(r.trust as u8);
    v.extend_from_slice(&r.key);
    v.extend_from_slice(&r.changed_ms.to_be_bytes());
    match &r.pending {
        Some(p) => {
            v.push(1);
            v.extend_from_slice(p);
        }
        None => v.push(0),
    }
    v
}

fn decode_remote(b: &[u8]) -> Result<RemoteIdentity, RowError> {
    let mut r = Reader::new(b, "remote_identities");
    r.version(1)?;
    let trust = TrustState::from_byte(r.u8()?).ok_or(RowError {
        table: "remote_identities",
        detail: "unknown trust state",
    })?;
    let key: RawKey = r.array()?;
    let changed_ms = r.u64()?;
    let pending = match r.u8()? {
        0 => None,
        1 => Some(r.array()?),
        _ => {
            return Err(RowError {
                table: "remote_identities",
                detail: "bad pending flag",
            });
        }
    };
    r.end()?;
    Ok(RemoteIdentity {
        key,
        trust,
        changed_ms,
        pending,
    })
}

/// The stored identity of a contact device.
pub fn remote_identity<S: SignalStore>(
    txn: &S,
    address: &Address,
) -> Result<Option<RemoteIdentity>, Fail<S>> {
    match txn.get(REMOTE_IDENTITIES, &address.key())? {
        Some(b) => Ok(Some(decode_remote(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

fn put_remote<S: SignalStore>(
    txn: &S,
    address: &Address,
    r: &RemoteIdentity,
) -> Result<(), Fail<S>> {
    txn.put(REMOTE_IDENTITIES, &address.key(), &encode_remote(r))?;
    Ok(())
}

/// Every stored device identity of `user`, by device number.
pub fn remote_identities<S: SignalStore>(
    txn: &S,
    user: &str,
) -> Result<Vec<(u32, RemoteIdentity)>, Fail<S>> {
    let prefix = format!("{user}.");
    let mut out = Vec::new();
    for (k, v) in txn.scan_prefix(REMOTE_IDENTITIES, &prefix)? {
        let Some(dev) = k.strip_prefix(prefix.as_str()) else {
            break;
        };
        let Ok(dev) = dev.parse::<u32>() else {
            continue;
        };
        out.push((dev, decode_remote(&v).map_err(corrupt)?));
    }
    out.sort_by_key(|(d, _)| *d);
    Ok(out)
}

/// The household marks every device of `user` verified, adopting any identity that a change
/// left pending. Returns how many devices were updated.
pub fn trust_contact<S: SignalStore>(txn: &S, user: &str, now_ms: u64) -> Result<usize, Fail<S>> {
    let devices = remote_identities(txn, user)?;
    for (device, mut r) in devices.iter().cloned() {
        if let Some(p) = r.pending.take() {
            r.key = p;
            r.changed_ms = now_ms;
            // The old session belongs to the old identity; the next send fetches a bundle.
            txn.remove(SESSIONS, &Address::new(user, device).key())?;
        }
        r.trust = TrustState::Verified;
        put_remote(txn, &Address::new(user, device), &r)?;
    }
    Ok(devices.len())
}

// ---- the buffered store -------------------------------------------------------------------

/// Owned, preloaded records the crate reads and writes during one operation.
struct Scratch {
    identity: IdentityKeyPair,
    registration_id: u32,
    now_ms: u64,
    sessions: HashMap<ProtocolAddress, SessionRecord>,
    dirty_sessions: HashSet<ProtocolAddress>,
    remotes: HashMap<ProtocolAddress, RemoteIdentity>,
    dirty_remotes: HashSet<ProtocolAddress>,
    prekeys: HashMap<PreKeyId, PreKeyRecord>,
    removed_prekeys: Vec<PreKeyId>,
    signed_prekeys: HashMap<SignedPreKeyId, SignedPreKeyRecord>,
}

impl Scratch {
    fn load<S: SignalStore>(txn: &S, address: &Address, now_ms: u64) -> Result<Scratch, Fail<S>> {
        let local = require_identity(txn)?;
        let pa = address.protocol();
        let mut sessions = HashMap::new();
        if let Some(b) = txn.get(SESSIONS, &address.key())? {
            let mut r = Reader::new(&b, "sessions");
            r.version(1).map_err(corrupt)?;
            let rest = r.take(b.len().saturating_sub(1)).map_err(corrupt)?;
            let mut rec = SessionRecord::deserialize(rest).map_err(|_| {
                corrupt(RowError {
                    table: "sessions",
                    detail: "bad session record",
                })
            })?;
            rec.waive_counter_lease();
            sessions.insert(pa.clone(), rec);
        }
        let mut remotes = HashMap::new();
        if let Some(r) = remote_identity(txn, address)? {
            remotes.insert(pa, r);
        }
        Ok(Scratch {
            identity: local.key_pair,
            registration_id: local.registration_id,
            now_ms,
            sessions,
            dirty_sessions: HashSet::new(),
            remotes,
            dirty_remotes: HashSet::new(),
            prekeys: HashMap::new(),
            removed_prekeys: Vec::new(),
            signed_prekeys: HashMap::new(),
        })
    }

    /// The crate wants the session store and the identity store as two distinct `&mut`; a
    /// scratch is both, so its sessions are split off for the call and put back after.
    fn with_split<T>(&mut self, f: impl FnOnce(&mut SessionOnly<'_>, &mut Scratch) -> T) -> T {
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut dirty = std::mem::take(&mut self.dirty_sessions);
        let out = {
            let mut view = SessionOnly {
                sessions: &mut sessions,
                dirty: &mut dirty,
            };
            f(&mut view, self)
        };
        self.sessions = sessions;
        self.dirty_sessions = dirty;
        out
    }

    fn flush<S: SignalStore>(self, txn: &S) -> Result<(), Fail<S>> {
        for pa in &self.dirty_sessions {
            if let Some(rec) = self.sessions.get(pa) {
                let mut body = Vec::new();
                rec.serialize_into(&mut body);
                let mut v = Vec::with_capacity(1 + body.len());
                v.push(1u8);
                v.extend_from_slice(&body);
                let key = format!("{}.{}", pa.name(), u32::from(pa.device_id()));
                txn.put(SESSIONS, &key, &v)?;
            }
        }
        for pa in &self.dirty_remotes {
            if let Some(r) = self.remotes.get(pa) {
                put_remote(txn, &Address::new(pa.name(), u32::from(pa.device_id())), r)?;
            }
        }
        for id in &self.removed_prekeys {
            txn.remove_id(PREKEYS, u32::from(*id))?;
        }
        Ok(())
    }
}

type SpResult<T> = Result<T, SignalProtocolError>;

#[async_trait::async_trait]
impl IdentityKeyStore for Scratch {
    async fn get_identity_key_pair(&self) -> SpResult<IdentityKeyPair> {
        Ok(self.identity.clone())
    }

    async fn get_local_registration_id(&self) -> SpResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SpResult<IdentityChange> {
        let raw: RawKey = identity
            .public_key()
            .public_key_bytes()
            .try_into()
            .map_err(|_| SignalProtocolError::InvalidArgument("identity key length".into()))?;
        let now = self.now_ms;
        let changed = match self.remotes.get_mut(address) {
            Some(r) if r.key == raw => false,
            Some(r) => {
                r.key = raw;
                r.changed_ms = now;
                r.pending = None;
                if r.trust != TrustState::Verified {
                    r.trust = TrustState::Changed;
                }
                true
            }
            None => {
                self.remotes.insert(
                    address.clone(),
                    RemoteIdentity {
                        key: raw,
                        trust: TrustState::Unverified,
                        changed_ms: now,
                        pending: None,
                    },
                );
                false
            }
        };
        self.dirty_remotes.insert(address.clone());
        Ok(IdentityChange::from_changed(changed))
    }

    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        _d: Direction,
    ) -> SpResult<bool> {
        Ok(match self.remotes.get(address) {
            None => true,
            Some(r) => {
                r.trust != TrustState::Verified
                    || r.key[..] == *identity.public_key().public_key_bytes()
            }
        })
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SpResult<Option<IdentityKey>> {
        match self.remotes.get(address) {
            None => Ok(None),
            Some(r) => Ok(Some(IdentityKey::new(
                PublicKey::from_djb_public_key_bytes(&r.key)?,
            ))),
        }
    }
}

// ---- operations ---------------------------------------------------------------------------

/// Whether we hold a session with `address`.
pub fn has_session<S: SignalStore>(txn: &S, address: &Address) -> Result<bool, Fail<S>> {
    Ok(txn.get(SESSIONS, &address.key())?.is_some())
}

/// Drops the session with `address` (for example before rebuilding it from a retry receipt).
pub fn delete_session<S: SignalStore>(txn: &S, address: &Address) -> Result<(), Fail<S>> {
    txn.remove(SESSIONS, &address.key())?;
    Ok(())
}

/// Builds a session with `address` from its bundle. The signed prekey signature is checked
/// first; a bad one is refused and nothing is stored.
pub fn process_bundle<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    address: &Address,
    bundle: &WireBundle,
    rng: &mut R,
    now_ms: u64,
) -> Result<IdentityEvent, Fail<S>> {
    let identity_pk = public_from_raw(&bundle.identity)?;
    let spk = public_from_raw(&bundle.signed_prekey.public)?;
    // Checked here as well as in the crate, so that a bad bundle is refused before any state
    // (or a pending identity) is recorded.
    if !identity_pk.verify_signature(&spk.serialize(), &bundle.signed_prekey.signature) {
        return Err(SignalError::BadSignature);
    }
    let prekey = match &bundle.prekey {
        Some(p) => Some((PreKeyId::from(p.id), public_from_raw(&p.public)?)),
        None => None,
    };
    let sp_bundle = PreKeyBundle::new(
        bundle.registration_id,
        address.device.into(),
        prekey,
        bundle.signed_prekey.id.into(),
        spk,
        bundle.signed_prekey.signature.to_vec(),
        IdentityKey::new(identity_pk),
    )
    .map_err(|e| map_err(e, address))?;
    let mut scratch = Scratch::load(txn, address, now_ms)?;
    let first = !scratch.remotes.contains_key(&address.protocol());
    let pa = address.protocol();
    let result = scratch.with_split(|sessions, ids| {
        block_on(sp::process_prekey_bundle(
            &pa,
            sessions,
            ids,
            &sp_bundle,
            rng,
            UsePQRatchet::No,
        ))
    });
    match result {
        Ok(change) => {
            scratch.flush(txn)?;
            Ok(identity_event(first, change))
        }
        Err(SignalProtocolError::UntrustedIdentity(_)) => {
            hold_pending_identity(txn, address, bundle.identity)?;
            Err(SignalError::UntrustedIdentity {
                address: address.clone(),
            })
        }
        Err(e) => Err(map_err(e, address)),
    }
}

fn identity_event(first: bool, change: IdentityChange) -> IdentityEvent {
    if matches!(change, IdentityChange::ReplacedExisting) {
        IdentityEvent::Changed
    } else if first {
        IdentityEvent::New
    } else {
        IdentityEvent::Unchanged
    }
}

fn hold_pending_identity<S: SignalStore>(
    txn: &S,
    address: &Address,
    key: RawKey,
) -> Result<(), Fail<S>> {
    if let Some(mut r) = remote_identity(txn, address)? {
        r.pending = Some(key);
        put_remote(txn, address, &r)?;
    }
    Ok(())
}

/// The session half of a [`Scratch`], split off so the identity half can be borrowed at the
/// same time.
struct SessionOnly<'a> {
    sessions: &'a mut HashMap<ProtocolAddress, SessionRecord>,
    dirty: &'a mut HashSet<ProtocolAddress>,
}

#[async_trait::async_trait]
impl SessionStore for SessionOnly<'_> {
    async fn load_session(&self, address: &ProtocolAddress) -> SpResult<Option<SessionRecord>> {
        Ok(self.sessions.get(address).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SpResult<bool> {
        Ok(self.sessions.contains_key(address))
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        mut record: SessionRecord,
    ) -> SpResult<()> {
        record.waive_counter_lease();
        self.sessions.insert(address.clone(), record);
        self.dirty.insert(address.clone());
        Ok(())
    }
}

/// Encrypts `plaintext` for `address` with the existing session. The advanced session is
/// written into `txn`; commit it together with the stanza bytes before they reach the wire.
pub fn encrypt<S: SignalStore>(
    txn: &S,
    address: &Address,
    plaintext: &[u8],
    now_ms: u64,
) -> Result<Ciphertext, Fail<S>> {
    let mut scratch = Scratch::load(txn, address, now_ms)?;
    if !scratch.sessions.contains_key(&address.protocol()) {
        return Err(SignalError::NoSession {
            address: address.clone(),
        });
    }
    let pa = address.protocol();
    let result = scratch
        .with_split(|sessions, ids| block_on(sp::message_encrypt(plaintext, &pa, sessions, ids)));
    let msg = result.map_err(|e| map_err(e, address))?;
    let (kind, body) = match msg {
        CiphertextMessage::PreKeySignalMessage(m) => (EncType::PkMsg, m.serialized().to_vec()),
        CiphertextMessage::SignalMessage(m) => (EncType::Msg, m.serialized().to_vec()),
        _ => {
            return Err(SignalError::Internal {
                detail: "unexpected ciphertext kind".into(),
            });
        }
    };
    scratch.dirty_sessions.insert(pa);
    scratch.flush(txn)?;
    Ok(Ciphertext { kind, body })
}

/// Decrypts a message from `address`. On success the session update, any identity record and
/// the deletion of a consumed one-time prekey are written into `txn`: add the inbox row and
/// commit, then ack. On failure nothing is written except, for a verified contact whose
/// identity changed ([`SignalError::UntrustedIdentity`]), the offered identity as pending:
/// commit the transaction in that case so the household can review and trust it.
pub fn decrypt<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    address: &Address,
    ciphertext: &Ciphertext,
    rng: &mut R,
    now_ms: u64,
) -> Result<Decrypted, Fail<S>> {
    let mut scratch = Scratch::load(txn, address, now_ms)?;
    let first = !scratch.remotes.contains_key(&address.protocol());
    let parsed = match ciphertext.kind {
        EncType::PkMsg => {
            let m = PreKeySignalMessage::try_from(ciphertext.body.as_slice())
                .map_err(|e| map_err(e, address))?;
            if let Some(id) = m.pre_key_id()
                && let Some(rec) = load_prekey(txn, u32::from(id))?
            {
                scratch.prekeys.insert(id, rec);
            }
            // For a new session the chain starts at 0; for a known one, at its position.
            check_forward_jump(scratch.sessions.get(&address.protocol()), m.message())?;
            let sid = m.signed_pre_key_id();
            if let Some(s) = load_signed_prekey(txn, u32::from(sid))? {
                scratch.signed_prekeys.insert(sid, s.record);
            }
            CiphertextMessage::PreKeySignalMessage(m)
        }
        EncType::Msg => {
            let m = SignalMessage::try_from(ciphertext.body.as_slice())
                .map_err(|e| map_err(e, address))?;
            check_forward_jump(scratch.sessions.get(&address.protocol()), &m)?;
            CiphertextMessage::SignalMessage(m)
        }
    };
    let pa = address.protocol();
    let result = block_on(async {
        let mut sessions = std::mem::take(&mut scratch.sessions);
        let mut dirty = std::mem::take(&mut scratch.dirty_sessions);
        let mut prekeys = PreKeysOnly {
            prekeys: std::mem::take(&mut scratch.prekeys),
            signed: std::mem::take(&mut scratch.signed_prekeys),
        };
        let r = {
            let mut view = SessionOnly {
                sessions: &mut sessions,
                dirty: &mut dirty,
            };
            let signed = prekeys.signed.clone();
            let signed_store = SignedOnly(signed);
            sp::message_decrypt(
                &parsed,
                &pa,
                &mut view,
                &mut scratch,
                &mut prekeys,
                &signed_store,
                rng,
                UsePQRatchet::No,
            )
            .await
        };
        scratch.sessions = sessions;
        scratch.dirty_sessions = dirty;
        scratch.prekeys = prekeys.prekeys;
        r
    });
    match result {
        Ok(d) => {
            let consumed = d.consumed_prekey_id.map(u32::from);
            if let Some(id) = d.consumed_prekey_id {
                scratch.removed_prekeys.push(id);
            }
            scratch.dirty_sessions.insert(pa);
            scratch.flush(txn)?;
            Ok(Decrypted {
                plaintext: d.plaintext,
                identity: identity_event(first, d.identity_change),
                consumed_prekey: consumed,
            })
        }
        Err(SignalProtocolError::UntrustedIdentity(_)) => {
            if let CiphertextMessage::PreKeySignalMessage(m) = &parsed {
                let raw = raw_from_public(m.identity_key().public_key())?;
                hold_pending_identity(txn, address, raw)?;
            }
            Err(SignalError::UntrustedIdentity {
                address: address.clone(),
            })
        }
        Err(e) => Err(map_err(e, address)),
    }
}

/// Refuses a message that would skip more than [`MAX_SKIPPED_KEYS`] keys ahead in its chain.
/// The crate refuses it too, but folds the reason into a generic failure; checking first
/// gives the caller (and the log) the real reason.
fn check_forward_jump<E>(
    session: Option<&SessionRecord>,
    m: &SignalMessage,
) -> Result<(), SignalError<E>> {
    let Some(state) = session.and_then(|s| s.session_state()) else {
        return Ok(());
    };
    let index = match state.get_receiver_chain_key(m.sender_ratchet_key()) {
        Ok(Some(chain)) => chain.index(),
        Ok(None) => 0,
        Err(_) => return Ok(()),
    };
    if m.counter().saturating_sub(index) as usize > MAX_SKIPPED_KEYS {
        return Err(SignalError::TooFarAhead);
    }
    Ok(())
}

struct PreKeysOnly {
    prekeys: HashMap<PreKeyId, PreKeyRecord>,
    signed: HashMap<SignedPreKeyId, SignedPreKeyRecord>,
}

#[async_trait::async_trait]
impl PreKeyStore for PreKeysOnly {
    async fn get_pre_key(&self, id: PreKeyId) -> SpResult<PreKeyRecord> {
        self.prekeys
            .get(&id)
            .cloned()
            .ok_or(SignalProtocolError::InvalidPreKeyId)
    }

    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SpResult<()> {
        self.prekeys.insert(id, record.clone());
        Ok(())
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> SpResult<()> {
        // Deletion is deferred to the flush, in the same transaction as the new session.
        self.prekeys.remove(&id);
        Ok(())
    }
}

struct SignedOnly(HashMap<SignedPreKeyId, SignedPreKeyRecord>);

#[async_trait::async_trait]
impl SignedPreKeyStore for SignedOnly {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SpResult<SignedPreKeyRecord> {
        self.0
            .get(&id)
            .cloned()
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> SpResult<()> {
        self.0.insert(id, record.clone());
        Ok(())
    }
}

/// Sets up a fresh device: identity, one signed prekey and a first batch of one-time prekeys.
/// Returns the upload (identity, signed prekey, prekeys). Idempotent for the identity.
pub fn provision<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
    now_ms: u64,
    prekeys: u32,
) -> Result<(LocalIdentity, WireSignedPreKey, Vec<WirePreKey>), Fail<S>> {
    let identity = ensure_identity(txn, rng)?;
    let spk = match current_signed_prekey(txn)? {
        Some((spk, _)) => spk,
        None => rotate_signed_prekey(txn, rng, now_ms)?,
    };
    let keys = generate_prekeys(txn, rng, prekeys)?;
    Ok((identity, spk, keys))
}

/// Returns an error if `signature` over our signed prekey is not ours: a self-check used
/// after loading, so a corrupt store is noticed before we publish a bad bundle.
pub fn check_signed_prekey<S: SignalStore>(txn: &S) -> Result<(), Fail<S>> {
    let identity = require_identity(txn)?;
    if let Some((spk, _)) = current_signed_prekey(txn)? {
        let pk = public_from_raw(&spk.public)?;
        if !verify_signature(&identity.public(), &pk.serialize(), &spk.signature) {
            return Err(corrupt(RowError {
                table: "signed_prekeys",
                detail: "signature does not verify",
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal_store::MemoryStore;

    const NOW: u64 = 1_700_000_000_000;

    fn device() -> MemoryStore {
        let m = MemoryStore::default();
        provision(&m, &mut rand::rng(), NOW, 4).unwrap();
        m
    }

    #[test]
    fn two_memory_stores_hold_a_session_both_ways() {
        let (alice, bob) = (device(), device());
        let (a, b) = (Address::new("alice", 1), Address::new("bob", 1));
        let id = prekey_ids(&bob, 1).unwrap().first().copied();
        let bundle = own_bundle(&bob, id).unwrap();
        assert_eq!(
            process_bundle(&alice, &b, &bundle, &mut rand::rng(), NOW).unwrap(),
            IdentityEvent::New
        );
        let ct = encrypt(&alice, &b, b"hello", NOW).unwrap();
        assert_eq!(ct.kind, EncType::PkMsg);
        let d = decrypt(&bob, &a, &ct, &mut rand::rng(), NOW).unwrap();
        assert_eq!(d.plaintext, b"hello");
        assert_eq!(d.consumed_prekey, id);
        assert_eq!(prekey_count(&bob).unwrap(), 3, "the used prekey is deleted");
        let back = encrypt(&bob, &a, b"hi", NOW).unwrap();
        assert_eq!(back.kind, EncType::Msg);
        assert_eq!(
            decrypt(&alice, &b, &back, &mut rand::rng(), NOW)
                .unwrap()
                .plaintext,
            b"hi"
        );
        assert!(matches!(
            decrypt(&alice, &b, &back, &mut rand::rng(), NOW),
            Err(SignalError::Duplicate)
        ));
    }

    #[test]
    fn debug_output_of_identity_hides_the_private_key() {
        let me = LocalIdentity::generate(&mut rand::rng());
        let dbg = format!("{me:?}");
        let private = me.key_pair.private_key().serialize();
        let hex: String = private.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&hex));
        assert!(!dbg.contains(&format!("{:?}", &private[..])));
    }
}
