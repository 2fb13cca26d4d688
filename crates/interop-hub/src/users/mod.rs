//! Simulated WhatsApp users living inside the hub. Each has one or more devices, and each
//! device keeps its own Signal state in a daemon-format store under
//! `<state>/sim/{phone}.{device}/`, so they encrypt and decrypt exactly as a real peer does.
//! This file owns their behaviour (what they answer and when) and their Signal state; it does
//! not route: every stanza a simulated user sends goes back to the hub core as a
//! [`SimAction`], and keys and device lists come through the [`Directory`] the core passes
//! in. No sockets, no clock (`now_ms` is passed in), no randomness of its own.
//!
//! Behaviours (`POST /users`, `--demo-users`):
//!
//! | behaviour          | on a message                                                      |
//! |--------------------|-------------------------------------------------------------------|
//! | `echo`             | delivery receipt, read receipt, typing, then `echo: <text>`; media in kind; 👍 to `react…`; a location to `where`; an edit or delete of its own echo to an edit or delete |
//! | `silent`           | delivery receipt only                                             |
//! | `read_after:N`     | delivery receipt, read receipt N seconds later                    |
//! | `not_opted_in`     | never reached: the hub answers `not_opted_in`                     |
//! | `offline`          | never reached while offline: the hub queues, delivers on change   |
//!
//! Whatever the behaviour, a device that cannot decrypt a message answers with a retry receipt
//! ([`interop_proto::retry`], at most [`MAX_RETRY_RECEIPTS`] per message), and a user keeps what it sent
//! recently ([`MAX_RETAINED_SENT`], [`MAX_RETAINED_SENT_AGE_MS`]) to resend it, under the same
//! id and re-encrypted on a rebuilt session, when a retry receipt asks. Media from a provider is
//! not trusted on its declaration: the user asks the hub to fetch the blob through its proxy
//! ([`SimAction::FetchMedia`]) and records what the blob really decrypts to
//! ([`SimUser::media_fetched`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::{CryptoRng, Rng};
use sha2::{Digest as _, Sha256};

use crate::device_store::DeviceStore as Store;
use crate::media::MediaStore;
use interop_io::signal_tables::SignalTables;
use interop_proto::content::{self, ContentKind, Message};
use interop_proto::content::{media_type, stanza_type};
use interop_proto::jid::{Jid, Server};
use interop_proto::media_crypto::{
    self, MEDIA_KEY_BYTES, MediaCryptoError, MediaKind, SHA256_BYTES,
};
use interop_proto::retry::{self, MAX_RETRY_RECEIPTS, RetryReceipt};
use interop_proto::signal::{self, Ciphertext, EncType, WireBundle, WirePreKey, WireSignedPreKey};
use interop_proto::stanza::Stanza;

/// An engine error over a simulated device's store.
type SignalError = interop_proto::signal::SignalError<StoreError>;
use interop_io::state_dir::StoreError;

mod group;
mod media_fields;
mod receive;
mod session;

pub use group::MAX_SENDER_KEYS_GIVEN;
pub use media_fields::*;

/// Most devices one simulated user may have.
pub const MAX_SIM_DEVICES: u32 = 8;
/// One-time prekeys a simulated device publishes per batch.
pub const SIM_PREKEY_BATCH: u32 = 50;
/// Longest `read_after` delay, in seconds.
pub const MAX_READ_AFTER_SECS: u64 = 24 * 3600;
/// Message ids a simulated user remembers to answer each message once, however many of its
/// devices received a copy.
pub const MAX_SEEN_IDS: usize = 4096;
/// Messages a simulated user keeps after sending them, to resend on a retry receipt.
pub const MAX_RETAINED_SENT: usize = 256;
/// How long a simulated user keeps a sent message for resending, in milliseconds.
pub const MAX_RETAINED_SENT_AGE_MS: u64 = 24 * 3600 * 1000;
/// The reaction the echo contact sends to a text that starts with `react`.
pub const ECHO_REACTION: &str = "\u{1F44D}";
/// The place the echo contact shares when asked `where`: latitude, longitude, name.
pub const ECHO_LOCATION: (f64, f64, &str) = (52.520_008, 13.404_954, "Alexanderplatz, Berlin");
/// (device, sender, message id) triples whose retry receipts a simulated user counts.
pub const MAX_RETRY_TRACKED: usize = 1024;

/// How a simulated user reacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Echo,
    Silent,
    ReadAfter { secs: u64 },
    NotOptedIn,
    Offline,
}

impl Behavior {
    /// Parses `echo`, `silent`, `read_after:SECONDS`, `not_opted_in` or `offline`.
    pub fn parse(text: &str) -> Option<Behavior> {
        Some(match text {
            "echo" => Behavior::Echo,
            "silent" => Behavior::Silent,
            "not_opted_in" => Behavior::NotOptedIn,
            "offline" => Behavior::Offline,
            other => {
                let secs: u64 = other.strip_prefix("read_after:")?.parse().ok()?;
                if secs > MAX_READ_AFTER_SECS {
                    return None;
                }
                Behavior::ReadAfter { secs }
            }
        })
    }
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Echo => f.write_str("echo"),
            Behavior::Silent => f.write_str("silent"),
            Behavior::ReadAfter { secs } => write!(f, "read_after:{secs}"),
            Behavior::NotOptedIn => f.write_str("not_opted_in"),
            Behavior::Offline => f.write_str("offline"),
        }
    }
}

/// Why a simulated user could not act. Shown by the control API.
#[derive(Debug)]
#[non_exhaustive]
pub enum SimError {
    /// Environment: a simulated device's store failed.
    Store(StoreError),
    /// Environment or peer: the Signal engine refused (for example a bad bundle).
    Signal(SignalError),
    /// Caller (control API): the recipient has no devices with keys.
    NoDevices { to: String },
    /// Caller: content too large or malformed.
    Content(content::ContentError),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Store(e) => write!(f, "{e}"),
            SimError::Signal(e) => write!(f, "{e}"),
            SimError::NoDevices { to } => write!(f, "{to} has no devices with published keys"),
            SimError::Content(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<StoreError> for SimError {
    fn from(e: StoreError) -> Self {
        SimError::Store(e)
    }
}

impl From<SignalError> for SimError {
    fn from(e: SignalError) -> Self {
        SimError::Signal(e)
    }
}

/// What the hub core offers a simulated user: device lists and bundles, from the same
/// directory connected clients use (so a bundle fetched here consumes a one-time prekey).
pub trait Directory {
    /// Device numbers of a user (user JID).
    fn devices(&mut self, user: &Jid) -> Vec<u32>;
    /// A bundle for a device, consuming one one-time prekey if any remain.
    fn bundle(&mut self, device: &Jid) -> Option<WireBundle>;
    /// Every device of every member of `group`, as device JIDs.
    fn group_devices(&mut self, group: &interop_proto::group::GroupId) -> Vec<Jid>;
}

/// Something a simulated user wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum SimAction {
    /// Route this stanza as if `from` had sent it on a connection.
    Send { from: Jid, stanza: Stanza },
    /// Route this stanza from `from` at `at_ms`.
    Later {
        at_ms: u64,
        from: Jid,
        stanza: Stanza,
    },
    /// Publish this device's keys in the directory.
    Publish {
        device: Jid,
        registration_id: u32,
        identity: signal::RawKey,
        signed: WireSignedPreKey,
        prekeys: Vec<WirePreKey>,
    },
    /// Remember that this user decrypted a message (a JSON record for the control API).
    Record {
        phone: String,
        json: serde_json::Value,
    },
    /// Fetch this media message's blob through the proxy, then hand it to
    /// [`SimUser::media_fetched`].
    FetchMedia(Box<PendingMedia>),
}

/// Whether the echo behaviour answers `opened` at all: everything from a provider account,
/// but from another simulated user (or itself) only a text that is not itself an echo. Two
/// echo users would otherwise answer each other for ever, each `echo: echo: …` longer than
/// the last (the control API's schemathesis run found it filling `hub.redb`).
fn answerable(opened: &Opened) -> bool {
    opened.from.server == Server::Interop
        || opened
            .message
            .text_body()
            .is_some_and(|t| !t.starts_with(ECHO_PREFIX))
}

/// What the echo behaviour puts before the text it answers.
pub const ECHO_PREFIX: &str = "echo: ";

/// A media message from a provider that a simulated user received and waits to check.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingMedia {
    /// The receiving user's phone digits.
    pub phone: String,
    /// The message id.
    pub id: String,
    /// The sending device; its user is the provider account whose media host serves the blob.
    pub from: Jid,
    /// When it was received, in milliseconds.
    pub received_ms: u64,
    /// The decrypted content (one media message).
    pub message: Message,
    /// The blob's URL, as the message gives it.
    pub url: String,
    /// Whether to answer in kind once the blob is checked (the `echo` behaviour).
    pub echo: bool,
    /// For a message in a group: the group's id and the sender device, which the record
    /// names. Media in a group is recorded once fetched, and not echoed.
    pub group: Option<(String, String)>,
}

/// What a media message says about its blob: enough to verify and decrypt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: MediaKind,
    pub url: String,
    pub mimetype: String,
    pub file_name: Option<String>,
    pub media_key: [u8; MEDIA_KEY_BYTES],
    pub file_enc_sha256: [u8; SHA256_BYTES],
    pub file_sha256: [u8; SHA256_BYTES],
}

/// What `received` says about a media message's blob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaOutcome {
    /// Not checked (media between simulated users): the declared `fileSha256` and length.
    Declared,
    /// Fetched, verified and decrypted: the plaintext's SHA-256 and size.
    Decrypted { sha256_hex: String, size: u64 },
    /// Fetching or verifying failed with this code.
    Failed { code: String },
}

/// A message a simulated user sent, kept to resend on a retry receipt.
struct SentMessage {
    id: String,
    /// The recipient user.
    to: Jid,
    message: Message,
    sent_ms: u64,
    /// Per recipient device, the highest retry count already answered.
    answered: Vec<(String, u8)>,
}

/// One device of a simulated user.
pub struct SimDevice {
    pub device: u32,
    store: Store,
    dir: PathBuf,
}

/// One simulated user.
pub struct SimUser {
    pub phone: String,
    pub behavior: Behavior,
    pub devices: Vec<SimDevice>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    sent: VecDeque<SentMessage>,
    retries: HashMap<String, u8>,
    retries_order: VecDeque<String>,
    /// (message received, echo sent) pairs, newest last, for echoing edits and deletes.
    echoes: VecDeque<(String, String)>,
    /// `{group}|{user}.{device}` for each member device given our sender key (at most
    /// [`MAX_SENDER_KEYS_GIVEN`]; in memory: after a restart the key is given again).
    sender_key_given: HashSet<String>,
}

/// What a simulated device made of an inbound `<message>`.
struct Opened {
    id: String,
    from: Jid,
    message: Message,
}

/// The outcome of opening an inbound `<message>`.
enum Inbound {
    /// Decrypted.
    Opened(Box<Opened>),
    /// Not decryptable: answer with this retry receipt (none once the count is spent).
    Failed(Option<SimAction>),
    /// Malformed, a duplicate, or not for us: nothing to do.
    Ignored,
}

fn device_dir(root: &Path, phone: &str, device: u32) -> PathBuf {
    root.join(format!("{phone}.{device}"))
}

impl SimUser {
    /// Opens (creating on first use) the user's devices under `root`. New devices are
    /// provisioned and their keys returned as [`SimAction::Publish`].
    pub fn open<R: Rng + CryptoRng>(
        root: &Path,
        phone: &str,
        devices: u32,
        behavior: Behavior,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(SimUser, Vec<SimAction>), SimError> {
        let mut out = Vec::new();
        let mut devs = Vec::new();
        for d in 0..devices.clamp(1, MAX_SIM_DEVICES) {
            let (dev, publish) = SimDevice::open(root, phone, d, now_ms, rng)?;
            out.extend(publish);
            devs.push(dev);
        }
        Ok((
            SimUser {
                phone: phone.to_owned(),
                behavior,
                devices: devs,
                seen: HashSet::new(),
                seen_order: VecDeque::new(),
                sent: VecDeque::new(),
                retries: HashMap::new(),
                retries_order: VecDeque::new(),
                echoes: VecDeque::new(),
                sender_key_given: HashSet::new(),
            },
            out,
        ))
    }

    /// The user JID.
    pub fn jid(&self) -> Jid {
        Jid::whatsapp(self.phone.clone(), None)
    }

    /// Throws away every device's Signal state and makes new identities, as a reinstall
    /// does. Returns the new keys to publish.
    pub fn reinstall<R: Rng + CryptoRng>(
        &mut self,
        root: &Path,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let count = self.devices.len() as u32;
        // Close every store before its directory goes.
        let old: Vec<SimDevice> = std::mem::take(&mut self.devices);
        for d in old {
            let dir = d.dir.clone();
            drop(d);
            fs::remove_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        let mut out = Vec::new();
        for d in 0..count {
            let (dev, publish) = SimDevice::open(root, &self.phone, d, now_ms, rng)?;
            out.extend(publish);
            self.devices.push(dev);
        }
        self.seen.clear();
        self.seen_order.clear();
        self.sent.clear();
        self.retries.clear();
        self.retries_order.clear();
        Ok(out)
    }

    /// Drops every session with `peer`'s device (its identity changed).
    pub fn forget_device(&mut self, peer: &Jid) -> Result<(), SimError> {
        for d in &self.devices {
            let wtx = d.store.begin()?;
            let txn = SignalTables(&wtx);
            signal::delete_session(&txn, &peer.address())?;
            wtx.commit().map_err(StoreError::from)?;
        }
        Ok(())
    }

    /// Tops up the directory for `device` when it runs low.
    pub fn refill<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let phone = self.phone.clone();
        let Some(d) = self.devices.iter_mut().find(|d| d.device == device) else {
            return Ok(Vec::new());
        };
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let keys = signal::generate_prekeys(&txn, rng, SIM_PREKEY_BATCH)?;
        let (signed, _) = signal::current_signed_prekey(&txn)?.ok_or(SignalError::Internal {
            detail: "simulated device has no signed prekey".into(),
        })?;
        let identity = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "simulated device has no identity".into(),
        })?;
        wtx.commit().map_err(StoreError::from)?;
        Ok(vec![SimAction::Publish {
            device: Jid::whatsapp(phone, Some(device)),
            registration_id: identity.registration_id(),
            identity: identity.public(),
            signed,
            prekeys: keys,
        }])
    }
}

impl SimDevice {
    fn open<R: Rng + CryptoRng>(
        root: &Path,
        phone: &str,
        device: u32,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(SimDevice, Vec<SimAction>), SimError> {
        let dir = device_dir(root, phone, device);
        let store = Store::open(&dir)?;
        let wtx = store.begin()?;
        let txn = SignalTables(&wtx);
        let fresh = signal::local_identity(&txn)?.is_none();
        let mut out = Vec::new();
        if fresh {
            let (identity, signed, prekeys) =
                signal::provision(&txn, rng, now_ms, SIM_PREKEY_BATCH)?;
            out.push(SimAction::Publish {
                device: Jid::whatsapp(phone.to_owned(), Some(device)),
                registration_id: identity.registration_id(),
                identity: identity.public(),
                signed,
                prekeys,
            });
        }
        wtx.commit().map_err(StoreError::from)?;
        Ok((SimDevice { device, store, dir }, out))
    }
}

/// Every simulated user, by phone digits.
#[derive(Default)]
pub struct SimUsers {
    pub users: BTreeMap<String, SimUser>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_from_another_simulated_user_is_not_answered_but_a_providers_is() {
        let opened = |from: Jid, text: &str| Opened {
            id: "1".into(),
            from,
            message: Message::text(text.to_owned()),
        };
        let sim = || Jid::whatsapp("15550102", Some(0));
        let provider = || Jid::interop("acme-home", Some(1));
        assert!(answerable(&opened(sim(), "hello")));
        assert!(!answerable(&opened(sim(), "echo: hello")));
        assert!(answerable(&opened(provider(), "echo: hello")));
        let mut media = opened(sim(), "");
        media.message = Message::default();
        assert!(
            !answerable(&media),
            "media between simulated users is not echoed"
        );
    }

    #[test]
    fn behaviors_parse_and_print_back() {
        for b in ["echo", "silent", "read_after:5", "not_opted_in", "offline"] {
            assert_eq!(
                Behavior::parse(b).map(|x| x.to_string()),
                Some(b.to_owned())
            );
        }
        assert_eq!(Behavior::parse("read_after:x"), None);
        assert_eq!(Behavior::parse("read_after:999999"), None);
        assert_eq!(Behavior::parse("loud"), None);
    }

    fn image(key: &[u8; 32], plain: &[u8]) -> (Message, Vec<u8>) {
        let (blob, sum) = media_crypto::encrypt_all(key, MediaKind::Image, plain);
        let m = Message {
            image_message: Some(interop_proto::content::ImageMessage {
                url: Some("https://media.example:443/b".into()),
                mimetype: Some("image/png".into()),
                file_sha256: Some(sum.file_sha256.to_vec()),
                file_length: Some(sum.file_length),
                media_key: Some(key.to_vec()),
                file_enc_sha256: Some(sum.file_enc_sha256.to_vec()),
                ..Default::default()
            }),
            ..Default::default()
        };
        (m, blob)
    }

    #[test]
    fn a_good_blob_opens_to_its_plaintext() {
        let (m, blob) = image(&[1; 32], b"picture bytes");
        assert_eq!(open_media(&m, &blob), Ok(b"picture bytes".to_vec()));
        let r = media_ref(&m).unwrap();
        assert_eq!(
            (r.kind, r.mimetype.as_str()),
            (MediaKind::Image, "image/png")
        );
    }

    #[test]
    fn blob_checks_run_in_order_and_name_what_failed() {
        let (m, blob) = image(&[1; 32], b"picture bytes");
        let mut tampered = blob.clone();
        tampered[0] ^= 1;
        assert_eq!(open_media(&m, &tampered), Err("enc_sha256_mismatch"));
        // The same tampering with a matching fileEncSha256 is caught by the MAC.
        let mut lying = m.clone();
        if let Some(img) = &mut lying.image_message {
            img.file_enc_sha256 = Some(Sha256::digest(&tampered).to_vec());
        }
        assert_eq!(open_media(&lying, &tampered), Err("mac_mismatch"));
        // A wrong declared plaintext hash is caught last.
        let mut wrong = m.clone();
        if let Some(img) = &mut wrong.image_message {
            img.file_sha256 = Some(vec![0; 32]);
        }
        assert_eq!(open_media(&wrong, &blob), Err("file_sha256_mismatch"));
    }

    #[test]
    fn media_without_a_usable_reference_is_refused() {
        let (m, blob) = image(&[1; 32], b"x");
        for edit in [
            |i: &mut interop_proto::content::ImageMessage| i.url = Some("http://plain/b".into()),
            |i: &mut interop_proto::content::ImageMessage| i.media_key = Some(vec![1; 31]),
            |i: &mut interop_proto::content::ImageMessage| i.file_sha256 = None,
        ] {
            let mut bad = m.clone();
            if let Some(img) = &mut bad.image_message {
                edit(img);
            }
            assert_eq!(media_ref(&bad), None);
            assert_eq!(open_media(&bad, &blob), Err("bad_media_message"));
        }
        assert_eq!(media_ref(&Message::text("hi")), None);
    }

    #[test]
    fn sent_messages_are_kept_within_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rng();
        let (mut u, _) =
            SimUser::open(dir.path(), "15550100", 1, Behavior::Echo, 0, &mut rng).unwrap();
        let to = Jid::interop("acme-home", None);
        for n in 0..=MAX_RETAINED_SENT {
            u.remember_sent(&n.to_string(), &to, &Message::text("x"), 1_000);
        }
        assert_eq!(u.sent.len(), MAX_RETAINED_SENT);
        assert_eq!(u.sent.front().map(|s| s.id.as_str()), Some("1"));
        u.forget_old_sent(1_000 + MAX_RETAINED_SENT_AGE_MS);
        assert_eq!(u.sent.len(), MAX_RETAINED_SENT, "not yet too old");
        u.forget_old_sent(1_001 + MAX_RETAINED_SENT_AGE_MS);
        assert!(u.sent.is_empty());
    }

    #[test]
    fn retry_receipts_stop_after_the_fifth_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rng();
        let (mut u, _) =
            SimUser::open(dir.path(), "15550100", 1, Behavior::Echo, 0, &mut rng).unwrap();
        let from = Jid::interop("acme-home", Some(1));
        let counts: Vec<Option<u8>> = (0..7)
            .map(|_| u.next_retry_count(0, &from, "3EB0000000000000000001"))
            .collect();
        assert_eq!(
            counts,
            vec![Some(1), Some(2), Some(3), Some(4), Some(5), None, None]
        );
        assert_eq!(
            u.next_retry_count(0, &from, "3EB0000000000000000002"),
            Some(1)
        );
    }

    #[test]
    fn media_kinds_map_to_stanza_types() {
        assert_eq!(stanza_type(ContentKind::Text), "text");
        assert_eq!(stanza_type(ContentKind::Voice), "media");
        assert_eq!(media_type(ContentKind::Voice), Some("ptt"));
        assert_eq!(media_type(ContentKind::Text), None);
    }
}
