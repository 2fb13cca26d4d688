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

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::{CryptoRng, Rng};
use sha2::{Digest as _, Sha256};

use crate::content::{self, ContentKind, Message};
use crate::jid::Jid;
use crate::signal::{
    self, Ciphertext, EncType, SignalError, WireBundle, WirePreKey, WireSignedPreKey,
};
use crate::stanza::Stanza;
use crate::store::{Store, StoreError};

/// Most devices one simulated user may have.
pub const MAX_SIM_DEVICES: u32 = 8;
/// One-time prekeys a simulated device publishes per batch.
pub const SIM_PREKEY_BATCH: u32 = 50;
/// Longest `read_after` delay, in seconds.
pub const MAX_READ_AFTER_SECS: u64 = 24 * 3600;
/// Message ids a simulated user remembers to answer each message once, however many of its
/// devices received a copy.
pub const MAX_SEEN_IDS: usize = 4096;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// What a simulated device made of an inbound `<message>`.
struct Opened {
    id: String,
    from: Jid,
    message: Message,
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
        Ok(out)
    }

    /// Drops every session with `peer`'s device (its identity changed).
    pub fn forget_device(&mut self, peer: &Jid) -> Result<(), SimError> {
        for d in &self.devices {
            let txn = d.store.begin()?;
            signal::delete_session(&txn, &peer.address())?;
            txn.commit()?;
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
        let txn = d.store.begin()?;
        let keys = signal::generate_prekeys(&txn, rng, SIM_PREKEY_BATCH)?;
        let (signed, _) = signal::current_signed_prekey(&txn)?.ok_or(SignalError::Internal {
            detail: "simulated device has no signed prekey".into(),
        })?;
        let identity = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "simulated device has no identity".into(),
        })?;
        txn.commit()?;
        Ok(vec![SimAction::Publish {
            device: Jid::whatsapp(phone, Some(device)),
            registration_id: identity.registration_id(),
            identity: identity.public(),
            signed,
            prekeys: keys,
        }])
    }

    /// Handles a `<message>` delivered to one of this user's devices (as the hub delivers
    /// it: `id`, `from` device JID, `t`, one `<enc>`).
    pub fn receive<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let me = Jid::whatsapp(self.phone.clone(), Some(device));
        let Some(opened) = self.open_message(device, stanza, now_ms, rng)? else {
            return Ok(Vec::new());
        };
        if !self.first_time(&opened.id) {
            return Ok(Vec::new());
        }
        let mut out = vec![SimAction::Record {
            phone: self.phone.clone(),
            json: record_json(&opened, now_ms),
        }];
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
            Behavior::ReadAfter { secs } => out.push(SimAction::Later {
                at_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
                from: me,
                stanza: receipt(true),
            }),
            Behavior::Silent | Behavior::NotOptedIn | Behavior::Offline => {}
        }
        Ok(out)
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
    ) -> Result<Option<Opened>, SimError> {
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(None);
        };
        let (Some(id), Some(from)) = (stanza.attr_value("id"), stanza.attr_value("from")) else {
            return Ok(None);
        };
        let Ok(from) = Jid::parse(from) else {
            return Ok(None);
        };
        let Some(enc) = stanza.child_named("enc") else {
            return Ok(None);
        };
        let (Some(kind), Some(body)) = (
            enc.attr_value("type").and_then(EncType::parse),
            enc.payload(),
        ) else {
            return Ok(None);
        };
        let txn = d.store.begin()?;
        let ct = Ciphertext {
            kind,
            body: body.to_vec(),
        };
        let plain = match signal::decrypt(&txn, &from.address(), &ct, rng, now_ms) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("simulated {}:{device} cannot decrypt {id}: {e}", self.phone);
                return Ok(None);
            }
        };
        txn.commit()?;
        let Ok(message) = content::decode_padded(&plain.plaintext) else {
            log::warn!("simulated {}:{device} got bad content in {id}", self.phone);
            return Ok(None);
        };
        Ok(Some(Opened {
            id: id.to_owned(),
            from,
            message,
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
        let txn = d.store.begin()?;
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
        txn.commit()?;
        Ok(Stanza::new("message")
            .attr("id", id.as_str())
            .attr("to", to.to_string())
            .attr("type", stanza_type(message.kind()))
            .attr("t", (now_ms / 1000).to_string())
            .child(participants))
    }
}

/// The `<message type>` for a content kind.
pub fn stanza_type(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Reaction => "reaction",
        k if k.is_media() => "media",
        _ => "text",
    }
}

/// The `<enc mediatype>` for a content kind, if it is media.
pub fn media_type(kind: ContentKind) -> Option<&'static str> {
    Some(match kind {
        ContentKind::Image => "image",
        ContentKind::Audio => "audio",
        ContentKind::Voice => "ptt",
        ContentKind::Video => "video",
        ContentKind::Document => "document",
        _ => return None,
    })
}

fn record_json(o: &Opened, now_ms: u64) -> serde_json::Value {
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
        obj.insert(
            "media".into(),
            serde_json::json!({"sha256_hex": sha, "size": size, "mimetype": mime}),
        );
    }
    v
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
        let txn = store.begin()?;
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
        txn.commit()?;
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

    #[test]
    fn media_kinds_map_to_stanza_types() {
        assert_eq!(stanza_type(ContentKind::Text), "text");
        assert_eq!(stanza_type(ContentKind::Voice), "media");
        assert_eq!(media_type(ContentKind::Voice), Some("ptt"));
        assert_eq!(media_type(ContentKind::Text), None);
    }
}
