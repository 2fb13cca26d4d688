//! The daemon's engine: one logged-in (or logging-in) connection to the gatekeeper as a
//! state machine with no I/O, in the style of quinn-proto's `Connection`. It wraps the
//! protocol [`Client`] and adds what the daemon does around it: the outbox status machine
//! (queued → sent → delivered → read, or → failed, and held for a changed identity), read
//! marks, the key schedule and the login deadline. The shell (`link.rs`) owns the socket and
//! the timer and moves bytes and instants in and out; it never decides anything.
//!
//! ```text
//!   handle_frame(payload, now)  ─┐                       ┌─▶ poll_transmit() → frame payload
//!   handle_timeout(now)         ─┼─▶ Engine ─(drain)─────┼─▶ poll_timeout()  → next deadline
//!   handle_api_wake(now)        ─┤   Client + outbox     └─▶ poll_event()    → Up / MediaPending / Down
//!   handle_closed(why)          ─┘
//! ```
//!
//! # Drain order
//!
//! Inputs only record: `handle_*` feed the client and note what is due. The first `poll_*`
//! call after them drains, in this order, and so does every later one (a drain with nothing
//! to do costs nothing):
//!
//! 1. the client's events: login results, acks and receipts become status changes, holds and
//!    failures are noted, transport ends become [`LinkEvent::Down`];
//! 2. the key schedule, once logged in and due ([`KEY_CHECK_INTERVAL_MS`], and right after
//!    login): a prekey count request and a signed prekey rotation when it is due;
//! 3. after a wake (and right after login, and whenever an ack frees a slot of the
//!    [`SEND_WINDOW`]): up to [`OUTBOX_BATCH`] queued outbox rows, and no more than the
//!    window has room for, are encrypted and committed, then queued for the wire; then
//!    pending read marks. If more rows wait and the window has room, the engine stays woken
//!    and `poll_timeout` answers `now`; with the window full it waits for acks (at most
//!    [`ACK_WAIT_MS`] for the oldest, then the connection is down);
//! 4. the client's events again (what step 3 caused, such as a held send);
//! 5. every status change gathered since the last drain, in **one** store transaction: a
//!    batch of frames handed in together costs one commit (group commit).
//!
//! So a send on an idle link leaves in the very `poll_transmit` call that follows
//! `handle_api_wake`: there is no tick. [`poll_transmit`](Engine::poll_transmit) only hands
//! out payloads that fit a frame; a stanza over [`crate::frame::MAX_FRAME_BYTES`] fails its
//! outbox row with `too_large` and is logged with its id.
//!
//! After [`LinkEvent::Down`] the engine is finished: the shell drops it and dials again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use rand::{CryptoRng, Rng};

use crate::client::{Client, Event, KEEPALIVE_DEADLINE_MS};
use crate::events::EventBus;
use crate::frame::MAX_FRAME_BYTES;
use crate::jid::Jid;
use crate::store::{OutboxStatus, Store, StoreError};

#[cfg(all(test, feature = "demo"))]
mod group_tests;
mod groups;
mod outbox;
#[cfg(all(test, feature = "demo"))]
mod powercut_tests;
#[cfg(all(test, feature = "demo"))]
mod tests;
mod typing;
#[cfg(test)]
mod wa_tests;

pub use outbox::{HELD_CODE, StatusChange, apply_statuses};

/// Time from dialing until login must succeed, in milliseconds.
pub const LOGIN_WAIT_MS: u64 = 15_000;
/// How often a logged-in link checks the key schedule (prekey count, signed prekey age), in
/// milliseconds; it also checks right after each login.
pub const KEY_CHECK_INTERVAL_MS: u64 = 3_600_000;
/// Outbox rows started per drain.
pub const OUTBOX_BATCH: usize = 64;
/// Most frames the shell hands in between drains (any `poll_*` call drains); the status
/// changes of up to this many are committed together.
pub const EVENT_BATCH: usize = 256;
/// Read receipts sent per drain.
pub const READ_MARK_BATCH: usize = 64;
/// Messages in flight at once: started on this connection and not yet acked. A burst of
/// queued rows goes out as acks free room, so the gatekeeper's queue towards us (acks,
/// receipts) stays bounded instead of overflowing and closing the link.
pub const SEND_WINDOW: usize = 64;
/// Tries of one message on one connection when the gatekeeper refuses it with a code that a
/// later try may overcome (`unknown_device`, `queue_full`, `internal`); after the last, the
/// row fails with that code.
pub const MAX_SEND_ATTEMPTS: u8 = 5;
/// Wait before the second try of a `queue_full` or `internal` refusal, in milliseconds; it
/// doubles for each further try (2, 4, 8, 16 s). An `unknown_device` refusal is tried again
/// at once, with the recipient's device list fetched afresh.
pub const SEND_RETRY_BASE_MS: u64 = 2_000;
/// Longest the oldest in-flight message may wait for its ack, in milliseconds; then the
/// connection is taken as broken, and the message goes out again on the next one.
pub const ACK_WAIT_MS: u64 = 60_000;

/// What the shell acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Login succeeded: the link is up as `jid`; `enlisted` says the gatekeeper asked for keys.
    Up { jid: Jid, enlisted: bool },
    /// A received media message waits for its blob: wake the downloader.
    MediaPending,
    /// The connection is over, for the reason given; drop the engine and dial again.
    Down(String),
    /// The gatekeeper answered the group request handed in with `ticket`.
    GroupAnswer {
        ticket: u64,
        answer: crate::client::GroupAnswer,
    },
}

/// Which login [`Engine::new`] starts, by the link's wire profile.
#[derive(Clone, Copy)]
pub enum Login<'a> {
    /// `interop-xml/1`: send `<login>`, answer the challenge with this provider token.
    Token(&'a str),
    /// `wa`: the Noise handshake already carried the proof and the token; wait for
    /// `<success>`.
    Wa,
}

impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is never logged.
        match self {
            Login::Token(_) => f.write_str("Login::Token(..)"),
            Login::Wa => f.write_str("Login::Wa"),
        }
    }
}

enum Phase {
    LoggingIn { deadline_ms: u64 },
    Up,
    Down,
}

/// One connection's state machine; see the module documentation for its drain order.
pub struct Engine<R> {
    client: Client,
    store: Rc<Store>,
    bus: Rc<EventBus>,
    rng: R,
    now_ms: u64,
    phase: Phase,
    /// Outbox rows or read marks may wait: the next drain looks.
    woken: bool,
    /// When the key schedule is next checked.
    keys_due_ms: u64,
    /// Outbox rows started on this connection (each goes out once per connection).
    started: HashSet<String>,
    /// Of those, the ones not yet acked, oldest first, with when each was started.
    in_flight: heapless::Deque<(String, u64), SEND_WINDOW>,
    /// The outbox scan resumes after this row: everything before it was considered since
    /// the last API wake (which starts the scan over, for rows released from a hold).
    scan_after: u64,
    /// Status changes gathered since the last drain, committed together.
    statuses: Vec<StatusChange>,
    /// The gatekeeper closed us with `replaced`: another client has our device.
    replaced: bool,
    /// Messages the gatekeeper refused with a retryable code: tries so far, and when the
    /// next may start (`None` while it is in flight again).
    retries: HashMap<String, (u8, Option<u64>)>,
    /// The last typing state logged per contact and when, at most
    /// [`typing::MAX_TYPING_TRACKED`] contacts.
    typing_seen: HashMap<String, (bool, u64)>,
    events: VecDeque<LinkEvent>,
}

impl<R: Rng + CryptoRng> Engine<R> {
    /// Starts `login` on a fresh connection, at `now_ms`.
    pub fn new(
        mut client: Client,
        bus: Rc<EventBus>,
        login: Login<'_>,
        now_ms: u64,
        rng: R,
    ) -> Engine<R> {
        let store = client.shared_store();
        match login {
            Login::Token(token) => client.start(token, now_ms),
            Login::Wa => client.start_wa(now_ms),
        }
        Engine {
            client,
            store,
            bus,
            rng,
            now_ms,
            phase: Phase::LoggingIn {
                deadline_ms: now_ms.saturating_add(LOGIN_WAIT_MS),
            },
            woken: false,
            keys_due_ms: now_ms,
            started: HashSet::new(),
            in_flight: heapless::Deque::new(),
            scan_after: 0,
            statuses: Vec::new(),
            replaced: false,
            retries: HashMap::new(),
            typing_seen: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the connection ended because another client logged in as our device (the
    /// shell then waits long instead of taking the device back at once).
    pub fn was_replaced(&self) -> bool {
        self.replaced
    }

    /// The protocol client inside (tests, and the shell's log lines).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// One frame payload from the gatekeeper.
    pub fn handle_frame(&mut self, payload: &[u8], now_ms: u64) {
        self.tick(now_ms);
        if !matches!(self.phase, Phase::Down) {
            self.client.handle_frame(payload, now_ms, &mut self.rng);
        }
    }

    /// Time passed: keepalives, the login deadline and the key schedule are checked.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.tick(now_ms);
        if let Phase::LoggingIn { deadline_ms } = self.phase
            && now_ms >= deadline_ms
        {
            self.down(format!("no login answer within {LOGIN_WAIT_MS} ms"));
            return;
        }
        if let Some((id, since)) = self.in_flight.front()
            && now_ms >= since.saturating_add(ACK_WAIT_MS)
        {
            let why = format!("message {id} not acked within {ACK_WAIT_MS} ms");
            self.down(why);
            return;
        }
        self.client.handle_timeout(now_ms);
    }

    /// The API committed work for the link (an outbox row, a read mark).
    /// Sends a typing notice to contact `to_digits` if logged in; dropped otherwise (typing
    /// is never stored or resent).
    pub fn handle_typing(&mut self, to_digits: &str, composing: bool, now_ms: u64) {
        self.tick(now_ms);
        if matches!(self.phase, Phase::Up) {
            let to = Jid::whatsapp(to_digits.to_owned(), None);
            self.client.chat_state(&to, composing, now_ms);
        }
    }

    pub fn handle_api_wake(&mut self, now_ms: u64) {
        self.tick(now_ms);
        self.woken = true;
        self.scan_after = 0;
    }

    /// The transport ended (closed by the peer, a write failed, or a bad frame): `why`.
    /// What the client reported before the end (a refused login, a stream error) is the
    /// reason given, if there was one.
    pub fn handle_closed(&mut self, why: &str) {
        self.absorb();
        self.client.disconnected();
        self.down(why.to_owned());
    }

    /// The next frame payload to write. Every payload handed out fits one frame.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.drain();
        loop {
            let p = self.client.poll_transmit()?;
            if p.len() <= MAX_FRAME_BYTES {
                return Some(p);
            }
            // A bug or outside data over a bound: fail the row it belongs to, say which.
            let id = crate::client::stanza_id(&p).unwrap_or("?").to_owned();
            log::error!(
                "link: message {id} is {} bytes as a stanza, over the frame bound of {MAX_FRAME_BYTES} bytes; failed",
                p.len()
            );
            self.landed(&id);
            self.statuses
                .push((id, OutboxStatus::Failed, "too_large".to_owned()));
            self.commit_statuses();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run, in wall milliseconds:
    /// `now` if work is waiting, else the earliest of the keepalive, the login deadline and
    /// the key schedule. `None` once the engine is down.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        self.drain();
        let due = match self.phase {
            Phase::Down => return None,
            Phase::LoggingIn { deadline_ms } => deadline_ms,
            Phase::Up if self.woken => self.now_ms,
            Phase::Up => {
                let acks = self
                    .in_flight
                    .front()
                    .map(|(_, t)| t.saturating_add(ACK_WAIT_MS));
                [Some(self.keys_due_ms), acks, self.next_retry()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(self.keys_due_ms)
            }
        };
        Some(self.client.poll_timeout().map_or(due, |t| t.min(due)))
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.drain();
        self.events.pop_front()
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn down(&mut self, why: String) {
        if !matches!(self.phase, Phase::Down) {
            self.phase = Phase::Down;
            self.events.push_back(LinkEvent::Down(why));
        }
    }

    /// Runs the drain steps in the documented order.
    fn drain(&mut self) {
        self.absorb();
        if matches!(self.phase, Phase::Up) {
            if self.now_ms >= self.keys_due_ms {
                self.keys_due_ms = self.now_ms.saturating_add(KEY_CHECK_INTERVAL_MS);
                self.check_keys();
            }
            self.release_due_retries();
            if std::mem::take(&mut self.woken) {
                match self.flush_outbox() {
                    Ok(more) => self.woken = more,
                    Err(e) => self.down(format!("store: {e}")),
                }
                if let Err(e) = self.send_read_marks() {
                    self.down(format!("store: {e}"));
                }
            }
            self.absorb();
        }
        self.commit_statuses();
    }

    fn commit_statuses(&mut self) {
        if self.statuses.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.statuses);
        if let Err(e) = apply_statuses(&self.store, &self.bus, &changes, self.now_ms) {
            self.down(format!("store: {e}"));
        }
    }

    /// The client's events, step 1 (and 4) of the drain.
    fn absorb(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::LoggedIn(ok) => {
                    if matches!(self.phase, Phase::LoggingIn { .. }) {
                        self.phase = Phase::Up;
                        self.keys_due_ms = self.now_ms;
                        self.woken = true;
                        // Our copy of the groups catches up with what changed while we were
                        // away (or before our device first logged in).
                        self.client.group_request(
                            0,
                            crate::client::GroupRequest::List,
                            self.now_ms,
                        );
                        self.events.push_back(LinkEvent::Up {
                            jid: self.client.jid(),
                            enlisted: ok.enlisted,
                        });
                    }
                }
                Event::LoginFailed(e) => self.down(format!("login refused: {e:?}")),
                Event::Disconnected => self.down("connection closed".to_owned()),
                Event::StoreFailed { detail } => self.down(detail),
                Event::KeepaliveTimeout => self.down(format!(
                    "no keepalive answer within {KEEPALIVE_DEADLINE_MS} ms"
                )),
                Event::StreamError { code } => {
                    if code == "replaced" {
                        self.replaced = true;
                        self.down("replaced: another client logged in as this device".to_owned());
                    } else {
                        self.down(format!("server closed the stream: {code}"));
                    }
                }
                Event::FrameRejected { reason } => {
                    self.down(format!(
                        "rejected a frame from the server ({reason}); closing"
                    ));
                }
                Event::Acked { class, id, error } if class == "message" => {
                    self.landed(&id);
                    match error {
                        None => {
                            self.retries.remove(&id);
                            self.statuses.push((id, OutboxStatus::Sent, String::new()));
                        }
                        Some(code) => self.refused(id, code),
                    }
                }
                Event::Receipt { id, kind, .. } => match kind.as_deref() {
                    None => self
                        .statuses
                        .push((id, OutboxStatus::Delivered, String::new())),
                    Some("read") => self.statuses.push((id, OutboxStatus::Read, String::new())),
                    _ => {}
                },
                Event::SendHeld { id, user } => {
                    log::warn!("link: message {id} held: the verified identity of {user} changed");
                    self.started.remove(&id);
                    self.landed(&id);
                    if let Err(e) = outbox::hold(&self.store, &self.bus, &id, self.now_ms) {
                        self.down(format!("store: {e}"));
                    }
                }
                Event::MediaPending { .. } => self.events.push_back(LinkEvent::MediaPending),
                Event::IdentityAnnounced { user } => {
                    log::info!(
                        "link: the gatekeeper says {user} has a new identity; its sessions were \
                         dropped and the new key is checked when next met"
                    );
                }
                Event::DecryptFailed { id, from, reason } => {
                    log::warn!("link: message {id} from {from} cannot be decrypted: {reason}");
                }
                Event::ChatState { from, state } => self.chat_state(&from.user, &state),
                Event::SendFailed { id, reason, code } => {
                    log::warn!("link: message {id} cannot be sent: {reason}");
                    self.landed(&id);
                    self.statuses
                        .push((id, OutboxStatus::Failed, code.to_owned()));
                }
                Event::GroupAnswer { ticket, answer } if ticket != 0 => {
                    self.events
                        .push_back(LinkEvent::GroupAnswer { ticket, answer });
                }
                Event::GroupChanged {
                    group,
                    change,
                    members,
                } => self.group_changed(&group, &change, &members),
                _ => {}
            }
        }
    }

    /// The gatekeeper refused message `id` with `code`: fail it, or try it again later
    /// (docs/protocol.md section 9), at most [`MAX_SEND_ATTEMPTS`] times.
    fn refused(&mut self, id: String, code: String) {
        let retryable = matches!(code.as_str(), "unknown_device" | "queue_full" | "internal");
        let tries = self
            .retries
            .get(&id)
            .map_or(1, |(n, _)| n.saturating_add(1));
        if !retryable || tries >= MAX_SEND_ATTEMPTS {
            if retryable {
                log::warn!("link: message {id} refused ({code}) {tries} times; failed");
            }
            self.retries.remove(&id);
            self.statuses.push((id, OutboxStatus::Failed, code));
            return;
        }
        let delay = if code == "unknown_device" {
            if let Err(e) = self.refresh_devices_for(&id) {
                self.down(format!("store: {e}"));
                return;
            }
            0
        } else {
            SEND_RETRY_BASE_MS << (tries - 1)
        };
        log::info!(
            "link: message {id} refused ({code}); try {} in {delay} ms",
            tries + 1
        );
        self.retries
            .insert(id, (tries, Some(self.now_ms.saturating_add(delay))));
    }

    /// Forgets the recipient's device list and the committed stanza of message `id`, so its
    /// next try is encrypted afresh for the devices the gatekeeper lists now.
    fn refresh_devices_for(&mut self, id: &str) -> Result<(), StoreError> {
        let txn = self.store.begin()?;
        if let Some((seq, mut row)) = txn.outbox_by_id(id)? {
            // A group's row: every member's list may be the stale one.
            if let Some(g) = crate::group::GroupId::parse_jid(&row.to)
                .ok()
                .and_then(|g| txn.group(g.as_str()).transpose())
            {
                for m in g?.members {
                    if let Ok(j) = Jid::parse(&m.jid) {
                        txn.forget_device_list(&j.user)?;
                    }
                }
            }
            txn.forget_device_list(&row.to)?;
            row.stanza.clear();
            txn.outbox_write(seq, &row)?;
        }
        txn.commit()
    }

    /// Retries whose wait is over go back to the outbox scan.
    fn release_due_retries(&mut self) {
        let now = self.now_ms;
        for (id, (_, due)) in self.retries.iter_mut() {
            if due.is_some_and(|t| t <= now) {
                *due = None;
                self.started.remove(id);
                self.woken = true;
                self.scan_after = 0;
            }
        }
    }

    /// The earliest wait of a refused message.
    fn next_retry(&self) -> Option<u64> {
        self.retries.values().filter_map(|(_, due)| *due).min()
    }

    /// Message `id` needs no more room in the send window (acked, failed or held); if it
    /// held a slot, the next drain may start another row.
    fn landed(&mut self, id: &str) {
        let mut freed = false;
        // Rotate once through the window, dropping the first entry for `id`; each push
        // follows a pop, so it always has room.
        for _ in 0..self.in_flight.len() {
            let Some(entry) = self.in_flight.pop_front() else {
                break;
            };
            if !freed && entry.0 == id {
                freed = true;
            } else {
                let _ = self.in_flight.push_back(entry);
            }
        }
        if freed {
            self.woken = true;
        }
    }

    /// The key schedule: a prekey count request (the client tops up below
    /// [`crate::signal::PREKEY_REFILL_THRESHOLD`]) and a signed prekey rotation when due.
    fn check_keys(&mut self) {
        self.client.request_count(self.now_ms);
        match self
            .client
            .rotate_signed_prekey_if_due(self.now_ms, &mut self.rng)
        {
            Ok(true) => log::info!("link: signed prekey rotated"),
            Ok(false) => {}
            Err(e) => log::warn!("link: signed prekey rotation failed: {e}"),
        }
    }

    fn send_read_marks(&mut self) -> Result<(), StoreError> {
        let txn = self.store.begin()?;
        let marks = crate::api::inbox::pending_read_marks(&txn, READ_MARK_BATCH)?;
        if marks.is_empty() {
            return Ok(());
        }
        for m in &marks {
            self.client
                .mark_read(&m.id, &Jid::whatsapp(m.from.clone(), None), self.now_ms);
            crate::api::inbox::read_mark_sent(&txn, m.cursor, self.now_ms)?;
        }
        txn.commit()
    }
}
