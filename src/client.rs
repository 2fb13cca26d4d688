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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use rand::{CryptoRng, Rng};

use crate::content::{self, Message};
use crate::frame::{self, FrameDecoder};
use crate::hub::state::{bundle_stanza, parse_bundle};
use crate::jid::{self, Jid};
use crate::login::{ClientLogin, ClientStep, Hello, LoggedIn, LoginError};
use crate::signal::{
    self, Ciphertext, EncType, IdentityEvent, SignalError, WireBundle, WirePreKey, WireSignedPreKey,
};
use crate::stanza::{self, Stanza};
use crate::store::{InboxRow, OutboxRow, PendingInbox, Store, StoreError, Txn};

/// Interval between keepalive pings, in milliseconds (the hub closes after
/// [`crate::hub::state::IDLE_TIMEOUT_MS`] of silence).
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
                if let Some(from) = device_jid_of(s, "from") {
                    self.events.push_back(Event::Receipt { id, from, kind });
                }
                Ok(())
            }
            "ack" => {
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
                    if let Some(mt) = crate::hub::users::media_type(msg.kind) {
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
            .attr("type", crate::hub::users::stanza_type(msg.kind))
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

/// Encodes a payload as one frame (for shells and tests).
pub fn framed(payload: &[u8]) -> Result<Vec<u8>, frame::FrameError> {
    let mut out = Vec::with_capacity(payload.len() + frame::FRAME_HEADER_BYTES);
    frame::encode_frame(payload, &mut out)?;
    Ok(out)
}

/// A frame decoder fed from a byte stream: the read side of a connection.
#[derive(Debug, Default)]
pub struct FrameReader {
    decoder: FrameDecoder,
    pending: Vec<u8>,
}

impl FrameReader {
    /// Feeds bytes and returns every complete frame payload; an error means close.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, frame::FrameError> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            let taken = self.decoder.push(&self.pending);
            self.pending.drain(..taken.min(self.pending.len()));
            let mut progressed = false;
            while let Some(f) = self.decoder.next_frame()? {
                frames.push(f);
                progressed = true;
            }
            if self.pending.is_empty() || (!progressed && taken == 0) {
                break;
            }
        }
        Ok(frames)
    }
}

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
enum ReadOutcome {
    TimedOut,
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

    /// Writes whatever the client has to send.
    pub async fn flush(&mut self) -> bool {
        use futures_lite::AsyncWriteExt as _;
        while let Some(p) = self.client.poll_transmit() {
            let Ok(f) = framed(&p) else { continue };
            if self.stream.write_all(&f).await.is_err() {
                self.closed = true;
                return false;
            }
        }
        self.stream.flush().await.is_ok()
    }

    /// Flushes, then waits for bytes until `deadline` and feeds them to the frame reader.
    /// Shared by [`next_event`](Self::next_event) and [`next_stanza`](Self::next_stanza).
    async fn read_frames(&mut self, deadline: std::time::Instant) -> ReadOutcome {
        use futures_lite::{AsyncReadExt as _, FutureExt as _};
        self.flush().await;
        let mut buf = vec![0u8; 16 * 1024];
        let read = async { Some(self.stream.read(&mut buf).await) };
        let timer = async {
            smol::Timer::at(deadline).await;
            None
        };
        match read.or(timer).await {
            None => ReadOutcome::TimedOut,
            Some(Ok(0)) | Some(Err(_)) => {
                self.closed = true;
                ReadOutcome::Closed
            }
            Some(Ok(n)) => match self.reader.feed(buf.get(..n).unwrap_or_default()) {
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        loop {
            if let Some(e) = self.client.poll_event() {
                return Some(e);
            }
            if self.closed {
                return None;
            }
            match self.read_frames(deadline).await {
                ReadOutcome::TimedOut => return None,
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
            match self.read_frames(deadline).await {
                ReadOutcome::Frames(frames) => self.raw.extend(frames),
                ReadOutcome::TimedOut | ReadOutcome::Closed | ReadOutcome::BadFrame(_) => {
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
