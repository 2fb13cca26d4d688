//! In-process tests of the hub core against client cores: no sockets, a simulated network
//! that carries frame payloads both ways, and a virtual clock.

use std::collections::HashMap;

use rand::SeedableRng as _;
use rand::rngs::StdRng;

use crate::client::{Client, Event};
use crate::content::Message;
use crate::jid::Jid;
use crate::login::AccountRecord;
use crate::stanza::Stanza;
use crate::store::{Store, StoreError};
use interop_hub::media::MediaStore;
use interop_hub::state::{AccountBook, ConnId, Hub, Output};

pub(crate) const T0: u64 = 1_700_000_000_000;
pub(crate) const TOKEN: &str = "tok-123";

pub(crate) struct Accounts(HashMap<String, AccountRecord>);

impl AccountBook for Accounts {
    fn lookup(&self, account: &str) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.0.get(account).cloned())
    }
}

/// The hub's account book for tests: `acme-home` and `acme-shed`, both with [`TOKEN`].
pub(crate) fn accounts() -> Box<Accounts> {
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
    /// Every stanza the hub wrote to this peer.
    wire: Vec<Stanza>,
}

/// Two kinds of endpoint, one wire, one clock.
struct Net {
    dir: tempfile::TempDir,
    hub: Hub,
    peers: Vec<Peer>,
    now: u64,
    rng: StdRng,
    /// The hub's media store, as the shell would hold it (`--media`).
    media: Option<MediaStore>,
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
            media: None,
        }
    }

    fn hub_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("hub")
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
            wire: Vec::new(),
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
                            if let Ok(s) = crate::stanza::parse(&payload) {
                                p.wire.push(s);
                            }
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
            // What the shell does for simulated users' media: the proxy's own fetch.
            while let Some(f) = self.hub.poll_media_fetch() {
                moved = true;
                let got = smol::block_on(interop_hub::server::proxy_fetch(
                    &self.hub_dir(),
                    &f.account,
                    &f.url,
                ))
                .map_err(|e| e.status_code().1.to_owned());
                self.hub
                    .media_fetched(f.ticket, got, self.media.as_ref(), self.now, &mut self.rng);
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
    assert_eq!(
        low_at,
        vec![before - interop_hub::state::PREKEY_LOW_COUNT + 1]
    );
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
        let b = crate::prekeys::parse_bundle(user).unwrap();
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
        .reinstall("+15550100", true, net.now, &mut net.rng)
        .unwrap();
    net.run();
    let ev = net.take_events(a);
    assert!(
        ev.contains(&Event::IdentityAnnounced {
            user: wa("15550100")
        }),
        "{ev:?}"
    );
    net.send_text(a, &wa("15550100"), "after");
    let ev = net.take_events(a);
    assert_eq!(texts(&ev), vec!["echo: after".to_owned()]);
    let changes: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::IdentityChanged(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 1, "reported once, by the bundle: {ev:?}");
    assert_eq!(changes[0].device.to_user(), wa("15550100"));
    assert_ne!(changes[0].previous, changes[0].current);
    assert!(!changes[0].held);
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
        net.advance(interop_hub::state::IDLE_TIMEOUT_MS / 2);
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

// ---- retry receipts ---------------------------------------------------------------------

/// The retry receipts peer `i` got, read back.
fn retry_receipts(net: &Net, i: usize) -> Vec<crate::retry::RetryReceipt> {
    net.peers[i]
        .wire
        .iter()
        .filter(|s| s.tag == "receipt" && s.attr_value("type") == Some("retry"))
        .map(|s| crate::retry::parse_retry_receipt(s).unwrap())
        .collect()
}

/// A `<message>` to `to`'s device 0 whose `msg` no session can open.
fn undecryptable(id: &str, to: &str) -> Stanza {
    Stanza::new("message")
        .attr("id", id)
        .attr("to", format!("{to}@s.whatsapp.net"))
        .attr("type", "text")
        .child(
            Stanza::new("participants").child(
                Stanza::new("to")
                    .attr("jid", format!("{to}:0@s.whatsapp.net"))
                    .child(
                        Stanza::new("enc")
                            .attr("v", "2")
                            .attr("type", "msg")
                            .bytes(vec![0x33; 60]),
                    ),
            ),
        )
}

#[test]
fn undecryptable_message_gets_five_retry_receipts_with_keys_from_the_second() {
    let mut net = Net::new();
    net.user("+15550100", "silent");
    let a = net.online("acme-home");
    let id = "3EB0000000000000000001";
    for _ in 0..7 {
        let s = undecryptable(id, "15550100");
        net.peers[a].client.send_raw(&s, net.now);
        net.run();
    }
    let ev = net.take_events(a);
    // Every copy was taken by the server (acked without error).
    assert_eq!(
        acks(&ev),
        vec![(id.to_owned(), None); 7],
        "the hub took every copy"
    );
    let got = retry_receipts(&net, a);
    assert_eq!(
        got.iter().map(|r| r.count).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "at most MAX_RETRY_RECEIPTS"
    );
    assert!(got.iter().all(|r| r.id.as_str() == id));
    assert!(got[0].keys.is_none(), "count 1 has no keys");
    assert_eq!(net.hub.stats().retry_receipts_routed, 5);
    let sim = Jid::whatsapp("15550100", Some(0));
    let mut prekeys = std::collections::HashSet::new();
    for r in &got[1..] {
        let k = r.keys.as_ref().unwrap();
        assert_eq!(k.registration_id, got[0].registration_id);
        let mut spk = vec![crate::signal::KEY_TYPE_DJB];
        spk.extend_from_slice(&k.signed_prekey.public);
        assert!(crate::signal::verify_signature(
            &k.identity,
            &spk,
            &k.signed_prekey.signature
        ));
        assert!(
            prekeys.insert(k.prekey.unwrap().id),
            "a fresh prekey each time"
        );
    }
    // The receipts came from the device that failed.
    assert!(net.peers[a].wire.iter().any(|s| s.tag == "receipt"
        && s.attr_value("type") == Some("retry")
        && s.attr_value("from") == Some(sim.to_string().as_str())));
    assert!(net.hub.received("+15550100").unwrap().is_empty());
}

#[test]
fn reinstall_without_notification_recovers_through_retry_receipts() {
    let mut net = Net::new();
    net.user("+15550200", "silent");
    net.user("+15550201", "silent");
    let before = Message::text("before");
    net.hub
        .sim_send("+15550200", "+15550201", &before, net.now, &mut net.rng)
        .unwrap();
    net.hub
        .reinstall("+15550201", false, net.now, &mut net.rng)
        .unwrap();
    // The sender still holds the old session; the reinstalled device cannot open what it
    // makes, asks again, and the sender rebuilds the session and resends under the same id.
    let after = Message::text("after");
    let id = net
        .hub
        .sim_send("+15550200", "+15550201", &after, net.now, &mut net.rng)
        .unwrap();
    let got = net.hub.received("+15550201").unwrap();
    let texts: Vec<&str> = got.iter().filter_map(|r| r["text"].as_str()).collect();
    assert_eq!(texts, vec!["before", "after"], "{got:?}");
    assert_eq!(got.iter().filter(|r| r["id"] == id.as_str()).count(), 1);
    let stats = net.hub.stats();
    assert_eq!(
        (stats.retry_receipts_routed, stats.resends_routed),
        (1, 1),
        "one retry receipt, one resend"
    );
    // The next message rides the rebuilt session without another retry.
    let again = Message::text("again");
    net.hub
        .sim_send("+15550200", "+15550201", &again, net.now, &mut net.rng)
        .unwrap();
    assert_eq!(net.hub.received("+15550201").unwrap().len(), 3);
}

#[test]
fn reinstall_without_notification_reaches_the_client_only_as_a_retry_receipt() {
    let mut net = Net::new();
    net.user("+15550100", "silent");
    let a = net.online("acme-home");
    net.send_text(a, &wa("15550100"), "before");
    net.take_events(a);
    net.hub
        .reinstall("+15550100", false, net.now, &mut net.rng)
        .unwrap();
    net.run();
    let ev = net.take_events(a);
    assert!(
        !ev.iter().any(|e| matches!(
            e,
            Event::IdentityChanged(_) | Event::IdentityAnnounced { .. }
        )),
        "{ev:?}"
    );
    let id = net.send_text(a, &wa("15550100"), "after");
    let got = retry_receipts(&net, a);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_str(), got[0].count), (id.as_str(), 1));
    assert!(net.hub.received("+15550100").unwrap().len() == 1);
}

#[test]
fn retry_receipt_with_keys_gets_the_same_message_resent_once_per_count() {
    let mut net = Net::new();
    net.user("+15550100", "silent");
    let a = net.online("acme-home");
    let id = net
        .hub
        .sim_send(
            "+15550100",
            "acme-home",
            &Message::text("hi"),
            net.now,
            &mut net.rng,
        )
        .unwrap();
    net.run();
    assert_eq!(texts(&net.take_events(a)), vec!["hi".to_owned()]);
    // The client asks again with its keys, as a device that lost its session would.
    let keys = {
        let txn = net.peers[a].client.store().begin().unwrap();
        let prekey = crate::signal::prekey_ids(&txn, 1).unwrap()[0];
        crate::signal::own_bundle(&txn, Some(prekey)).unwrap()
    };
    let receipt = crate::retry::RetryReceipt {
        id: crate::content::MessageId::parse(&id).unwrap(),
        count: 2,
        t_secs: net.now / 1000,
        registration_id: keys.registration_id,
        keys: Some(keys),
    };
    let sim = Jid::whatsapp("15550100", Some(0));
    let s = crate::retry::retry_receipt_stanza(&sim, &receipt);
    for _ in 0..2 {
        net.peers[a].client.send_raw(&s, net.now);
        net.run();
    }
    let resent: Vec<&Stanza> = net.peers[a]
        .wire
        .iter()
        .filter(|m| m.tag == "message" && m.attr_value("id") == Some(id.as_str()))
        .collect();
    assert_eq!(resent.len(), 2, "the original and one resend");
    let again = resent[1];
    assert_eq!(again.attr_value("count"), Some("2"));
    let enc = again.child_named("enc").unwrap();
    assert_eq!(enc.attr_value("type"), Some("pkmsg"), "a new session");
    let ev = net.take_events(a);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::DecryptFailed { .. })),
        "{ev:?}"
    );
    // A retry receipt for a message never sent is ignored.
    let unknown = crate::retry::RetryReceipt {
        id: crate::content::MessageId::parse("3EB0000000000000000009").unwrap(),
        count: 1,
        ..receipt
    };
    let before = net.peers[a].wire.len();
    net.peers[a]
        .client
        .send_raw(&crate::retry::retry_receipt_stanza(&sim, &unknown), net.now);
    net.run();
    assert!(
        net.peers[a].wire[before..]
            .iter()
            .all(|m| m.tag != "message"),
        "nothing resent"
    );
}

// ---- media through the proxy --------------------------------------------------------------

/// A provider's media host: HTTPS with its own key, serving `blobs` by path. Returns its
/// origin and SPKI pin.
fn blob_host(dir: &std::path::Path, blobs: HashMap<String, Vec<u8>>) -> (String, String) {
    let tls = crate::tls::ensure_hub_ca(dir, &["localhost"]).unwrap();
    let pin = crate::tls::spki_pin_to_string(&tls.server_spki_sha256());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = tls.server_config();
    std::thread::spawn(move || {
        smol::block_on(async move {
            use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
            let listener = smol::net::TcpListener::try_from(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut s) = crate::tls::accept(config.clone(), tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                let reply = match blobs.get(&path) {
                    Some(b) => {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len())
                                .into_bytes();
                        r.extend_from_slice(b);
                        r
                    }
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                };
                let _ = s.write_all(&reply).await;
                let _ = s.flush().await;
                let _ = s.close().await;
            }
        })
    });
    (format!("https://localhost:{port}"), pin)
}

fn image_message(url: &str, key: &[u8; 32], plain: &[u8]) -> (Message, Vec<u8>) {
    let (blob, sum) =
        crate::media_crypto::encrypt_all(key, crate::media_crypto::MediaKind::Image, plain);
    let m = Message {
        image_message: Some(crate::content::ImageMessage {
            url: Some(url.to_owned()),
            mimetype: Some("image/png".into()),
            file_sha256: Some(sum.file_sha256.to_vec()),
            file_length: Some(sum.file_length),
            media_key: Some(key.to_vec()),
            file_enc_sha256: Some(sum.file_enc_sha256.to_vec()),
            ..Default::default()
        }),
        ..Default::default()
    };
    (m, blob)
}

#[test]
fn media_from_a_provider_is_fetched_through_the_proxy_and_checked() {
    let mut net = Net::new();
    net.media = Some(MediaStore::new(&net.hub_dir(), "https://127.0.0.1:9"));
    net.user("+15550100", "echo");
    let plain: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let key = [7u8; 32];
    let (host_dir, hub_dir) = (net.dir.path().join("provider"), net.hub_dir());
    // The host is registered before its origin is known, so make the blobs first.
    let (good, good_blob) = image_message("https://placeholder/good", &key, &plain);
    let mut tampered_blob = good_blob.clone();
    tampered_blob[100] ^= 1;
    let blobs = HashMap::from([
        ("/good".to_owned(), good_blob),
        ("/bad".to_owned(), tampered_blob),
    ]);
    let (origin, pin) = blob_host(&host_dir, blobs);
    interop_hub::proxy::register_host(&hub_dir, "acme-home", &origin, &pin).unwrap();
    let with_url = |m: &Message, path: &str| {
        let mut m = m.clone();
        if let Some(img) = &mut m.image_message {
            img.url = Some(format!("{origin}{path}"));
        }
        m
    };
    let a = net.online("acme-home");
    let to = wa("15550100");
    let good_id = net.peers[a]
        .client
        .send_message(&to, &with_url(&good, "/good"), net.now, &mut net.rng)
        .unwrap();
    net.run();
    let bad_id = net.peers[a]
        .client
        .send_message(&to, &with_url(&good, "/bad"), net.now, &mut net.rng)
        .unwrap();
    net.run();
    let mut unregistered = good.clone();
    if let Some(img) = &mut unregistered.image_message {
        img.url = Some("https://localhost:1/x".into());
    }
    let unregistered_id = net.peers[a]
        .client
        .send_message(&to, &unregistered, net.now, &mut net.rng)
        .unwrap();
    net.run();

    let got = net.hub.received("+15550100").unwrap();
    let media_of = |id: &str| {
        got.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["media"].clone())
            .unwrap()
    };
    let m = media_of(&good_id);
    assert_eq!(
        m["sha256_hex"],
        interop_hub::users::sha256_hex(&plain),
        "{m}"
    );
    assert_eq!(m["size"], plain.len());
    assert_eq!(m["mimetype"], "image/png");
    assert_eq!(
        media_of(&bad_id),
        serde_json::json!({"error": "enc_sha256_mismatch"})
    );
    assert_eq!(
        media_of(&unregistered_id),
        serde_json::json!({"error": "host_not_registered"})
    );
    assert_eq!(net.hub.stats().media_proxied, 2, "two blobs were fetched");

    // The echo answers the good one with a fresh blob of the same plaintext in the hub's
    // store, and the others with the same message back.
    let echoed: Vec<crate::content::ImageMessage> = net
        .take_events(a)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => message.image_message,
            _ => None,
        })
        .collect();
    assert_eq!(echoed.len(), 3);
    let fresh = &echoed[0];
    let url = fresh.url.clone().unwrap();
    let blob_id = url.strip_prefix("https://127.0.0.1:9/media/").unwrap();
    assert_ne!(
        fresh.media_key.as_deref(),
        Some(&key[..]),
        "a new media key"
    );
    let blob = std::fs::read(net.media.as_ref().unwrap().path(blob_id).unwrap()).unwrap();
    let k: [u8; 32] = fresh.media_key.clone().unwrap().try_into().unwrap();
    let enc: [u8; 32] = fresh.file_enc_sha256.clone().unwrap().try_into().unwrap();
    let sha: [u8; 32] = fresh.file_sha256.clone().unwrap().try_into().unwrap();
    let again = crate::media_crypto::decrypt_all(
        &k,
        crate::media_crypto::MediaKind::Image,
        &blob,
        &enc,
        &sha,
    )
    .unwrap();
    assert_eq!(again, plain);
    assert_eq!(echoed[1].url, Some(format!("{origin}/bad")));
}

#[test]
fn without_a_media_store_the_echo_sends_the_same_media_back() {
    let mut net = Net::new();
    net.user("+15550100", "echo");
    let a = net.online("acme-home");
    let (m, _) = image_message("https://localhost:1/none", &[3; 32], b"tiny");
    net.peers[a]
        .client
        .send_message(&wa("15550100"), &m, net.now, &mut net.rng)
        .unwrap();
    net.run();
    let back: Vec<Message> = net
        .take_events(a)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => Some(*message),
            _ => None,
        })
        .collect();
    assert_eq!(back, vec![m]);
    let got = net.hub.received("+15550100").unwrap();
    assert_eq!(got[0]["media"]["error"], "host_not_registered");
}

#[test]
fn an_answered_keepalive_keeps_the_link_and_a_silent_server_ends_it() {
    let mut net = Net::new();
    let i = net.online("acme-home");
    // Answered pings: several intervals pass without a timeout.
    for _ in 0..4 {
        net.advance(crate::client::KEEPALIVE_INTERVAL_MS);
    }
    let ev = net.take_events(i);
    assert!(!ev.contains(&Event::KeepaliveTimeout), "{ev:?}");
    assert!(net.peers[i].client.is_ready());
    // The server goes silent (a half-open connection): the ping goes unanswered.
    net.peers[i].conn = None;
    net.advance(crate::client::KEEPALIVE_INTERVAL_MS);
    assert!(!net.take_events(i).contains(&Event::KeepaliveTimeout));
    net.advance(crate::client::KEEPALIVE_DEADLINE_MS - 1);
    assert!(!net.take_events(i).contains(&Event::KeepaliveTimeout));
    net.advance(1);
    assert_eq!(net.take_events(i), vec![Event::KeepaliveTimeout]);
    assert!(!net.peers[i].client.is_ready());
}

#[test]
fn a_due_signed_prekey_is_rotated_uploaded_and_used_by_new_senders() {
    let mut net = Net::new();
    let i = net.online("acme-home");
    let now = net.now;
    assert!(
        !net.peers[i]
            .client
            .rotate_signed_prekey_if_due(now, &mut net.rng)
            .unwrap()
    );
    net.now += crate::signal::SIGNED_PREKEY_ROTATION_MS;
    let now = net.now;
    assert!(
        net.peers[i]
            .client
            .rotate_signed_prekey_if_due(now, &mut net.rng)
            .unwrap()
    );
    net.run();
    assert!(net.take_events(i).contains(&Event::KeysUploaded));
    // A WhatsApp user who starts a session now uses the new signed prekey, and we decrypt.
    net.user("+15550140", "silent");
    let m = crate::content::Message::text("after rotation");
    net.hub
        .sim_send("+15550140", "acme-home", &m, net.now, &mut net.rng)
        .unwrap();
    net.run();
    let ev = net.take_events(i);
    assert!(
        ev.iter().any(|e| matches!(e, Event::Message { message, .. }
            if message.text_body() == Some("after rotation"))),
        "{ev:?}"
    );
}

#[test]
fn device_lists_are_cached_and_dropped_on_a_notification() {
    let mut net = Net::new();
    let i = net.online("acme-home");
    net.user("+15550150", "silent");
    let to = wa("15550150");
    net.send_text(i, &to, "one");
    let cached = |net: &Net| {
        let txn = net.peers[i].client.store().begin().unwrap();
        txn.device_list("15550150").unwrap()
    };
    let first = cached(&net).unwrap();
    assert_eq!(first.devices, vec![0]);
    assert_eq!(first.fetched_ms, net.now);
    // A second send within the age bound uses the cache: the list is not fetched again.
    net.now += 1000;
    net.send_text(i, &to, "two");
    assert_eq!(cached(&net).unwrap().fetched_ms, first.fetched_ms);
    // A reinstall's identity notification drops it; the next send fetches it afresh.
    net.hub
        .reinstall("+15550150", true, net.now, &mut net.rng)
        .unwrap();
    net.run();
    assert!(cached(&net).unwrap().devices.is_empty());
    net.now += 1000;
    net.send_text(i, &to, "three");
    assert_eq!(cached(&net).unwrap().fetched_ms, net.now);
}
