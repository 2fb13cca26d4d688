//! The engine against the hub core, with no sockets: a simulated wire that carries frame
//! payloads both ways, an in-memory store, and a virtual clock that only moves when a test
//! says so. Every deadline here comes from `poll_timeout`, never from sleeping.

use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::*;
use crate::client::{Client, KEEPALIVE_INTERVAL_MS};
use crate::content::Message;
use crate::hub_tests::{T0, TOKEN, accounts};
use crate::metrics::Metrics;
use crate::stanza::Stanza;
use crate::store::{OutboxRow, Store};
use interop_hub::state::{ConnId, Hub, Output};

const PHONE: &str = "+15550100";
const DIGITS: &str = "15550100";

/// One engine, one hub, one wire, one clock.
pub(super) struct Rig {
    _dir: tempfile::TempDir,
    pub(super) hub: Hub,
    conn: Option<ConnId>,
    pub(super) engine: Engine<StdRng>,
    pub(super) store: Rc<Store>,
    pub(super) now: u64,
    pub(super) rng: StdRng,
    /// Everything the engine reported, in order.
    events: Vec<LinkEvent>,
    /// Every stanza the engine wrote, in order.
    pub(super) sent: Vec<Stanza>,
    /// Every stanza the hub wrote to the engine, in order.
    pub(super) received: Vec<Stanza>,
}

impl Rig {
    /// A hub with the simulated user `PHONE` behaving as `behavior`, and an engine that has
    /// dialed it but not yet exchanged a frame.
    fn dialed(behavior: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        let mut hub = Hub::open(&dir.path().join("hub"), accounts(), T0, &mut rng).unwrap();
        hub.create_user(PHONE, 1, behavior, T0, &mut rng).unwrap();
        let store = Rc::new(Store::in_memory().unwrap());
        let client = Client::new(store.clone(), "acme-home", 1, &mut rng).unwrap();
        let bus = EventBus::new(false, Rc::new(Metrics::default()));
        let conn = Some(hub.connect(T0));
        let engine = Engine::new(
            client,
            bus,
            Login::Token(TOKEN),
            T0,
            StdRng::seed_from_u64(12),
        );
        Rig {
            _dir: dir,
            hub,
            conn,
            engine,
            store,
            now: T0,
            rng,
            events: Vec::new(),
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Logged in, with keys uploaded and the wire quiet.
    pub(super) fn up(behavior: &str) -> Rig {
        let mut rig = Rig::dialed(behavior);
        rig.pump();
        assert!(
            matches!(rig.events.first(), Some(LinkEvent::Up { .. })),
            "{:?}",
            rig.events
        );
        rig
    }

    /// What the engine writes now, without delivering it anywhere.
    pub(super) fn transmit(&mut self) -> Vec<Stanza> {
        let mut out = Vec::new();
        while let Some(p) = self.engine.poll_transmit() {
            let s = crate::stanza::parse(&p).unwrap();
            self.sent.push(s.clone());
            out.push(s);
        }
        out
    }

    /// Moves frames both ways until both sides are quiet.
    pub(super) fn pump(&mut self) {
        self.pump_with(|_| true);
    }

    /// [`Rig::pump`], but a stanza the engine writes reaches the hub only if `deliver` says
    /// so (a lossy wire).
    fn pump_with(&mut self, mut deliver: impl FnMut(&Stanza) -> bool) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(p) = self.engine.poll_transmit() {
                moved = true;
                let passes = match crate::stanza::parse(&p) {
                    Ok(s) => {
                        let passes = deliver(&s);
                        self.sent.push(s);
                        passes
                    }
                    Err(_) => true,
                };
                if let Some(c) = self.conn
                    && passes
                {
                    self.hub.handle_frame(c, &p, self.now, &mut self.rng);
                }
            }
            while let Some(out) = self.hub.poll_output() {
                moved = true;
                match out {
                    Output::Send { conn, payload } if Some(conn) == self.conn => {
                        if let Ok(s) = crate::stanza::parse(&payload) {
                            self.received.push(s);
                        }
                        self.engine.handle_frame(&payload, self.now);
                    }
                    Output::Close { conn } if Some(conn) == self.conn => {
                        self.conn = None;
                        self.engine.handle_closed("closed by the hub");
                    }
                    _ => {}
                }
            }
            while let Some(e) = self.engine.poll_event() {
                moved = true;
                self.events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("the wire never went quiet");
    }

    /// Moves the clock to `t`, runs both sides' timers, and pumps.
    fn advance_to(&mut self, t: u64) {
        self.now = t;
        self.hub.handle_timeout(self.now, &mut self.rng);
        self.engine.handle_timeout(self.now);
        self.pump();
    }

    /// Commits a queued text row to `DIGITS`, as the API's send does, without waking.
    fn queue(&mut self, label: &str, text: &str) -> OutboxRow {
        self.queue_to(DIGITS, label, text)
    }

    /// Commits a queued text row to outbox recipient `to` (digits, or a group's JID).
    pub(super) fn queue_to(&mut self, to: &str, label: &str, text: &str) -> OutboxRow {
        let content = prost::Message::encode_to_vec(&Message::text(text.to_owned()));
        let row = crate::api::messages::queued_row(
            mid(label),
            to,
            crate::content::ContentKind::Text,
            self.now,
            content,
        );
        let txn = self.store.begin().unwrap();
        txn.outbox_insert(&row).unwrap();
        txn.commit().unwrap();
        row
    }

    fn row(&self, label: &str) -> OutboxRow {
        let txn = self.store.begin().unwrap();
        txn.outbox_by_id(&mid(label)).unwrap().unwrap().1
    }

    fn downs(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Down(why) => Some(why.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// A valid message id (`3EB0` and 18 hex digits) named after a test's label.
pub(super) fn mid(label: &str) -> String {
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("3EB000{hash:016X}")
}

fn is_count_iq(s: &Stanza) -> bool {
    s.tag == "iq" && s.attr_value("xmlns") == Some("encrypt") && s.child_named("count").is_some()
}

#[test]
fn login_brings_the_link_up_enlisted_and_uploads_keys() {
    let rig = Rig::up("echo");
    assert_eq!(
        rig.events,
        vec![LinkEvent::Up {
            jid: Jid::parse("acme-home:1@interop").unwrap(),
            enlisted: true,
        }]
    );
    let device = Jid::parse("acme-home:1@interop").unwrap();
    assert!(rig.hub.prekey_count(&device).unwrap() > 0);
    // The key schedule ran right after login: one count request.
    assert_eq!(rig.sent.iter().filter(|s| is_count_iq(s)).count(), 1);
}

#[test]
fn a_send_on_an_idle_link_leaves_in_the_poll_transmit_after_the_wake() {
    let mut rig = Rig::up("echo");
    // The first message fetches the device list and a bundle; afterwards the link is idle.
    rig.queue("m-first", "hello");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    assert_eq!(rig.row("m-first").status, OutboxStatus::Read);

    rig.queue("m-idle", "doorbell");
    // No wake, no send: nothing polls the outbox on a timer.
    assert!(rig.transmit().is_empty());
    assert_ne!(rig.engine.poll_timeout(), Some(rig.now));
    // The wake, at the same virtual instant: the stanza is out in the very next call.
    rig.engine.handle_api_wake(rig.now);
    let out = rig.transmit();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].tag, "message");
    assert_eq!(out[0].attr_value("id"), Some(mid("m-idle").as_str()));
    // Its exact bytes were committed into the row before they were handed out.
    assert!(!rig.row("m-idle").stanza.is_empty());
    assert_eq!(rig.row("m-idle").status, OutboxStatus::Queued);
}

#[test]
fn acks_and_receipts_move_the_row_to_sent_delivered_and_read() {
    let mut rig = Rig::up("silent");
    rig.queue("m-1", "x");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    // The silent user delivers but never reads.
    let row = rig.row("m-1");
    assert_eq!(row.status, OutboxStatus::Delivered);
    assert_eq!(row.updated_ms, rig.now);

    let mut rig = Rig::up("read_after:5");
    rig.queue("m-2", "x");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    assert_eq!(rig.row("m-2").status, OutboxStatus::Delivered);
    rig.advance_to(T0 + 5_000);
    assert_eq!(rig.row("m-2").status, OutboxStatus::Read);
}

#[test]
fn a_send_to_a_user_who_is_not_opted_in_fails_with_the_gatekeepers_code() {
    let mut rig = Rig::up("echo");
    let content = prost::Message::encode_to_vec(&Message::text("x".to_owned()));
    let row = crate::api::messages::queued_row(
        mid("m-nobody"),
        "15550999",
        crate::content::ContentKind::Text,
        rig.now,
        content,
    );
    let txn = rig.store.begin().unwrap();
    txn.outbox_insert(&row).unwrap();
    txn.commit().unwrap();
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    let row = rig.row("m-nobody");
    assert_eq!(row.status, OutboxStatus::Failed);
    assert!(!row.error_code.is_empty());
}

#[test]
fn a_burst_leaves_within_the_send_window_as_acks_come_back() {
    let mut rig = Rig::up("echo");
    rig.queue("m-0", "warm up");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    let n = 3 * SEND_WINDOW + 5;
    for i in 0..n {
        rig.queue(&format!("m-b{i:03}"), "x");
    }
    rig.engine.handle_api_wake(rig.now);
    // Without acks, one window's worth leaves and no more: the engine is not due again
    // until an ack (or the ack deadline of the oldest).
    let out = rig.transmit();
    assert_eq!(
        out.iter().filter(|s| s.tag == "message").count(),
        SEND_WINDOW
    );
    let due = rig.engine.poll_timeout().unwrap();
    assert!(due > rig.now && due <= rig.now + ACK_WAIT_MS, "{due}");
    assert!(rig.transmit().is_empty());
    // Deliver them: each ack lets another row out, until every one is sent, and nothing
    // is ever resent on this connection.
    if let Some(c) = rig.conn {
        for s in &out {
            rig.hub.handle_frame(c, &s.to_xml(), rig.now, &mut rig.rng);
        }
    }
    rig.pump();
    let ids: Vec<&str> = rig
        .sent
        .iter()
        .filter(|s| s.tag == "message")
        .filter_map(|s| s.attr_value("id"))
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), n + 1, "each message once");
    assert_eq!(unique.len(), n + 1);
    for i in 0..n {
        assert_eq!(rig.row(&format!("m-b{i:03}")).status, OutboxStatus::Read);
    }
    assert!(rig.downs().is_empty(), "{:?}", rig.downs());
    assert_ne!(rig.engine.poll_timeout(), Some(rig.now));
}

#[test]
fn a_message_never_acked_takes_the_connection_down_at_its_ack_deadline() {
    let mut rig = Rig::up("echo");
    rig.queue("m-0", "warm up");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    rig.queue("m-lost", "x");
    rig.engine.handle_api_wake(rig.now);
    let started = rig.now;
    // The gatekeeper answers everything (keepalives included) but never sees the message.
    let mut lost = 0;
    loop {
        rig.pump_with(|s| {
            let message = s.tag == "message";
            lost += usize::from(message);
            !message
        });
        if !rig.downs().is_empty() || rig.now >= started + 2 * ACK_WAIT_MS {
            break;
        }
        let Some(next) = rig.engine.poll_timeout() else {
            break;
        };
        rig.now = next.max(rig.now + 1);
        rig.hub.handle_timeout(rig.now, &mut rig.rng);
        rig.engine.handle_timeout(rig.now);
    }
    assert_eq!(lost, 1);
    let why = format!(
        "message {} not acked within {ACK_WAIT_MS} ms",
        mid("m-lost")
    );
    assert_eq!(rig.downs(), [why.as_str()]);
    assert_eq!(
        rig.now,
        started + ACK_WAIT_MS,
        "at the deadline, from poll_timeout"
    );
    // Still queued, with its stanza: the next connection resends it byte-identical.
    assert_eq!(rig.row("m-lost").status, OutboxStatus::Queued);
}

#[test]
fn a_stanza_over_the_frame_bound_fails_its_row_and_the_rest_still_leave() {
    let mut rig = Rig::up("echo");
    let mut big = rig.queue("m-big", "x");
    // A committed stanza is resent byte-identical; this one cannot fit a frame.
    let mut stanza = format!(
        "<message id=\"{}\" to=\"15550100@s.whatsapp.net\">",
        mid("m-big")
    )
    .into_bytes();
    stanza.resize(MAX_FRAME_BYTES + 1, b' ');
    big.stanza = stanza;
    let txn = rig.store.begin().unwrap();
    let (seq, _) = txn.outbox_by_id(&mid("m-big")).unwrap().unwrap();
    txn.outbox_write(seq, &big).unwrap();
    txn.commit().unwrap();
    rig.queue("m-small", "y");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    let row = rig.row("m-big");
    assert_eq!(row.status, OutboxStatus::Failed);
    assert_eq!(row.error_code, "too_large");
    assert_eq!(rig.row("m-small").status, OutboxStatus::Read);
    assert!(rig.downs().is_empty(), "{:?}", rig.events);
}

#[test]
fn the_login_deadline_comes_from_poll_timeout_and_ends_the_engine() {
    let mut rig = Rig::dialed("echo");
    // The hub never hears us: the engine only has its own deadline.
    rig.conn = None;
    assert_eq!(rig.transmit().len(), 1, "the login hello");
    assert_eq!(rig.engine.poll_timeout(), Some(T0 + LOGIN_WAIT_MS));
    rig.engine.handle_timeout(T0 + LOGIN_WAIT_MS - 1);
    assert_eq!(rig.engine.poll_event(), None);
    rig.engine.handle_timeout(T0 + LOGIN_WAIT_MS);
    assert_eq!(
        rig.engine.poll_event(),
        Some(LinkEvent::Down(format!(
            "no login answer within {LOGIN_WAIT_MS} ms"
        )))
    );
    assert_eq!(rig.engine.poll_timeout(), None);
}

#[test]
fn a_refused_token_ends_the_engine_with_the_reason() {
    let mut rig = Rig::dialed("echo");
    let client = Client::new(rig.store.clone(), "acme-home", 1, &mut rig.rng).unwrap();
    let bus = EventBus::new(false, Rc::new(Metrics::default()));
    rig.engine = Engine::new(
        client,
        bus,
        Login::Token("wrong"),
        T0,
        StdRng::seed_from_u64(3),
    );
    rig.pump();
    let downs = rig.downs();
    assert_eq!(downs.len(), 1, "{:?}", rig.events);
    assert!(downs[0].starts_with("login refused"), "{downs:?}");
    assert!(!rig.events.iter().any(|e| matches!(e, LinkEvent::Up { .. })));
}

#[test]
fn keepalive_deadlines_come_from_poll_timeout() {
    let mut rig = Rig::up("echo");
    let last_tx = rig.now;
    assert_eq!(
        rig.engine.poll_timeout(),
        Some(last_tx + KEEPALIVE_INTERVAL_MS)
    );
    // Answered pings keep the link up for a long time.
    for _ in 0..5 {
        let due = rig.engine.poll_timeout().unwrap();
        rig.advance_to(due);
    }
    assert!(rig.downs().is_empty(), "{:?}", rig.events);
    // A ping the hub never answers: the deadline is the keepalive's, then the engine ends.
    rig.conn = None;
    let due = rig.engine.poll_timeout().unwrap();
    rig.advance_to(due);
    let ping = rig.sent.last().unwrap();
    assert_eq!(ping.tag, "iq");
    assert_eq!(
        rig.engine.poll_timeout(),
        Some(due + crate::client::KEEPALIVE_DEADLINE_MS)
    );
    rig.advance_to(due + crate::client::KEEPALIVE_DEADLINE_MS);
    assert_eq!(
        rig.downs(),
        vec![format!(
            "no keepalive answer within {} ms",
            crate::client::KEEPALIVE_DEADLINE_MS
        )]
    );
    assert_eq!(rig.engine.poll_timeout(), None);
}

#[test]
fn the_key_schedule_runs_again_after_its_interval() {
    let mut rig = Rig::up("echo");
    let counts = |rig: &Rig| rig.sent.iter().filter(|s| is_count_iq(s)).count();
    assert_eq!(counts(&rig), 1);
    // Keepalives until just before the interval: no new count request.
    while rig.engine.poll_timeout().unwrap() < T0 + KEY_CHECK_INTERVAL_MS {
        let due = rig.engine.poll_timeout().unwrap();
        rig.advance_to(due);
    }
    assert_eq!(counts(&rig), 1);
    rig.advance_to(T0 + KEY_CHECK_INTERVAL_MS);
    assert_eq!(counts(&rig), 2);
}

#[test]
fn a_closed_transport_ends_the_engine_once_and_inputs_after_it_are_ignored() {
    let mut rig = Rig::up("echo");
    rig.engine.handle_closed("connection closed");
    rig.engine.handle_closed("again");
    rig.pump();
    assert_eq!(rig.downs(), vec!["connection closed"]);
    rig.queue("m-late", "x");
    rig.engine.handle_api_wake(rig.now);
    assert!(rig.transmit().is_empty());
    assert_eq!(rig.engine.poll_timeout(), None);
    assert_eq!(
        rig.row("m-late").status,
        OutboxStatus::Queued,
        "kept for the next link"
    );
}

#[test]
fn a_row_started_on_a_lost_connection_is_resent_byte_identical_on_the_next() {
    let mut rig = Rig::up("echo");
    rig.queue("m-0", "warm up");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    rig.queue("m-lost", "x");
    rig.engine.handle_api_wake(rig.now);
    let first = rig.transmit();
    assert_eq!(first.len(), 1);
    let committed = rig.row("m-lost").stanza;
    // The connection dies before the hub hears it; a new engine on a new connection.
    rig.engine.handle_closed("connection closed");
    let client = Client::new(rig.store.clone(), "acme-home", 1, &mut rig.rng).unwrap();
    let bus = EventBus::new(false, Rc::new(Metrics::default()));
    if let Some(old) = rig.conn.take() {
        rig.hub.disconnected(old);
    }
    rig.conn = Some(rig.hub.connect(rig.now));
    rig.engine = Engine::new(
        client,
        bus,
        Login::Token(TOKEN),
        rig.now,
        StdRng::seed_from_u64(5),
    );
    let mut resent = None;
    for _ in 0..100 {
        let Some(p) = rig.engine.poll_transmit() else {
            break;
        };
        if p.starts_with(b"<message")
            && crate::client::stanza_id(&p) == Some(mid("m-lost").as_str())
        {
            resent = Some(p.clone());
        }
        let c = rig.conn.unwrap();
        rig.hub.handle_frame(c, &p, rig.now, &mut rig.rng);
        while let Some(out) = rig.hub.poll_output() {
            if let Output::Send { conn, payload } = out
                && Some(conn) == rig.conn
            {
                rig.engine.handle_frame(&payload, rig.now);
            }
        }
    }
    assert_eq!(resent.as_deref(), Some(committed.as_slice()));
    rig.pump();
    assert_eq!(rig.row("m-lost").status, OutboxStatus::Read);
}

#[test]
fn a_frame_we_refuse_is_logged_as_our_refusal_not_the_servers_close() {
    let mut rig = Rig::up("echo");
    rig.engine
        .handle_frame(b"<!DOCTYPE x [<!ENTITY a \"b\">]><iq/>", rig.now);
    while let Some(e) = rig.engine.poll_event() {
        rig.events.push(e);
    }
    let downs = rig.downs();
    assert_eq!(downs.len(), 1, "{downs:?}");
    assert!(
        downs[0].starts_with("rejected a frame from the server ("),
        "{downs:?}"
    );
    assert!(!downs[0].contains("server closed"), "{downs:?}");
}

/// The gatekeeper's refusal of message `label` with `code`, as its `<ack>` carries it.
fn refusal(label: &str, code: &str) -> Vec<u8> {
    format!(
        "<ack class=\"message\" id=\"{}\" t=\"1700000000\" error=\"{code}\" text=\"refused\"/>",
        mid(label)
    )
    .into_bytes()
}

#[test]
fn queue_full_is_tried_again_with_a_doubling_wait_then_fails_with_its_code() {
    let mut rig = Rig::up("silent");
    rig.queue("m-0", "warm up");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    rig.queue("m-q", "x");
    rig.engine.handle_api_wake(rig.now);
    let mut tries = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..MAX_SEND_ATTEMPTS {
        let out: Vec<Stanza> = rig
            .transmit()
            .into_iter()
            .filter(|s| s.tag == "message")
            .collect();
        assert_eq!(out.len(), 1, "one try at a time: {out:?}");
        tries.push(out[0].to_xml());
        rig.engine
            .handle_frame(&refusal("m-q", "queue_full"), rig.now);
        let next = rig.engine.poll_timeout().unwrap();
        if rig.row("m-q").status == OutboxStatus::Failed {
            break;
        }
        assert_eq!(rig.row("m-q").status, OutboxStatus::Queued);
        assert!(
            rig.transmit().iter().all(|s| s.tag != "message"),
            "not before its wait"
        );
        waits.push(next - rig.now);
        rig.now = next;
        rig.engine.handle_timeout(rig.now);
    }
    assert_eq!(tries.len(), usize::from(MAX_SEND_ATTEMPTS));
    // Each try is the committed stanza, byte for byte.
    assert!(tries.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(waits, [2_000, 4_000, 8_000, 16_000]);
    let row = rig.row("m-q");
    assert_eq!(row.status, OutboxStatus::Failed);
    assert_eq!(row.error_code, "queue_full");
}

#[test]
fn unknown_device_refreshes_the_device_list_and_sends_afresh_at_once() {
    let mut rig = Rig::up("silent");
    rig.queue("m-0", "warm up");
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
    rig.queue("m-d", "x");
    rig.engine.handle_api_wake(rig.now);
    let first: Vec<Stanza> = rig
        .transmit()
        .into_iter()
        .filter(|s| s.tag == "message")
        .collect();
    assert_eq!(first.len(), 1);
    rig.engine
        .handle_frame(&refusal("m-d", "unknown_device"), rig.now);
    // At the same instant: the device list is asked for again, and the message goes out
    // encrypted anew (not the refused bytes), is accepted and delivered.
    rig.pump();
    let again: Vec<&Stanza> = rig
        .sent
        .iter()
        .filter(|s| s.tag == "message" && s.attr_value("id") == Some(mid("m-d").as_str()))
        .collect();
    assert_eq!(again.len(), 2, "{again:?}");
    assert_ne!(again[0].to_xml(), again[1].to_xml());
    assert_eq!(rig.row("m-d").status, OutboxStatus::Delivered);
    assert!(rig.downs().is_empty());
}
