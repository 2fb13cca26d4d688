//! In-process tests of the hub core against client cores: no sockets, a simulated network
//! that carries frame payloads both ways, and a virtual clock.

use std::collections::HashMap;

use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::state::{AccountBook, ConnId, Hub, Output};
use crate::client::{Client, Event};
use crate::content::Message;
use crate::jid::Jid;
use crate::login::AccountRecord;
use crate::stanza::Stanza;
use crate::store::{Store, StoreError};

const T0: u64 = 1_700_000_000_000;
const TOKEN: &str = "tok-123";

struct Accounts(HashMap<String, AccountRecord>);

impl AccountBook for Accounts {
    fn lookup(&self, account: &str) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.0.get(account).cloned())
    }
}

fn accounts() -> Box<Accounts> {
    let mut m = HashMap::new();
    for a in ["acme-home", "acme-shed"] {
        m.insert(
            a.to_owned(),
            AccountRecord {
                token: TOKEN.into(),
                integrator: "acme".into(),
            },
        );
    }
    Box::new(Accounts(m))
}

struct Peer {
    client: Client,
    conn: Option<ConnId>,
    events: Vec<Event>,
}

/// Two kinds of endpoint, one wire, one clock.
struct Net {
    dir: tempfile::TempDir,
    hub: Hub,
    peers: Vec<Peer>,
    now: u64,
    rng: StdRng,
}

fn wa(phone: &str) -> Jid {
    Jid::whatsapp(phone, None)
}

impl Net {
    fn new() -> Net {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let hub = Hub::open(&dir.path().join("hub"), accounts(), T0, &mut rng).unwrap();
        Net {
            dir,
            hub,
            peers: Vec::new(),
            now: T0,
            rng,
        }
    }

    fn restart_hub(&mut self) {
        // Close the old hub (its redb lock) before reopening the same directory.
        let stand_in = Hub::open(
            &self.dir.path().join("stand-in"),
            accounts(),
            self.now,
            &mut self.rng,
        )
        .unwrap();
        drop(std::mem::replace(&mut self.hub, stand_in));
        self.hub = Hub::open(
            &self.dir.path().join("hub"),
            accounts(),
            self.now,
            &mut self.rng,
        )
        .unwrap();
        for p in &mut self.peers {
            p.conn = None;
            p.client.disconnected();
        }
    }

    fn user(&mut self, phone: &str, behavior: &str) {
        self.hub
            .create_user(phone, 1, behavior, self.now, &mut self.rng)
            .unwrap();
    }

    fn peer(&mut self, account: &str) -> usize {
        let store = Store::open(&self.dir.path().join(format!("c{}", self.peers.len()))).unwrap();
        let client = Client::new(store, account, 1, &mut self.rng).unwrap();
        self.peers.push(Peer {
            client,
            conn: None,
            events: Vec::new(),
        });
        self.peers.len() - 1
    }

    fn connect(&mut self, i: usize, token: &str) {
        let conn = self.hub.connect(self.now);
        self.peers[i].conn = Some(conn);
        self.peers[i].client.start(token, self.now);
        self.run();
    }

    /// Moves frames until both sides are quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for p in &mut self.peers {
                while let Some(payload) = p.client.poll_transmit() {
                    moved = true;
                    if let Some(c) = p.conn {
                        self.hub.handle_frame(c, &payload, self.now, &mut self.rng);
                    }
                }
            }
            while let Some(out) = self.hub.poll_output() {
                moved = true;
                match out {
                    Output::Send { conn, payload } => {
                        if let Some(p) = self.peers.iter_mut().find(|p| p.conn == Some(conn)) {
                            p.client.handle_frame(&payload, self.now, &mut self.rng);
                        }
                    }
                    Output::Close { conn } => {
                        if let Some(p) = self.peers.iter_mut().find(|p| p.conn == Some(conn)) {
                            p.conn = None;
                            p.client.disconnected();
                        }
                    }
                }
            }
            for p in &mut self.peers {
                while let Some(e) = p.client.poll_event() {
                    p.events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network never went quiet");
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.hub.handle_timeout(self.now, &mut self.rng);
        for p in &mut self.peers {
            p.client.handle_timeout(self.now);
        }
        self.run();
    }

    fn send_text(&mut self, i: usize, to: &Jid, text: &str) -> String {
        let id = self.peers[i]
            .client
            .send_text(to, text, self.now, &mut self.rng)
            .unwrap();
        self.run();
        id
    }

    fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.peers[i].events)
    }

    fn online(&mut self, account: &str) -> usize {
        let i = self.peer(account);
        self.connect(i, TOKEN);
        let ev = self.take_events(i);
        assert!(ev.iter().any(|e| matches!(e, Event::LoggedIn(_))), "{ev:?}");
        assert!(ev.contains(&Event::KeysUploaded), "{ev:?}");
        i
    }
}

fn texts(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => message.text_body().map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn acks(ev: &[Event]) -> Vec<(String, Option<String>)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Acked {
                class, id, error, ..
            } if class == "message" => Some((id.clone(), error.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn text_to_echo_user_comes_back_decrypted_with_receipts() {
    let mut net = Net::new();
    net.user("+15550100", "echo");
    let a = net.online("acme-home");
    let id = net.send_text(a, &wa("15550100"), "hello");
    let ev = net.take_events(a);
    assert_eq!(acks(&ev), vec![(id.clone(), None)]);
    assert_eq!(texts(&ev), vec!["echo: hello".to_owned()]);
    let kinds: Vec<Option<String>> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Receipt { id: rid, kind, .. } if *rid == id => Some(kind.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![None, Some("read".to_owned())]);
    let got = net.hub.received("+15550100").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "hello");
    assert_eq!(got[0]["from"], "acme-home");
    // Second message rides the established session both ways.
    net.send_text(a, &wa("15550100"), "again");
    assert_eq!(texts(&net.take_events(a)), vec!["echo: again".to_owned()]);
    assert_eq!(net.hub.queue_depth(), 0, "every delivery was acked");
}

#[test]
fn wrong_token_is_refused_and_closed() {
    let mut net = Net::new();
    let a = net.peer("acme-home");
    net.connect(a, "wrong");
    let ev = net.take_events(a);
    assert!(
        ev.iter().any(|e| matches!(e, Event::LoginFailed(crate::login::LoginError::Refused { reason, .. }) if reason == "bad_token")),
        "{ev:?}"
    );
    assert_eq!(net.hub.connection_count(), 0);
}

#[test]
fn unknown_account_is_refused() {
    let mut net = Net::new();
    let a = net.peer("acme-nobody");
    net.connect(a, TOKEN);
    let ev = net.take_events(a);
    assert!(
        ev.iter().any(|e| matches!(e, Event::LoginFailed(crate::login::LoginError::Refused { reason, .. }) if reason == "unknown_account")),
        "{ev:?}"
    );
}

#[test]
fn not_opted_in_and_unknown_users_get_error_acks() {
    let mut net = Net::new();
    net.user("+15550199", "not_opted_in");
    let a = net.online("acme-home");
    let id = net.send_text(a, &wa("15550199"), "hi");
    assert_eq!(
        acks(&net.take_events(a)),
        vec![(id, Some("not_opted_in".to_owned()))]
    );
    let id = net.send_text(a, &wa("15550777"), "hi");
    assert_eq!(
        acks(&net.take_events(a)),
        vec![(id, Some("unknown_user".to_owned()))]
    );
}

#[test]
fn message_to_offline_client_arrives_on_reconnect_even_after_hub_restart() {
    let mut net = Net::new();
    net.user("+15550100", "echo");
    let a = net.online("acme-home");
    net.hub.drop_connections();
    net.run();
    let m = Message::text("while you were away");
    net.hub
        .sim_send("+15550100", "acme-home", &m, net.now, &mut net.rng)
        .unwrap();
    assert_eq!(net.hub.queue_depth(), 1);
    net.restart_hub();
    net.connect(a, TOKEN);
    let ev = net.take_events(a);
    assert_eq!(texts(&ev), vec!["while you were away".to_owned()]);
    assert_eq!(net.hub.queue_depth(), 0);
}

#[test]
fn low_prekey_count_is_notified_once_and_the_client_tops_up() {
    let mut net = Net::new();
    let a = net.online("acme-home");
    let b = net.online("acme-shed");
    let target = Jid::interop("acme-home", Some(1));
    let before = net.hub.prekey_count(&target).unwrap();
    assert_eq!(before, u64::from(crate::signal::PREKEY_BATCH_SIZE));
    let mut low_at = Vec::new();
    for n in 0..before {
        let iq = Stanza::new("iq")
            .attr("id", format!("f{n}"))
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(Stanza::new("key").child(Stanza::new("user").attr("jid", target.to_string())));
        net.hub_roundtrip(b, &iq);
        let ev = net.take_events(a);
        if ev.iter().any(|e| matches!(e, Event::PrekeysLow { .. })) {
            assert!(ev.contains(&Event::KeysUploaded), "{ev:?}");
            low_at.push(n + 1);
        }
    }
    assert_eq!(low_at, vec![before - super::state::PREKEY_LOW_COUNT + 1]);
    assert_eq!(net.hub.stats().prekeys_handed_out, before);
    let after = net.hub.prekey_count(&target).unwrap();
    // 19 left at the notification, 100 uploaded, 19 more fetched since.
    assert_eq!(after, before);
}

#[test]
fn fetched_bundles_never_repeat_a_prekey_id() {
    let mut net = Net::new();
    net.online("acme-home");
    let b = net.online("acme-shed");
    let target = Jid::interop("acme-home", Some(1));
    let mut ids = std::collections::HashSet::new();
    for n in 0..30 {
        let iq = Stanza::new("iq")
            .attr("id", format!("f{n}"))
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(Stanza::new("key").child(Stanza::new("user").attr("jid", target.to_string())));
        let reply = net.hub_roundtrip(b, &iq);
        let user = reply
            .child_named("list")
            .unwrap()
            .child_named("user")
            .unwrap();
        let b = super::state::parse_bundle(user).unwrap();
        assert!(ids.insert(b.prekey.unwrap().id), "prekey handed out twice");
    }
}

impl Net {
    /// Sends a stanza from peer `i` and returns the hub's direct answer.
    fn hub_roundtrip(&mut self, i: usize, s: &Stanza) -> Stanza {
        let conn = self.peers[i].conn.unwrap();
        self.hub
            .handle_frame(conn, &s.to_xml(), self.now, &mut self.rng);
        let mut answer = None;
        let mut rest = Vec::new();
        while let Some(o) = self.hub.poll_output() {
            match &o {
                Output::Send { conn: c, payload } if *c == conn && answer.is_none() => {
                    answer = Some(crate::stanza::parse(payload).unwrap());
                }
                _ => rest.push(o),
            }
        }
        for o in rest {
            if let Output::Send { conn, payload } = o
                && let Some(p) = self.peers.iter_mut().find(|p| p.conn == Some(conn))
            {
                p.client.handle_frame(&payload, self.now, &mut self.rng);
            }
        }
        self.run();
        answer.unwrap()
    }
}

#[test]
fn reinstall_is_seen_as_identity_change_and_new_session_works() {
    let mut net = Net::new();
    net.user("+15550100", "echo");
    let a = net.online("acme-home");
    net.send_text(a, &wa("15550100"), "before");
    assert_eq!(texts(&net.take_events(a)), vec!["echo: before".to_owned()]);
    net.hub
        .reinstall("+15550100", net.now, &mut net.rng)
        .unwrap();
    net.run();
    let ev = net.take_events(a);
    assert!(
        ev.contains(&Event::IdentityChanged {
            user: wa("15550100")
        }),
        "{ev:?}"
    );
    net.send_text(a, &wa("15550100"), "after");
    let ev = net.take_events(a);
    assert_eq!(texts(&ev), vec!["echo: after".to_owned()]);
    assert!(ev.contains(&Event::IdentityChanged {
        user: wa("15550100")
    }));
}

#[test]
fn drop_closes_every_connection() {
    let mut net = Net::new();
    net.online("acme-home");
    net.online("acme-shed");
    assert_eq!(net.hub.connection_count(), 2);
    assert_eq!(net.hub.drop_connections(), 2);
    net.run();
    assert_eq!(net.hub.connection_count(), 0);
    assert!(net.peers.iter().all(|p| p.conn.is_none()));
}

#[test]
fn read_after_sends_read_receipt_when_the_clock_says_so() {
    let mut net = Net::new();
    net.user("+15550102", "read_after:5");
    let a = net.online("acme-home");
    let id = net.send_text(a, &wa("15550102"), "x");
    let read = |ev: &[Event]| {
        ev.iter().any(
            |e| matches!(e, Event::Receipt { id: r, kind: Some(k), .. } if *r == id && k == "read"),
        )
    };
    assert!(!read(&net.take_events(a)));
    net.advance(4_000);
    assert!(!read(&net.take_events(a)));
    net.advance(1_000);
    assert!(read(&net.take_events(a)));
}

#[test]
fn offline_simulated_user_gets_messages_when_it_comes_back() {
    let mut net = Net::new();
    net.user("+15550103", "offline");
    let a = net.online("acme-home");
    net.send_text(a, &wa("15550103"), "are you there");
    assert!(net.hub.received("+15550103").unwrap().is_empty());
    net.hub
        .set_behavior("+15550103", "echo", net.now, &mut net.rng)
        .unwrap();
    net.run();
    assert_eq!(net.hub.received("+15550103").unwrap().len(), 1);
    assert_eq!(
        texts(&net.take_events(a)),
        vec!["echo: are you there".to_owned()]
    );
}

#[test]
fn silent_user_delivers_but_never_reads() {
    let mut net = Net::new();
    net.user("+15550101", "silent");
    let a = net.online("acme-home");
    let id = net.send_text(a, &wa("15550101"), "x");
    net.advance(60_000);
    let ev = net.take_events(a);
    let kinds: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Receipt { id: r, kind, .. } if *r == id => Some(kind.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![None]);
    assert!(texts(&ev).is_empty());
}

#[test]
fn two_interop_accounts_talk_directly() {
    let mut net = Net::new();
    let a = net.online("acme-home");
    let b = net.online("acme-shed");
    net.send_text(a, &Jid::interop("acme-shed", None), "hi shed");
    assert_eq!(texts(&net.take_events(b)), vec!["hi shed".to_owned()]);
}

#[test]
fn malformed_frames_close_with_their_reason() {
    for (payload, reason) in [
        (&b"<?xml version=\"1.0\"?><a/>"[..], "xml_declaration"),
        (b"<!DOCTYPE a [<!ENTITY x \"y\">]><a/>", "doctype"),
        (b"<a>&x;</a>", "undefined_entity"),
        (b"<a><b></a>", "unbalanced_tags"),
        (b"\xff\xfe", "bad_utf8"),
        (b"<a/><b/>", "trailing_content"),
    ] {
        let mut net = Net::new();
        let a = net.online("acme-home");
        let conn = net.peers[a].conn.unwrap();
        net.hub.handle_frame(conn, payload, net.now, &mut net.rng);
        let out: Vec<Output> = std::iter::from_fn(|| net.hub.poll_output()).collect();
        let Some(Output::Send { payload: err, .. }) = out.first() else {
            panic!("no stream error for {reason}");
        };
        let err = crate::stanza::parse(err).unwrap();
        assert_eq!(err.tag, "stream:error");
        assert_eq!(err.attr_value("code"), Some(reason));
        assert_eq!(out.get(1), Some(&Output::Close { conn }));
        assert_eq!(net.hub.connection_count(), 0);
    }
}

#[test]
fn stanza_before_login_is_refused() {
    let mut net = Net::new();
    let conn = net.hub.connect(net.now);
    let msg = Stanza::new("message").attr("id", "x");
    net.hub
        .handle_frame(conn, &msg.to_xml(), net.now, &mut net.rng);
    let out: Vec<Output> = std::iter::from_fn(|| net.hub.poll_output()).collect();
    let Some(Output::Send { payload, .. }) = out.first() else {
        panic!("no failure");
    };
    let f = crate::stanza::parse(payload).unwrap();
    assert_eq!(f.tag, "failure");
    assert_eq!(f.attr_value("reason"), Some("bad_request"));
    assert_eq!(out.get(1), Some(&Output::Close { conn }));
}

#[test]
fn silent_connection_times_out_in_login() {
    let mut net = Net::new();
    let conn = net.hub.connect(net.now);
    assert_eq!(
        net.hub.poll_timeout(),
        Some(net.now + crate::login::LOGIN_TIMEOUT_MS)
    );
    net.now += crate::login::LOGIN_TIMEOUT_MS;
    net.hub.handle_timeout(net.now, &mut net.rng);
    let out: Vec<Output> = std::iter::from_fn(|| net.hub.poll_output()).collect();
    assert_eq!(out.last(), Some(&Output::Close { conn }));
    assert_eq!(net.hub.connection_count(), 0);
}

#[test]
fn idle_connection_is_closed_but_pinging_one_stays() {
    let mut net = Net::new();
    let a = net.online("acme-home");
    for _ in 0..10 {
        net.advance(super::state::IDLE_TIMEOUT_MS / 2);
    }
    assert!(net.peers[a].conn.is_some(), "keepalive kept it open");
    let conn = net.hub.connect(net.now);
    net.now += 1;
    let _ = conn;
    assert_eq!(net.hub.connection_count(), 2);
}

#[test]
fn second_login_of_same_device_replaces_the_first() {
    let mut net = Net::new();
    let a = net.online("acme-home");
    let old = net.peers[a].conn.unwrap();
    net.connect(a, TOKEN);
    assert_ne!(net.peers[a].conn, Some(old));
    assert_eq!(net.hub.connection_count(), 1);
}
