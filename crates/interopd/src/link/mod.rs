//! The daemon's link: the shell around the [`Engine`], with the one persistent connection to
//! the gatekeeper. It dials on the config's profile (`interop-xml/1`: the pinned TLS config;
//! `wa`: TCP and the Noise handshake to the pinned root), hands the engine its frames, its
//! deadlines and the API's wakes, writes what the engine gives, tells systemd and the API
//! what state the link is in, and reconnects with jittered exponential backoff when the
//! engine says the connection is down. Every decision is the engine's
//! (`crate::engine`, tested on a virtual clock); this file only waits.
//!
//! ```text
//!   Down ──dial──────▶ LoggingIn ──Up──▶ Up ──(engine drains: outbox, receipts, keys)──┐
//!    ▲                      │ Down              │ Down (closed, keepalive, store)        │
//!    └──── backoff ◀────────┴───────────────────┘◀──────────────────────────────────────┘
//! ```
//!
//! One turn of the session loop: poll the engine's events, write its payloads, then sleep
//! until a frame arrives, the API wakes the link ([`Link::wake`], an `event_listener::Event`,
//! never a tick) or the engine's `poll_timeout` passes.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use rand::RngExt;

use crate::client::{Client, GroupAnswer, GroupRequest, IdentityChange, Journal};
use crate::config::{Config, ServerPin};
use crate::daemon::{LinkControl, LinkState, Runtime};
use crate::engine::{EVENT_BATCH, Engine, LinkEvent, Login};
use crate::events::EventBus;
use crate::inbound_media::{self, InboundMedia};
use crate::link_control::GroupRequestError;
use crate::store::{Store, StoreError, Txn};
use interop_proto::WireProfile;
use interop_proto::noise::wire::ConnectReason;

mod connection;
mod token_life;
mod transport;

pub use connection::Connection;
pub use transport::{
    ConnectError, READ_CHUNK_BYTES, ReadOutcome, Transport, WA_CONNECT_TIMEOUT_MS,
    WA_HANDSHAKE_TIMEOUT_MS,
};

/// Our device number at the gatekeeper.
pub const OWN_DEVICE: u32 = 1;
/// First reconnect delay, in milliseconds.
pub const RECONNECT_MIN_MS: u64 = 1_000;
/// Largest reconnect delay, in milliseconds.
pub const RECONNECT_MAX_MS: u64 = 60_000;
/// How long the link waits after the gatekeeper closed it as `replaced` (another client
/// logged in as our device) before it logs in again, in milliseconds. Coming back at once
/// would make two copies take the device from each other for ever; restarting the service
/// reconnects at once.
pub const REPLACED_WAIT_MS: u64 = 15 * 60_000;
/// Longest the session loop sleeps when nothing is due, in milliseconds: a safety net only,
/// since it wakes for input, for the API ([`Link::wake`]) and at the client's next deadline.
pub const MAX_IDLE_SLEEP_MS: u64 = 60_000;

/// The link as the API sees it.
pub struct Link {
    state: Cell<LinkState>,
    reconnects: Cell<u64>,
    /// Work is waiting (outbox rows, read marks); the session loop clears it when it looks.
    woken: Cell<bool>,
    /// Fired with `woken`, so a sleeping session loop sees new work at once.
    wake: event_listener::Event,
    /// Typing notices for the session loop to send (contact digits, composing), at most
    /// [`crate::link_control::MAX_PENDING_TYPING`]; never stored.
    typing: RefCell<VecDeque<(String, bool)>>,
    /// Group requests for the session loop, and the API tasks waiting for their answers.
    groups: RefCell<GroupDesk>,
}

/// Group requests between the API and the session loop (at most
/// [`crate::link_control::MAX_PENDING_GROUP_REQUESTS`] waiting or asked).
#[derive(Default)]
struct GroupDesk {
    next_ticket: u64,
    queue: VecDeque<(u64, GroupRequest)>,
    waiting: HashMap<u64, smol::channel::Sender<GroupAnswer>>,
}

impl Link {
    fn set_woken(&self) {
        self.woken.set(true);
        self.wake.notify(usize::MAX);
    }
}

impl LinkControl for Link {
    fn wake(&self) {
        self.set_woken();
    }

    fn state(&self) -> LinkState {
        self.state.get()
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    fn mark_read(&self, _from_digits: &str, _message_id: &str) {
        // The request is already durable in `read_marks`; the session loop sends it.
        self.set_woken();
    }

    fn typing(&self, to_digits: &str, composing: bool) -> bool {
        if self.state.get() != LinkState::Up {
            return false;
        }
        let mut q = self.typing.borrow_mut();
        if q.len() >= crate::link_control::MAX_PENDING_TYPING {
            return false;
        }
        q.push_back((to_digits.to_owned(), composing));
        drop(q);
        self.set_woken();
        true
    }

    fn group_request(
        &self,
        req: GroupRequest,
    ) -> Result<smol::channel::Receiver<GroupAnswer>, GroupRequestError> {
        if self.state.get() != LinkState::Up {
            return Err(GroupRequestError::LinkDown);
        }
        let mut desk = self.groups.borrow_mut();
        if desk.waiting.len() >= crate::link_control::MAX_PENDING_GROUP_REQUESTS {
            return Err(GroupRequestError::Busy);
        }
        // Ticket 0 is the client's own; ours start at 1.
        desk.next_ticket = desk.next_ticket.wrapping_add(1).max(1);
        let ticket = desk.next_ticket;
        let (tx, rx) = smol::channel::bounded(1);
        desk.waiting.insert(ticket, tx);
        desk.queue.push_back((ticket, req));
        drop(desk);
        self.set_woken();
        Ok(rx)
    }
}

/// Records inbound messages in the API's event log, in the client's transaction.
struct BusJournal(Rc<EventBus>);

impl Journal for BusJournal {
    fn inbound(&self, txn: &Txn, cursor: u64, now_ms: u64) -> Result<(), StoreError> {
        self.0.record_message(txn, cursor, now_ms).map(|_| ())
    }

    fn inbound_committed(&self, cursor: u64) {
        self.0.publish_message(cursor);
    }

    fn identity(&self, txn: &Txn, change: &IdentityChange, now_ms: u64) -> Result<(), StoreError> {
        self.0.record_identity(txn, change, now_ms).map(|_| ())
    }

    fn identity_committed(&self, change: &IdentityChange) {
        self.0.publish_identity(change);
    }
}

/// Tells systemd what the link is doing (`STATUS=`, shown by `systemctl status`).
fn status(text: &str) {
    if let Err(e) = crate::notify::Notifier::from_env().status(text) {
        log::debug!("sd_notify: {e}");
    }
}

/// Starts the link task on the runtime's executor.
pub fn start(rt: &Runtime) -> Rc<dyn LinkControl> {
    let link = Rc::new(Link {
        state: Cell::new(LinkState::Down),
        reconnects: Cell::new(0),
        woken: Cell::new(true),
        wake: event_listener::Event::new(),
        typing: RefCell::default(),
        groups: RefCell::default(),
    });
    let inbound = Rc::new(InboundMedia::default());
    match crate::tls::client_config(&pin_of(&rt.config)) {
        Ok(tls) => {
            let parts = inbound_media::Parts {
                store: rt.store.clone(),
                media: rt.media.clone(),
                bus: rt.bus.clone(),
                tls,
                retention_ms: rt.config.media.retention_secs.saturating_mul(1000),
            };
            rt.executor
                .spawn(inbound_media::run(inbound.clone(), parts))
                .detach();
        }
        // The link's own dial reports the same pin problem, once per attempt.
        Err(e) => log::error!("media: no downloads: the gatekeeper pin is unusable: {e}"),
    }
    let task = run(
        link.clone(),
        rt.config.clone(),
        rt.store.clone(),
        rt.bus.clone(),
        inbound,
    );
    rt.executor.spawn(task).detach();
    link
}

fn pin_of(config: &Config) -> crate::tls::Pin {
    match &config.pin {
        ServerPin::CaFile(p) => crate::tls::Pin::CaFile(p.clone()),
        ServerPin::SpkiSha256(h) => crate::tls::Pin::Spki(*h),
    }
}

use crate::clock::now_ms as wall_ms;

async fn run(
    link: Rc<Link>,
    config: Config,
    store: Rc<Store>,
    bus: Rc<EventBus>,
    inbound: Rc<InboundMedia>,
) {
    let pin = pin_of(&config);
    if config.profile == WireProfile::Wa {
        token_life::log_token_lifetime(&config.token, wall_ms() / 1000);
    }
    let mut backoff_ms = RECONNECT_MIN_MS;
    let mut connected_before = false;
    loop {
        let mut client = match Client::new(
            store.clone(),
            &config.account(),
            OWN_DEVICE,
            &mut rand::rng(),
        ) {
            Ok(c) => c,
            Err(e) => {
                log::error!("link: cannot prepare the client: {e}");
                if !until_store_recovers(&store).await {
                    smol::Timer::after(Duration::from_millis(RECONNECT_MAX_MS)).await;
                }
                continue;
            }
        };
        client.set_journal(Rc::new(BusJournal(bus.clone())));
        client.set_hold_media(true);
        client.set_keepalive_interval(config.keepalive_secs.saturating_mul(1000));
        let reason = if connected_before {
            ConnectReason::ErrorReconnect
        } else {
            ConnectReason::UserActivated
        };
        match dial(&config, &pin, &client, reason).await {
            Err(e) => {
                log::warn!("link: cannot connect to {}: {e}", config.server_addr);
                status(&format!(
                    "link down: cannot connect to {}",
                    config.server_addr
                ));
            }
            Ok(mut transport) => {
                let login = match config.profile {
                    WireProfile::InteropXml1 => Login::Token(&config.token),
                    WireProfile::Wa => Login::Wa,
                };
                let mut engine = Engine::new(client, bus.clone(), login, wall_ms(), rand::rng());
                let mut up = false;
                let why = session(&link, &mut transport, &mut engine, &inbound, &mut |ev| {
                    let LinkEvent::Up { jid, enlisted } = ev else {
                        return;
                    };
                    up = true;
                    if connected_before {
                        link.reconnects.set(link.reconnects.get() + 1);
                    }
                    connected_before = true;
                    log::info!("link: up as {jid} (enlisted: {enlisted})");
                    link.state.set(LinkState::Up);
                    status(&format!("link up to {}", config.server_addr));
                })
                .await;
                // Questions asked on this connection get no answer now: their askers see
                // the channel close and say the link went down.
                {
                    let mut desk = link.groups.borrow_mut();
                    desk.queue.clear();
                    desk.waiting.clear();
                }
                if engine.was_replaced() {
                    link.state.set(LinkState::Replaced);
                    log::error!(
                        "link: replaced: another client logged in as {} device {OWN_DEVICE}; waiting {} min before logging in again (stop the other copy; restarting this service reconnects now)",
                        config.account(),
                        REPLACED_WAIT_MS / 60_000
                    );
                    status("link replaced by another client with this account");
                    smol::Timer::after(Duration::from_millis(REPLACED_WAIT_MS)).await;
                    link.state.set(LinkState::Down);
                    backoff_ms = RECONNECT_MIN_MS;
                    continue;
                }
                if up {
                    backoff_ms = RECONNECT_MIN_MS;
                    link.state.set(LinkState::Down);
                    log::warn!("link: down: {why}");
                    status(&format!("link down: {why}"));
                } else {
                    log::warn!("link: login did not complete: {why}");
                }
            }
        }
        if until_store_recovers(&store).await {
            // The connection ended because the store failed, not the gatekeeper: dial again
            // at once, so sends flow within a second of the store coming back.
            backoff_ms = RECONNECT_MIN_MS;
            continue;
        }
        let jitter = rand::rng().random_range(0..=backoff_ms / 2);
        smol::Timer::after(Duration::from_millis(backoff_ms + jitter)).await;
        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
    }
}

/// Dials the gatekeeper on the config's profile: TLS, or TCP with the Noise handshake that
/// carries our `ClientPayload` (identity from `client`'s store, the token from the config).
async fn dial(
    config: &Config,
    pin: &crate::tls::Pin,
    client: &Client,
    reason: ConnectReason,
) -> Result<Transport, ConnectError> {
    match (config.profile, config.noise_root) {
        (WireProfile::InteropXml1, _) => {
            Transport::open(&config.server_addr, &config.server_name, pin)
                .await
                .map_err(ConnectError::Tls)
        }
        (WireProfile::Wa, Some(root)) => {
            Transport::open_wa_as(client, &config.server_addr, root, &config.token, reason).await
        }
        // config::parse refuses a wa config without a root; a hand-built one is a bug.
        (WireProfile::Wa, None) => Err(ConnectError::WaClient {
            detail: "no [gatekeeper] noise_root for profile \"wa\" (a bug: the config was not validated)".into(),
        }),
    }
}

/// While the store is failed, waits for the daemon to reopen it (checking every
/// `STORE_REOPEN_INTERVAL_MS`); true if it was failed.
async fn until_store_recovers(store: &Store) -> bool {
    if store.failure().is_none() {
        return false;
    }
    status("link down: the store is failed (see /healthz)");
    while store.failure().is_some() {
        smol::Timer::after(Duration::from_millis(
            crate::store::STORE_REOPEN_INTERVAL_MS,
        ))
        .await;
    }
    log::info!("link: the store works again; reconnecting");
    true
}

/// One connection, from login to its end: returns why it ended. `on_up` hears
/// [`LinkEvent::Up`].
async fn session<R: rand::Rng + rand::CryptoRng>(
    link: &Link,
    transport: &mut Transport,
    engine: &mut Engine<R>,
    inbound: &InboundMedia,
    on_up: &mut dyn FnMut(LinkEvent),
) -> String {
    loop {
        engine.handle_timeout(wall_ms());
        while let Some(event) = engine.poll_event() {
            match event {
                LinkEvent::Down(why) => return why,
                LinkEvent::MediaPending => inbound.wake(),
                LinkEvent::GroupAnswer { ticket, answer } => {
                    if let Some(tx) = link.groups.borrow_mut().waiting.remove(&ticket) {
                        // The asker may have given up (its timeout); nothing to do then.
                        let _ = tx.try_send(answer);
                    }
                }
                up @ LinkEvent::Up { .. } => on_up(up),
            }
        }
        let mut wrote = false;
        while let Some(payload) = engine.poll_transmit() {
            wrote = true;
            if transport.write(&payload).await.is_err() {
                engine.handle_closed("write failed");
                break;
            }
        }
        if wrote && transport.flush().await.is_err() {
            engine.handle_closed("write failed");
        }
        // The listener is made before `woken` is read, so a wake between the two is not lost.
        let mut listener = link.wake.listen();
        if link.woken.replace(false) {
            let typing = std::mem::take(&mut *link.typing.borrow_mut());
            for (to, composing) in typing {
                engine.handle_typing(&to, composing, wall_ms());
            }
            let asked = std::mem::take(&mut link.groups.borrow_mut().queue);
            for (ticket, req) in asked {
                engine.handle_group_request(ticket, req, wall_ms());
            }
            engine.handle_api_wake(wall_ms());
            continue;
        }
        let Some(due) = engine.poll_timeout() else {
            continue; // down: the next turn reports why
        };
        let now = wall_ms();
        let sleep_ms = due.saturating_sub(now).min(MAX_IDLE_SLEEP_MS);
        let deadline = std::time::Instant::now() + Duration::from_millis(sleep_ms);
        match transport.read(deadline, &mut listener).await {
            ReadOutcome::Frames(frames) => {
                // Handed in together, so their status changes share one commit, at most
                // EVENT_BATCH frames to a drain.
                for chunk in frames.chunks(EVENT_BATCH) {
                    for f in chunk {
                        engine.handle_frame(f, wall_ms());
                    }
                    engine.poll_timeout();
                }
            }
            ReadOutcome::TimedOut | ReadOutcome::Woken => {}
            ReadOutcome::Closed => engine.handle_closed("connection closed"),
            ReadOutcome::BadFrame(e) => {
                engine.handle_closed(&format!("bad frame from the server: {}", e.reason()));
            }
            ReadOutcome::BadStream(e) => {
                engine.handle_closed(&format!("bad wa stream from the server: {e}"));
            }
        }
    }
}
