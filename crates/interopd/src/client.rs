//! A small client of profile `interop-xml/1`: log in, publish prekeys, send and receive
//! encrypted messages, receipts and notifications. The sans-I/O [`Client`] takes frame
//! payloads and `now_ms` and gives frame payloads ([`Client::poll_transmit`]) and
//! [`Event`]s; its Signal state and inbox live in a daemon [`Store`]. The async shell at the
//! bottom ([`Connection`]) moves frames over TLS. The integration tests drive the hub with
//! it; it is the seed of the daemon's link.
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
use crate::frame;
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

/// What happened, for the test or the daemon to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Login succeeded.
    LoggedIn(LoggedIn),
    /// Login failed; the server closes.
    LoginFailed(LoginError),
    /// Our prekeys are published.
    KeysUploaded,
    /// A message arrived, was decrypted and committed (then acked).
    Message {
        id: String,
        from: Jid,
        t_secs: u64,
        cursor: u64,
        message: Box<Message>,
    },
    /// A media message was decrypted and committed as pending (then acked); its blob must
    /// be downloaded before it enters the inbox ([`Client::set_hold_media`]).
    MediaPending { id: String, from: Jid },
    /// A message could not be decrypted (acked anyway).
    DecryptFailed {
        id: String,
        from: Jid,
        reason: String,
    },
    /// A receipt arrived: `kind` is `None` for delivery, `read` or `retry`.
    Receipt {
        id: String,
        from: Jid,
        kind: Option<String>,
    },
    /// The server accepted (`error == None`) or refused a message or receipt we sent.
    Acked {
        class: String,
        id: String,
        error: Option<String>,
    },
    /// A contact's identity changed (notification, or a new key seen in a bundle).
    IdentityChanged { user: Jid },
    /// A contact's device list changed.
    DevicesChanged { user: Jid },
    /// The server says our one-time prekeys run low; a top-up was sent.
    PrekeysLow { count: u64 },
    /// Answer to [`Client::request_count`].
    PrekeyCount { count: u64 },
    /// A send could not start: the recipient has no usable devices.
    SendFailed { id: String, reason: String },
    /// A send is held: a device of `user`, a verified contact, offered a new identity. It
    /// goes out once the household trusts the contact again.
    SendHeld { id: String, user: Jid },
    /// A retry receipt was answered: the outbox row `id` went again to the device `to` on a
    /// rebuilt session, as resend number `count`.
    Resent { id: String, to: Jid, count: u8 },
    /// A typing indicator.
    ChatState { from: Jid, state: String },
    /// The server closed the stream with `<stream:error>`.
    StreamError { code: String },
    /// A keepalive ping went unanswered past [`KEEPALIVE_DEADLINE_MS`]; the connection is
    /// dead and the caller closes it.
    KeepaliveTimeout,
    /// The transport ended ([`Connection`] only).
    Disconnected,
}

/// Why a client call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Environment: our store failed.
    Store(StoreError),
    /// Environment or peer: the Signal engine refused.
    Signal(SignalError),
    /// Caller: content too large.
    Content(content::ContentError),
    /// Caller: too many sends in flight.
    Busy,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Store(e) => write!(f, "{e}"),
            ClientError::Signal(e) => write!(f, "{e}"),
            ClientError::Content(e) => write!(f, "{e}"),
            ClientError::Busy => write!(f, "more than {MAX_PENDING_SENDS} sends in flight"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        ClientError::Store(e)
    }
}

impl From<SignalError> for ClientError {
    fn from(e: SignalError) -> Self {
        ClientError::Signal(e)
    }
}

enum Phase {
    Login(ClientLogin),
    Ready,
    Closed,
}

enum Pending {
    Upload,
    Count,
    Ping,
    Devices { send: String },
    Keys { send: String },
    RetryKeys { id: String, device: Jid, count: u8 },
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

    /// Records inbound messages through `journal` as they commit.
    pub fn set_journal(&mut self, journal: Rc<dyn Journal>) {
        self.journal = Some(journal);
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
        if self.sends.len() >= MAX_PENDING_SENDS {
            return Err(ClientError::Busy);
        }
        let message = <Message as prost::Message>::decode(row.content.as_slice()).map_err(|e| {
            ClientError::Content(content::ContentError::Protobuf {
                detail: e.to_string(),
            })
        })?;
        let padded = content::encode_padded(&message, rng).map_err(ClientError::Content)?;
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

    /// Starts a login on a fresh connection with the provider `token`.
    pub fn start(&mut self, token: &str, now_ms: u64) {
        let (login, first) = ClientLogin::start(self.hello.clone(), token.to_owned());
        self.phase = Phase::Login(login);
        self.ping_sent_ms = None;
        self.pending.clear();
        self.sends.clear();
        self.resends.clear();
        self.push(&first, now_ms);
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
                self.events.push_back(Event::StreamError {
                    code: e.reason().to_owned(),
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
        if let Err(e) = self.handle_stanza(&s, now_ms, rng) {
            log::error!("client: {e}");
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
                    self.events.push_back(Event::IdentityChanged {
                        user: user.to_user(),
                    });
                }
            }
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

    fn handle_message<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let id = s.attr_value("id").unwrap_or("").to_owned();
        let Some(from) = device_jid_of(s, "from").filter(|j| j.device.is_some()) else {
            return Ok(());
        };
        let t_secs = s
            .attr_value("t")
            .and_then(|t| t.parse().ok())
            .unwrap_or(now_ms / 1000);
        let ack = Stanza::new("ack")
            .attr("class", "message")
            .attr("id", id.clone())
            .attr("to", from.to_string());
        let ct = s.child_named("enc").and_then(|enc| {
            Some(Ciphertext {
                kind: EncType::parse(enc.attr_value("type")?)?,
                body: enc.payload()?.to_vec(),
            })
        });
        let Some(ct) = ct else {
            self.push(&ack, now_ms);
            self.events.push_back(Event::DecryptFailed {
                id,
                from,
                reason: "no <enc>".into(),
            });
            return Ok(());
        };
        let txn = self.store.begin()?;
        let decrypted = signal::decrypt(&txn, &from.address(), &ct, rng, now_ms);
        let plain = match decrypted {
            Ok(p) => p,
            Err(SignalError::Duplicate) => {
                // A redelivery of something we committed: ack again, store nothing.
                self.push(&ack, now_ms);
                return Ok(());
            }
            Err(e) => {
                if matches!(e, SignalError::UntrustedIdentity { .. }) {
                    // The offered identity is held as pending (signal::decrypt wrote it):
                    // keep it, so the contact shows `changed` and trust can adopt it.
                    txn.commit()?;
                    self.events.push_back(Event::IdentityChanged {
                        user: from.to_user(),
                    });
                } else {
                    drop(txn);
                }
                self.push(&ack, now_ms);
                if asks_for_retry(&e) {
                    self.send_retry_receipt(&from, &id, t_secs, now_ms, rng)?;
                }
                self.events.push_back(Event::DecryptFailed {
                    id,
                    from,
                    reason: e.to_string(),
                });
                return Ok(());
            }
        };
        let message = match content::decode_padded(&plain.plaintext) {
            Ok(m) => m,
            Err(e) => {
                drop(txn);
                self.push(&ack, now_ms);
                self.events.push_back(Event::DecryptFailed {
                    id,
                    from,
                    reason: e.to_string(),
                });
                return Ok(());
            }
        };
        let row = InboxRow {
            id: id.clone(),
            from: from.user.clone(),
            t_secs,
            received_ms: now_ms,
            // Stored unpadded: padding is per encryption, not part of the content.
            content: prost::Message::encode_to_vec(&message),
        };
        let dedupe = format!("{}|{id}", from.to_user());
        if self.hold_media && crate::media_pipe::media_ref(&message).is_some() {
            // Committed with its session like any message, but kept out of the inbox until
            // the blob is downloaded and verified (the daemon's media worker releases it).
            let pending = PendingInbox {
                attempts: 0,
                next_ms: now_ms,
                row,
            };
            let fresh = txn.pending_inbox_insert(&dedupe, &pending)?;
            txn.commit()?;
            self.push(&ack, now_ms);
            let receipt = Stanza::new("receipt")
                .attr("id", id.clone())
                .attr("to", from.to_user().to_string());
            self.push(&receipt, now_ms);
            if plain.identity == IdentityEvent::Changed {
                self.events.push_back(Event::IdentityChanged {
                    user: from.to_user(),
                });
            }
            if fresh {
                self.events.push_back(Event::MediaPending { id, from });
            }
            return Ok(());
        }
        let cursor = txn.inbox_insert(&dedupe, &row)?;
        if let (Some(j), Some(c)) = (&self.journal, cursor) {
            j.inbound(&txn, c, now_ms)?;
        }
        txn.commit()?;
        if let (Some(j), Some(c)) = (&self.journal, cursor) {
            j.inbound_committed(c);
        }
        self.push(&ack, now_ms);
        let receipt = Stanza::new("receipt")
            .attr("id", id.clone())
            .attr("to", from.to_user().to_string());
        self.push(&receipt, now_ms);
        if plain.identity == IdentityEvent::Changed {
            self.events.push_back(Event::IdentityChanged {
                user: from.to_user(),
            });
        }
        if let Some(cursor) = cursor {
            self.events.push_back(Event::Message {
                id,
                from,
                t_secs,
                cursor,
                message: Box::new(message),
            });
        }
        Ok(())
    }

    fn handle_iq<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let Some(p) = s.attr_value("id").and_then(|id| self.pending.remove(id)) else {
            return Ok(());
        };
        let ok = s.attr_value("type") == Some("result");
        match p {
            Pending::Ping => self.ping_sent_ms = None,
            Pending::Upload => {
                if ok {
                    self.events.push_back(Event::KeysUploaded);
                }
            }
            Pending::Count => {
                let count = s
                    .child_named("count")
                    .and_then(|c| c.attr_value("value"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.events.push_back(Event::PrekeyCount { count });
                if count < u64::from(signal::PREKEY_REFILL_THRESHOLD) {
                    self.upload_prekeys(signal::PREKEY_BATCH_SIZE, now_ms, rng)?;
                }
            }
            Pending::Devices { send } => {
                let devices: Vec<u32> = s
                    .children_named("user")
                    .flat_map(|u| u.children_named("device"))
                    .filter_map(|d| d.attr_value("id")?.parse().ok())
                    .collect();
                if !devices.is_empty()
                    && let Some(msg) = self.sends.get(&send)
                {
                    let list = crate::store::DeviceList {
                        fetched_ms: now_ms,
                        devices: devices.clone(),
                    };
                    let txn = self.store.begin()?;
                    txn.put_device_list(&msg.to.user, &list)?;
                    txn.commit()?;
                }
                self.with_devices(send, devices, now_ms)?;
            }
            Pending::Keys { send } => {
                let txn = self.store.begin()?;
                let mut changed = Vec::new();
                let mut held = None;
                for u in s
                    .child_named("list")
                    .map(Stanza::children)
                    .unwrap_or_default()
                {
                    let (Some(j), Some(b)) = (device_jid_of(u, "jid"), parse_bundle(u)) else {
                        continue;
                    };
                    // Sends to one recipient overlap: the first bundle to arrive starts the
                    // session, and later ones must not replace it (the peer would be answering
                    // a session we no longer hold at its head).
                    if signal::has_session(&txn, &j.address())? {
                        continue;
                    }
                    match signal::process_bundle(&txn, &j.address(), &b, rng, now_ms) {
                        Ok(IdentityEvent::Changed) => changed.push(j.to_user()),
                        Ok(_) => {}
                        Err(SignalError::UntrustedIdentity { .. }) => held = Some(j.to_user()),
                        Err(e) => log::warn!("client: bundle of {j} refused: {e}"),
                    }
                }
                // The refused key is kept as pending in this transaction.
                txn.commit()?;
                changed.dedup();
                for user in changed {
                    self.events.push_back(Event::IdentityChanged { user });
                }
                if let Some(user) = held {
                    self.sends.remove(&send);
                    self.events.push_back(Event::SendHeld { id: send, user });
                    return Ok(());
                }
                return self.finish_send(&send, now_ms);
            }
            Pending::RetryKeys { id, device, count } => {
                let bundle = s
                    .child_named("list")
                    .map(Stanza::children)
                    .unwrap_or_default()
                    .iter()
                    .find(|u| device_jid_of(u, "jid").as_ref() == Some(&device))
                    .and_then(parse_bundle);
                match bundle {
                    Some(b) => return self.resend(&id, &device, count, &b, now_ms, rng),
                    None => log::warn!("client: no bundle of {device} to answer retry of {id}"),
                }
            }
        }
        Ok(())
    }

    /// A send's device list is known: fetches bundles for devices without a session, or
    /// encrypts at once.
    fn with_devices(
        &mut self,
        send: String,
        devices: Vec<u32>,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        if devices.is_empty() {
            // Let the server judge the recipient: a message with no devices still gets its
            // ack (unknown_user, not_opted_in) rather than silence.
            return self.finish_send(&send, now_ms);
        }
        let Some(msg) = self.sends.get_mut(&send) else {
            return Ok(());
        };
        msg.devices = devices.clone();
        let to = msg.to.clone();
        let txn = self.store.begin()?;
        let mut missing = Vec::new();
        for d in devices {
            let target = to.with_device(d);
            if !signal::has_session(&txn, &target.address())? {
                missing.push(target);
            }
        }
        drop(txn);
        if missing.is_empty() {
            return self.finish_send(&send, now_ms);
        }
        let q = self.iq_id(Pending::Keys { send });
        let key = Stanza::new("key").extend_children(
            missing
                .iter()
                .map(|j| Stanza::new("user").attr("jid", j.to_string())),
        );
        let s = Stanza::new("iq")
            .attr("id", q)
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(key);
        self.push(&s, now_ms);
        Ok(())
    }

    /// Starts a send: from the cached device list when it is younger than
    /// [`DEVICE_LIST_MAX_AGE_MS`], else by asking the server.
    fn start_send(&mut self, send: String, to: &Jid, now_ms: u64) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        let cached = txn.device_list(&to.user)?;
        drop(txn);
        if let Some(list) = cached
            && !list.devices.is_empty()
            && now_ms.saturating_sub(list.fetched_ms) < DEVICE_LIST_MAX_AGE_MS
        {
            return self.with_devices(send, list.devices, now_ms);
        }
        let q = self.iq_id(Pending::Devices { send });
        let s = Stanza::new("iq")
            .attr("id", q)
            .attr("type", "get")
            .attr("xmlns", "devices")
            .child(Stanza::new("user").attr("jid", to.to_user().to_string()));
        self.push(&s, now_ms);
        Ok(())
    }

    /// Forgets `user`'s cached device list (a devices or identity notification).
    fn forget_devices(&self, user: &str) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        txn.put_device_list(
            user,
            &crate::store::DeviceList {
                fetched_ms: 0,
                devices: Vec::new(),
            },
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Encrypts a pending send for every device that has a session and sends it.
    fn finish_send(&mut self, send: &str, now_ms: u64) -> Result<(), ClientError> {
        let Some(msg) = self.sends.remove(send) else {
            return Ok(());
        };
        let txn = self.store.begin()?;
        let mut participants = Stanza::new("participants");
        let mut any = false;
        for d in &msg.devices {
            let target = msg.to.with_device(*d);
            match signal::encrypt(&txn, &target.address(), &msg.padded, now_ms) {
                Ok(ct) => {
                    let mut enc = Stanza::new("enc")
                        .attr("v", "2")
                        .attr("type", ct.kind.as_str());
                    if let Some(mt) = crate::content::media_type(msg.kind) {
                        enc = enc.attr("mediatype", mt);
                    }
                    participants = participants.child(
                        Stanza::new("to")
                            .attr("jid", target.to_string())
                            .child(enc.bytes(ct.body)),
                    );
                    any = true;
                }
                Err(SignalError::NoSession { .. }) => {}
                Err(SignalError::UntrustedIdentity { .. }) => {
                    drop(txn);
                    self.events.push_back(Event::SendHeld {
                        id: send.to_owned(),
                        user: msg.to.clone(),
                    });
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut m = Stanza::new("message")
            .attr("id", send)
            .attr("to", msg.to.to_string())
            .attr("type", crate::content::stanza_type(msg.kind))
            .attr("t", (now_ms / 1000).to_string());
        if any {
            m = m.child(participants);
        } else if !msg.devices.is_empty() {
            drop(txn);
            self.events.push_back(Event::SendFailed {
                id: send.to_owned(),
                reason: "no session with any device".into(),
            });
            return Ok(());
        }
        let bytes = m.to_xml();
        if msg.from_outbox
            && let Some((seq, mut row)) = txn.outbox_by_id(send)?
        {
            row.stanza = bytes.clone();
            txn.outbox_write(seq, &row)?;
        }
        // Sessions and stanza bytes commit together, before the bytes reach the wire.
        txn.commit()?;
        self.send_committed(bytes, now_ms);
        Ok(())
    }
}

// ---- retry receipts ----------------------------------------------------------------------

/// Whether a decryption failure is one a retry receipt can mend: the peer's session or keys
/// disagree with ours. A redelivery (`Duplicate`) is not a failure, a held identity is the
/// household's decision, and a store error is ours.
fn asks_for_retry(e: &SignalError) -> bool {
    !matches!(
        e,
        SignalError::Duplicate | SignalError::UntrustedIdentity { .. } | SignalError::Store(_)
    )
}

/// The counter key of (`device`, message `id`).
fn retry_key(device: &Jid, id: &str) -> String {
    format!("{device}|{id}")
}

/// Retry counters per (device, message id), oldest first, at most [`MAX_RETRY_TRACKED`]. Kept
/// as one `meta` value: a version byte ([`RETRY_COUNTS_VERSION`]), then per entry the count
/// (one byte), the key's length (one byte) and the key (UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryCounts {
    entries: VecDeque<(String, u8)>,
}

impl RetryCounts {
    /// Reads the stored form; `None` if it is not one (wrong version, cut short, a bad key,
    /// or more than [`MAX_RETRY_TRACKED`] entries).
    pub fn decode(bytes: &[u8]) -> Option<RetryCounts> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != RETRY_COUNTS_VERSION {
            return None;
        }
        let mut entries = VecDeque::new();
        while let Some((&count, tail)) = rest.split_first() {
            let (&len, tail) = tail.split_first()?;
            let key = tail.get(..usize::from(len))?;
            rest = tail.get(usize::from(len)..)?;
            if entries.len() >= MAX_RETRY_TRACKED {
                return None;
            }
            entries.push_back((std::str::from_utf8(key).ok()?.to_owned(), count));
        }
        Some(RetryCounts { entries })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RETRY_COUNTS_VERSION];
        for (key, count) in &self.entries {
            // `set` keeps every key within MAX_RETRY_KEY_BYTES, so the length fits a byte.
            let Ok(len) = u8::try_from(key.len()) else {
                continue;
            };
            out.push(*count);
            out.push(len);
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    /// The count kept for `key` (0 when none).
    pub fn get(&self, key: &str) -> u8 {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, c)| *c)
    }

    /// Sets the count for `key`, forgetting the oldest entry beyond [`MAX_RETRY_TRACKED`].
    /// Returns `false` (and keeps nothing) for a key longer than [`MAX_RETRY_KEY_BYTES`].
    pub fn set(&mut self, key: &str, count: u8) -> bool {
        if key.len() > MAX_RETRY_KEY_BYTES {
            return false;
        }
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = count,
            None => {
                self.entries.push_back((key.to_owned(), count));
                while self.entries.len() > MAX_RETRY_TRACKED {
                    self.entries.pop_front();
                }
            }
        }
        true
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counters under `meta` key `name`. A value that does not read back is logged and
    /// started afresh: the counts only limit how often we ask or answer.
    fn load(txn: &Txn, name: &str) -> Result<RetryCounts, StoreError> {
        let Some(bytes) = txn.get_str_key(META, name)? else {
            return Ok(RetryCounts::default());
        };
        Ok(RetryCounts::decode(&bytes).unwrap_or_else(|| {
            log::warn!(
                "client: meta {name} ({} bytes) unreadable; starting afresh",
                bytes.len()
            );
            RetryCounts::default()
        }))
    }

    fn save(&self, txn: &Txn, name: &str) -> Result<(), StoreError> {
        txn.put_str_key(META, name, &self.encode())
    }
}

impl Client {
    /// Answers a message from `from` that did not decrypt with a retry receipt, the next count
    /// for (`from`, `id`); none once [`MAX_RETRY_RECEIPTS`] were sent. From
    /// [`RETRY_KEYS_FROM_COUNT`] on it carries our keys and a one-time prekey made for it
    /// (kept, never uploaded), committed with the count before the receipt is queued.
    fn send_retry_receipt<R: Rng + CryptoRng>(
        &mut self,
        from: &Jid,
        id: &str,
        t_secs: u64,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let Ok(message_id) = MessageId::parse(id) else {
            log::warn!("client: no retry receipt for a message with a malformed id from {from}");
            return Ok(());
        };
        let txn = self.store.begin()?;
        let mut counts = RetryCounts::load(&txn, META_RETRY_SENT)?;
        let key = retry_key(from, id);
        let count = counts.get(&key).saturating_add(1);
        if count > MAX_RETRY_RECEIPTS || !counts.set(&key, count) {
            log::warn!("client: no more retry receipts to {from} for {id}");
            return Ok(());
        }
        counts.save(&txn, META_RETRY_SENT)?;
        let identity = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "no identity".into(),
        })?;
        let with_prekey = signal::prekey_count(&txn)? < MAX_PREKEYS_HELD_FOR_RETRY;
        let keys = retry::keys_for_receipt(&txn, count, with_prekey, rng)?;
        txn.commit()?;
        log::warn!("client: message {id} from {from} did not decrypt; retry receipt {count}");
        let receipt = RetryReceipt {
            id: message_id,
            count,
            t_secs,
            registration_id: identity.registration_id(),
            keys,
        };
        let s = retry::retry_receipt_stanza(from, &receipt);
        self.push(&s, now_ms);
        Ok(())
    }

    /// Handles a `<receipt type="retry">` (already acked): for an outbox row we sent to the
    /// asking device's user, not failed and not older than [`MAX_RETRY_RESEND_AGE_MS`], and a
    /// count not answered before, rebuilds the session and resends. Anything else is logged
    /// with the id and ignored.
    fn answer_retry<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let id = s.attr_value("id").unwrap_or("");
        let receipt = match retry::parse_retry_receipt(s) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("client: retry receipt for {id} ignored: {e}");
                return Ok(());
            }
        };
        let Some(device) = device_jid_of(s, "from").filter(|j| j.device.is_some()) else {
            log::warn!("client: retry receipt for {id} ignored: no sending device");
            return Ok(());
        };
        let txn = self.store.begin()?;
        let ignore = match txn.outbox_by_id(id)? {
            None => Some("not a message we keep"),
            Some((_, row)) if Jid::whatsapp(row.to.clone(), None) != device.to_user() => {
                Some("the device is not the recipient's")
            }
            Some((_, row)) if row.status == OutboxStatus::Failed => Some("the message failed"),
            Some((_, row)) if now_ms.saturating_sub(row.created_ms) > MAX_RETRY_RESEND_AGE_MS => {
                Some("the message is too old")
            }
            Some(_) => {
                let answered = RetryCounts::load(&txn, META_RETRY_ANSWERED)?;
                (receipt.count <= answered.get(&retry_key(&device, id)))
                    .then_some("that count was answered")
            }
        };
        drop(txn);
        if let Some(why) = ignore {
            log::info!(
                "client: retry receipt {} for {id} from {device} ignored: {why}",
                receipt.count
            );
            return Ok(());
        }
        let in_flight = self.resends.values().map(|n| *n as usize).sum::<usize>()
            + self
                .pending
                .values()
                .filter(|p| matches!(p, Pending::RetryKeys { .. }))
                .count();
        if in_flight >= MAX_PENDING_RETRIES {
            log::warn!("client: retry receipt for {id} from {device} ignored: too many in flight");
            return Ok(());
        }
        let count = receipt.count;
        if let Some(bundle) = receipt.keys {
            return self.resend(id, &device, count, &bundle, now_ms, rng);
        }
        let q = self.iq_id(Pending::RetryKeys {
            id: id.to_owned(),
            device: device.clone(),
            count,
        });
        let key = Stanza::new("key").child(Stanza::new("user").attr("jid", device.to_string()));
        let iq = Stanza::new("iq")
            .attr("id", q)
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(key);
        self.push(&iq, now_ms);
        Ok(())
    }

    /// Rebuilds the session with `device` from `bundle` (the old one is dropped first) and
    /// sends outbox row `id` to it alone as resend `count`. The new session, the answered
    /// count and nothing else commit before the bytes are queued; the row's own stanza stays
    /// the original. A changed identity of a verified contact holds the resend
    /// ([`Event::SendHeld`]); the dropped session and the pending identity are committed.
    fn resend<R: Rng + CryptoRng>(
        &mut self,
        id: &str,
        device: &Jid,
        count: u8,
        bundle: &WireBundle,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        let Some((_, row)) = txn.outbox_by_id(id)? else {
            return Ok(());
        };
        let key = retry_key(device, id);
        let mut answered = RetryCounts::load(&txn, META_RETRY_ANSWERED)?;
        if count <= answered.get(&key) {
            // A later count overtook this one while its bundle was fetched.
            return Ok(());
        }
        let message = match <Message as prost::Message>::decode(row.content.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                log::error!("client: outbox row {id} does not decode: {e}");
                return Ok(());
            }
        };
        let padded = content::encode_padded(&message, rng).map_err(ClientError::Content)?;
        let addr = device.address();
        signal::delete_session(&txn, &addr)?;
        let changed = match signal::process_bundle(&txn, &addr, bundle, rng, now_ms) {
            Ok(event) => event == IdentityEvent::Changed,
            Err(SignalError::UntrustedIdentity { .. }) => {
                txn.commit()?;
                self.events.push_back(Event::SendHeld {
                    id: id.to_owned(),
                    user: device.to_user(),
                });
                return Ok(());
            }
            Err(SignalError::Store(e)) => return Err(e.into()),
            Err(e) => {
                // Dropping the transaction keeps the old session.
                log::warn!("client: keys of {device} for the retry of {id} refused: {e}");
                return Ok(());
            }
        };
        let ct = signal::encrypt(&txn, &addr, &padded, now_ms)?;
        let kind = message.kind();
        let mut enc = Stanza::new("enc")
            .attr("v", "2")
            .attr("type", ct.kind.as_str());
        if let Some(mt) = crate::content::media_type(kind) {
            enc = enc.attr("mediatype", mt);
        }
        let m = Stanza::new("message")
            .attr("id", id)
            .attr("to", device.to_user().to_string())
            .attr("type", crate::content::stanza_type(kind))
            .attr("t", (now_ms / 1000).to_string())
            .attr("count", count.to_string())
            .child(
                Stanza::new("participants").child(
                    Stanza::new("to")
                        .attr("jid", device.to_string())
                        .child(enc.bytes(ct.body)),
                ),
            );
        answered.set(&key, count);
        answered.save(&txn, META_RETRY_ANSWERED)?;
        // The rebuilt session and the count commit before the bytes reach the wire.
        txn.commit()?;
        self.push(&m, now_ms);
        *self.resends.entry(id.to_owned()).or_default() += 1;
        log::warn!("client: resending {id} to {device} (retry {count})");
        if changed {
            self.events.push_back(Event::IdentityChanged {
                user: device.to_user(),
            });
        }
        self.events.push_back(Event::Resent {
            id: id.to_owned(),
            to: device.clone(),
            count,
        });
        Ok(())
    }

    /// Takes the server's ack of a resend (see [`Client::resend`]); `false` if `id` has none
    /// outstanding. A refused resend is logged: the row keeps the status its own ack gave.
    fn resend_acked(&mut self, id: &str, error: Option<&str>) -> bool {
        let Some(n) = self.resends.get_mut(id) else {
            return false;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.resends.remove(id);
        }
        match error {
            Some(e) => log::warn!("client: resend of {id} refused by the server: {e}"),
            None => log::debug!("client: resend of {id} accepted"),
        }
        true
    }
}

/// `<iq type="set" xmlns="encrypt">` carrying our keys.
pub fn upload_stanza(
    iq_id: &str,
    registration_id: u32,
    identity: &signal::RawKey,
    signed: &WireSignedPreKey,
    keys: &[WirePreKey],
) -> Stanza {
    let bundle = WireBundle {
        registration_id,
        identity: *identity,
        signed_prekey: signed.clone(),
        prekey: None,
    };
    // Reuse the bundle layout for the shared children, then add the list.
    let u = bundle_stanza(&Jid::interop("x", Some(0)), &bundle);
    let list = Stanza::new("list").extend_children(keys.iter().map(|k| {
        let [_, a, b, c] = k.id.to_be_bytes();
        Stanza::new("key")
            .child(Stanza::new("id").bytes(vec![a, b, c]))
            .child(Stanza::new("value").bytes(k.public.to_vec()))
    }));
    let mut iq = Stanza::new("iq")
        .attr("id", iq_id)
        .attr("type", "set")
        .attr("xmlns", "encrypt");
    for c in u.children() {
        if c.tag == "skey" {
            iq = iq.child(list.clone());
        }
        iq = iq.child(c.clone());
    }
    iq
}

pub use crate::frame::{FrameReader, framed};

// ---- the async shell ----------------------------------------------------------------------

/// Why [`Connection::open`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// Environment or server: TCP or TLS failed (including a pin mismatch).
    Tls(crate::tls::TlsError),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A [`Client`] on a TLS connection: the shell that moves its frames.
pub struct Connection {
    client: Client,
    stream: crate::tls::TlsClientStream,
    reader: FrameReader,
    raw: VecDeque<Vec<u8>>,
    closed: bool,
}

use crate::clock::now_ms as wall_ms;

/// What one read from the server gave.
/// Why [`Connection::flush`] did not send everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushError {
    /// Environment: the connection failed while writing; it is closed.
    Write,
    /// Bug or outside data over a bound: stanza `id` is `len` bytes, over the frame bound, and
    /// was not sent. The caller fails the outbox row it belongs to.
    TooLarge { id: String, len: usize },
}

/// The `id` attribute of a serialised stanza's root element, if it has one in its first bytes.
fn stanza_id(xml: &[u8]) -> Option<&str> {
    let head = xml.get(..xml.len().min(512))?;
    let end = head.iter().position(|&b| b == b'>')?;
    let open = std::str::from_utf8(head.get(..end)?).ok()?;
    let start = open.find(" id=\"")? + 5;
    let rest = open.get(start..)?;
    rest.get(..rest.find('"')?)
}

enum ReadOutcome {
    TimedOut,
    /// The caller's wake listener fired (new outbox rows, a read mark).
    Woken,
    Closed,
    BadFrame(frame::FrameError),
    Frames(Vec<Vec<u8>>),
}

impl Connection {
    /// Dials `addr`, authenticates the server by `pin`, and starts the login with `token`.
    pub async fn open(
        client: Client,
        addr: &str,
        server_name: &str,
        pin: &crate::tls::Pin,
        token: &str,
    ) -> Result<Connection, ConnectError> {
        let config = crate::tls::client_config(pin).map_err(ConnectError::Tls)?;
        let stream = crate::tls::connect(addr, server_name, config)
            .await
            .map_err(ConnectError::Tls)?;
        let mut c = Connection {
            client,
            stream,
            reader: FrameReader::default(),
            raw: VecDeque::new(),
            closed: false,
        };
        c.client.start(token, wall_ms());
        Ok(c)
    }

    /// The client inside.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the client back (the connection is dropped).
    pub fn into_client(mut self) -> Client {
        self.client.disconnected();
        self.client
    }

    /// Writes whatever the client has to send. A stanza too large to frame is not sent and
    /// is reported with its id ([`FlushError::TooLarge`]); the ones after it still go out.
    pub async fn flush(&mut self) -> Result<(), FlushError> {
        use futures_lite::AsyncWriteExt as _;
        let mut too_large = None;
        while let Some(p) = self.client.poll_transmit() {
            let f = match framed(&p) {
                Ok(f) => f,
                Err(_) => {
                    too_large.get_or_insert(FlushError::TooLarge {
                        id: stanza_id(&p).unwrap_or("?").to_owned(),
                        len: p.len(),
                    });
                    continue;
                }
            };
            if self.stream.write_all(&f).await.is_err() {
                self.closed = true;
                return Err(FlushError::Write);
            }
        }
        if self.stream.flush().await.is_err() {
            self.closed = true;
            return Err(FlushError::Write);
        }
        too_large.map_or(Ok(()), Err)
    }

    /// Flushes, then waits for bytes until `deadline` and feeds them to the frame reader.
    /// Shared by [`next_event`](Self::next_event) and [`next_stanza`](Self::next_stanza).
    async fn read_frames(
        &mut self,
        deadline: std::time::Instant,
        wake: Option<&mut event_listener::EventListener>,
    ) -> ReadOutcome {
        use futures_lite::{AsyncReadExt as _, FutureExt as _};
        if let Err(FlushError::TooLarge { id, len }) = self.flush().await {
            // Only reachable through a caller that does not flush first (tests, hub helpers);
            // the link flushes itself and fails the row.
            log::error!("client: stanza {id} ({len} bytes) is over the frame bound; not sent");
        }
        let mut buf = vec![0u8; 16 * 1024];
        // A read cancelled by the timer or a wake consumes nothing: smol and rustls keep
        // unread bytes in their buffers.
        let read = async { Some(Some(self.stream.read(&mut buf).await)) };
        let timer = async {
            smol::Timer::at(deadline).await;
            None
        };
        let woken = async {
            match wake {
                Some(listener) => {
                    listener.await;
                    Some(None)
                }
                None => std::future::pending().await,
            }
        };
        match read.or(woken).or(timer).await {
            None => ReadOutcome::TimedOut,
            Some(None) => ReadOutcome::Woken,
            Some(Some(Ok(0))) | Some(Some(Err(_))) => {
                self.closed = true;
                ReadOutcome::Closed
            }
            Some(Some(Ok(n))) => match self.reader.feed(buf.get(..n).unwrap_or_default()) {
                Ok(frames) => ReadOutcome::Frames(frames),
                Err(e) => {
                    self.closed = true;
                    ReadOutcome::BadFrame(e)
                }
            },
        }
    }

    /// The next event, reading from the server as needed; `None` after `timeout_ms`.
    pub async fn next_event(&mut self, timeout_ms: u64) -> Option<Event> {
        self.next_event_or_wake(timeout_ms, None).await
    }

    /// As [`next_event`](Self::next_event), but also returns `None` as soon as `wake` fires,
    /// so a caller sleeping until its next deadline still hears about new work at once.
    pub async fn next_event_or_wake(
        &mut self,
        timeout_ms: u64,
        mut wake: Option<&mut event_listener::EventListener>,
    ) -> Option<Event> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        loop {
            if let Some(e) = self.client.poll_event() {
                return Some(e);
            }
            if self.closed {
                return None;
            }
            match self.read_frames(deadline, wake.as_deref_mut()).await {
                ReadOutcome::TimedOut | ReadOutcome::Woken => return None,
                ReadOutcome::Closed => {
                    self.client.disconnected();
                    return Some(Event::Disconnected);
                }
                ReadOutcome::BadFrame(e) => {
                    return Some(Event::StreamError {
                        code: e.reason().to_owned(),
                    });
                }
                ReadOutcome::Frames(frames) => {
                    let mut rng = rand::rng();
                    for f in frames {
                        self.client.handle_frame(&f, wall_ms(), &mut rng);
                    }
                }
            }
        }
    }

    /// Reads events until one satisfies `want`; returns it and every event seen before it,
    /// or `Err` with all events seen if `timeout_ms` passes or the connection ends first.
    pub async fn wait_for(
        &mut self,
        timeout_ms: u64,
        want: impl Fn(&Event) -> bool,
    ) -> Result<(Event, Vec<Event>), Vec<Event>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            match self.next_event(left_ms).await {
                Some(e) if want(&e) => return Ok((e, seen)),
                Some(Event::Disconnected) => {
                    seen.push(Event::Disconnected);
                    return Err(seen);
                }
                Some(e) => seen.push(e),
                None => return Err(seen),
            }
        }
    }

    /// The next raw stanza from the server, bypassing the client (tests that play a
    /// misbehaving client); `None` on timeout or when the connection ends.
    pub async fn next_stanza(&mut self, timeout_ms: u64) -> Option<Stanza> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        loop {
            if let Some(f) = self.raw.pop_front() {
                return stanza::parse(&f).ok();
            }
            if self.closed {
                return None;
            }
            match self.read_frames(deadline, None).await {
                ReadOutcome::Frames(frames) => self.raw.extend(frames),
                ReadOutcome::TimedOut
                | ReadOutcome::Woken
                | ReadOutcome::Closed
                | ReadOutcome::BadFrame(_) => {
                    return None;
                }
            }
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes raw bytes to the server (tests of hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> bool {
        use futures_lite::AsyncWriteExt as _;
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }
}

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
        assert!(ev.contains(&Event::IdentityChanged {
            user: peer().to_user()
        }));
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
