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
//!
//! Files: this one holds the types, errors and bounds; `keys.rs` the key conversions and our
//! identity; `prekeys.rs` one-time and signed prekeys; `identities.rs` contacts' identities
//! and trust; `scratch.rs` the buffered store; `ops.rs` the operations; `sender_keys.rs` the
//! group cipher (sender keys).

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
    /// The device's identity changed and was accepted (its contact was not verified):
    /// `previous` was replaced by `current`.
    Changed {
        previous: RawKey,
        current: RawKey,
    },
}

impl IdentityEvent {
    /// Whether this is a [`IdentityEvent::Changed`].
    pub fn is_changed(&self) -> bool {
        matches!(self, IdentityEvent::Changed { .. })
    }
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
    /// Peer or us: no sender key of `sender` in `group` (its distribution never reached us,
    /// or names a chain rotated away). The receiver asks for it with a retry receipt.
    NoSenderKey { group: String, sender: Address },
    /// Household policy: a verified contact's identity changed. Sending and receiving for
    /// this device are held until the household trusts the new identity. `newly_held` is
    /// `(verified key, offered key)` when this operation put the offered key on hold (it was
    /// not pending already), so the caller reports a change once, not once per message.
    UntrustedIdentity {
        address: Address,
        newly_held: Option<(RawKey, RawKey)>,
    },
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
            Self::NoSenderKey { group, sender } => {
                write!(f, "no sender key of {sender} in group {group}")
            }
            Self::UntrustedIdentity { address, .. } => {
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
            newly_held: None,
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

mod identities;
mod keys;
mod ops;
mod prekeys;
mod scratch;
mod sender_keys;

pub use identities::*;
pub use keys::*;
pub use ops::*;
pub use prekeys::*;
use scratch::*;
pub use sender_keys::*;

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
    fn a_version_1_identity_row_reads_and_upgrades_to_the_same_key() {
        let me = LocalIdentity::generate(&mut rand::rng());
        let v2 = me.encode();
        assert_eq!((v2.len(), v2[0]), (69, LOCAL_IDENTITY_ROW_VERSION));
        // Version 1 is the first 37 bytes, with version 1 and no public key.
        let mut v1 = v2[..37].to_vec();
        v1[0] = 1;
        let m = MemoryStore::default();
        m.put(KeyTable::LocalIdentity, IDENTITY_KEY, &v1).unwrap();
        let read = local_identity(&m).unwrap().unwrap();
        assert_eq!(read.public(), me.public(), "version 1 derives the same key");
        assert!(upgrade_identity_record(&m).unwrap());
        assert_eq!(
            m.get(KeyTable::LocalIdentity, IDENTITY_KEY).unwrap(),
            Some(v2)
        );
        assert!(
            !upgrade_identity_record(&m).unwrap(),
            "version 2 is left alone"
        );
        let read = local_identity(&m).unwrap().unwrap();
        assert_eq!(
            (read.public(), read.registration_id()),
            (me.public(), me.registration_id())
        );
        for bad in [&v1[..36], &[3u8; 69][..], &[2u8; 37][..]] {
            m.put(KeyTable::LocalIdentity, IDENTITY_KEY, bad).unwrap();
            assert!(local_identity(&m).is_err(), "{bad:?}");
        }
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
