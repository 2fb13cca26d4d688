//! A small client of profile `interop-xml/1`: log in, publish prekeys, send and receive
//! encrypted messages, receipts and notifications. The sans-I/O [`Client`] takes frame
//! payloads and `now_ms` and gives frame payloads ([`Client::poll_transmit`]) and
//! [`Event`]s; its Signal state and inbox live in a daemon [`Store`]. It does no I/O: the
//! daemon's [`crate::engine`] wraps it, and the link's shell moves its frames over TLS. This
//! file holds the state and the stanza dispatch; `send.rs`, `receive.rs` and `retries.rs`
//! hold the halves they name. The in-process tests drive the hub core with it.
//!
//! Sending a message takes three round trips at most, each an `<iq>`:
//!
//! ```text
//!  send_message ─▶ iq devices ─▶ (devices without a session) iq encrypt/key ─▶ <message>
//!                                 process_bundle, encrypt per device, commit
//! ```
//!
//! Receiving follows DESIGN.md section 6: decrypt, commit {session, inbox row, dedupe key},
//! then `<ack>` and a delivery `<receipt>`.
//!
//! Retry receipts (docs/protocol.md section 12) go both ways. A message that does not decrypt
//! is acked and answered with `<receipt type="retry">`, counted per (sending device, message
//! id) up to [`MAX_RETRY_RECEIPTS`], with our keys and a fresh one-time prekey from
//! [`RETRY_KEYS_FROM_COUNT`]. A retry receipt for an outbox row we sent rebuilds the session
//! with the asking device (from its `<keys>`, else a fetched bundle) and resends the row's
//! content, freshly padded, to that device alone with `count` on the `<message>`:
//!
//! ```text
//!  <receipt type=retry> ─▶ outbox row by id ─▶ (no <keys>) iq encrypt/key ─▶ <message count>
//!                                              delete session, process_bundle, encrypt, commit
//! ```
//!
//! Both counters live in the store's `meta` table ([`META_RETRY_SENT`],
//! [`META_RETRY_ANSWERED`]), each a bounded list, so a restart neither resets them nor lets
//! them grow.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use rand::{CryptoRng, Rng};

use crate::content::{self, Message, MessageId};
use crate::jid::{self, Jid};
use crate::login::{ClientLogin, ClientStep, Hello, LoggedIn, LoginError};
use crate::prekeys::{bundle_stanza, parse_bundle};
use crate::retry::{self, MAX_RETRY_RECEIPTS, RetryReceipt};
use crate::signal::{
    self, Ciphertext, EncType, IdentityEvent, SignalError, WireBundle, WirePreKey, WireSignedPreKey,
};
use crate::stanza::{self, Stanza};
use crate::store::{InboxRow, META, OutboxRow, OutboxStatus, PendingInbox, Store, StoreError, Txn};

/// Interval between keepalive pings, in milliseconds (the hub closes after
/// `interop_hub::state::IDLE_TIMEOUT_MS` of silence).
pub const KEEPALIVE_INTERVAL_MS: u64 = 30_000;
/// How long a keepalive ping may go unanswered before the connection counts as dead, in
/// milliseconds. A half-open TCP connection (a router rebooted, NAT state lost) is noticed
/// within interval + deadline.
pub const KEEPALIVE_DEADLINE_MS: u64 = 10_000;
/// How long a fetched device list is used before it is fetched again, in milliseconds.
/// Devices and identity notifications drop it at once; this bounds how stale it gets if a
/// notification is lost.
pub const DEVICE_LIST_MAX_AGE_MS: u64 = 3_600_000;
/// Most sends waiting for their device list or bundles at once.
pub const MAX_PENDING_SENDS: usize = 256;
/// Most (device, message id) retry counters kept in each of [`META_RETRY_SENT`] and
/// [`META_RETRY_ANSWERED`]; the oldest is forgotten first.
pub const MAX_RETRY_TRACKED: usize = 256;
/// Most answers to retry receipts in flight at once (bundle fetches plus resends not yet
/// acked); a retry receipt beyond it is ignored and the peer asks again.
pub const MAX_PENDING_RETRIES: usize = 64;
/// Oldest outbox row a retry receipt makes us resend, in milliseconds since it was queued.
pub const MAX_RETRY_RESEND_AGE_MS: u64 = 24 * 3600 * 1000;
/// One-time prekeys we may hold (uploaded or made for retry receipts) before a retry
/// receipt's `<keys>` go without a fresh one (the peer then starts from the signed prekey).
pub const MAX_PREKEYS_HELD_FOR_RETRY: u64 = 1_000;
/// Longest key of a retry counter (`DEVICE-JID|MESSAGE-ID`), in bytes: its length is one byte.
pub const MAX_RETRY_KEY_BYTES: usize = 255;
/// `meta` key: how many retry receipts we sent, per (sending device, message id).
pub const META_RETRY_SENT: &str = "retry/sent";
/// `meta` key: the highest retry count we answered, per (asking device, message id).
pub const META_RETRY_ANSWERED: &str = "retry/answered";
/// Layout version of the two retry counter values.
const RETRY_COUNTS_VERSION: u8 = 1;

enum Phase {
    Login(ClientLogin),
    Ready,
    Closed,
}

enum Pending {
    Upload,
    Count,
    Ping,
    Devices {
        send: String,
    },
    Keys {
        send: String,
    },
    GroupDevices {
        send: String,
    },
    GroupKeys {
        send: String,
    },
    Group {
        ticket: u64,
        op: group_state::GroupOp,
    },
    RetryKeys {
        id: String,
        device: Jid,
        count: u8,
    },
}

struct OutgoingMessage {
    to: Jid,
    padded: Vec<u8>,
    kind: content::ContentKind,
    devices: Vec<u32>,
    /// The send comes from the durable outbox: its stanza bytes are committed into the
    /// outbox row in the same transaction as the sessions that encrypted it.
    from_outbox: bool,
}

/// Hooks that let the daemon record what the client commits, inside the same transaction,
/// and announce it after the commit (the API's event log and bus).
pub trait Journal {
    /// An inbound message got inbox cursor `cursor` in `txn` (not yet committed).
    fn inbound(&self, txn: &Txn, cursor: u64, now_ms: u64) -> Result<(), StoreError>;
    /// The transaction holding [`Journal::inbound`] committed.
    fn inbound_committed(&self, cursor: u64);
    /// A contact device's identity changed in `txn` (not yet committed); the fields are
    /// those of [`Event::IdentityChanged`].
    fn identity(&self, txn: &Txn, change: &IdentityChange, now_ms: u64) -> Result<(), StoreError>;
    /// The transaction holding [`Journal::identity`] committed.
    fn identity_committed(&self, change: &IdentityChange);
}

/// A contact device's identity change, as the client reports and journals it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChange {
    pub device: Jid,
    pub previous: signal::RawKey,
    pub current: signal::RawKey,
    /// The contact was verified: `current` waits as pending until trusted.
    pub held: bool,
}

/// The client's state machine.
pub struct Client {
    store: Rc<Store>,
    journal: Option<Rc<dyn Journal>>,
    hold_media: bool,
    keepalive_ms: u64,
    /// When the unanswered keepalive ping went out.
    ping_sent_ms: Option<u64>,
    hello: Hello,
    phase: Phase,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    next_iq: u64,
    pending: HashMap<String, Pending>,
    sends: HashMap<String, OutgoingMessage>,
    /// Group sends waiting for device lists or bundles, by message id.
    group_sends: HashMap<String, group::GroupSend>,
    /// Resends after a retry receipt whose server ack is outstanding: message id → how many.
    /// Their acks are not reported as [`Event::Acked`] (the row's own ack already was).
    resends: HashMap<String, u32>,
    last_tx_ms: u64,
}

fn device_jid_of(s: &Stanza, attr: &str) -> Option<Jid> {
    Jid::parse(s.attr_value(attr)?).ok()
}

impl Client {
    /// A client for `account`'s `device`, with its Signal state in `store` (an identity is
    /// made on first use).
    pub fn new<R: Rng + CryptoRng>(
        store: impl Into<Rc<Store>>,
        account: &str,
        device: u32,
        rng: &mut R,
    ) -> Result<Client, ClientError> {
        let store = store.into();
        let txn = store.begin()?;
        signal::ensure_identity(&txn, rng)?;
        txn.commit()?;
        Ok(Client {
            store,
            journal: None,
            hold_media: false,
            keepalive_ms: KEEPALIVE_INTERVAL_MS,
            ping_sent_ms: None,
            hello: Hello {
                account: account.to_owned(),
                device,
                integrator: jid::integrator_of(account).to_owned(),
            },
            phase: Phase::Closed,
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_iq: 1,
            pending: HashMap::new(),
            sends: HashMap::new(),
            group_sends: HashMap::new(),
            resends: HashMap::new(),
            last_tx_ms: 0,
        })
    }

    /// Our device JID.
    pub fn jid(&self) -> Jid {
        self.hello.jid()
    }

    /// Our identity's public key.
    pub fn identity(&self) -> Result<signal::RawKey, ClientError> {
        let txn = self.store.begin()?;
        let id = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "no identity".into(),
        })?;
        Ok(id.public())
    }

    /// The store (for tests and the daemon's readers).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, shared (the engine commits status changes in it).
    pub fn shared_store(&self) -> Rc<Store> {
        self.store.clone()
    }

    /// Records inbound messages through `journal` as they commit.
    pub fn set_journal(&mut self, journal: Rc<dyn Journal>) {
        self.journal = Some(journal);
    }

    /// Journals identity change `(device, previous, current, held)` in `txn`, before its
    /// commit; hand the result to [`Client::identity_committed`] after the commit.
    fn journal_identity(
        &self,
        txn: &Txn,
        device: &Jid,
        (previous, current): (signal::RawKey, signal::RawKey),
        held: bool,
        now_ms: u64,
    ) -> Result<IdentityChange, ClientError> {
        let change = IdentityChange {
            device: device.clone(),
            previous,
            current,
            held,
        };
        if let Some(j) = &self.journal {
            j.identity(txn, &change, now_ms)?;
        }
        Ok(change)
    }

    /// After the commit of a [`Client::journal_identity`]: announces the change.
    fn identity_committed(&mut self, change: IdentityChange) {
        if let Some(j) = &self.journal {
            j.identity_committed(&change);
        }
        self.events.push_back(Event::IdentityChanged(change));
    }

    /// Keeps received media messages out of the inbox as pending rows until a downloader
    /// releases them (the daemon does; tests and the hub's tools take them as they come).
    pub fn set_hold_media(&mut self, hold: bool) {
        self.hold_media = hold;
    }

    /// Queues exact frame payload bytes (a stanza committed earlier, resent byte-identical).
    pub fn send_committed(&mut self, payload: Vec<u8>, now_ms: u64) {
        self.out.push_back(payload);
        self.last_tx_ms = now_ms;
    }

    /// Starts sending an outbox row (its `content` is the unpadded protobuf). The stanza
    /// bytes are committed into the row, with the advanced sessions, before they are queued
    /// for the wire; after a crash the link resends those bytes instead of re-encrypting.
    pub fn send_outbox<R: Rng + CryptoRng>(
        &mut self,
        row: &OutboxRow,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        if self.sends.len() + self.group_sends.len() >= MAX_PENDING_SENDS {
            return Err(ClientError::Busy);
        }
        let message = <Message as prost::Message>::decode(row.content.as_slice()).map_err(|e| {
            ClientError::Content(content::ContentError::Protobuf {
                detail: e.to_string(),
            })
        })?;
        let padded = content::encode_padded(&message, rng).map_err(ClientError::Content)?;
        if crate::group::is_group_jid(&row.to) {
            let Ok(gid) = crate::group::GroupId::parse_jid(&row.to) else {
                self.events.push_back(Event::SendFailed {
                    id: row.id.clone(),
                    reason: "not a group address".into(),
                    code: "unknown_group",
                });
                return Ok(());
            };
            return self.send_group_outbox(row, gid, &message, padded, now_ms, rng);
        }
        let to = Jid::whatsapp(row.to.clone(), None);
        self.sends.insert(
            row.id.clone(),
            OutgoingMessage {
                to: to.clone(),
                padded,
                kind: message.kind(),
                devices: Vec::new(),
                from_outbox: true,
            },
        );
        self.start_send(row.id.clone(), &to, now_ms)
    }

    /// Starts a login on a fresh connection with the provider `token` (`interop-xml/1`; the
    /// `wa` profile's is [`Client::start_wa`]).
    pub fn start(&mut self, token: &str, now_ms: u64) {
        let (login, first) = ClientLogin::start(self.hello.clone(), token.to_owned());
        self.begin_login(login);
        self.push(&first, now_ms);
    }

    /// A fresh connection's state: logging in with `login`, nothing in flight.
    fn begin_login(&mut self, login: ClientLogin) {
        self.phase = Phase::Login(login);
        self.ping_sent_ms = None;
        self.pending.clear();
        self.sends.clear();
        self.group_sends.clear();
        self.resends.clear();
    }

    /// The connection ended.
    pub fn disconnected(&mut self) {
        self.phase = Phase::Closed;
        self.out.clear();
    }

    /// Whether login completed on the current connection.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// The next frame payload to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sets the keepalive interval (the config's `gatekeeper.keepalive_secs`).
    pub fn set_keepalive_interval(&mut self, interval_ms: u64) {
        self.keepalive_ms = interval_ms;
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run: the next keepalive, or the
    /// deadline of the one in flight.
    pub fn poll_timeout(&self) -> Option<u64> {
        match (&self.phase, self.ping_sent_ms) {
            (Phase::Ready, Some(sent)) => Some(sent.saturating_add(KEEPALIVE_DEADLINE_MS)),
            (Phase::Ready, None) => Some(self.last_tx_ms.saturating_add(self.keepalive_ms)),
            _ => None,
        }
    }

    /// Sends a keepalive ping if one is due, or reports [`Event::KeepaliveTimeout`] when the
    /// last one went unanswered past [`KEEPALIVE_DEADLINE_MS`].
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.poll_timeout().is_none_or(|t| t > now_ms) {
            return;
        }
        if self.ping_sent_ms.is_some() {
            self.phase = Phase::Closed;
            self.ping_sent_ms = None;
            self.events.push_back(Event::KeepaliveTimeout);
            return;
        }
        self.ping_sent_ms = Some(now_ms);
        let id = self.iq_id(Pending::Ping);
        let s = Stanza::new("iq")
            .attr("id", id)
            .attr("type", "get")
            .attr("xmlns", "w:p")
            .child(Stanza::new("ping"));
        self.push(&s, now_ms);
    }

    fn push(&mut self, s: &Stanza, now_ms: u64) {
        self.out.push_back(s.to_xml());
        self.last_tx_ms = now_ms;
    }

    fn iq_id(&mut self, p: Pending) -> String {
        let id = format!("q{}", self.next_iq);
        self.next_iq += 1;
        self.pending.insert(id.clone(), p);
        id
    }

    /// Rotates our signed prekey if it is older than [`signal::SIGNED_PREKEY_ROTATION_MS`]
    /// and uploads the new one; returns whether it rotated.
    pub fn rotate_signed_prekey_if_due<R: Rng + CryptoRng>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<bool, ClientError> {
        let txn = self.store.begin()?;
        if !signal::signed_prekey_due(&txn, now_ms)? {
            return Ok(false);
        }
        signal::rotate_signed_prekey(&txn, rng, now_ms)?;
        txn.commit()?;
        self.upload_prekeys(0, now_ms, rng)?;
        Ok(true)
    }

    /// Asks the server how many of our one-time prekeys it holds ([`Event::PrekeyCount`]).
    pub fn request_count(&mut self, now_ms: u64) {
        let id = self.iq_id(Pending::Count);
        let s = Stanza::new("iq")
            .attr("id", id)
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(Stanza::new("count"));
        self.push(&s, now_ms);
    }

    /// Sends a raw stanza (tests use this for hostile or hand-made stanzas).
    pub fn send_raw(&mut self, s: &Stanza, now_ms: u64) {
        self.push(s, now_ms);
    }

    /// Generates `count` one-time prekeys and uploads them with our signed prekey.
    pub fn upload_prekeys<R: Rng + CryptoRng>(
        &mut self,
        count: u32,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        let (identity, signed, keys) = signal::provision(&txn, rng, now_ms, count)?;
        txn.commit()?;
        let s = upload_stanza(
            &self.iq_id(Pending::Upload),
            identity.registration_id(),
            &identity.public(),
            &signed,
            &keys,
        );
        self.push(&s, now_ms);
        Ok(())
    }

    /// Starts sending `message` to `to` (a user JID). Returns the message id; the
    /// [`Event::Acked`] for it follows.
    pub fn send_message<R: Rng + CryptoRng>(
        &mut self,
        to: &Jid,
        message: &Message,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<String, ClientError> {
        if self.sends.len() >= MAX_PENDING_SENDS {
            return Err(ClientError::Busy);
        }
        let padded = content::encode_padded(message, rng).map_err(ClientError::Content)?;
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let id = content::message_id(now_ms / 1000, &self.hello.account, &random)
            .as_str()
            .to_owned();
        self.sends.insert(
            id.clone(),
            OutgoingMessage {
                to: to.to_user(),
                padded,
                kind: message.kind(),
                devices: Vec::new(),
                from_outbox: false,
            },
        );
        self.start_send(id.clone(), &to.to_user(), now_ms)?;
        Ok(id)
    }

    /// Sends text to `to`.
    pub fn send_text<R: Rng + CryptoRng>(
        &mut self,
        to: &Jid,
        text: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<String, ClientError> {
        self.send_message(to, &Message::text(text), now_ms, rng)
    }

    /// Sends `<chatstate to><composing/></chatstate>` (or `<paused/>`) to user `to`.
    pub fn chat_state(&mut self, to: &Jid, composing: bool, now_ms: u64) {
        let state = if composing { "composing" } else { "paused" };
        let s = Stanza::new("chatstate")
            .attr("to", to.to_user().to_string())
            .child(Stanza::new(state));
        self.push(&s, now_ms);
    }

    /// Sends a read receipt for message `id` from `to`.
    pub fn mark_read(&mut self, id: &str, to: &Jid, now_ms: u64) {
        let s = Stanza::new("receipt")
            .attr("id", id)
            .attr("to", to.to_user().to_string())
            .attr("type", "read");
        self.push(&s, now_ms);
    }

    /// Handles one frame payload from the server.
    pub fn handle_frame<R: Rng + CryptoRng>(&mut self, payload: &[u8], now_ms: u64, rng: &mut R) {
        let s = match stanza::parse(payload) {
            Ok(s) => s,
            Err(e) => {
                self.events.push_back(Event::FrameRejected {
                    reason: e.reason().to_owned(),
                });
                self.phase = Phase::Closed;
                return;
            }
        };
        if s.tag == "stream:error" {
            self.events.push_back(Event::StreamError {
                code: s.attr_value("code").unwrap_or("").to_owned(),
            });
            self.phase = Phase::Closed;
            return;
        }
        match self.handle_stanza(&s, now_ms, rng) {
            Ok(()) => {}
            // Nothing of the stanza was committed, so it was not acked either: end the
            // connection, and the gatekeeper delivers it again on the next one.
            Err(ClientError::Store(e) | ClientError::Signal(SignalError::Store(e))) => {
                self.events.push_back(Event::StoreFailed {
                    detail: e.to_string(),
                });
                self.phase = Phase::Closed;
            }
            Err(e) => log::error!("client: {e}"),
        }
    }

    fn handle_stanza<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        if let Phase::Login(login) = &mut self.phase {
            let txn = self.store.begin()?;
            let identity = signal::ensure_identity(&txn, rng)?;
            drop(txn);
            match login.handle(s, &identity, rng) {
                Ok(ClientStep::Send(out)) => self.push(&out, now_ms),
                Ok(ClientStep::Done(ok)) => {
                    self.phase = Phase::Ready;
                    let enlisted = ok.enlisted;
                    self.events.push_back(Event::LoggedIn(ok));
                    if enlisted {
                        self.upload_prekeys(signal::PREKEY_BATCH_SIZE, now_ms, rng)?;
                    }
                }
                Err(e) => {
                    self.phase = Phase::Closed;
                    self.events.push_back(Event::LoginFailed(e));
                }
            }
            return Ok(());
        }
        match s.tag.as_str() {
            "iq" => self.handle_iq(s, now_ms, rng),
            "message" => self.handle_message(s, now_ms, rng),
            "receipt" => {
                let id = s.attr_value("id").unwrap_or("").to_owned();
                let kind = s.attr_value("type").map(str::to_owned);
                let mut ack = Stanza::new("ack")
                    .attr("class", "receipt")
                    .attr("id", id.clone());
                if let Some(k) = &kind {
                    ack = ack.attr("type", k.clone());
                }
                self.push(&ack, now_ms);
                let retry = kind.as_deref() == Some("retry");
                if s.attr_value("from").is_some_and(crate::group::is_group_jid) {
                    return self.group_receipt(s, &id, kind.as_deref());
                }
                if let Some(from) = device_jid_of(s, "from") {
                    self.events.push_back(Event::Receipt { id, from, kind });
                }
                if retry {
                    self.answer_retry(s, now_ms, rng)?;
                }
                Ok(())
            }
            "ack" => {
                if s.attr_value("class") == Some("message")
                    && let Some(id) = s.attr_value("id")
                    && self.resend_acked(id, s.attr_value("error"))
                {
                    return Ok(());
                }
                self.events.push_back(Event::Acked {
                    class: s.attr_value("class").unwrap_or("").to_owned(),
                    id: s.attr_value("id").unwrap_or("").to_owned(),
                    error: s.attr_value("error").map(str::to_owned),
                });
                Ok(())
            }
            "notification" => self.handle_notification(s, now_ms, rng),
            "chatstate" => {
                if let (Some(from), Some(state)) = (device_jid_of(s, "from"), s.children().first())
                {
                    self.events.push_back(Event::ChatState {
                        from,
                        state: state.tag.clone(),
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn handle_notification<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let id = s.attr_value("id").unwrap_or("").to_owned();
        let kind = s.attr_value("type").unwrap_or("");
        match kind {
            "encrypt" => {
                let count = s
                    .child_named("count")
                    .and_then(|c| c.attr_value("value"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.events.push_back(Event::PrekeysLow { count });
                self.upload_prekeys(signal::PREKEY_BATCH_SIZE, now_ms, rng)?;
            }
            "identity" => {
                if let Some(user) = device_jid_of(s, "from") {
                    self.forget_devices(&user.user)?;
                    let txn = self.store.begin()?;
                    for (device, _) in signal::remote_identities(&txn, &user.user)? {
                        signal::delete_session(&txn, &user.with_device(device).address())?;
                    }
                    txn.commit()?;
                    self.events.push_back(Event::IdentityAnnounced {
                        user: user.to_user(),
                    });
                }
            }
            "w:gp2" => self.group_notification(s, now_ms)?,
            "devices" => {
                if let Some(user) = device_jid_of(s, "from") {
                    self.forget_devices(&user.user)?;
                    self.events.push_back(Event::DevicesChanged {
                        user: user.to_user(),
                    });
                }
            }
            _ => {}
        }
        let ack = Stanza::new("ack")
            .attr("class", "notification")
            .attr("id", id)
            .attr("type", kind);
        self.push(&ack, now_ms);
        Ok(())
    }
}

mod event;
mod group;
mod group_state;
mod receive;
mod retries;
mod send;
mod wa;

pub use event::{ClientError, Event};
pub use group::{GROUP_DEVICE_QUERY_USERS, GROUP_KEY_QUERY_DEVICES};
pub use group_state::{GroupAnswer, GroupRequest, MAX_GROUPS_LISTED};
use receive::Arrived;

pub use crate::frame::{FrameReader, framed};

/// The `id` attribute of a serialised stanza's root element, if it has one in its first bytes.
pub fn stanza_id(xml: &[u8]) -> Option<&str> {
    let head = xml.get(..xml.len().min(512))?;
    let end = head.iter().position(|&b| b == b'>')?;
    let open = std::str::from_utf8(head.get(..end)?).ok()?;
    let start = open.find(" id=\"")? + 5;
    let rest = open.get(start..)?;
    rest.get(..rest.find('"')?)
}
use retries::*;
pub use retries::{RetryCounts, upload_stanza};

#[cfg(test)]
mod tests {
    #[test]
    fn stanza_id_names_the_root_element_only() {
        assert_eq!(
            super::stanza_id(br#"<message id="3EB0AA" to="x"><enc id="no"/></message>"#),
            Some("3EB0AA")
        );
        assert_eq!(
            super::stanza_id(br#"<ack class="message"><x id="no"/></ack>"#),
            None
        );
        assert_eq!(super::stanza_id(b"<message id=\"unterminated>"), None);
        assert_eq!(super::stanza_id(b""), None);
    }

    proptest::proptest! {
        #[test]
        fn stanza_id_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..700)) {
            let _ = super::stanza_id(&b);
        }
    }

    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    const T0: u64 = 1_700_000_000_000;
    /// The recipient's digits; its device 0 is played by a second [`Client`].
    const PHONE: &str = "15550100";

    fn peer() -> Jid {
        Jid::whatsapp(PHONE, Some(0))
    }

    /// A client with its keys made, on its own store under `dir`.
    fn device(dir: &tempfile::TempDir, name: &str, rng: &mut StdRng) -> Client {
        let store = Store::open(&dir.path().join(name)).unwrap();
        let mut c = Client::new(store, "acme-home", 1, rng).unwrap();
        c.upload_prekeys(4, T0, rng).unwrap();
        wire(&mut c);
        c
    }

    /// Everything `c` wrote, parsed.
    fn wire(c: &mut Client) -> Vec<Stanza> {
        std::iter::from_fn(|| c.poll_transmit())
            .map(|p| stanza::parse(&p).unwrap())
            .collect()
    }

    fn events(c: &mut Client) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn feed(c: &mut Client, s: &Stanza, rng: &mut StdRng) {
        c.handle_frame(&s.to_xml(), T0, rng);
    }

    fn texts(ev: &[Event]) -> Vec<String> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Message { message, .. } => message.text_body().map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    fn retry_receipts(out: &[Stanza]) -> Vec<RetryReceipt> {
        out.iter()
            .filter(|s| s.tag == "receipt" && s.attr_value("type") == Some("retry"))
            .map(|s| retry::parse_retry_receipt(s).unwrap())
            .collect()
    }

    fn messages(out: &[Stanza]) -> Vec<&Stanza> {
        out.iter().filter(|s| s.tag == "message").collect()
    }

    /// `c`'s bundle as the directory would hand it out, with one of its one-time prekeys.
    fn bundle_of(c: &Client) -> WireBundle {
        let txn = c.store().begin().unwrap();
        let prekey = signal::prekey_ids(&txn, 1).unwrap().first().copied();
        signal::own_bundle(&txn, prekey).unwrap()
    }

    /// Queues `text` to [`PHONE`] in `a`'s outbox, as the API does.
    fn queue(a: &Client, text: &str, rng: &mut StdRng) -> OutboxRow {
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let id = content::message_id(T0 / 1000, "acme-home", &random);
        let m = Message::text(text);
        let row = crate::api::messages::queued_row(
            id.as_str().to_owned(),
            PHONE,
            m.kind(),
            T0,
            prost::Message::encode_to_vec(&m),
        );
        let txn = a.store().begin().unwrap();
        txn.outbox_insert(&row).unwrap();
        txn.commit().unwrap();
        row
    }

    fn result(iq: &Stanza) -> Stanza {
        assert_eq!(iq.tag, "iq", "{iq:?}");
        Stanza::new("iq")
            .attr("id", iq.attr_value("id").unwrap())
            .attr("type", "result")
    }

    /// The server's answer to a key fetch: `bundle` for [`peer`].
    fn keys_answer(iq: &Stanza, bundle: &WireBundle) -> Stanza {
        result(iq).child(Stanza::new("list").child(bundle_stanza(&peer(), bundle)))
    }

    /// Sends outbox row `row` from `a` to [`peer`], whose bundle is `bundle`, answering the
    /// iqs as the server would; returns the `<message>`.
    fn send_row(a: &mut Client, row: &OutboxRow, bundle: &WireBundle, rng: &mut StdRng) -> Stanza {
        a.send_outbox(row, T0, rng).unwrap();
        let devices = wire(a).remove(0);
        let answer = result(&devices).child(
            Stanza::new("user")
                .attr("jid", peer().to_user().to_string())
                .child(Stanza::new("device").attr("id", "0")),
        );
        feed(a, &answer, rng);
        let keys = wire(a).remove(0);
        feed(a, &keys_answer(&keys, bundle), rng);
        messages(&wire(a))[0].clone()
    }

    /// What the server delivers of `m` (sent by `from`) to its first participant.
    fn delivered(m: &Stanza, from: &Jid) -> Stanza {
        let to = m.child_named("participants").unwrap().children()[0].clone();
        let mut out = Stanza::new("message")
            .attr("id", m.attr_value("id").unwrap())
            .attr("from", from.to_string())
            .attr("to", m.attr_value("to").unwrap())
            .attr("type", m.attr_value("type").unwrap())
            .attr("t", (T0 / 1000).to_string());
        if let Some(c) = m.attr_value("count") {
            out = out.attr("count", c);
        }
        out.child(to.child_named("enc").unwrap().clone())
    }

    /// A stanza as the server delivers it, with `from` added.
    fn routed(s: &Stanza, from: &Jid) -> Stanza {
        let mut s = s.clone();
        s.attrs.push(("from".into(), from.to_string()));
        s
    }

    /// A `<message>` from `from` whose `msg` no session can open.
    fn garbage(id: &str, from: &Jid) -> Stanza {
        Stanza::new("message")
            .attr("id", id)
            .attr("from", from.to_string())
            .attr("to", "acme-home@interop")
            .attr("type", "text")
            .attr("t", "1700000000")
            .child(
                Stanza::new("enc")
                    .attr("v", "2")
                    .attr("type", "msg")
                    .bytes(vec![0x33; 60]),
            )
    }

    /// `a` sent a row to `b`, which read it; then `b` reinstalled as the returned client,
    /// which got the same message again and could not open it. Returns (row, message, the
    /// new `b`, its first retry receipt).
    fn reinstalled_peer(
        dir: &tempfile::TempDir,
        a: &mut Client,
        rng: &mut StdRng,
    ) -> (OutboxRow, Stanza, Client, Stanza) {
        let mut b = device(dir, "b", rng);
        let row = queue(a, "hello", rng);
        let m = send_row(a, &row, &bundle_of(&b), rng);
        feed(&mut b, &delivered(&m, &a.jid()), rng);
        assert_eq!(texts(&events(&mut b)), ["hello"]);
        events(a);
        let mut b2 = device(dir, "b2", rng);
        feed(&mut b2, &delivered(&m, &a.jid()), rng);
        let out = wire(&mut b2);
        let receipt = out
            .iter()
            .find(|s| s.attr_value("type") == Some("retry"))
            .unwrap()
            .clone();
        (row, m, b2, routed(&receipt, &peer()))
    }

    #[test]
    fn undecryptable_message_is_acked_and_asked_again_five_times_with_keys_from_the_second() {
        let mut rng = StdRng::seed_from_u64(1);
        let dir = tempfile::tempdir().unwrap();
        let mut c = device(&dir, "c", &mut rng);
        let sender = Jid::interop("acme-shed", Some(1));
        let id = "3EB0000000000000000001";
        let mut got = Vec::new();
        for _ in 0..7 {
            feed(&mut c, &garbage(id, &sender), &mut rng);
            let out = wire(&mut c);
            assert_eq!(out[0].tag, "ack", "acked first: {out:?}");
            assert_eq!(out[0].attr_value("id"), Some(id));
            got.extend(retry_receipts(&out));
            assert!(out.iter().all(|s| s.tag == "ack"
                || (s.tag == "receipt"
                    && s.attr_value("to") == Some(sender.to_string().as_str()))));
        }
        assert_eq!(
            got.iter().map(|r| r.count).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(
            got.iter()
                .all(|r| r.id.as_str() == id && r.t_secs == T0 / 1000)
        );
        assert!(got[0].keys.is_none(), "count 1 asks for a plain resend");
        let own = bundle_of(&c);
        let mut prekeys = std::collections::HashSet::new();
        let txn = c.store().begin().unwrap();
        let held = signal::prekey_ids(&txn, 100).unwrap();
        for r in &got[1..] {
            let k = r.keys.as_ref().unwrap();
            assert_eq!(
                (k.identity, &k.signed_prekey, k.registration_id),
                (own.identity, &own.signed_prekey, own.registration_id)
            );
            let p = k.prekey.as_ref().unwrap().id;
            assert!(prekeys.insert(p), "a fresh prekey each time");
            assert!(held.contains(&p), "the prekey {p} is kept");
        }
        drop(txn);
        let ev = events(&mut c);
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, Event::DecryptFailed { .. }))
                .count(),
            7
        );
    }

    #[test]
    fn retry_counts_survive_a_restart_and_are_per_sending_device() {
        let mut rng = StdRng::seed_from_u64(2);
        let dir = tempfile::tempdir().unwrap();
        let mut c = device(&dir, "c", &mut rng);
        let one = Jid::interop("acme-shed", Some(1));
        let two = Jid::interop("acme-shed", Some(2));
        let id = "3EB0000000000000000002";
        let counts = |c: &mut Client, from: &Jid, n: usize, rng: &mut StdRng| {
            (0..n)
                .flat_map(|_| {
                    feed(c, &garbage(id, from), rng);
                    retry_receipts(&wire(c))
                })
                .map(|r| r.count)
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&mut c, &one, 3, &mut rng), [1, 2, 3]);
        let mut c = Client::new(c.store.clone(), "acme-home", 1, &mut rng).unwrap();
        assert_eq!(counts(&mut c, &one, 4, &mut rng), [4, 5]);
        assert_eq!(counts(&mut c, &two, 1, &mut rng), [1]);
    }

    #[test]
    fn a_redelivered_message_gets_no_retry_receipt() {
        let mut rng = StdRng::seed_from_u64(3);
        let dir = tempfile::tempdir().unwrap();
        let mut a = device(&dir, "a", &mut rng);
        let mut b = device(&dir, "b", &mut rng);
        let row = queue(&a, "once", &mut rng);
        let m = send_row(&mut a, &row, &bundle_of(&b), &mut rng);
        let d = delivered(&m, &a.jid());
        feed(&mut b, &d, &mut rng);
        wire(&mut b);
        feed(&mut b, &d, &mut rng);
        let out = wire(&mut b);
        assert_eq!(out.len(), 1, "only the ack: {out:?}");
        assert_eq!(out[0].tag, "ack");
    }

    #[test]
    fn retry_receipt_without_keys_fetches_a_bundle_and_resends_to_that_device_alone() {
        let mut rng = StdRng::seed_from_u64(4);
        let dir = tempfile::tempdir().unwrap();
        let mut a = device(&dir, "a", &mut rng);
        let (row, original, mut b2, receipt) = reinstalled_peer(&dir, &mut a, &mut rng);
        let r = retry::parse_retry_receipt(&receipt).unwrap();
        assert_eq!((r.count, r.keys.is_none()), (1, true));

        feed(&mut a, &receipt, &mut rng);
        let out = wire(&mut a);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            (
                out[0].tag.as_str(),
                out[0].attr_value("class"),
                out[0].attr_value("type")
            ),
            ("ack", Some("receipt"), Some("retry"))
        );
        let user = out[1].child_named("key").unwrap().children();
        assert_eq!(out[1].attr_value("xmlns"), Some("encrypt"));
        assert_eq!(user.len(), 1);
        assert_eq!(user[0].attr_value("jid"), Some("15550100:0@s.whatsapp.net"));
        assert!(events(&mut a).contains(&Event::Receipt {
            id: row.id.clone(),
            from: peer(),
            kind: Some("retry".into()),
        }));

        feed(&mut a, &keys_answer(&out[1], &bundle_of(&b2)), &mut rng);
        let out = wire(&mut a);
        let m = messages(&out);
        assert_eq!(m.len(), 1, "{out:?}");
        let m = m[0];
        assert_eq!(m.attr_value("id"), Some(row.id.as_str()));
        assert_eq!(m.attr_value("to"), Some("15550100@s.whatsapp.net"));
        assert_eq!(m.attr_value("count"), Some("1"));
        assert_eq!(m.attr_value("type"), Some("text"));
        let tos = m.child_named("participants").unwrap().children();
        assert_eq!(tos.len(), 1);
        assert_eq!(tos[0].attr_value("jid"), Some("15550100:0@s.whatsapp.net"));
        let enc = tos[0].child_named("enc").unwrap();
        assert_eq!(enc.attr_value("type"), Some("pkmsg"), "a new session");
        let ev = events(&mut a);
        assert!(ev.contains(&Event::Resent {
            id: row.id.clone(),
            to: peer(),
            count: 1
        }));
        assert!(
            ev.iter().any(|e| matches!(e, Event::IdentityChanged(c)
                if c.device == peer() && c.previous != c.current && !c.held)),
            "{ev:?}"
        );
        // The row keeps its original stanza.
        let txn = a.store().begin().unwrap();
        let (_, stored) = txn.outbox_by_id(&row.id).unwrap().unwrap();
        assert_eq!(stored.stanza, original.to_xml());
        drop(txn);

        feed(&mut b2, &delivered(m, &a.jid()), &mut rng);
        assert_eq!(texts(&events(&mut b2)), ["hello"]);

        // The server's ack of the resend does not move the row (even a refusal).
        let ack = Stanza::new("ack")
            .attr("class", "message")
            .attr("id", row.id.as_str())
            .attr("error", "queue_full");
        feed(&mut a, &ack, &mut rng);
        assert!(events(&mut a).is_empty());
        // A later ack with the same id is the server's again.
        feed(&mut a, &ack, &mut rng);
        assert_eq!(events(&mut a).len(), 1);
    }

    #[test]
    fn retry_receipt_with_keys_resends_at_once_and_each_count_is_answered_once() {
        let mut rng = StdRng::seed_from_u64(5);
        let dir = tempfile::tempdir().unwrap();
        let mut a = device(&dir, "a", &mut rng);
        let (_, original, mut b2, first) = reinstalled_peer(&dir, &mut a, &mut rng);
        feed(&mut b2, &delivered(&original, &a.jid()), &mut rng);
        let second = routed(
            wire(&mut b2)
                .iter()
                .find(|s| s.attr_value("type") == Some("retry"))
                .unwrap(),
            &peer(),
        );
        let r = retry::parse_retry_receipt(&second).unwrap();
        assert_eq!((r.count, r.keys.is_some()), (2, true));

        feed(&mut a, &second, &mut rng);
        let out = wire(&mut a);
        assert!(out.iter().all(|s| s.tag != "iq"), "no fetch: {out:?}");
        let m = messages(&out);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].attr_value("count"), Some("2"));
        feed(&mut b2, &delivered(m[0], &a.jid()), &mut rng);
        assert_eq!(texts(&events(&mut b2)), ["hello"]);

        // The same count again, or a lower one arriving late, is acked and ignored.
        for again in [&second, &first] {
            feed(&mut a, again, &mut rng);
            let out = wire(&mut a);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].tag, "ack");
        }
        // Even after a restart.
        let mut a = Client::new(a.store.clone(), "acme-home", 1, &mut rng).unwrap();
        feed(&mut a, &second, &mut rng);
        assert!(messages(&wire(&mut a)).is_empty());
        assert!(
            !events(&mut a)
                .iter()
                .any(|e| matches!(e, Event::Resent { .. }))
        );
    }

    #[test]
    fn retry_receipts_for_unknown_or_foreign_messages_are_only_acked() {
        let mut rng = StdRng::seed_from_u64(6);
        let dir = tempfile::tempdir().unwrap();
        let mut a = device(&dir, "a", &mut rng);
        let (row, _, _, receipt) = reinstalled_peer(&dir, &mut a, &mut rng);
        let unknown = RetryReceipt {
            id: MessageId::parse("3EB0000000000000000009").unwrap(),
            ..retry::parse_retry_receipt(&receipt).unwrap()
        };
        let stranger = Jid::whatsapp("15550999", Some(0));
        for s in [
            routed(&retry::retry_receipt_stanza(&a.jid(), &unknown), &peer()),
            routed(
                &retry::retry_receipt_stanza(
                    &a.jid(),
                    &retry::parse_retry_receipt(&receipt).unwrap(),
                ),
                &stranger,
            ),
        ] {
            feed(&mut a, &s, &mut rng);
            let out = wire(&mut a);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].tag, "ack");
        }
        // A row that failed is not resent either.
        let txn = a.store().begin().unwrap();
        let (seq, mut failed) = txn.outbox_by_id(&row.id).unwrap().unwrap();
        failed.status = OutboxStatus::Failed;
        txn.outbox_write(seq, &failed).unwrap();
        txn.commit().unwrap();
        feed(&mut a, &receipt, &mut rng);
        assert_eq!(wire(&mut a).len(), 1);
    }

    #[test]
    fn a_verified_contacts_new_identity_in_retry_keys_holds_the_resend() {
        let mut rng = StdRng::seed_from_u64(7);
        let dir = tempfile::tempdir().unwrap();
        let mut a = device(&dir, "a", &mut rng);
        let (row, original, mut b2, _) = reinstalled_peer(&dir, &mut a, &mut rng);
        let txn = a.store().begin().unwrap();
        signal::trust_contact(&txn, PHONE, T0).unwrap();
        txn.commit().unwrap();
        feed(&mut b2, &delivered(&original, &a.jid()), &mut rng);
        let second = wire(&mut b2)
            .into_iter()
            .find(|s| s.attr_value("type") == Some("retry"))
            .unwrap();
        feed(&mut a, &routed(&second, &peer()), &mut rng);
        assert!(messages(&wire(&mut a)).is_empty(), "nothing resent");
        assert!(events(&mut a).contains(&Event::SendHeld {
            id: row.id.clone(),
            user: peer().to_user(),
        }));
        let txn = a.store().begin().unwrap();
        assert!(!signal::has_session(&txn, &peer().address()).unwrap());
        let ids = signal::remote_identities(&txn, PHONE).unwrap();
        assert_eq!(
            ids[0].1.pending,
            Some(bundle_of(&b2).identity),
            "the new key awaits trust"
        );
    }

    #[test]
    fn retry_counts_keep_the_newest_within_their_bound() {
        let mut c = RetryCounts::default();
        for n in 0..MAX_RETRY_TRACKED + 10 {
            assert!(c.set(&format!("k{n}"), 1));
        }
        assert_eq!(c.len(), MAX_RETRY_TRACKED);
        assert_eq!(c.get("k0"), 0, "the oldest went first");
        assert_eq!(c.get(&format!("k{}", MAX_RETRY_TRACKED + 9)), 1);
        assert!(c.set("k20", 3));
        assert_eq!((c.get("k20"), c.len()), (3, MAX_RETRY_TRACKED));
        assert!(!c.set(&"x".repeat(MAX_RETRY_KEY_BYTES + 1), 1));
        assert_eq!(RetryCounts::decode(&c.encode()), Some(c));
        assert_eq!(RetryCounts::decode(&[]), None);
        assert_eq!(RetryCounts::decode(&[2]), None, "unknown version");
        assert_eq!(RetryCounts::decode(&[1, 1, 5, b'a']), None, "cut short");
    }

    proptest! {
        #[test]
        fn retry_counts_read_back_unchanged(
            entries in proptest::collection::vec(("[ -~]{0,40}", any::<u8>()), 0..40)
        ) {
            let mut c = RetryCounts::default();
            for (k, n) in &entries {
                c.set(k, *n);
            }
            prop_assert_eq!(RetryCounts::decode(&c.encode()), Some(c));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_retry_counts_reader(
            data in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            if let Some(c) = RetryCounts::decode(&data) {
                prop_assert!(c.len() <= MAX_RETRY_TRACKED);
            }
        }
    }
}
