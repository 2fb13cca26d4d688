//! The hub's core state machine: every connection, the routing between them, the per-device
//! offline queues, the prekey directory, notifications, and the simulated users.
//! Sans-I/O in the quinn-proto manner: the shell feeds it frame payloads
//! ([`Hub::handle_frame`]), connection events and `now_ms`, and drains [`Output`]s
//! ([`Hub::poll_output`]) and the next deadline ([`Hub::poll_timeout`]). It touches no
//! socket and reads no clock; randomness comes from the caller's RNG. Its durable state
//! lives in [`HubStore`] and the simulated devices' stores.
//!
//! A connection's life:
//!
//! ```text
//!  connect ──▶ Login(ExpectLogin) ──<login>──▶ Login(ExpectAuth) ──<auth> ok──▶ Ready{device}
//!                   │ timeout / bad frame / failure                                 │
//!                   └──────────────────────────▶ Close ◀── idle / drop / replaced ──┘
//! ```
//!
//! Delivery is at least once: every stanza for an enlisted device of ours goes into its
//! queue first and leaves it only on the device's `<ack>`; a login sends the whole queue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use rand::{CryptoRng, Rng};

use crate::media::MediaStore;
use crate::store::{DeviceRecord, HubStore, UserRecord};
use crate::users::{Behavior, Directory, PendingMedia, SimAction, SimError, SimUser, SimUsers};
use interop_io::state_dir::StoreError;
use interop_proto::content::{self, Message};
use interop_proto::jid::{self, Jid, Server};
use interop_proto::login::{self, AccountRecord, LoginFailure, ServerLogin, ServerStep};
use interop_proto::prekeys::{bundle_stanza, parse_prekey, parse_signed_prekey, raw32};
use interop_proto::signal::{self, RawKey, WireBundle};
use interop_proto::stanza::{self, Stanza};

/// A connection with no inbound stanza for this long is closed (`idle_timeout`), in
/// milliseconds. Clients ping well within it.
pub const IDLE_TIMEOUT_MS: u64 = 120_000;
/// The hub sends `<notification type="encrypt"><count/>` when a device's one-time prekeys in
/// the directory fall below this many.
pub const PREKEY_LOW_COUNT: u64 = signal::PREKEY_REFILL_THRESHOLD as u64;
/// Most devices one `<iq xmlns="encrypt" type="get"><key>` may ask bundles for.
pub const MAX_FETCH_DEVICES: usize = 64;
/// Most users one `<iq xmlns="devices">` may ask about.
pub const MAX_DEVICE_QUERY_USERS: usize = 64;
/// Most one-time prekeys one upload may carry.
pub const MAX_UPLOAD_PREKEYS: usize = 1000;
/// Most `<to>` recipients in one `<message>`.
pub const MAX_PARTICIPANTS: usize = 64;
/// Longest `id` attribute of an `<iq>`, in bytes.
pub const MAX_IQ_ID_BYTES: usize = 64;
/// Most simulated users one hub hosts.
pub const MAX_SIM_USERS: usize = 256;
/// Most media blobs waiting to be fetched for simulated users at once; a media message
/// beyond it is recorded with the error `busy`.
pub const MAX_PENDING_MEDIA_FETCHES: usize = 64;

/// A connection, numbered by the core.
pub type ConnId = u64;

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write one frame carrying this payload (a stanza's XML).
    Send { conn: ConnId, payload: Vec<u8> },
    /// Close the connection after writing what was sent before.
    Close { conn: ConnId },
}

/// A blob the shell fetches through the media proxy for a simulated user (the same path as
/// `GET /proxy/{account}?url=`), then hands back with [`Hub::media_fetched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFetch {
    /// Names this fetch in [`Hub::media_fetched`].
    pub ticket: u64,
    /// The provider account whose registered media hosts may serve the blob.
    pub account: String,
    /// The blob's URL, from the media message.
    pub url: String,
}

/// Looks up provider accounts. The shell's book reads `<state>/accounts/`, so an account
/// `interop-hub provision` creates is seen at the next login.
pub trait AccountBook {
    /// The account's record, or `None` if it does not exist.
    fn lookup(&self, account: &str) -> Result<Option<AccountRecord>, StoreError>;
}

/// What went wrong below the hub core. The shell logs it; the stanza that hit it gets an
/// `internal` error.
#[derive(Debug)]
#[non_exhaustive]
pub enum HubError {
    /// Environment: the hub's store or a simulated device's store failed.
    Store(StoreError),
    /// Environment or peer: a simulated user could not act.
    Sim(SimError),
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Store(e) => write!(f, "{e}"),
            HubError::Sim(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HubError {}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Store(e)
    }
}

impl From<SimError> for HubError {
    fn from(e: SimError) -> Self {
        HubError::Sim(e)
    }
}

/// Why a control request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlError {
    /// Caller: no simulated user with this phone.
    UnknownUser,
    /// Caller: a field is malformed; the text says which.
    BadRequest { detail: String },
    /// Caller: the user exists already.
    Exists,
    /// Environment or peer.
    Hub(HubError),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::UnknownUser => f.write_str("no such simulated user"),
            ControlError::BadRequest { detail } => f.write_str(detail),
            ControlError::Exists => f.write_str("user exists already"),
            ControlError::Hub(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl<E: Into<HubError>> From<E> for ControlError {
    fn from(e: E) -> Self {
        ControlError::Hub(e.into())
    }
}

/// Counters for `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub logins: u64,
    pub stanzas_routed: u64,
    pub prekeys_handed_out: u64,
    pub media_proxied: u64,
    /// `<receipt type="retry">`s routed.
    pub retry_receipts_routed: u64,
    /// `<message count>`s (resends after a retry receipt) routed.
    pub resends_routed: u64,
}

/// A simulated user as the control API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub phone: String,
    pub devices: u32,
    pub behavior: String,
}

enum ConnState {
    Login(ServerLogin),
    Ready { device: Jid },
}

struct Conn {
    state: ConnState,
    last_rx_ms: u64,
}

/// Why a `<message>` is refused: the `error` code of its `<ack>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    UnknownUser,
    NotOptedIn,
    UnknownDevice,
    QueueFull,
    Internal,
}

impl Refusal {
    fn code(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::UnknownUser => "unknown_user",
            Refusal::NotOptedIn => "not_opted_in",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::QueueFull => "queue_full",
            Refusal::Internal => "internal",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::BadRequest => "malformed stanza",
            Refusal::UnknownUser => "unknown user",
            Refusal::NotOptedIn => "recipient has not opted in to third-party chats",
            Refusal::UnknownDevice => "a <to> names a device the recipient does not have",
            Refusal::QueueFull => "the recipient device's offline queue is full",
            Refusal::Internal => "server error",
        }
    }
}

impl From<HubError> for Refusal {
    fn from(e: HubError) -> Self {
        log::error!("hub: {e}");
        Refusal::Internal
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::from(HubError::Store(e))
    }
}

/// The reference gatekeeper's state machine.
pub struct Hub {
    store: HubStore,
    sim_root: PathBuf,
    sims: SimUsers,
    accounts: Box<dyn AccountBook>,
    conns: BTreeMap<ConnId, Conn>,
    online: HashMap<String, ConnId>,
    next_conn: ConnId,
    outputs: VecDeque<Output>,
    timers: BTreeMap<(u64, u64), (Jid, Stanza)>,
    next_timer: u64,
    low_notified: HashSet<String>,
    /// Stanzas for simulated devices, handled after the stanza that caused them is acked.
    sim_inbox: VecDeque<(Jid, Stanza)>,
    /// Media messages of simulated users waiting for their blobs, by ticket.
    pending_media: BTreeMap<u64, PendingMedia>,
    /// Media messages refused a fetch slot, to record as `busy` at the next drain.
    busy_media: Vec<PendingMedia>,
    /// Fetches for the shell to start ([`Hub::poll_media_fetch`]).
    media_fetches: VecDeque<MediaFetch>,
    next_ticket: u64,
    stats: Stats,
}

/// The directory as simulated users see it: bundles come from the same store, and low
/// counts are remembered for the core to act on afterwards.
struct SimDirectory<'a> {
    store: &'a HubStore,
    stats: &'a mut Stats,
    drained: Vec<Jid>,
}

impl Directory for SimDirectory<'_> {
    fn devices(&mut self, user: &Jid) -> Vec<u32> {
        self.store.devices_of(&user.user).unwrap_or_default()
    }

    fn bundle(&mut self, device: &Jid) -> Option<WireBundle> {
        let (bundle, low) = fetch_bundle(self.store, self.stats, device).ok()??;
        if low {
            self.drained.push(device.clone());
        }
        Some(bundle)
    }
}

/// A bundle for `device` from the directory, consuming one prekey. The flag says the
/// device's count is now below [`PREKEY_LOW_COUNT`].
fn fetch_bundle(
    store: &HubStore,
    stats: &mut Stats,
    device: &Jid,
) -> Result<Option<(WireBundle, bool)>, StoreError> {
    let key = device.device_key();
    let Some(rec) = store.device(&key)? else {
        return Ok(None);
    };
    let Some(signed) = rec.signed_prekey else {
        return Ok(None);
    };
    let prekey = store.take_prekey(&key)?;
    if prekey.is_some() {
        stats.prekeys_handed_out += 1;
    }
    let low = store.prekey_count(&key)? < PREKEY_LOW_COUNT;
    Ok(Some((
        WireBundle {
            registration_id: rec.registration_id,
            identity: rec.identity,
            signed_prekey: signed,
            prekey,
        },
        low,
    )))
}

fn unix_secs(now_ms: u64) -> String {
    (now_ms / 1000).to_string()
}

fn ack_key(class: &str, id: &str, kind: &str) -> String {
    format!("{class}|{id}|{kind}")
}

fn iq_error(id: &str, code: u16, text: &str) -> Stanza {
    Stanza::new("iq")
        .attr("id", id)
        .attr("type", "error")
        .child(
            Stanza::new("error")
                .attr("code", code.to_string())
                .attr("text", text),
        )
}

/// `<stream:error code text/>`, sent before the hub closes a connection.
pub fn stream_error(code: &str, text: &str) -> Stanza {
    Stanza::new("stream:error")
        .attr("code", code)
        .attr("text", text)
}

impl Hub {
    /// Opens the hub's state in `state_dir` (its store and the simulated users).
    pub fn open<R: Rng + CryptoRng>(
        state_dir: &Path,
        accounts: Box<dyn AccountBook>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Hub, HubError> {
        let store = HubStore::open(state_dir)?;
        let sim_root = state_dir.join("sim");
        let mut hub = Hub {
            store,
            sim_root,
            sims: SimUsers::default(),
            accounts,
            conns: BTreeMap::new(),
            online: HashMap::new(),
            next_conn: 1,
            outputs: VecDeque::new(),
            timers: BTreeMap::new(),
            next_timer: 0,
            low_notified: HashSet::new(),
            sim_inbox: VecDeque::new(),
            pending_media: BTreeMap::new(),
            busy_media: Vec::new(),
            media_fetches: VecDeque::new(),
            next_ticket: 0,
            stats: Stats::default(),
        };
        for (phone, rec) in hub.store.users()? {
            let behavior = Behavior::parse(&rec.behavior).unwrap_or(Behavior::Silent);
            let (user, actions) =
                SimUser::open(&hub.sim_root, &phone, rec.devices, behavior, now_ms, rng)?;
            hub.sims.users.insert(phone.clone(), user);
            hub.run_actions(actions, now_ms);
            hub.drain_sims(now_ms, rng);
            hub.flush_sim_queue(&phone, now_ms, rng);
        }
        Ok(hub)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// The next blob to fetch for a simulated user; the shell fetches it through the proxy and
    /// answers with [`media_fetched`](Self::media_fetched).
    pub fn poll_media_fetch(&mut self) -> Option<MediaFetch> {
        self.media_fetches.pop_front()
    }

    /// The shell fetched the blob of fetch `ticket` (`Ok`), or could not (`Err` with the
    /// proxy's error code). The simulated user verifies it, records it, and the echo user
    /// answers, with a fresh blob in `media_store` when there is one. A fetched blob counts in
    /// `media_proxied`.
    pub fn media_fetched<R: Rng + CryptoRng>(
        &mut self,
        ticket: u64,
        blob: Result<Vec<u8>, String>,
        media_store: Option<&MediaStore>,
        now_ms: u64,
        rng: &mut R,
    ) {
        let Some(pending) = self.pending_media.remove(&ticket) else {
            return;
        };
        if blob.is_ok() {
            self.stats.media_proxied += 1;
        }
        self.sim_media_done(&pending, blob, media_store, now_ms, rng);
        self.drain_sims(now_ms, rng);
    }

    fn sim_media_done<R: Rng + CryptoRng>(
        &mut self,
        pending: &PendingMedia,
        blob: Result<Vec<u8>, String>,
        media_store: Option<&MediaStore>,
        now_ms: u64,
        rng: &mut R,
    ) {
        let Hub {
            sims, store, stats, ..
        } = self;
        let Some(user) = sims.users.get_mut(&pending.phone) else {
            return;
        };
        let mut dir = SimDirectory {
            store,
            stats,
            drained: Vec::new(),
        };
        let result = user.media_fetched(pending, blob, media_store, &mut dir, now_ms, rng);
        let drained = dir.drained;
        match result {
            Ok(actions) => self.run_actions(actions, now_ms),
            Err(e) => log::warn!("hub: simulated {}: {e}", pending.phone),
        }
        for d in drained {
            self.prekeys_low(&d, now_ms, rng);
        }
    }

    /// Counts one blob served by the media proxy.
    pub fn count_media_proxied(&mut self) {
        self.stats.media_proxied += 1;
    }

    /// Stanzas waiting in offline queues.
    pub fn queue_depth(&self) -> u64 {
        self.store.queue_depth().unwrap_or(0)
    }

    /// How many one-time prekeys the directory holds for a device (tests, stats).
    pub fn prekey_count(&self, device: &Jid) -> Result<u64, StoreError> {
        self.store.prekey_count(&device.device_key())
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    // ---- connections ------------------------------------------------------------------

    /// A new connection at `now_ms`; it must log in within [`login::LOGIN_TIMEOUT_MS`].
    pub fn connect(&mut self, now_ms: u64) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                state: ConnState::Login(ServerLogin::new(now_ms)),
                last_rx_ms: now_ms,
            },
        );
        id
    }

    /// The shell saw the connection end.
    pub fn disconnected(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn)
            && let ConnState::Ready { device } = c.state
        {
            let key = device.device_key();
            if self.online.get(&key) == Some(&conn) {
                self.online.remove(&key);
            }
        }
    }

    /// The shell's frame decoder failed on this connection (`reason` from
    /// [`interop_proto::frame::FrameError::reason`]).
    pub fn frame_error(&mut self, conn: ConnId, reason: &str) {
        self.close_with(conn, reason, "frame refused");
    }

    /// Closes every connection (`POST /connections/drop`). Returns how many.
    pub fn drop_connections(&mut self) -> usize {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in &ids {
            self.outputs.push_back(Output::Close { conn: *id });
            self.disconnected(*id);
        }
        ids.len()
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<u64> {
        let conn = self
            .conns
            .values()
            .map(|c| match &c.state {
                ConnState::Login(l) => l.deadline_ms(),
                ConnState::Ready { .. } => c.last_rx_ms.saturating_add(IDLE_TIMEOUT_MS),
            })
            .min();
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        match (conn, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs everything due at `now_ms`: login timeouts, idle closes, delayed receipts.
    pub fn handle_timeout<R: Rng + CryptoRng>(&mut self, now_ms: u64, rng: &mut R) {
        let mut expired = Vec::new();
        for (id, c) in &self.conns {
            match &c.state {
                ConnState::Login(l) if l.deadline_ms() <= now_ms => expired.push((*id, true)),
                ConnState::Ready { .. }
                    if c.last_rx_ms.saturating_add(IDLE_TIMEOUT_MS) <= now_ms =>
                {
                    expired.push((*id, false))
                }
                _ => {}
            }
        }
        for (id, in_login) in expired {
            if in_login {
                self.send(id, &login::failure_stanza(&LoginFailure::Timeout));
                self.outputs.push_back(Output::Close { conn: id });
                self.disconnected(id);
            } else {
                self.close_with(id, "idle_timeout", "no stanza for too long");
            }
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let (from, stanza) = entry.remove();
            let _ = self.route(&from, &stanza, now_ms);
        }
        self.drain_sims(now_ms, rng);
    }

    fn send(&mut self, conn: ConnId, s: &Stanza) {
        self.outputs.push_back(Output::Send {
            conn,
            payload: s.to_xml(),
        });
    }

    fn close_with(&mut self, conn: ConnId, code: &str, text: &str) {
        if self.conns.contains_key(&conn) {
            self.send(conn, &stream_error(code, text));
            self.outputs.push_back(Output::Close { conn });
            self.disconnected(conn);
        }
    }

    /// Handles one frame's payload from a connection.
    pub fn handle_frame<R: Rng + CryptoRng>(
        &mut self,
        conn: ConnId,
        payload: &[u8],
        now_ms: u64,
        rng: &mut R,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_rx_ms = now_ms;
        let s = match stanza::parse(payload) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("hub: connection {conn}: {e}");
                let text = e.to_string();
                self.close_with(conn, e.reason(), &text);
                return;
            }
        };
        match &mut c.state {
            ConnState::Login(l) => {
                let accounts = &self.accounts;
                let step = l.handle(
                    &s,
                    |name| accounts.lookup(name).map_err(|_| LoginFailure::Internal),
                    rng,
                );
                match step {
                    Ok(ServerStep::Send(out)) => self.send(conn, &out),
                    Ok(ServerStep::Verified(v)) => self.logged_in(conn, v, now_ms),
                    Err(f) => {
                        log::info!("hub: login on connection {conn} refused: {}", f.reason());
                        self.send(conn, &login::failure_stanza(&f));
                        self.outputs.push_back(Output::Close { conn });
                        self.disconnected(conn);
                    }
                }
            }
            ConnState::Ready { device } => {
                let device = device.clone();
                self.handle_ready(conn, &device, &s, now_ms, rng);
            }
        }
        self.drain_sims(now_ms, rng);
    }

    fn logged_in(&mut self, conn: ConnId, v: login::Verified, now_ms: u64) {
        let device = v.hello.jid();
        let key = device.device_key();
        let old = match self.store.device(&key) {
            Ok(o) => o,
            Err(e) => {
                log::error!("hub: {e}");
                self.send(conn, &login::failure_stanza(&LoginFailure::Internal));
                self.outputs.push_back(Output::Close { conn });
                self.disconnected(conn);
                return;
            }
        };
        let enlisted = old.as_ref().is_none_or(|o| o.identity != v.identity);
        let mut new_device = old.is_none();
        if enlisted {
            let rec = DeviceRecord {
                registration_id: v.registration_id,
                identity: v.identity,
                signed_prekey: None,
                enlisted_ms: now_ms,
            };
            if let Err(e) = self.store.put_device(&key, &rec) {
                log::error!("hub: {e}");
                self.send(conn, &login::failure_stanza(&LoginFailure::Internal));
                self.outputs.push_back(Output::Close { conn });
                self.disconnected(conn);
                return;
            }
            self.low_notified.remove(&key);
        } else {
            new_device = false;
        }
        if let Some(prev) = self.online.insert(key.clone(), conn)
            && prev != conn
        {
            self.close_with(
                prev,
                "replaced",
                "another connection logged in as this device",
            );
            self.online.insert(key.clone(), conn);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Ready {
                device: device.clone(),
            };
        }
        self.stats.logins += 1;
        log::info!("hub: {device} logged in (enlisted: {enlisted})");
        self.send(
            conn,
            &login::success_stanza(&device, now_ms / 1000, enlisted),
        );
        if enlisted && !new_device {
            self.identity_changed(&device, now_ms);
        } else if new_device {
            self.devices_changed(&device.to_user(), now_ms);
        }
        match self.store.queued(&key) {
            Ok(q) => {
                for item in q {
                    self.outputs.push_back(Output::Send {
                        conn,
                        payload: item.xml,
                    });
                }
            }
            Err(e) => log::error!("hub: {e}"),
        }
    }

    fn handle_ready<R: Rng + CryptoRng>(
        &mut self,
        conn: ConnId,
        device: &Jid,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) {
        match s.tag.as_str() {
            "iq" => {
                let reply = self.handle_iq(device, s, now_ms, rng);
                self.send(conn, &reply);
            }
            "message" | "receipt" => {
                let class = s.tag.clone();
                let ack = match self.route(device, s, now_ms) {
                    Ok(to) => {
                        let mut a = Stanza::new("ack")
                            .attr("class", class)
                            .attr("id", s.attr_value("id").unwrap_or(""))
                            .attr("to", to)
                            .attr("t", unix_secs(now_ms));
                        if let Some(t) = s.attr_value("type").filter(|_| s.tag == "receipt") {
                            a = a.attr("type", t);
                        }
                        a
                    }
                    Err(r) => Stanza::new("ack")
                        .attr("class", class)
                        .attr("id", s.attr_value("id").unwrap_or(""))
                        .attr("t", unix_secs(now_ms))
                        .attr("error", r.code())
                        .attr("text", r.text()),
                };
                self.send(conn, &ack);
            }
            "ack" => {
                let class = s.attr_value("class").unwrap_or("");
                let id = s.attr_value("id").unwrap_or("");
                let kind = s.attr_value("type").unwrap_or("");
                let kind = if class == "receipt" { kind } else { "" };
                if let Err(e) = self
                    .store
                    .ack(&device.device_key(), &ack_key(class, id, kind))
                {
                    log::error!("hub: {e}");
                }
            }
            "chatstate" => {
                let _ = self.route(device, s, now_ms);
            }
            other => {
                let text = format!("unknown stanza <{other}>");
                self.close_with(conn, "unknown_stanza", &text);
            }
        }
    }

    // ---- iq -----------------------------------------------------------------------------

    fn handle_iq<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Stanza {
        let id = s.attr_value("id").unwrap_or("");
        if id.is_empty() || id.len() > MAX_IQ_ID_BYTES {
            return iq_error("", 400, "bad_request");
        }
        let result = Stanza::new("iq").attr("id", id).attr("type", "result");
        match (s.attr_value("xmlns"), s.attr_value("type")) {
            (Some("w:p"), Some("get")) => result,
            (Some("encrypt"), Some("set")) => match self.upload(device, s) {
                Ok(()) => result,
                Err((code, text)) => iq_error(id, code, text),
            },
            (Some("encrypt"), Some("get")) if s.child_named("count").is_some() => {
                match self.store.prekey_count(&device.device_key()) {
                    Ok(n) => result.child(Stanza::new("count").attr("value", n.to_string())),
                    Err(e) => {
                        log::error!("hub: {e}");
                        iq_error(id, 500, "internal")
                    }
                }
            }
            (Some("encrypt"), Some("get")) => {
                let Some(key) = s.child_named("key") else {
                    return iq_error(id, 400, "bad_request");
                };
                let users: Vec<&Stanza> = key.children_named("user").collect();
                if users.is_empty() || users.len() > MAX_FETCH_DEVICES {
                    return iq_error(id, 400, "bad_request");
                }
                let mut list = Stanza::new("list");
                for u in users {
                    let jid_text = u.attr_value("jid").unwrap_or("");
                    let entry = match Jid::parse(jid_text) {
                        Ok(j) if j.device.is_some() => self.fetch_for_wire(&j, now_ms, rng),
                        _ => Stanza::new("user").attr("jid", jid_text).child(
                            Stanza::new("error")
                                .attr("code", "400")
                                .attr("text", "bad_jid"),
                        ),
                    };
                    list = list.child(entry);
                }
                result.child(list)
            }
            (Some("devices"), Some("get")) => {
                let users: Vec<&Stanza> = s.children_named("user").collect();
                if users.is_empty() || users.len() > MAX_DEVICE_QUERY_USERS {
                    return iq_error(id, 400, "bad_request");
                }
                let mut out = result;
                for u in users {
                    let jid_text = u.attr_value("jid").unwrap_or("");
                    let entry = match Jid::parse(jid_text) {
                        Ok(j) if j.device.is_none() => match self.store.devices_of(&j.user) {
                            Ok(ds) if !ds.is_empty() => {
                                Stanza::new("user").attr("jid", jid_text).extend_children(
                                    ds.into_iter()
                                        .map(|d| Stanza::new("device").attr("id", d.to_string())),
                                )
                            }
                            Ok(_) => Stanza::new("user").attr("jid", jid_text).child(
                                Stanza::new("error")
                                    .attr("code", "404")
                                    .attr("text", "unknown_user"),
                            ),
                            Err(e) => {
                                log::error!("hub: {e}");
                                return iq_error(id, 500, "internal");
                            }
                        },
                        _ => Stanza::new("user").attr("jid", jid_text).child(
                            Stanza::new("error")
                                .attr("code", "400")
                                .attr("text", "bad_jid"),
                        ),
                    };
                    out = out.child(entry);
                }
                out
            }
            _ => iq_error(id, 400, "bad_request"),
        }
    }

    fn fetch_for_wire<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        now_ms: u64,
        rng: &mut R,
    ) -> Stanza {
        match fetch_bundle(&self.store, &mut self.stats, device) {
            Ok(Some((b, low))) => {
                if low {
                    self.prekeys_low(device, now_ms, rng);
                }
                bundle_stanza(device, &b)
            }
            Ok(None) => Stanza::new("user").attr("jid", device.to_string()).child(
                Stanza::new("error")
                    .attr("code", "404")
                    .attr("text", "item_not_found"),
            ),
            Err(e) => {
                log::error!("hub: {e}");
                Stanza::new("user").attr("jid", device.to_string()).child(
                    Stanza::new("error")
                        .attr("code", "500")
                        .attr("text", "internal"),
                )
            }
        }
    }

    /// A device's count fell below [`PREKEY_LOW_COUNT`]: simulated devices top up, ours get
    /// one count notification until they upload again.
    fn prekeys_low<R: Rng + CryptoRng>(&mut self, device: &Jid, now_ms: u64, rng: &mut R) {
        let key = device.device_key();
        match device.server {
            Server::WhatsApp => {
                let actions = match self.sims.users.get_mut(&device.user) {
                    Some(u) => u.refill(device.device.unwrap_or(0), rng),
                    None => return,
                };
                match actions {
                    Ok(a) => self.run_actions(a, now_ms),
                    Err(e) => log::error!("hub: refill {device}: {e}"),
                }
            }
            Server::Interop => {
                if !self.low_notified.insert(key.clone()) {
                    return;
                }
                let count = self.store.prekey_count(&key).unwrap_or(0);
                let n = Stanza::new("notification")
                    .attr("type", "encrypt")
                    .child(Stanza::new("count").attr("value", count.to_string()));
                self.notify(device, n, now_ms);
            }
        }
    }

    fn upload(&mut self, device: &Jid, s: &Stanza) -> Result<(), (u16, &'static str)> {
        let bad = (400, "bad_request");
        let key = device.device_key();
        let reg: [u8; 4] = s
            .child_named("registration")
            .and_then(Stanza::payload)
            .and_then(|p| p.try_into().ok())
            .ok_or(bad)?;
        let registration_id = u32::from_be_bytes(reg);
        if s.child_named("type").and_then(Stanza::payload) != Some(&[signal::KEY_TYPE_DJB][..]) {
            return Err(bad);
        }
        let identity = raw32(s, "identity").ok_or(bad)?;
        let signed = s
            .child_named("skey")
            .and_then(parse_signed_prekey)
            .ok_or(bad)?;
        let list = s.child_named("list").ok_or(bad)?;
        if list.children().len() > MAX_UPLOAD_PREKEYS {
            return Err(bad);
        }
        let mut keys = Vec::with_capacity(list.children().len());
        for k in list.children_named("key") {
            keys.push(parse_prekey(k).ok_or(bad)?);
        }
        let rec = self
            .store
            .device(&key)
            .map_err(|_| (500, "internal"))?
            .ok_or((500, "internal"))?;
        if rec.identity != identity {
            return Err((409, "identity_mismatch"));
        }
        let spk_pub = signal_key_bytes(&signed.public);
        if !signal::verify_signature(&identity, &spk_pub, &signed.signature) {
            return Err((406, "bad_signature"));
        }
        self.store
            .upload_keys(&key, registration_id, &signed, &keys)
            .map_err(|e| {
                log::error!("hub: {e}");
                (500, "internal")
            })?;
        self.low_notified.remove(&key);
        Ok(())
    }

    // ---- routing ------------------------------------------------------------------------

    /// Routes a `<message>`, `<receipt>` or `<chatstate>` from `from` (a device). Returns the
    /// recipient user JID for the ack.
    fn route(&mut self, from: &Jid, s: &Stanza, now_ms: u64) -> Result<String, Refusal> {
        let to = s
            .attr_value("to")
            .and_then(|t| Jid::parse(t).ok())
            .ok_or(Refusal::BadRequest)?;
        match s.tag.as_str() {
            "message" => self.route_message(from, &to, s, now_ms),
            "receipt" => self.route_receipt(from, &to, s, now_ms),
            "chatstate" => {
                let state = s.children().first().ok_or(Refusal::BadRequest)?;
                if !matches!(state.tag.as_str(), "composing" | "paused") {
                    return Err(Refusal::BadRequest);
                }
                let out = Stanza::new("chatstate")
                    .attr("from", from.to_string())
                    .attr("to", to.to_user().to_string())
                    .child(Stanza::new(state.tag.clone()));
                for d in self.store.devices_of(&to.user)? {
                    let key = to.with_device(d).device_key();
                    if let Some(conn) = self.online.get(&key).copied() {
                        self.send(conn, &out);
                    }
                }
                Ok(to.to_string())
            }
            _ => Err(Refusal::BadRequest),
        }
    }

    fn check_recipient(&self, to: &Jid) -> Result<(), Refusal> {
        match to.server {
            Server::WhatsApp => match self.sims.users.get(&to.user) {
                None => Err(Refusal::UnknownUser),
                Some(u) if u.behavior == Behavior::NotOptedIn => Err(Refusal::NotOptedIn),
                Some(_) => Ok(()),
            },
            Server::Interop => {
                if self.store.devices_of(&to.user)?.is_empty() {
                    Err(Refusal::UnknownUser)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn route_message(
        &mut self,
        from: &Jid,
        to: &Jid,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<String, Refusal> {
        let id = s.attr_value("id").ok_or(Refusal::BadRequest)?;
        content::MessageId::parse(id).map_err(|_| Refusal::BadRequest)?;
        let kind = s.attr_value("type").ok_or(Refusal::BadRequest)?;
        if !matches!(kind, "text" | "media" | "reaction") || to.device.is_some() {
            return Err(Refusal::BadRequest);
        }
        self.check_recipient(to)?;
        let participants = s.child_named("participants").ok_or(Refusal::BadRequest)?;
        let tos: Vec<&Stanza> = participants.children_named("to").collect();
        if tos.is_empty() || tos.len() > MAX_PARTICIPANTS {
            return Err(Refusal::BadRequest);
        }
        let to_devices = self.store.devices_of(&to.user)?;
        let own_devices = self.store.devices_of(&from.user)?;
        let mut deliveries = Vec::with_capacity(tos.len());
        for t in tos {
            let target = t
                .attr_value("jid")
                .and_then(|j| Jid::parse(j).ok())
                .ok_or(Refusal::BadRequest)?;
            let dev = target.device.ok_or(Refusal::BadRequest)?;
            let known = (target.to_user() == to.to_user() && to_devices.contains(&dev))
                || (target.to_user() == from.to_user()
                    && target != *from
                    && own_devices.contains(&dev));
            if !known {
                return Err(Refusal::UnknownDevice);
            }
            let enc = t.child_named("enc").ok_or(Refusal::BadRequest)?;
            if enc.payload().is_none()
                || !matches!(enc.attr_value("type"), Some("pkmsg" | "msg"))
                || enc.attr_value("v") != Some("2")
            {
                return Err(Refusal::BadRequest);
            }
            let mut out = Stanza::new("message")
                .attr("id", id)
                .attr("from", from.to_string())
                .attr("to", to.to_string())
                .attr("type", kind)
                .attr("t", unix_secs(now_ms));
            if let Some(count) = s.attr_value("count") {
                out = out.attr("count", count);
            }
            deliveries.push((target, out.child(enc.clone())));
        }
        for (target, out) in deliveries {
            self.deliver(&target, out, &ack_key("message", id, ""))?;
        }
        self.stats.stanzas_routed += 1;
        if s.attr_value("count").is_some() {
            self.stats.resends_routed += 1;
        }
        if let Err(e) = self
            .store
            .add_contact(&from.to_user().to_string(), &to.to_string())
        {
            log::error!("hub: {e}");
        }
        Ok(to.to_string())
    }

    fn route_receipt(
        &mut self,
        from: &Jid,
        to: &Jid,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<String, Refusal> {
        let id = s.attr_value("id").ok_or(Refusal::BadRequest)?;
        content::MessageId::parse(id).map_err(|_| Refusal::BadRequest)?;
        let kind = s.attr_value("type").unwrap_or("");
        if !matches!(kind, "" | "read" | "retry") {
            return Err(Refusal::BadRequest);
        }
        let devices = match to.device {
            Some(d) => vec![d],
            None => self.store.devices_of(&to.user)?,
        };
        if devices.is_empty() && to.server == Server::Interop {
            return Err(Refusal::UnknownUser);
        }
        let mut out = Stanza::new("receipt")
            .attr("id", id)
            .attr("from", from.to_string())
            .attr("to", to.to_user().to_string())
            .attr("t", unix_secs(now_ms));
        if !kind.is_empty() {
            out = out.attr("type", kind);
        }
        out.content = s.content.clone();
        for d in devices {
            self.deliver(
                &to.with_device(d),
                out.clone(),
                &ack_key("receipt", id, kind),
            )?;
        }
        self.stats.stanzas_routed += 1;
        if kind == "retry" {
            self.stats.retry_receipts_routed += 1;
        }
        Ok(to.to_string())
    }

    /// Puts a stanza on its way to one device: queued (and sent if online) for ours,
    /// handed to the simulated user for theirs (queued while it is offline).
    fn deliver(&mut self, device: &Jid, s: Stanza, ack: &str) -> Result<(), Refusal> {
        let key = device.device_key();
        if device.server == Server::WhatsApp {
            let offline = match self.sims.users.get(&device.user) {
                Some(u) => u.behavior == Behavior::Offline,
                None => return Ok(()),
            };
            if !offline {
                self.sim_inbox.push_back((device.clone(), s));
                return Ok(());
            }
        }
        let xml = s.to_xml();
        self.store
            .enqueue(&key, ack, &xml)?
            .ok_or(Refusal::QueueFull)?;
        if let Some(conn) = self.online.get(&key).copied() {
            self.outputs.push_back(Output::Send { conn, payload: xml });
        }
        Ok(())
    }

    fn notify(&mut self, device: &Jid, n: Stanza, now_ms: u64) {
        let id = match self.store.next_counter("notification_seq") {
            Ok(n) => format!("{n:016X}"),
            Err(e) => {
                log::error!("hub: {e}");
                return;
            }
        };
        let mut n = n;
        n.attrs.insert(0, ("id".into(), id.clone()));
        n = n.attr("t", unix_secs(now_ms));
        if let Err(r) = self.deliver(device, n, &ack_key("notification", &id, "")) {
            log::warn!("hub: notification to {device} dropped: {}", r.code());
        }
    }

    /// Tells every contact of `user`'s device that its identity changed, and makes the
    /// simulated users forget their sessions with it.
    fn identity_changed(&mut self, device: &Jid, now_ms: u64) {
        let user = device.to_user();
        for u in self.sims.users.values_mut() {
            if let Err(e) = u.forget_device(device) {
                log::error!("hub: {e}");
            }
        }
        let n = Stanza::new("notification")
            .attr("type", "identity")
            .attr("from", user.to_string());
        self.notify_contacts(&user, n, now_ms);
    }

    fn devices_changed(&mut self, user: &Jid, now_ms: u64) {
        let devices = self.store.devices_of(&user.user).unwrap_or_default();
        let n = Stanza::new("notification")
            .attr("type", "devices")
            .attr("from", user.to_string())
            .extend_children(
                devices
                    .into_iter()
                    .map(|d| Stanza::new("device").attr("id", d.to_string())),
            );
        self.notify_contacts(user, n, now_ms);
    }

    fn notify_contacts(&mut self, user: &Jid, n: Stanza, now_ms: u64) {
        let contacts = self
            .store
            .contacts_of(&user.to_string())
            .unwrap_or_default();
        for c in contacts {
            let Ok(c) = Jid::parse(&c) else { continue };
            if c.server != Server::Interop {
                continue;
            }
            for d in self.store.devices_of(&c.user).unwrap_or_default() {
                self.notify(&c.with_device(d), n.clone(), now_ms);
            }
        }
    }

    // ---- simulated users ----------------------------------------------------------------

    /// Lets simulated users handle what was delivered to them, and what their answers cause.
    fn drain_sims<R: Rng + CryptoRng>(&mut self, now_ms: u64, rng: &mut R) {
        loop {
            if let Some((device, s)) = self.sim_inbox.pop_front() {
                self.sim_receive(&device, &s, now_ms, rng);
            } else if let Some(p) = self.busy_media.pop() {
                self.sim_media_done(&p, Err("busy".into()), None, now_ms, rng);
            } else {
                return;
            }
        }
    }

    fn sim_receive<R: Rng + CryptoRng>(
        &mut self,
        device: &Jid,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) {
        let retry = s.tag == "receipt" && s.attr_value("type") == Some("retry");
        if s.tag != "message" && !retry {
            return;
        }
        let Hub {
            sims, store, stats, ..
        } = self;
        let Some(user) = sims.users.get_mut(&device.user) else {
            return;
        };
        let mut dir = SimDirectory {
            store,
            stats,
            drained: Vec::new(),
        };
        let d = device.device.unwrap_or(0);
        let result = if retry {
            user.receive_retry(d, s, &mut dir, now_ms, rng)
        } else {
            user.receive(d, s, &mut dir, now_ms, rng)
        };
        let drained = dir.drained;
        match result {
            Ok(actions) => self.run_actions(actions, now_ms),
            Err(e) => log::warn!("hub: simulated {device}: {e}"),
        }
        for d in drained {
            self.prekeys_low(&d, now_ms, rng);
        }
    }

    fn run_actions(&mut self, actions: Vec<SimAction>, now_ms: u64) {
        for a in actions {
            match a {
                SimAction::Send { from, stanza } => {
                    if let Err(r) = self.route(&from, &stanza, now_ms) {
                        log::warn!("hub: simulated {from} send refused: {}", r.code());
                    }
                }
                SimAction::Later {
                    at_ms,
                    from,
                    stanza,
                } => {
                    self.next_timer += 1;
                    self.timers.insert((at_ms, self.next_timer), (from, stanza));
                }
                SimAction::Publish {
                    device,
                    registration_id,
                    identity,
                    signed,
                    prekeys,
                } => {
                    let key = device.device_key();
                    let result = self.store.device(&key).and_then(|old| {
                        let rec = DeviceRecord {
                            registration_id,
                            identity,
                            signed_prekey: None,
                            enlisted_ms: old.map(|o| o.enlisted_ms).unwrap_or(now_ms),
                        };
                        self.store.put_device(&key, &rec)?;
                        self.store
                            .upload_keys(&key, registration_id, &signed, &prekeys)
                    });
                    if let Err(e) = result {
                        log::error!("hub: publish {device}: {e}");
                    }
                }
                SimAction::Record { phone, json } => {
                    let bytes = json.to_string().into_bytes();
                    if let Err(e) = self.store.push_received(&phone, &bytes) {
                        log::error!("hub: {e}");
                    }
                }
                SimAction::FetchMedia(pending) => {
                    if self.pending_media.len() >= MAX_PENDING_MEDIA_FETCHES {
                        log::warn!(
                            "hub: too many media fetches waiting; {} not fetched",
                            pending.id
                        );
                        self.busy_media.push(*pending);
                        continue;
                    }
                    self.next_ticket += 1;
                    let ticket = self.next_ticket;
                    self.media_fetches.push_back(MediaFetch {
                        ticket,
                        account: pending.from.user.clone(),
                        url: pending.url.clone(),
                    });
                    self.pending_media.insert(ticket, *pending);
                }
            }
        }
    }

    /// Delivers what waited for a simulated user while it was offline.
    fn flush_sim_queue<R: Rng + CryptoRng>(&mut self, phone: &str, now_ms: u64, rng: &mut R) {
        let Some(u) = self.sims.users.get(phone) else {
            return;
        };
        if u.behavior == Behavior::Offline {
            return;
        }
        let devices: Vec<u32> = u.devices.iter().map(|d| d.device).collect();
        for d in devices {
            let jid = Jid::whatsapp(phone.to_owned(), Some(d));
            let key = jid.device_key();
            let Ok(items) = self.store.queued(&key) else {
                continue;
            };
            for item in items {
                if let Ok(s) = stanza::parse(&item.xml) {
                    self.sim_receive(&jid, &s, now_ms, rng);
                    self.drain_sims(now_ms, rng);
                }
                if let Err(e) = self.store.dequeue(&key, item.seq) {
                    log::error!("hub: {e}");
                }
            }
        }
    }

    // ---- control ------------------------------------------------------------------------

    /// Every simulated user.
    pub fn users(&self) -> Vec<UserInfo> {
        self.sims
            .users
            .values()
            .map(|u| UserInfo {
                phone: format!("+{}", u.phone),
                devices: u.devices.len() as u32,
                behavior: u.behavior.to_string(),
            })
            .collect()
    }

    fn sim_phone(&self, phone: &str) -> Result<String, ControlError> {
        let digits = jid::parse_phone(phone).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        if self.sims.users.contains_key(&digits) {
            Ok(digits)
        } else {
            Err(ControlError::UnknownUser)
        }
    }

    /// Creates a simulated user (`POST /users`).
    pub fn create_user<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        devices: u32,
        behavior: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<UserInfo, ControlError> {
        let digits = jid::parse_phone(phone).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        let behavior = Behavior::parse(behavior).ok_or_else(|| ControlError::BadRequest {
            detail: "behavior must be echo, silent, read_after:SECONDS, not_opted_in or offline"
                .into(),
        })?;
        if !(1..=crate::users::MAX_SIM_DEVICES).contains(&devices) {
            return Err(ControlError::BadRequest {
                detail: format!("devices must be 1..={}", crate::users::MAX_SIM_DEVICES),
            });
        }
        if self.sims.users.contains_key(&digits) {
            return Err(ControlError::Exists);
        }
        if self.sims.users.len() >= MAX_SIM_USERS {
            return Err(ControlError::BadRequest {
                detail: format!("at most {MAX_SIM_USERS} simulated users"),
            });
        }
        let (user, actions) =
            SimUser::open(&self.sim_root, &digits, devices, behavior, now_ms, rng)?;
        self.store.put_user(
            &digits,
            &UserRecord {
                devices,
                behavior: behavior.to_string(),
            },
        )?;
        self.sims.users.insert(digits.clone(), user);
        self.run_actions(actions, now_ms);
        Ok(UserInfo {
            phone: format!("+{digits}"),
            devices,
            behavior: behavior.to_string(),
        })
    }

    /// Changes a simulated user's behaviour; leaving `offline` delivers what waited.
    pub fn set_behavior<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        behavior: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<UserInfo, ControlError> {
        let digits = self.sim_phone(phone)?;
        let b = Behavior::parse(behavior).ok_or_else(|| ControlError::BadRequest {
            detail: "unknown behavior".into(),
        })?;
        let devices = match self.sims.users.get_mut(&digits) {
            Some(u) => {
                u.behavior = b;
                u.devices.len() as u32
            }
            None => return Err(ControlError::UnknownUser),
        };
        self.store.put_user(
            &digits,
            &UserRecord {
                devices,
                behavior: b.to_string(),
            },
        )?;
        self.flush_sim_queue(&digits, now_ms, rng);
        Ok(UserInfo {
            phone: format!("+{digits}"),
            devices,
            behavior: b.to_string(),
        })
    }

    /// Makes a simulated user send `message` to an interop account, or to another simulated
    /// user named by its `+phone` (`POST /users/{p}/send`). Returns the message id.
    pub fn sim_send<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        to_account: &str,
        message: &Message,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<String, ControlError> {
        let digits = self.sim_phone(phone)?;
        let to = if to_account.starts_with('+') {
            Jid::whatsapp(self.sim_phone(to_account)?, None)
        } else {
            let to_user = to_account.split(['@', ':']).next().unwrap_or(to_account);
            jid::check_account(to_user).map_err(|e| ControlError::BadRequest {
                detail: e.to_string(),
            })?;
            Jid::interop(to_user.to_owned(), None)
        };
        let Hub {
            sims, store, stats, ..
        } = self;
        let Some(user) = sims.users.get_mut(&digits) else {
            return Err(ControlError::UnknownUser);
        };
        let mut dir = SimDirectory {
            store,
            stats,
            drained: Vec::new(),
        };
        let result = user.encrypt_message(&to, message, &mut dir, now_ms, rng);
        let drained = dir.drained;
        for d in drained {
            self.prekeys_low(&d, now_ms, rng);
        }
        let stanza = result.map_err(|e| match e {
            SimError::NoDevices { .. } => ControlError::BadRequest {
                detail: format!("{to} has no devices with published keys"),
            },
            other => ControlError::Hub(HubError::Sim(other)),
        })?;
        let id = stanza.attr_value("id").unwrap_or("").to_owned();
        let from = Jid::whatsapp(digits, Some(0));
        let routed = self.route(&from, &stanza, now_ms);
        self.drain_sims(now_ms, rng);
        routed.map_err(|r| ControlError::BadRequest {
            detail: r.text().into(),
        })?;
        Ok(id)
    }

    /// What a simulated user decrypted, as JSON objects.
    pub fn received(&self, phone: &str) -> Result<Vec<serde_json::Value>, ControlError> {
        let digits = self.sim_phone(phone)?;
        Ok(self
            .store
            .received(&digits)?
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect())
    }

    /// Gives a simulated user new identities (`POST /users/{p}/reinstall`). With `notify`,
    /// its contacts are told (an `identity` notification; other simulated users drop their
    /// sessions with it); without, they learn only from retry receipts, as when the
    /// notification is lost.
    pub fn reinstall<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        notify: bool,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ControlError> {
        let digits = self.sim_phone(phone)?;
        let root = self.sim_root.clone();
        let (actions, devices) = match self.sims.users.get_mut(&digits) {
            Some(u) => {
                let actions = u.reinstall(&root, now_ms, rng)?;
                let devices: Vec<u32> = u.devices.iter().map(|d| d.device).collect();
                (actions, devices)
            }
            None => return Err(ControlError::UnknownUser),
        };
        self.run_actions(actions, now_ms);
        self.drain_sims(now_ms, rng);
        if !notify {
            return Ok(());
        }
        for (phone, u) in self.sims.users.iter_mut() {
            if *phone == digits {
                continue;
            }
            for d in &devices {
                if let Err(e) = u.forget_device(&Jid::whatsapp(digits.clone(), Some(*d))) {
                    log::error!("hub: {e}");
                }
            }
        }
        let user = Jid::whatsapp(digits, None);
        let n = Stanza::new("notification")
            .attr("type", "identity")
            .attr("from", user.to_string());
        self.notify_contacts(&user, n, now_ms);
        Ok(())
    }
}

/// The 33-byte serialized form the Signal crate signs for a signed prekey: 0x05 || key.
fn signal_key_bytes(public: &RawKey) -> [u8; 33] {
    let mut out = [signal::KEY_TYPE_DJB; 33];
    for (slot, b) in out.iter_mut().skip(1).zip(public) {
        *slot = *b;
    }
    out
}
