//! Power cuts under the engine: the daemon's store on a [`CutDisk`], the hub core as the
//! gatekeeper (it keeps its power), a virtual clock, and a seeded rng that picks the work
//! (sends, inbound messages, time for receipts) and where the power goes. After each cut the
//! store is reopened from what the disk kept, with the integrity check, and checked: every
//! message acked to the API (an outbox insert whose commit returned) and every message acked
//! to the gatekeeper (an `<ack class="message">` the engine wrote) is there exactly once, no
//! committed status went back, and a next message each way between the peers decrypts.
//! A failure names its seed and round; `POWERCUT_SEED=<n>` replays from that seed
//! (`POWERCUT_CUTS=<n>` runs fewer or more cuts).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use super::*;
use crate::client::Client;
use crate::content::{ContentKind, Message};
use crate::hub_tests::{T0, TOKEN, accounts};
use crate::metrics::Metrics;
use crate::store::powercut::{CutDisk, CutKeeps};
use crate::store::{OutboxStatus, Store};
use interop_hub::state::{ConnId, Hub, Output};

/// Cuts the test survives: each round ends in one.
const CUTS: u32 = 1_000;
/// The cuts are spread over this many daemon lives, each from an empty store with its own
/// seed: the engine scans the whole outbox on every send, so one store taking all the cuts
/// would make the run grow with the square of their number.
const LIVES: u32 = 10;
/// Mutating disk calls from arming to the cut, at most: about one round's worth of work,
/// so that cuts fall in logins, sends, receipts and inbound commits alike.
const CUT_WINDOW_CALLS: u64 = 100;
/// Cuts between two checks that read every row (the last cut's check is always one).
const FULL_CHECK_EVERY: u32 = 50;
/// Actions in a round before the power goes between two calls instead.
const MAX_ACTIONS_PER_ROUND: u32 = 40;
/// The simulated users: one echoes (receipts and a reply), one reads two seconds later.
const ECHO: &str = "+15550100";
const LATE: &str = "+15550101";

fn digits(phone: &str) -> &str {
    phone.trim_start_matches('+')
}

/// Everything that outlives a cut: the gatekeeper, the clock, and what was acked.
struct World {
    seed: u64,
    round: u32,
    _dir: tempfile::TempDir,
    hub: Hub,
    now: u64,
    rng: StdRng,
    next_id: u64,
    /// Outbox rows whose insert committed (acked to the API), with their recipient.
    queued: BTreeMap<String, String>,
    /// Inbound message ids the engine acked to the gatekeeper.
    acked_in: BTreeSet<String>,
    /// The furthest status read back from a committed outbox row.
    seen: HashMap<String, OutboxStatus>,
    /// Outbox ids tried (committed or not) and inbound ids acked since the last full check.
    recent_out: BTreeSet<String>,
    recent_in: BTreeSet<String>,
    /// What the last full check found: every outbox and inbox id, and the last sequence
    /// number of each table.
    old_out: HashSet<String>,
    old_in: HashSet<String>,
    marks: (u64, u64),
}

/// The daemon between two cuts.
struct Daemon {
    disk: CutDisk,
    store: Rc<Store>,
    engine: Engine<StdRng>,
    conn: Option<ConnId>,
}

/// How far along a status is; a committed status never moves back.
fn rank(s: OutboxStatus) -> u8 {
    match s {
        OutboxStatus::Queued => 0,
        OutboxStatus::Sent => 1,
        OutboxStatus::Delivered => 2,
        OutboxStatus::Read => 3,
        OutboxStatus::Failed => 4,
    }
}

impl World {
    fn new(seed: u64) -> World {
        // The hub keeps its power, and its fsyncs only slow the run: memory-backed where
        // the machine has it.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut hub = Hub::open(&dir.path().join("hub"), accounts(), T0, &mut rng).unwrap();
        hub.create_user(ECHO, 1, "echo", T0, &mut rng).unwrap();
        hub.create_user(LATE, 1, "read_after:2", T0, &mut rng)
            .unwrap();
        World {
            seed,
            round: 0,
            _dir: dir,
            hub,
            now: T0,
            rng,
            next_id: 0,
            queued: BTreeMap::new(),
            acked_in: BTreeSet::new(),
            seen: HashMap::new(),
            recent_out: BTreeSet::new(),
            recent_in: BTreeSet::new(),
            old_out: HashSet::new(),
            old_in: HashSet::new(),
            marks: (0, 0),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "power cut round {} of seed {} (replay with POWERCUT_SEED={}): {what}",
            self.round, self.seed, self.seed
        );
    }

    /// The daemon starting on `disk`: store, identity, engine, a login on a new connection.
    fn boot(&mut self, disk: CutDisk) -> Result<Daemon, String> {
        let store = Rc::new(Store::with_backend(disk.clone()).map_err(|e| format!("reopen: {e}"))?);
        self.dial(disk, store)
    }

    /// A new engine on `store` and a new connection, as the link does after a drop.
    fn dial(&mut self, disk: CutDisk, store: Rc<Store>) -> Result<Daemon, String> {
        let client = Client::new(store.clone(), "acme-home", 1, &mut self.rng)
            .map_err(|e| format!("client: {e}"))?;
        let bus = EventBus::new(false, Rc::new(Metrics::default()));
        let engine_rng = StdRng::seed_from_u64(self.rng.random());
        let engine = Engine::new(client, bus, Login::Token(TOKEN), self.now, engine_rng);
        Ok(Daemon {
            disk,
            store,
            engine,
            conn: Some(self.hub.connect(self.now)),
        })
    }

    /// Moves frames both ways until both sides are quiet or the power is off. Records every
    /// inbound message the engine acks. Returns whether the link went down.
    fn pump(&mut self, d: &mut Daemon) -> bool {
        let mut down = false;
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(p) = d.engine.poll_transmit() {
                moved = true;
                if let Ok(s) = crate::stanza::parse(&p)
                    && s.tag == "ack"
                    && s.attr_value("class") == Some("message")
                    && let Some(id) = s.attr_value("id")
                {
                    self.acked_in.insert(id.to_owned());
                    self.recent_in.insert(id.to_owned());
                }
                if let Some(c) = d.conn {
                    self.hub.handle_frame(c, &p, self.now, &mut self.rng);
                }
            }
            if d.disk.is_cut() {
                return down;
            }
            while let Some(out) = self.hub.poll_output() {
                moved = true;
                match out {
                    Output::Send { conn, payload } if Some(conn) == d.conn => {
                        d.engine.handle_frame(&payload, self.now);
                    }
                    Output::Close { conn } if Some(conn) == d.conn => {
                        d.conn = None;
                        d.engine.handle_closed("closed by the hub");
                    }
                    _ => {}
                }
            }
            while let Some(e) = d.engine.poll_event() {
                moved = true;
                down |= matches!(e, LinkEvent::Down(_));
            }
            if !moved {
                return down;
            }
        }
        self.fail("the wire never went quiet".into());
    }

    /// Moves the clock by `ms`, runs both sides' timers, and pumps.
    fn advance(&mut self, d: &mut Daemon, ms: u64) -> bool {
        self.now += ms;
        self.hub.handle_timeout(self.now, &mut self.rng);
        d.engine.handle_timeout(self.now);
        self.pump(d)
    }

    /// Commits a text row as the API's send does; remembers it if the commit returned.
    fn queue(&mut self, d: &Daemon, to: &str, text: &str) -> Option<String> {
        self.next_id += 1;
        let id = format!("3EB0{:018X}", self.next_id);
        let content = prost::Message::encode_to_vec(&Message::text(text.to_owned()));
        let row = crate::api::messages::queued_row(
            id.clone(),
            digits(to),
            ContentKind::Text,
            self.now,
            content,
        );
        self.recent_out.insert(id.clone());
        let txn = d.store.begin().ok()?;
        txn.outbox_insert(&row).ok()?;
        txn.commit().ok()?;
        self.queued.insert(id.clone(), digits(to).to_owned());
        Some(id)
    }

    /// Reads back the rows not yet final, to learn what status each has committed.
    fn observe(&mut self, d: &Daemon) {
        let Ok(txn) = d.store.begin() else { return };
        for id in self.queued.keys() {
            if self.seen.get(id).is_some_and(|s| rank(*s) >= 3) {
                continue;
            }
            match txn.outbox_by_id(id) {
                Ok(Some((_, row))) => {
                    self.seen.insert(id.clone(), row.status);
                }
                Ok(None) => self.fail(format!("committed outbox row {id} is gone before a cut")),
                Err(_) => return,
            }
        }
    }

    /// One random piece of work. Returns whether the link went down.
    fn act(&mut self, d: &mut Daemon) -> bool {
        let to = if self.rng.random_bool(0.7) {
            ECHO
        } else {
            LATE
        };
        match self.rng.random_range(0..10u8) {
            0..=3 => {
                for _ in 0..self.rng.random_range(1..=3u8) {
                    let n = self.next_id + 1;
                    if self.queue(d, to, &format!("send {n}")).is_none() {
                        return false;
                    }
                }
                d.engine.handle_api_wake(self.now);
                self.pump(d)
            }
            4..=6 => {
                let n = self.rng.random_range(0..u32::MAX);
                let m = Message::text(format!("inbound {n}"));
                if let Err(e) = self
                    .hub
                    .sim_send(to, "acme-home", &m, self.now, &mut self.rng)
                {
                    self.fail(format!("sim_send: {e}"));
                }
                self.pump(d)
            }
            7 => {
                // The link drops and dials again: a new engine logs in on the same store.
                d.engine.handle_closed("connection closed");
                if let Some(c) = d.conn.take() {
                    self.hub.disconnected(c);
                }
                match self.dial(d.disk.clone(), d.store.clone()) {
                    Ok(fresh) => *d = fresh,
                    Err(_) if d.disk.is_cut() => return false,
                    Err(e) => self.fail(e),
                }
                self.pump(d)
            }
            _ => {
                let ms = self.rng.random_range(200..3_000u64);
                self.advance(d, ms)
            }
        }
    }

    /// After a reboot: what was acked is there exactly once, and no status went back. A
    /// full check reads every row; between two (every [`FULL_CHECK_EVERY`] cuts) only the
    /// rows written since the last, and the ids acked since, are read, which keeps each
    /// cut's check from growing with the store.
    fn check(&mut self, d: &Daemon, full: bool) {
        let txn = d
            .store
            .begin()
            .unwrap_or_else(|e| self.fail(format!("begin: {e}")));
        let (out_after, in_after) = if full { (0, 0) } else { self.marks };
        let rows = txn
            .outbox_scan(out_after, usize::MAX)
            .unwrap_or_else(|e| self.fail(format!("outbox scan: {e}")));
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, row) in &rows {
            *counts.entry(row.id.as_str()).or_default() += 1;
            if !full && self.old_out.contains(&row.id) {
                self.fail(format!("outbox row {} is there again after a cut", row.id));
            }
            if self.queued.get(&row.id).is_some_and(|to| *to != row.to) {
                self.fail(format!("outbox row {} changed recipient", row.id));
            }
        }
        let ids: Vec<&String> = if full {
            self.queued.keys().collect()
        } else {
            self.recent_out
                .iter()
                .filter(|id| self.queued.contains_key(*id))
                .collect()
        };
        for id in ids {
            let n = counts.get(id.as_str()).copied().unwrap_or(0);
            if n != 1 {
                self.fail(format!(
                    "outbox row {id} acked to the API is there {n} times"
                ));
            }
        }
        // No status goes back, for every row not yet final when last read.
        for (id, seen) in &self.seen {
            if rank(*seen) >= 3 && !full {
                continue;
            }
            let Ok(Some((_, row))) = txn.outbox_by_id(id) else {
                self.fail(format!("outbox row {id} is not found by its id"));
            };
            if rank(row.status) < rank(*seen) {
                self.fail(format!(
                    "outbox row {id} went back from {} to {}",
                    seen.as_str(),
                    row.status.as_str()
                ));
            }
        }
        let inbox = txn
            .inbox_after(in_after, usize::MAX)
            .unwrap_or_else(|e| self.fail(format!("inbox scan: {e}")));
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, row) in &inbox {
            *counts.entry(row.id.as_str()).or_default() += 1;
            if !full && self.old_in.contains(&row.id) {
                self.fail(format!(
                    "inbound {} is in the inbox again after a cut",
                    row.id
                ));
            }
        }
        let ids: Vec<&String> = if full {
            self.acked_in.iter().collect()
        } else {
            self.recent_in.iter().collect()
        };
        for id in ids {
            let old = usize::from(!full && self.old_in.contains(id));
            let n = counts.get(id.as_str()).copied().unwrap_or(0) + old;
            if n != 1 {
                self.fail(format!(
                    "inbound {id} acked to the gatekeeper is in the inbox {n} times"
                ));
            }
        }
        if full {
            self.old_out = rows.iter().map(|(_, r)| r.id.clone()).collect();
            self.old_in = inbox.iter().map(|(_, r)| r.id.clone()).collect();
            self.marks = (
                rows.last().map_or(0, |(seq, _)| *seq),
                inbox.last().map_or(0, |(seq, _)| *seq),
            );
            self.recent_out.clear();
            self.recent_in.clear();
        }
    }

    /// A next message each way decrypts: ours reaches the echo user, read, and its echo
    /// lands in our inbox.
    fn probe(&mut self, d: &mut Daemon) {
        let text = format!("probe {}", self.round);
        let Some(id) = self.queue(d, ECHO, &text) else {
            self.fail("the probe did not commit".into());
        };
        d.engine.handle_api_wake(self.now);
        self.pump(d);
        let txn = d
            .store
            .begin()
            .unwrap_or_else(|e| self.fail(format!("begin: {e}")));
        let status = txn.outbox_by_id(&id).ok().flatten().map(|(_, r)| r.status);
        if status != Some(OutboxStatus::Read) {
            self.fail(format!("probe {id} is {status:?}, not read"));
        }
        let echo = format!("echo: {text}");
        let inbox = txn
            .inbox_after(0, usize::MAX)
            .unwrap_or_else(|e| self.fail(format!("inbox scan: {e}")));
        let echoed = inbox.iter().rev().any(|(_, row)| {
            <Message as prost::Message>::decode(row.content.as_slice())
                .ok()
                .is_some_and(|m| m.text_body() == Some(echo.as_str()))
        });
        if !echoed {
            self.fail(format!(
                "the echo of probe {id} did not decrypt into the inbox"
            ));
        }
    }
}

/// Where each cut fell and what it kept, for the report.
#[derive(Default, Debug)]
struct Tally {
    synced: u32,
    torn: u32,
    some: u32,
    between_calls: u32,
    acked_out: usize,
    acked_in: usize,
}

fn run(seed: u64, cuts: u32) -> Tally {
    let mut world = World::new(seed);
    let mut tally = Tally::default();
    let mut d = world.boot(CutDisk::new()).unwrap_or_else(|e| world.fail(e));
    world.pump(&mut d);
    world.probe(&mut d);
    for round in 0..cuts {
        world.round = round;
        let window = world.rng.random_range(1..=CUT_WINDOW_CALLS);
        d.disk.cut_after(window);
        let mut actions = 0;
        while !d.disk.is_cut() {
            if actions == MAX_ACTIONS_PER_ROUND {
                // The power goes between two calls: nothing is under way.
                d.disk.cut_now();
                tally.between_calls += 1;
                break;
            }
            actions += 1;
            if world.act(&mut d) && !d.disk.is_cut() {
                // The link went down with the power on (an ack deadline): dial again.
                if let Some(c) = d.conn.take() {
                    world.hub.disconnected(c);
                }
                let disk = d.disk.clone();
                drop(d);
                d = world.boot(disk).unwrap_or_else(|e| world.fail(e));
            }
            world.observe(&d);
        }
        let keeps = match world.rng.random_range(0..3u8) {
            0 => {
                tally.synced += 1;
                CutKeeps::Synced
            }
            1 => {
                tally.torn += 1;
                CutKeeps::TornLast {
                    bytes: world.rng.random_range(0..4096),
                }
            }
            _ => {
                tally.some += 1;
                CutKeeps::Some {
                    mask: world.rng.random(),
                }
            }
        };
        let image = d.disk.image_after_cut(keeps);
        if let Some(c) = d.conn.take() {
            world.hub.disconnected(c);
        }
        drop(d);
        d = world
            .boot(CutDisk::from_image(image))
            .unwrap_or_else(|e| world.fail(format!("{e} (the cut kept {keeps:?})")));
        world.check(&d, round % FULL_CHECK_EVERY == 0 || round + 1 == cuts);
        world.pump(&mut d);
        world.probe(&mut d);
        world.observe(&d);
    }
    tally.acked_out = world.queued.len();
    tally.acked_in = world.acked_in.len();
    tally
}

#[test]
fn a_thousand_power_cuts_lose_nothing_acked_and_sessions_still_decrypt() {
    let seed = std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001_u64);
    let cuts = std::env::var("POWERCUT_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CUTS);
    let started = Instant::now();
    let mut total = Tally::default();
    for life in 0..u64::from(LIVES) {
        let t = run(seed.wrapping_add(life), cuts / LIVES);
        total.synced += t.synced;
        total.torn += t.torn;
        total.some += t.some;
        total.between_calls += t.between_calls;
        total.acked_out += t.acked_out;
        total.acked_in += t.acked_in;
    }
    eprintln!(
        "{cuts} power cuts (seeds {seed}..{}) in {:.1} s: {total:?}",
        seed.wrapping_add(u64::from(LIVES)),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        total.synced + total.torn + total.some,
        cuts / LIVES * LIVES,
        "every round ended in a cut"
    );
}
