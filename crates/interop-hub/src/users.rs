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
//! | `echo`             | delivery receipt, read receipt, then `echo: <text>`; media in kind |
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

    /// Handles a `<message>` delivered to one of this user's devices (as the hub delivers
    /// it: `id`, `from` device JID, `t`, one `<enc>`). A message that does not decrypt is
    /// answered with a retry receipt to the sending device (docs/protocol.md section 12).
    pub fn receive<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let me = Jid::whatsapp(self.phone.clone(), Some(device));
        let opened = match self.open_message(device, stanza, now_ms, rng)? {
            Inbound::Opened(o) => *o,
            Inbound::Failed(retry) => return Ok(retry.into_iter().collect()),
            Inbound::Ignored => return Ok(Vec::new()),
        };
        if !self.first_time(&opened.id) {
            return Ok(Vec::new());
        }
        let echo = self.behavior == Behavior::Echo;
        let fetch = if opened.from.server == Server::Interop {
            media_ref(&opened.message).map(|r| PendingMedia {
                phone: self.phone.clone(),
                id: opened.id.clone(),
                from: opened.from.clone(),
                received_ms: now_ms,
                message: opened.message.clone(),
                url: r.url,
                echo,
            })
        } else {
            None
        };
        let mut out = Vec::new();
        if fetch.is_none() {
            let outcome =
                if opened.from.server == Server::Interop && opened.message.kind().is_media() {
                    // A provider's media message without a usable blob reference.
                    MediaOutcome::Failed {
                        code: "bad_media_message".into(),
                    }
                } else {
                    MediaOutcome::Declared
                };
            out.push(SimAction::Record {
                phone: self.phone.clone(),
                json: record_json(&opened, now_ms, &outcome),
            });
        }
        let sender = opened.from.to_user();
        let receipt = |read: bool| {
            let r = Stanza::new("receipt")
                .attr("id", opened.id.clone())
                .attr("to", sender.to_string());
            if read { r.attr("type", "read") } else { r }
        };
        out.push(SimAction::Send {
            from: me.clone(),
            stanza: receipt(false),
        });
        match self.behavior {
            Behavior::Echo => {
                out.push(SimAction::Send {
                    from: me.clone(),
                    stanza: receipt(true),
                });
            }
            Behavior::ReadAfter { secs } => out.push(SimAction::Later {
                at_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
                from: me,
                stanza: receipt(true),
            }),
            Behavior::Silent | Behavior::NotOptedIn | Behavior::Offline => {}
        }
        if let Some(f) = fetch {
            // The record and any echo wait for the blob.
            out.push(SimAction::FetchMedia(Box::new(f)));
        } else if echo {
            let reply = match opened.message.text_body() {
                Some(text) => Message::text(format!("echo: {text}")),
                None if opened.message.kind().is_media() => opened.message.clone(),
                None => return Ok(out),
            };
            let stanza = self.encrypt_message(&sender, &reply, dir, now_ms, rng)?;
            out.push(SimAction::Send {
                from: self.jid().with_device(0),
                stanza,
            });
        }
        Ok(out)
    }

    /// The blob of a [`PendingMedia`] came back from the proxy (`Ok(blob)`) or could not be
    /// fetched (`Err(code)`). Verifies it in the order DESIGN.md section 5 requires
    /// (fileEncSha256, MAC, decrypt, fileSha256), records what it decrypted to, and for `echo`
    /// answers in kind: with a fresh blob of the same plaintext in `store` when there is one
    /// and the blob checked out, else with the same message back.
    pub fn media_fetched<R: Rng + CryptoRng>(
        &mut self,
        pending: &PendingMedia,
        blob: Result<Vec<u8>, String>,
        store: Option<&MediaStore>,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let plain = blob.and_then(|b| open_media(&pending.message, &b).map_err(str::to_owned));
        let outcome = match &plain {
            Ok(p) => MediaOutcome::Decrypted {
                sha256_hex: sha256_hex(p),
                size: p.len() as u64,
            },
            Err(code) => MediaOutcome::Failed { code: code.clone() },
        };
        let opened = Opened {
            id: pending.id.clone(),
            from: pending.from.clone(),
            message: pending.message.clone(),
        };
        let mut out = vec![SimAction::Record {
            phone: self.phone.clone(),
            json: record_json(&opened, pending.received_ms, &outcome),
        }];
        if !pending.echo {
            return Ok(out);
        }
        let fresh = match (&plain, store, media_ref(&pending.message)) {
            (Ok(p), Some(store), Some(r)) => {
                match store.message(
                    store_kind(pending.message.kind()),
                    &r.mimetype,
                    p,
                    r.file_name.as_deref(),
                    now_ms,
                    rng,
                ) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        log::warn!("simulated {}: cannot store echo media: {e}", self.phone);
                        None
                    }
                }
            }
            _ => None,
        };
        let reply = fresh.unwrap_or_else(|| pending.message.clone());
        let stanza = self.encrypt_message(&pending.from.to_user(), &reply, dir, now_ms, rng)?;
        out.push(SimAction::Send {
            from: self.jid().with_device(0),
            stanza,
        });
        Ok(out)
    }

    /// Handles a `<receipt type="retry">` delivered to one of this user's devices: rebuilds
    /// the session with the asking device (from the receipt's `<keys>`, else a fresh bundle
    /// from the directory) and resends the same content under the same id to that device
    /// alone, with `count` on the `<message>`. Receipts for messages no longer kept, from
    /// devices of another user, or with a count already answered are ignored.
    pub fn receive_retry<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let receipt = match retry::parse_retry_receipt(stanza) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("simulated {}: {e}", self.phone);
                return Ok(Vec::new());
            }
        };
        let Some(from) = stanza
            .attr_value("from")
            .and_then(|f| Jid::parse(f).ok())
            .filter(|j| j.device.is_some())
        else {
            return Ok(Vec::new());
        };
        self.forget_old_sent(now_ms);
        let from_key = from.to_string();
        let Some(sent) = self
            .sent
            .iter_mut()
            .find(|s| s.id == receipt.id.as_str() && s.to == from.to_user())
        else {
            log::info!(
                "simulated {}: retry receipt for a message no longer kept",
                self.phone
            );
            return Ok(Vec::new());
        };
        let answered = sent
            .answered
            .iter()
            .find(|(d, _)| *d == from_key)
            .map_or(0, |(_, c)| *c);
        if receipt.count <= answered {
            return Ok(Vec::new());
        }
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(Vec::new());
        };
        let addr = from.address();
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let bundle = match receipt.keys.clone() {
            Some(k) => Some(k),
            None => dir.bundle(&from),
        };
        let Some(bundle) = bundle else {
            log::warn!(
                "simulated {}: no keys to answer a retry from {from}",
                self.phone
            );
            return Ok(Vec::new());
        };
        signal::delete_session(&txn, &addr)?;
        if let Err(e) = signal::process_bundle(&txn, &addr, &bundle, rng, now_ms) {
            log::warn!(
                "simulated {}: retry keys of {from} refused: {e}",
                self.phone
            );
            return Ok(Vec::new());
        }
        let padded = content::encode_padded(&sent.message, rng).map_err(SimError::Content)?;
        let ct = signal::encrypt(&txn, &addr, &padded, now_ms)?;
        let kind = sent.message.kind();
        let mut enc = Stanza::new("enc")
            .attr("v", "2")
            .attr("type", ct.kind.as_str());
        if let Some(mt) = media_type(kind) {
            enc = enc.attr("mediatype", mt);
        }
        let message = Stanza::new("message")
            .attr("id", sent.id.as_str())
            .attr("to", sent.to.to_string())
            .attr("type", stanza_type(kind))
            .attr("t", (now_ms / 1000).to_string())
            .attr("count", receipt.count.to_string())
            .child(
                Stanza::new("participants").child(
                    Stanza::new("to")
                        .attr("jid", from_key.as_str())
                        .child(enc.bytes(ct.body)),
                ),
            );
        wtx.commit().map_err(StoreError::from)?;
        match sent.answered.iter_mut().find(|(d, _)| *d == from_key) {
            Some(slot) => slot.1 = receipt.count,
            None => sent.answered.push((from_key, receipt.count)),
        }
        log::warn!(
            "simulated {}: resending {} to {from} (retry {})",
            self.phone,
            sent.id,
            receipt.count
        );
        Ok(vec![SimAction::Send {
            from: Jid::whatsapp(self.phone.clone(), Some(device)),
            stanza: message,
        }])
    }

    fn forget_old_sent(&mut self, now_ms: u64) {
        while self
            .sent
            .front()
            .is_some_and(|s| now_ms.saturating_sub(s.sent_ms) > MAX_RETAINED_SENT_AGE_MS)
        {
            self.sent.pop_front();
        }
    }

    fn remember_sent(&mut self, id: &str, to: &Jid, message: &Message, now_ms: u64) {
        self.forget_old_sent(now_ms);
        if self.sent.len() >= MAX_RETAINED_SENT {
            self.sent.pop_front();
        }
        self.sent.push_back(SentMessage {
            id: id.to_owned(),
            to: to.to_user(),
            message: message.clone(),
            sent_ms: now_ms,
            answered: Vec::new(),
        });
    }

    /// Counts one more retry receipt for (`device`, `from`, `id`); `None` once
    /// [`MAX_RETRY_RECEIPTS`] were sent.
    fn next_retry_count(&mut self, device: u32, from: &Jid, id: &str) -> Option<u8> {
        let key = format!("{device}|{from}|{id}");
        let count = match self.retries.get_mut(&key) {
            Some(c) => {
                *c = c.saturating_add(1);
                *c
            }
            None => {
                self.retries.insert(key.clone(), 1);
                self.retries_order.push_back(key);
                if self.retries_order.len() > MAX_RETRY_TRACKED
                    && let Some(old) = self.retries_order.pop_front()
                {
                    self.retries.remove(&old);
                }
                1
            }
        };
        (count <= MAX_RETRY_RECEIPTS).then_some(count)
    }

    fn first_time(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_owned()) {
            return false;
        }
        self.seen_order.push_back(id.to_owned());
        if self.seen_order.len() > MAX_SEEN_IDS
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    fn open_message<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Inbound, SimError> {
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(Inbound::Ignored);
        };
        let (Some(id), Some(from)) = (stanza.attr_value("id"), stanza.attr_value("from")) else {
            return Ok(Inbound::Ignored);
        };
        let Ok(from) = Jid::parse(from) else {
            return Ok(Inbound::Ignored);
        };
        let Some(enc) = stanza.child_named("enc") else {
            return Ok(Inbound::Ignored);
        };
        let (Some(kind), Some(body)) = (
            enc.attr_value("type").and_then(EncType::parse),
            enc.payload(),
        ) else {
            return Ok(Inbound::Ignored);
        };
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let ct = Ciphertext {
            kind,
            body: body.to_vec(),
        };
        let plain = match signal::decrypt(&txn, &from.address(), &ct, rng, now_ms) {
            Ok(p) => p,
            Err(SignalError::Duplicate) => return Ok(Inbound::Ignored),
            Err(e) => {
                log::warn!("simulated {}:{device} cannot decrypt {id}: {e}", self.phone);
                drop(wtx);
                let t_secs = stanza
                    .attr_value("t")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(now_ms / 1000);
                return Ok(Inbound::Failed(
                    self.retry_receipt(device, &from, id, t_secs, rng)?,
                ));
            }
        };
        wtx.commit().map_err(StoreError::from)?;
        let Ok(message) = content::decode_padded(&plain.plaintext) else {
            log::warn!("simulated {}:{device} got bad content in {id}", self.phone);
            return Ok(Inbound::Ignored);
        };
        Ok(Inbound::Opened(Box::new(Opened {
            id: id.to_owned(),
            from,
            message,
        })))
    }

    /// The retry receipt `device` sends to `from` for message `id`, with `<keys>` (and a new
    /// one-time prekey, kept in the device's store) from [`RETRY_KEYS_FROM_COUNT`] on.
    fn retry_receipt<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        from: &Jid,
        id: &str,
        t_secs: u64,
        rng: &mut R,
    ) -> Result<Option<SimAction>, SimError> {
        let Ok(message_id) = content::MessageId::parse(id) else {
            return Ok(None);
        };
        if from.device.is_none() {
            return Ok(None);
        }
        let Some(count) = self.next_retry_count(device, from, id) else {
            log::warn!(
                "simulated {}:{device}: no more retry receipts for {id}",
                self.phone
            );
            return Ok(None);
        };
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(None);
        };
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let identity = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "simulated device has no identity".into(),
        })?;
        let keys = retry::keys_for_receipt(&txn, count, true, rng)?;
        wtx.commit().map_err(StoreError::from)?;
        let receipt = RetryReceipt {
            id: message_id,
            count,
            t_secs,
            registration_id: identity.registration_id(),
            keys,
        };
        Ok(Some(SimAction::Send {
            from: Jid::whatsapp(self.phone.clone(), Some(device)),
            stanza: retry::retry_receipt_stanza(from, &receipt),
        }))
    }

    /// Encrypts `message` for every device of `to` (a user JID), fetching bundles for
    /// devices without a session, and returns the `<message>` stanza to route from device 0.
    pub fn encrypt_message<R: Rng + CryptoRng>(
        &mut self,
        to: &Jid,
        message: &Message,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Stanza, SimError> {
        let Some(d) = self.devices.first() else {
            return Err(SimError::NoDevices {
                to: self.phone.clone(),
            });
        };
        let padded = content::encode_padded(message, rng).map_err(SimError::Content)?;
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let id = content::message_id(now_ms / 1000, &self.phone, &random);
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let mut participants = Stanza::new("participants");
        let mut any = false;
        for dev in dir.devices(to) {
            let target = to.with_device(dev);
            let addr = target.address();
            if !signal::has_session(&txn, &addr)? {
                let Some(bundle) = dir.bundle(&target) else {
                    continue;
                };
                if let Err(e) = signal::process_bundle(&txn, &addr, &bundle, rng, now_ms) {
                    log::warn!("simulated {} refuses bundle of {target}: {e}", self.phone);
                    continue;
                }
            }
            let ct = signal::encrypt(&txn, &addr, &padded, now_ms)?;
            let mut enc = Stanza::new("enc")
                .attr("v", "2")
                .attr("type", ct.kind.as_str());
            if let Some(mt) = media_type(message.kind()) {
                enc = enc.attr("mediatype", mt);
            }
            participants = participants.child(
                Stanza::new("to")
                    .attr("jid", target.to_string())
                    .child(enc.bytes(ct.body)),
            );
            any = true;
        }
        if !any {
            return Err(SimError::NoDevices { to: to.to_string() });
        }
        wtx.commit().map_err(StoreError::from)?;
        self.remember_sent(id.as_str(), to, message, now_ms);
        Ok(Stanza::new("message")
            .attr("id", id.as_str())
            .attr("to", to.to_string())
            .attr("type", stanza_type(message.kind()))
            .attr("t", (now_ms / 1000).to_string())
            .child(participants))
    }
}

fn record_json(o: &Opened, now_ms: u64, media: &MediaOutcome) -> serde_json::Value {
    let kind = o.message.kind();
    let mut v = serde_json::json!({
        "id": o.id,
        "from": o.from.user,
        "t": now_ms / 1000,
        "kind": kind.as_str(),
    });
    if let Some(text) = o.message.text_body()
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("text".into(), text.into());
    }
    if let Some((sha, size, mime)) = media_facts(&o.message)
        && let Some(obj) = v.as_object_mut()
    {
        let facts = match media {
            MediaOutcome::Declared => {
                serde_json::json!({"sha256_hex": sha, "size": size, "mimetype": mime})
            }
            MediaOutcome::Decrypted { sha256_hex, size } => {
                serde_json::json!({"sha256_hex": sha256_hex, "size": size, "mimetype": mime})
            }
            MediaOutcome::Failed { code } => serde_json::json!({"error": code}),
        };
        obj.insert("media".into(), facts);
    }
    v
}

/// The blob reference of a media message: `None` unless it names an `https` URL, a
/// 32-byte media key and both 32-byte hashes.
pub fn media_ref(m: &Message) -> Option<MediaRef> {
    if let Some(x) = &m.image_message {
        blob_ref(
            MediaKind::Image,
            &x.url,
            &x.mimetype,
            None,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else if let Some(x) = &m.video_message {
        blob_ref(
            MediaKind::Video,
            &x.url,
            &x.mimetype,
            None,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else if let Some(x) = &m.audio_message {
        blob_ref(
            MediaKind::Audio,
            &x.url,
            &x.mimetype,
            None,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else if let Some(x) = &m.document_message {
        let name = x.file_name.as_ref();
        blob_ref(
            MediaKind::Document,
            &x.url,
            &x.mimetype,
            name,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else {
        None
    }
}

fn blob_ref(
    kind: MediaKind,
    url: &Option<String>,
    mimetype: &Option<String>,
    file_name: Option<&String>,
    media_key: &Option<Vec<u8>>,
    file_enc_sha256: &Option<Vec<u8>>,
    file_sha256: &Option<Vec<u8>>,
) -> Option<MediaRef> {
    let url = url.as_ref().filter(|u| u.starts_with("https://"))?;
    Some(MediaRef {
        kind,
        url: url.clone(),
        mimetype: mimetype.clone().unwrap_or_default(),
        file_name: file_name.cloned(),
        media_key: media_key.as_deref()?.try_into().ok()?,
        file_enc_sha256: file_enc_sha256.as_deref()?.try_into().ok()?,
        file_sha256: file_sha256.as_deref()?.try_into().ok()?,
    })
}

/// Verifies a fetched blob against its media message, in the order DESIGN.md section 5
/// requires (fileEncSha256, MAC, decrypt, fileSha256), and returns the plaintext or the
/// error code `received` shows.
pub fn open_media(m: &Message, blob: &[u8]) -> Result<Vec<u8>, &'static str> {
    let r = media_ref(m).ok_or("bad_media_message")?;
    media_crypto::decrypt_all(
        &r.media_key,
        r.kind,
        blob,
        &r.file_enc_sha256,
        &r.file_sha256,
    )
    .map_err(media_error_code)
}

/// The `received` error code for a failed media check.
pub fn media_error_code(e: MediaCryptoError) -> &'static str {
    match e {
        MediaCryptoError::EncSha256Mismatch => "enc_sha256_mismatch",
        MediaCryptoError::BlobTooShort { .. } => "blob_too_short",
        MediaCryptoError::MacMismatch => "mac_mismatch",
        MediaCryptoError::LengthNotBlockAligned { .. } => "not_block_aligned",
        MediaCryptoError::BadPadding => "bad_padding",
        MediaCryptoError::FileSha256Mismatch => "file_sha256_mismatch",
        MediaCryptoError::BlobLengthChanged { .. } => "blob_length_changed",
    }
}

/// The `kind` the media store takes for a content kind.
fn store_kind(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Voice => "voice",
        ContentKind::Audio => "audio",
        ContentKind::Video => "video",
        ContentKind::Document => "file",
        _ => "image",
    }
}

/// Declared plaintext hash, size and mimetype of a media message.
fn media_facts(m: &Message) -> Option<(String, u64, String)> {
    let (sha, len, mime) = if let Some(x) = &m.image_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else if let Some(x) = &m.video_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else if let Some(x) = &m.audio_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else if let Some(x) = &m.document_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else {
        return None;
    };
    let hex: String = sha
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((hex, len.unwrap_or(0), mime.clone().unwrap_or_default()))
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Standard base64 (for JSON fields).
pub fn b64(data: &[u8]) -> String {
    BASE64.encode(data)
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
