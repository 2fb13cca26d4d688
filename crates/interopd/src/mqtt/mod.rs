//! The MQTT bridge (docs/mqtt.md): one MQTT 3.1.1 connection to the household's broker, on
//! the daemon's one thread, that shows interopd to Home Assistant and takes commands.
//!
//! - [`session`]: the client session as a state machine (no I/O, time passed in);
//! - [`commands`]: the `send` and `notify/<digits>` payloads, through the API's send path;
//! - [`discovery`]: Home Assistant's retained config messages and the topic names;
//! - this file: the shell (dial, read, write, sleep until the session's deadline or a bus
//!   wake) and the bridge between the session and the store.
//!
//! Durability, the same promise as the API:
//! - a command is PUBACKed only after its outbox row committed, and a `request_id` is its
//!   idempotency key, so a publish the broker delivers again is not sent twice;
//! - inbound messages are published (QoS 1) from the store's `mqtt_inbox_cursor`, which
//!   advances only over messages the broker acknowledged, at most [`INBOX_WINDOW`] ahead. A
//!   broker outage or a restart resumes from it: no gap, and no duplicate beyond MQTT's at
//!   least once (each payload carries its `cursor`, so consumers can drop repeats).
//!
//! The bridge never blocks the API or the link: its store transactions are short and never
//! span an `.await`, and a broker that is down or refuses us only costs log lines and a
//! reconnect backoff.

pub mod commands;
#[cfg(test)]
mod commands_tests;
pub mod discovery;
pub mod session;
#[cfg(test)]
mod session_tests;

use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, FutureExt as _};
use smol::Timer;

use crate::api::Api;
use crate::config::MqttConfig;
use crate::events::{Event, EventBus};
use crate::link_control::{LinkControl, LinkState};
use crate::store::{OutboxStatus, Store, StoreError};
use discovery::Topics;
use session::{Session, SessionConfig, SessionEvent};

/// Time allowed to open the TCP connection to the broker, in milliseconds (TLS adds the
/// handshake's own limit).
pub const MQTT_DIAL_TIMEOUT_MS: u64 = 10_000;
/// How often the link state, the outbox depth and the contact list are looked at when
/// nothing else wakes the bridge, in milliseconds.
pub const MQTT_STATE_POLL_MS: u64 = 5_000;
/// Inbound messages published and not yet acknowledged by the broker, at most.
pub const INBOX_WINDOW: usize = 8;
/// Events read from the log per look for status events.
pub const STATUS_BATCH_EVENTS: usize = 64;
/// Bytes read from the broker's connection per read.
pub const MQTT_READ_CHUNK_BYTES: usize = 16 * 1024;
/// Most outbox rows counted for the outbox-depth sensor (the outbox's own bound).
pub const MAX_OUTBOX_ROWS_COUNTED: u64 = crate::retention::MAX_OUTBOX_ROWS;

/// What the bridge needs from the daemon.
#[derive(Clone)]
pub struct MqttParts {
    pub config: MqttConfig,
    pub store: Rc<Store>,
    pub bus: Rc<EventBus>,
    /// The API's state: commands go through its send path.
    pub api: Rc<Api>,
    pub link: Rc<dyn LinkControl>,
}

/// A connection to the broker, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// The inbound messages in flight: published in cursor order, acknowledged in any order.
#[derive(Debug, Default)]
struct InboxWindow {
    /// The last cursor published on this connection.
    sent_up_to: u64,
    /// (packet id, cursor, acknowledged), oldest first.
    pending: VecDeque<(u16, u64, bool)>,
}

impl InboxWindow {
    fn reset(&mut self, durable: u64) {
        self.sent_up_to = durable;
        self.pending.clear();
    }

    /// Marks `pkid` acknowledged; the new durable cursor when the oldest ones are all done.
    fn acked(&mut self, pkid: u16) -> Option<u64> {
        let entry = self.pending.iter_mut().find(|(p, _, _)| *p == pkid)?;
        entry.2 = true;
        let mut done = None;
        while let Some(&(_, cursor, true)) = self.pending.front() {
            done = Some(cursor);
            self.pending.pop_front();
        }
        done
    }
}

/// Why the bridge woke.
enum Wake {
    Read(std::io::Result<usize>),
    Bus,
    Timer,
}

struct Bridge {
    cfg: MqttConfig,
    topics: Topics,
    store: Rc<Store>,
    bus: Rc<EventBus>,
    api: Rc<Api>,
    link: Rc<dyn LinkControl>,
    session: Session,
    tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    started: Instant,
    inbox: InboxWindow,
    /// The last event looked at for `status`.
    status_after: u64,
    published_link: Option<&'static str>,
    published_outbox: Option<u64>,
    published_contacts: Option<Vec<String>>,
    /// Discovery publishes not yet acknowledged, and the contact set to record after them.
    discovery_pending: Option<(BTreeSet<u16>, Vec<String>)>,
    next_state_poll_ms: u64,
    bus_generation: u64,
}

/// Runs the bridge until the future is dropped (the daemon stops): dial, serve, back off,
/// dial again. It never returns.
pub async fn run(parts: MqttParts) {
    // This future never ends: the daemon serves until the first of its futures does.
    let mut bridge = loop {
        match Bridge::new(parts.clone()) {
            Ok(b) => break b,
            Err(e) => {
                log::error!(
                    "mqtt: cannot start the bridge: {e}; trying again in {MQTT_STATE_POLL_MS} ms"
                );
                Timer::after(Duration::from_millis(MQTT_STATE_POLL_MS)).await;
            }
        }
    };
    loop {
        let now = bridge.now();
        if bridge.session.poll_dial(now) {
            bridge.refresh_password();
            match bridge.dial().await {
                Ok(stream) => {
                    bridge.session.handle_dialed(bridge.now());
                    bridge.serve(stream).await;
                }
                Err(detail) => bridge.session.handle_dial_failed(detail, bridge.now()),
            }
            bridge.handle_events();
            continue;
        }
        let wait = bridge
            .session
            .poll_timeout()
            .map_or(MQTT_STATE_POLL_MS, |t| t.saturating_sub(now));
        Timer::after(Duration::from_millis(wait)).await;
        bridge.session.handle_timeout(bridge.now());
    }
}

impl Bridge {
    fn new(parts: MqttParts) -> Result<Bridge, StoreError> {
        let cfg = parts.config;
        let topics = Topics::new(&cfg);
        let txn = parts.store.begin()?;
        let status_after = txn.last_event_seq()?;
        if txn.mqtt_inbox_cursor()?.is_none() {
            // A first start publishes what arrives from now on, not the whole history.
            let last = txn.last_inbox_cursor()?;
            txn.set_mqtt_inbox_cursor(last)?;
            txn.commit()?;
            log::info!("mqtt: first start; inbox messages after cursor {last} will be published");
        }
        let tls = cfg.ca_file.as_ref().filter(|_| cfg.tls).map(|ca| {
            crate::tls::client_config(&crate::tls::Pin::CaFile(ca.clone()))
                .map_err(|e| format!("mqtt.ca_file {}: {e}", ca.display()))
        });
        let session = Session::new(
            SessionConfig {
                client_id: cfg.client_id.clone(),
                username: cfg.username.clone(),
                password: None,
                keepalive_secs: cfg.keepalive_secs,
                will_topic: topics.availability.clone(),
                will_payload: discovery::NOT_AVAILABLE.as_bytes().to_vec(),
            },
            0,
        );
        log::info!(
            "mqtt: bridge to {}:{} as {} under {}",
            cfg.host,
            cfg.port,
            cfg.client_id,
            topics.base
        );
        Ok(Bridge {
            topics,
            store: parts.store,
            bus: parts.bus,
            api: parts.api,
            link: parts.link,
            session,
            tls,
            started: Instant::now(),
            inbox: InboxWindow::default(),
            status_after,
            published_link: None,
            published_outbox: None,
            published_contacts: None,
            discovery_pending: None,
            next_state_poll_ms: 0,
            bus_generation: 0,
            cfg,
        })
    }

    /// Milliseconds since the bridge started (monotonic): the session's clock.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Reads the password file again before each dial, so a changed password needs no restart.
    fn refresh_password(&mut self) {
        let Some(path) = &self.cfg.password_file else {
            return;
        };
        match crate::config::mqtt::read_password(path) {
            Ok(p) => self.session.set_password(Some(p)),
            Err(e) => {
                log::error!("mqtt: password_file {}: {e}", path.display());
                self.session.set_password(None);
            }
        }
    }

    async fn dial(&self) -> Result<Box<dyn Stream>, String> {
        let addr = if self.cfg.host.contains(':') {
            format!("[{}]:{}", self.cfg.host, self.cfg.port)
        } else {
            format!("{}:{}", self.cfg.host, self.cfg.port)
        };
        if let Some(tls) = &self.tls {
            let config = tls.clone()?;
            let stream = crate::tls::connect(&addr, &self.cfg.host, config)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Box::new(stream));
        }
        let tcp = async {
            smol::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| format!("{addr}: {e}"))
        }
        .or(async {
            Timer::after(Duration::from_millis(MQTT_DIAL_TIMEOUT_MS)).await;
            Err(format!("{addr}: timed out after {MQTT_DIAL_TIMEOUT_MS} ms"))
        })
        .await?;
        if let Err(e) = tcp.set_nodelay(true) {
            log::debug!("mqtt: TCP_NODELAY refused: {e}");
        }
        Ok(Box::new(tcp))
    }

    /// One connection: handle events, publish what is due, write, and wait for input, a bus
    /// wake or the next deadline; until the session closes.
    async fn serve(&mut self, mut stream: Box<dyn Stream>) {
        let mut buf = vec![0u8; MQTT_READ_CHUNK_BYTES];
        loop {
            self.handle_events();
            if self.session.is_connected() {
                self.pump();
            }
            while let Some(bytes) = self.session.poll_transmit() {
                let written = async {
                    stream.write_all(&bytes).await?;
                    stream.flush().await
                }
                .await;
                if let Err(e) = written {
                    log::debug!("mqtt: write failed: {e}");
                    self.session.handle_closed(self.now());
                }
            }
            if !self.session.is_open() {
                self.handle_events();
                return;
            }
            let listener = self.bus.listen();
            let now = self.now();
            // The state poll is due only while connected (before the CONNACK nothing is
            // published, and waking for it would spin).
            let state_poll = if self.session.is_connected() {
                self.next_state_poll_ms.max(now)
            } else {
                u64::MAX
            };
            let deadline = self
                .session
                .poll_timeout()
                .unwrap_or(u64::MAX)
                .min(state_poll);
            let sleep = Duration::from_millis(deadline.saturating_sub(now));
            let woke = async { Wake::Read(stream.read(&mut buf).await) }
                .or(async {
                    listener.await;
                    Wake::Bus
                })
                .or(async {
                    Timer::after(sleep).await;
                    Wake::Timer
                })
                .await;
            let now = self.now();
            match woke {
                Wake::Read(Ok(0)) => self.session.handle_closed(now),
                Wake::Read(Ok(n)) => self
                    .session
                    .handle_bytes(buf.get(..n).unwrap_or_default(), now),
                Wake::Read(Err(e)) => {
                    log::debug!("mqtt: read failed: {e}");
                    self.session.handle_closed(now);
                }
                Wake::Bus | Wake::Timer => {}
            }
            // Deadlines are checked after every wake, so a stream of input never starves them.
            self.session.handle_timeout(now);
        }
    }

    fn handle_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Connected { session_present } => self.on_connected(session_present),
                SessionEvent::Message {
                    topic,
                    payload,
                    pkid,
                    retain,
                } => self.on_message(&topic, &payload, pkid, retain),
                SessionEvent::Oversized { topic, pkid, len } => {
                    log::warn!("mqtt: a {len}-byte message on {topic} is over the limit; refused");
                    if self.is_command(&topic) {
                        self.publish_result(&commands::too_large(len).result);
                    }
                    if let Some(p) = pkid {
                        self.session.ack(p, self.now());
                    }
                }
                SessionEvent::Acked { pkid } => self.on_acked(pkid),
                SessionEvent::Closed {
                    reason,
                    retry_in_ms,
                } => {
                    if reason.is_bad_login() {
                        log::error!(
                            "mqtt: {reason}; check mqtt.username and mqtt.password_file; retrying in {retry_in_ms} ms"
                        );
                    } else {
                        log::warn!("mqtt: {reason}; retrying in {retry_in_ms} ms");
                    }
                    self.discovery_pending = None;
                }
            }
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        log::info!(
            "mqtt: connected to {}:{} (session {})",
            self.cfg.host,
            self.cfg.port,
            if session_present { "resumed" } else { "new" }
        );
        let now = self.now();
        if let Err(e) = self.session.subscribe(&self.topics.subscriptions(), now) {
            log::warn!("mqtt: subscribe: {e:?}");
        }
        self.publish(
            &self.topics.availability.clone(),
            discovery::AVAILABLE.into(),
            true,
        );
        let durable = match self.store.begin().and_then(|t| t.mqtt_inbox_cursor()) {
            Ok(c) => c.unwrap_or(0),
            Err(e) => {
                log::warn!("mqtt: store: {e}");
                self.inbox.sent_up_to
            }
        };
        self.inbox.reset(durable);
        self.republish_states();
    }

    /// Forgets what was published, so discovery and the retained states go out again.
    fn republish_states(&mut self) {
        self.published_link = None;
        self.published_outbox = None;
        self.published_contacts = None;
        self.next_state_poll_ms = 0;
    }

    fn is_command(&self, topic: &str) -> bool {
        topic == self.topics.send || topic.starts_with(&self.topics.notify_prefix)
    }

    fn on_message(&mut self, topic: &str, payload: &[u8], pkid: Option<u16>, retain: bool) {
        let outcome = if topic == self.topics.ha_status {
            if payload == discovery::HA_BIRTH.as_bytes() {
                log::info!("mqtt: Home Assistant started; publishing discovery again");
                self.republish_states();
            }
            None
        } else if retain && self.is_command(topic) {
            // A retained command would run again at every subscribe.
            Some(commands::Outcome {
                ack: true,
                result: commands::error_result(
                    None,
                    "retained_command",
                    "commands must not be published retained",
                ),
            })
        } else if topic == self.topics.send {
            Some(commands::send(&self.api, payload))
        } else if let Some(digits) = topic.strip_prefix(&self.topics.notify_prefix) {
            Some(commands::notify(&self.api, digits, payload))
        } else {
            None
        };
        let ack = match outcome {
            None => true,
            Some(o) => {
                match o.result.get("error") {
                    Some(e) => log::warn!(
                        "mqtt: command on {topic} refused: {}",
                        e.get("code").and_then(|c| c.as_str()).unwrap_or("error")
                    ),
                    None => log::debug!(
                        "mqtt: command on {topic} queued as {}",
                        o.result["id"].as_str().unwrap_or("?")
                    ),
                }
                if topic == self.topics.send || o.result.get("error").is_some() {
                    self.publish_result(&o.result);
                }
                o.ack
            }
        };
        if let (true, Some(p)) = (ack, pkid) {
            self.session.ack(p, self.now());
        }
    }

    fn publish_result(&mut self, result: &serde_json::Value) {
        let topic = self.topics.send_result.clone();
        self.publish(&topic, result.to_string().into(), false);
    }

    /// Publishes QoS 1; returns the packet id, or `None` (logged) when it could not be.
    fn publish(&mut self, topic: &str, payload: Bytes, retain: bool) -> Option<u16> {
        match self
            .session
            .publish(topic, payload, true, retain, self.now())
        {
            Ok(p) => p,
            Err(e) => {
                log::warn!("mqtt: publish on {topic}: {e:?}");
                None
            }
        }
    }

    fn on_acked(&mut self, pkid: u16) {
        if let Some(cursor) = self.inbox.acked(pkid) {
            let saved = self.store.begin().and_then(|t| {
                t.set_mqtt_inbox_cursor(cursor)?;
                t.commit()
            });
            if let Err(e) = saved {
                log::warn!("mqtt: saving the inbox cursor: {e}");
            }
        }
        if let Some((waiting, _)) = &mut self.discovery_pending {
            waiting.remove(&pkid);
            if waiting.is_empty()
                && let Some((_, contacts)) = self.discovery_pending.take()
            {
                let saved = self.store.begin().and_then(|t| {
                    t.set_mqtt_discovered(&contacts)?;
                    t.commit()
                });
                if let Err(e) = saved {
                    log::warn!("mqtt: saving the discovered contacts: {e}");
                }
            }
        }
    }

    /// Publishes what is due: inbox messages, status events, and (at each state poll or
    /// bus wake) the link, the outbox depth and discovery.
    fn pump(&mut self) {
        if let Err(e) = self.pump_inbox() {
            log::warn!("mqtt: inbox: {e}");
        }
        if let Err(e) = self.pump_status() {
            log::warn!("mqtt: status: {e}");
        }
        let link = match self.link.state() {
            LinkState::Up => "up",
            LinkState::Down | LinkState::Replaced => "down",
        };
        if self.published_link != Some(link) {
            let topic = self.topics.link.clone();
            if self.publish(&topic, link.into(), true).is_some() {
                self.published_link = Some(link);
            }
        }
        let now = self.now();
        let generation = self.bus.generation();
        if now < self.next_state_poll_ms && generation == self.bus_generation {
            return;
        }
        self.next_state_poll_ms = now + MQTT_STATE_POLL_MS;
        self.bus_generation = generation;
        if let Err(e) = self.pump_states() {
            log::warn!("mqtt: state: {e}");
        }
    }

    fn pump_inbox(&mut self) -> Result<(), StoreError> {
        let free = INBOX_WINDOW.saturating_sub(self.inbox.pending.len());
        if free == 0 {
            return Ok(());
        }
        let txn = self.store.begin()?;
        let rows = txn.inbox_after(self.inbox.sent_up_to, free)?;
        let mut payloads = Vec::with_capacity(rows.len());
        for (cursor, row) in &rows {
            let json = crate::api::inbox::message_json(&txn, *cursor, row)?;
            payloads.push((*cursor, json.to_string()));
        }
        drop(txn);
        let topic = self.topics.inbox.clone();
        for (cursor, json) in payloads {
            let Some(pkid) = self.publish(&topic, json.into(), false) else {
                break;
            };
            log::debug!("mqtt: published inbox cursor {cursor}");
            self.inbox.pending.push_back((pkid, cursor, false));
            self.inbox.sent_up_to = cursor;
        }
        Ok(())
    }

    fn pump_status(&mut self) -> Result<(), StoreError> {
        let txn = self.store.begin()?;
        let events = txn.events_after(self.status_after, STATUS_BATCH_EVENTS)?;
        let mut payloads = Vec::new();
        for (seq, bytes) in &events {
            self.status_after = *seq;
            let event = Event::decode(bytes)?;
            if !matches!(event, Event::Status { .. }) {
                continue;
            }
            if let Some(json) = crate::api::inbox::event_json(&txn, &event)? {
                payloads.push(json.to_string());
            }
        }
        drop(txn);
        let topic = self.topics.status.clone();
        for json in payloads {
            if let Err(e) = self
                .session
                .publish(&topic, json.into(), false, false, self.now())
            {
                log::warn!("mqtt: publish on {topic}: {e:?}");
            }
        }
        Ok(())
    }

    /// The outbox depth and the notify entities.
    fn pump_states(&mut self) -> Result<(), StoreError> {
        let txn = self.store.begin()?;
        let depth = queued(&txn)?;
        let contacts = match &self.cfg.contacts {
            Some(c) => c.clone(),
            // Only phone numbers: a user name that is not one could not stand in a topic.
            None => {
                crate::api::contacts::known_users(&txn, crate::config::mqtt::MAX_MQTT_CONTACTS)?
                    .into_iter()
                    .filter(|u| crate::jid::parse_phone(&format!("+{u}")).is_ok())
                    .collect()
            }
        };
        let previous = txn.mqtt_discovered()?;
        drop(txn);
        if self.published_outbox != Some(depth) {
            let topic = self.topics.outbox.clone();
            if self
                .publish(&topic, depth.to_string().into(), true)
                .is_some()
            {
                self.published_outbox = Some(depth);
            }
        }
        if self.published_contacts.as_ref() != Some(&contacts) {
            self.publish_discovery(&contacts, &previous);
            self.published_contacts = Some(contacts);
        }
        Ok(())
    }

    /// Publishes every config, and an empty retained config for each contact that had a
    /// notify entity and no longer has one. The new set is stored once all are acknowledged.
    fn publish_discovery(&mut self, contacts: &[String], previous: &[String]) {
        let mut waiting = BTreeSet::new();
        for gone in previous.iter().filter(|d| !contacts.contains(d)) {
            let topic = discovery::notify_config_topic(&self.cfg, gone);
            log::info!("mqtt: removing the notify entity of +{gone}");
            waiting.extend(self.publish(&topic, Bytes::new(), true));
        }
        for (topic, json) in discovery::configs(&self.cfg, &self.topics, contacts) {
            waiting.extend(self.publish(&topic, json.into(), true));
        }
        log::info!(
            "mqtt: published discovery for {} contacts under {}",
            contacts.len(),
            self.cfg.discovery_prefix
        );
        self.discovery_pending = Some((waiting, contacts.to_vec()));
    }
}

/// Outbox rows still `queued`: the outbox-depth sensor's value.
fn queued(txn: &crate::store::Txn) -> Result<u64, StoreError> {
    let mut after = 0;
    let mut count = 0;
    let mut seen = 0;
    while seen < MAX_OUTBOX_ROWS_COUNTED {
        let rows = txn.outbox_scan(after, 512)?;
        let Some((last, _)) = rows.last() else { break };
        after = *last;
        seen += rows.len() as u64;
        count += rows
            .iter()
            .filter(|(_, r)| r.status == OutboxStatus::Queued)
            .count() as u64;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_cursor_advances_only_over_messages_all_acknowledged() {
        let mut w = InboxWindow::default();
        w.reset(10);
        w.pending
            .extend([(1, 11, false), (2, 12, false), (3, 14, false)]);
        assert_eq!(w.acked(2), None, "11 is still in flight");
        assert_eq!(w.acked(9), None, "not ours");
        assert_eq!(w.acked(1), Some(12));
        assert_eq!(w.acked(3), Some(14));
        assert!(w.pending.is_empty());
        w.reset(14);
        assert_eq!((w.sent_up_to, w.pending.len()), (14, 0));
    }
}
