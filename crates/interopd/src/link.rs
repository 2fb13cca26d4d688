//! The daemon's link: the one persistent connection to the gatekeeper. It dials with the
//! pinned TLS config, logs in, flushes the durable outbox, records inbound messages and
//! delivery states through the API's event log, and reconnects with jittered exponential
//! backoff when the connection drops. The protocol work is the sans-I/O [`Client`]; this file
//! is the shell around it: sockets, timers, the store's outbox scan and status changes.
//!
//! ```text
//!   Down ──dial+TLS──▶ LoggingIn ──success──▶ Up ──(flush outbox, events)──┐
//!    ▲                      │ failure                 │ closed / error      │
//!    └──── backoff ◀────────┴─────────────────────────┘◀────────────────────┘
//! ```
//!
//! The sans-I/O client does the protocol (retry receipts both ways, identity holds, the
//! device-list cache, keepalive deadlines); this file adds group commit of status changes,
//! the key schedule, `STATUS=` lines, and hands received media to [`crate::inbound_media`].

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use rand::RngExt;

use crate::api;
use crate::client::{Client, Connection, Event, FlushError, Journal};
use crate::config::{Config, ServerPin};
use crate::daemon::{LinkControl, LinkState, Runtime};
use crate::events::EventBus;
use crate::inbound_media::{self, InboundMedia};
use crate::jid::Jid;
use crate::store::{OutboxStatus, Store, StoreError, Txn};

/// Our device number at the gatekeeper.
pub const OWN_DEVICE: u32 = 1;
/// First reconnect delay, in milliseconds.
pub const RECONNECT_MIN_MS: u64 = 1_000;
/// Largest reconnect delay, in milliseconds.
pub const RECONNECT_MAX_MS: u64 = 60_000;
/// Time from dialing until login must succeed, in milliseconds.
pub const LOGIN_WAIT_MS: u64 = 15_000;
/// Longest the session loop sleeps when nothing is due, in milliseconds: a safety net only,
/// since it wakes for input, for the API ([`Link::wake`]) and at the client's next deadline.
pub const MAX_IDLE_SLEEP_MS: u64 = 60_000;
/// Outbox rows started per pass.
pub const OUTBOX_BATCH: usize = 64;
/// Most events handled (and status changes committed together) per turn of the session loop.
pub const EVENT_BATCH: usize = 256;
/// Read receipts sent per pass.
pub const READ_MARK_BATCH: usize = 64;

/// The link as the API sees it.
pub struct Link {
    state: Cell<LinkState>,
    reconnects: Cell<u64>,
    /// Work is waiting (outbox rows, read marks); the session loop clears it when it looks.
    woken: Cell<bool>,
    /// Fired with `woken`, so a sleeping session loop sees new work at once.
    wake: event_listener::Event,
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
}

/// How often a logged-in link checks the key schedule (prekey count, signed prekey age), in
/// milliseconds; it also checks right after each login.
pub const KEY_CHECK_INTERVAL_MS: u64 = 3_600_000;

/// Tells systemd what the link is doing (`STATUS=`, shown by `systemctl status`).
fn status(text: &str) {
    if let Err(e) = crate::notify::Notifier::from_env().status(text) {
        log::debug!("sd_notify: {e}");
    }
}

/// The key schedule: a prekey count request (the client tops up below
/// [`crate::signal::PREKEY_REFILL_THRESHOLD`]) and a signed prekey rotation when it is due.
fn check_keys(conn: &mut Connection) {
    let now = wall_ms();
    conn.client().request_count(now);
    match conn
        .client()
        .rotate_signed_prekey_if_due(now, &mut rand::rng())
    {
        Ok(true) => log::info!("link: signed prekey rotated"),
        Ok(false) => {}
        Err(e) => log::warn!("link: signed prekey rotation failed: {e}"),
    }
}

/// Starts the link task on the runtime's executor.
pub fn start(rt: &Runtime) -> Rc<dyn LinkControl> {
    let link = Rc::new(Link {
        state: Cell::new(LinkState::Down),
        reconnects: Cell::new(0),
        woken: Cell::new(true),
        wake: event_listener::Event::new(),
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
                smol::Timer::after(Duration::from_millis(RECONNECT_MAX_MS)).await;
                continue;
            }
        };
        client.set_journal(Rc::new(BusJournal(bus.clone())));
        client.set_hold_media(true);
        client.set_keepalive_interval(config.keepalive_secs.saturating_mul(1000));
        match Connection::open(
            client,
            &config.server_addr,
            &config.server_name,
            &pin,
            &config.token,
        )
        .await
        {
            Err(e) => {
                log::warn!("link: cannot connect to {}: {e}", config.server_addr);
                status(&format!(
                    "link down: cannot connect to {}",
                    config.server_addr
                ));
            }
            Ok(mut conn) => match conn
                .wait_for(LOGIN_WAIT_MS, |e| {
                    matches!(e, Event::LoggedIn(_) | Event::LoginFailed(_))
                })
                .await
            {
                Ok((Event::LoggedIn(ok), _)) => {
                    if connected_before {
                        link.reconnects.set(link.reconnects.get() + 1);
                    }
                    connected_before = true;
                    log::info!(
                        "link: up as {} (enlisted: {})",
                        conn.client().jid(),
                        ok.enlisted
                    );
                    link.state.set(LinkState::Up);
                    status(&format!("link up to {}", config.server_addr));
                    backoff_ms = RECONNECT_MIN_MS;
                    let why = session(&link, &mut conn, &store, &bus, &inbound).await;
                    link.state.set(LinkState::Down);
                    log::warn!("link: down: {why}");
                    status(&format!("link down: {why}"));
                }
                Ok((e, _)) => log::error!("link: login refused: {e:?}"),
                Err(_) => log::warn!("link: no login answer within {LOGIN_WAIT_MS} ms"),
            },
        }
        let jitter = rand::rng().random_range(0..=backoff_ms / 2);
        smol::Timer::after(Duration::from_millis(backoff_ms + jitter)).await;
        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
    }
}

/// One logged-in connection: returns why it ended.
async fn session(
    link: &Link,
    conn: &mut Connection,
    store: &Store,
    bus: &EventBus,
    inbound: &InboundMedia,
) -> String {
    let started: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    link.woken.set(true);
    let mut keys_checked_ms = 0;
    loop {
        if wall_ms().saturating_sub(keys_checked_ms) >= KEY_CHECK_INTERVAL_MS {
            keys_checked_ms = wall_ms();
            check_keys(conn);
        }
        if link.woken.replace(false) {
            match flush_outbox(conn, store, &started) {
                Ok(true) => link.woken.set(true),
                Ok(false) => {}
                Err(e) => return format!("store: {e}"),
            }
            if let Err(e) = send_read_marks(conn, store) {
                return format!("store: {e}");
            }
        }
        conn.client().handle_timeout(wall_ms());
        // Sleep until input, a wake from the API, or the next deadline (keepalive from the
        // client, the key schedule from us). The listener is made before `woken` is read, so
        // a wake between the two is not lost.
        let mut listener = link.wake.listen();
        let sleep_ms = if link.woken.get() {
            0
        } else {
            let now = wall_ms();
            let keys_due = keys_checked_ms.saturating_add(KEY_CHECK_INTERVAL_MS);
            let due = conn
                .client()
                .poll_timeout()
                .map_or(keys_due, |t| t.min(keys_due));
            due.saturating_sub(now).min(MAX_IDLE_SLEEP_MS)
        };
        // Group commit: every event already decoded is handled in this turn, and all their
        // status changes share one store transaction (one fsync instead of one each).
        let mut events: Vec<Event> = conn
            .next_event_or_wake(sleep_ms, Some(&mut listener))
            .await
            .into_iter()
            .collect();
        while events.len() < EVENT_BATCH {
            match conn.client().poll_event() {
                Some(e) => events.push(e),
                None => break,
            }
        }
        let mut statuses: Vec<StatusChange> = Vec::new();
        let mut ended = None;
        for event in events {
            match event {
                Event::Disconnected => ended = Some("connection closed".to_owned()),
                Event::KeepaliveTimeout => {
                    ended = Some(format!(
                        "no keepalive answer within {} ms",
                        crate::client::KEEPALIVE_DEADLINE_MS
                    ));
                }
                Event::StreamError { code } => {
                    ended = Some(format!("server closed the stream: {code}"));
                }
                Event::Acked { class, id, error } if class == "message" => {
                    let status = if error.is_some() {
                        OutboxStatus::Failed
                    } else {
                        OutboxStatus::Sent
                    };
                    statuses.push((id, status, error.unwrap_or_default()));
                }
                Event::Receipt { id, kind, .. } => match kind.as_deref() {
                    None => statuses.push((id, OutboxStatus::Delivered, String::new())),
                    Some("read") => statuses.push((id, OutboxStatus::Read, String::new())),
                    _ => {}
                },
                Event::SendHeld { id, user } => {
                    log::warn!("link: message {id} held: the verified identity of {user} changed");
                    started.borrow_mut().remove(&id);
                    if let Err(e) = hold(store, bus, &id) {
                        return format!("store: {e}");
                    }
                }
                Event::MediaPending { .. } => inbound.wake(),
                Event::DecryptFailed { id, from, reason } => {
                    log::warn!("link: message {id} from {from} cannot be decrypted: {reason}");
                }
                Event::SendFailed { id, reason } => {
                    log::warn!("link: message {id} cannot be sent: {reason}");
                    statuses.push((id, OutboxStatus::Failed, "no_devices".to_owned()));
                }
                _ => {}
            }
        }
        if let Err(e) = apply_statuses(store, bus, &statuses) {
            return format!("store: {e}");
        }
        if let Some(why) = ended {
            return why;
        }
        // Every stanza too large to frame fails its row; each flush call reports one.
        loop {
            match conn.flush().await {
                Ok(()) => break,
                Err(FlushError::Write) => return "write failed".into(),
                Err(FlushError::TooLarge { id, len }) => {
                    log::error!(
                        "link: message {id} is {len} bytes as a stanza, over the frame bound of {} bytes; failed",
                        crate::frame::MAX_FRAME_BYTES
                    );
                    let failed = [(id, OutboxStatus::Failed, "too_large".to_owned())];
                    if let Err(e) = apply_statuses(store, bus, &failed) {
                        return format!("store: {e}");
                    }
                }
            }
        }
    }
}

/// Starts queued outbox rows not yet started on this connection, at most [`OUTBOX_BATCH`]
/// per call; returns whether more may be waiting (the caller calls again). A row whose stanza
/// was committed before (a crash or a lost connection) is resent byte-identical.
fn flush_outbox(
    conn: &mut Connection,
    store: &Store,
    started: &RefCell<HashSet<String>>,
) -> Result<bool, StoreError> {
    let (rows, more) = {
        let txn = store.begin()?;
        let mut out = Vec::new();
        let mut after = 0;
        let mut more = false;
        let mut released = false;
        'scan: loop {
            let batch = txn.outbox_scan(after, OUTBOX_BATCH)?;
            let Some((last, _)) = batch.last() else { break };
            after = *last;
            for (seq, mut row) in batch {
                if row.status != OutboxStatus::Queued || started.borrow().contains(&row.id) {
                    continue;
                }
                if row.error_code == HELD_CODE {
                    if identity_pending(&txn, &row.to)? {
                        continue;
                    }
                    // Trusted again: the row goes out like any queued row.
                    row.error_code.clear();
                    txn.outbox_write(seq, &row)?;
                    released = true;
                }
                if out.len() >= OUTBOX_BATCH {
                    more = true;
                    break 'scan;
                }
                out.push(row);
            }
        }
        if released {
            txn.commit()?;
        }
        (out, more)
    };
    let now = wall_ms();
    for row in rows {
        started.borrow_mut().insert(row.id.clone());
        if row.stanza.is_empty() {
            if let Err(e) = conn.client().send_outbox(&row, now, &mut rand::rng()) {
                log::warn!("link: message {} not started: {e}", row.id);
                started.borrow_mut().remove(&row.id);
                return Ok(false);
            }
        } else {
            conn.client().send_committed(row.stanza.clone(), now);
        }
    }
    Ok(more)
}

/// The `error_code` of a queued row held for a changed verified identity.
pub const HELD_CODE: &str = "identity_changed";

/// Whether any device of `user` holds a new identity that awaits the household's trust.
fn identity_pending(txn: &Txn, user: &str) -> Result<bool, StoreError> {
    match crate::signal::remote_identities(txn, user) {
        Ok(ids) => Ok(ids.iter().any(|(_, r)| r.pending.is_some())),
        Err(crate::signal::SignalError::Store(e)) => Err(e),
        Err(e) => {
            log::warn!("link: identity of {user} unreadable: {e}");
            Ok(true)
        }
    }
}

/// Keeps a row queued with [`HELD_CODE`], and tells consumers why it waits.
fn hold(store: &Store, bus: &EventBus, id: &str) -> Result<(), StoreError> {
    let txn = store.begin()?;
    let Some((seq, mut row)) = txn.outbox_by_id(id)? else {
        return Ok(());
    };
    if row.status != OutboxStatus::Queued {
        return Ok(());
    }
    row.error_code = HELD_CODE.to_owned();
    row.stanza.clear();
    row.updated_ms = wall_ms();
    txn.outbox_write(seq, &row)?;
    bus.record_status(&txn, &row)?;
    txn.commit()?;
    bus.publish_status(&row.id, row.status);
    Ok(())
}

fn send_read_marks(conn: &mut Connection, store: &Store) -> Result<(), StoreError> {
    let txn = store.begin()?;
    let marks = api::inbox::pending_read_marks(&txn, READ_MARK_BATCH)?;
    if marks.is_empty() {
        return Ok(());
    }
    let now = wall_ms();
    for m in &marks {
        conn.client()
            .mark_read(&m.id, &Jid::whatsapp(m.from.clone(), None), now);
        api::inbox::read_mark_sent(&txn, m.cursor, now)?;
    }
    txn.commit()
}

/// One outbox status change: message id, new status, error code (empty unless failed).
pub type StatusChange = (String, OutboxStatus, String);

/// Moves outbox rows forward (queued → sent → delivered → read, or → failed) and records
/// each change in the event log, all in one transaction; then wakes the readers.
pub fn apply_statuses(
    store: &Store,
    bus: &EventBus,
    changes: &[StatusChange],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let rank = |s: OutboxStatus| match s {
        OutboxStatus::Queued => 0,
        OutboxStatus::Sent => 1,
        OutboxStatus::Delivered => 2,
        OutboxStatus::Read => 3,
        OutboxStatus::Failed => 4,
    };
    let txn = store.begin()?;
    let mut published = Vec::new();
    for (id, status, error) in changes {
        let Some((seq, mut row)) = txn.outbox_by_id(id)? else {
            continue;
        };
        if rank(*status) <= rank(row.status) || row.status == OutboxStatus::Failed {
            continue;
        }
        row.status = *status;
        row.updated_ms = wall_ms();
        if *status == OutboxStatus::Failed {
            row.error_code = error.clone();
        } else if row.error_code == HELD_CODE {
            row.error_code.clear();
        }
        txn.outbox_write(seq, &row)?;
        bus.record_status(&txn, &row)?;
        published.push((row.id, row.status));
    }
    txn.commit()?;
    for (id, status) in published {
        bus.publish_status(&id, status);
    }
    Ok(())
}
