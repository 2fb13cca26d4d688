//! The hub's core state machine: every connection, the routing between them, the per-device
//! offline queues, the prekey directory, notifications, and the simulated users.
//! Sans-I/O in the quinn-proto manner: the shell feeds it frame payloads
//! ([`Hub::handle_frame`]), connection events and `now_ms`, and drains [`Output`]s
//! ([`Hub::poll_output`]) and the next deadline ([`Hub::poll_timeout`]). It touches no
//! socket and reads no clock; randomness comes from the caller's RNG. Its durable state
//! lives in [`HubStore`] and the simulated devices' stores.
//!
//! [`Hub`] is one type split by noun, one file each: `connections.rs` (accept, login, frames,
//! timeouts), `directory.rs` (the `<iq>`s and the prekey directory), `groups.rs` (groups,
//! their `w:g2` iqs, `w:gp2` notifications and group messages), `routing.rs` (messages,
//! receipts, queues, notifications), `sims.rs` (the simulated users) and `control.rs` (what
//! the control API asks). This file holds the state, its types and the media fetches.
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

mod connections;
mod control;
mod directory;
mod groups;
#[cfg(test)]
mod groups_tests;
mod routing;
mod sims;

pub use groups::{GroupInfo, MAX_GROUPS_PER_USER};

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
    /// Caller: no group with this id.
    UnknownGroup,
    /// Caller: the user named is not a member of the group.
    NotMember,
    /// Environment or peer.
    Hub(HubError),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::UnknownUser => f.write_str("no such simulated user"),
            ControlError::BadRequest { detail } => f.write_str(detail),
            ControlError::Exists => f.write_str("user exists already"),
            ControlError::UnknownGroup => f.write_str("no such group"),
            ControlError::NotMember => f.write_str("not a member of the group"),
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
    UnknownGroup,
    NotMember,
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
            Refusal::UnknownGroup => "unknown_group",
            Refusal::NotMember => "not_member",
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
            Refusal::UnknownGroup => "no such group",
            Refusal::NotMember => "the sender is not a member of the group",
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

    fn group_devices(&mut self, group: &interop_proto::group::GroupId) -> Vec<Jid> {
        let Ok(Some(rec)) = self.store.group(group.as_str()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in &rec.members {
            let Ok(user) = Jid::parse(&m.jid) else {
                continue;
            };
            for d in self.store.devices_of(&user.user).unwrap_or_default() {
                out.push(user.with_device(d));
            }
        }
        out
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
        // Delayed stanzas of simulated users that a killed hub had not yet sent.
        for (due, seq, from, xml) in hub.store.timers()? {
            match (Jid::parse(&from), stanza::parse(&xml)) {
                (Ok(from), Ok(s)) => {
                    hub.timers.insert((due, seq), (from, s));
                }
                _ => {
                    log::warn!("hub: delayed stanza ({due}, {seq}) does not parse; dropped");
                    hub.store.remove_timer(due, seq)?;
                }
            }
        }
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
}

/// The 33-byte serialized form the Signal crate signs for a signed prekey: 0x05 || key.
fn signal_key_bytes(public: &RawKey) -> [u8; 33] {
    let mut out = [signal::KEY_TYPE_DJB; 33];
    for (slot, b) in out.iter_mut().skip(1).zip(public) {
        *slot = *b;
    }
    out
}
