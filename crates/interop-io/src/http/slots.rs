//! The connection slots of one accept loop: who holds them, what each connection waits for,
//! and which one gives its slot up when a newcomer needs room. Also the peer identity the
//! per-peer cap counts by, and the listener's refusal counters.
//!
//! # Policy
//!
//! A slot is *idle* while its connection waits for the peer: for a request head (a new
//! connection, or keep-alive between requests), for request body bytes that come slower
//! than [`MIN_INPUT_BYTES_PER_SEC`], or, as a courtesy before closing, for the rest of a body
//! the handler did not read. A slot is *busy* while a handler runs or a response is
//! written. A newcomer is always admitted when some slot is idle: the idle connection that
//! has waited longest is closed to make room (*evicted*). Only when every slot the newcomer
//! may take is busy is it refused. Three caps decide what "may take" means:
//!
//! - [`AcceptLimits::max_connections`] in all;
//! - [`AcceptLimits::max_waiting_heads`] waiting for a head (no request yet, so not yet
//!   authenticated), well below the total, so slow heads can never crowd out the slots of
//!   clients that are being served;
//! - [`AcceptLimits::max_per_peer`] per peer IP address, so that one machine on the LAN
//!   cannot take every slot. On loopback every local process shares one address, so there
//!   this cap would separate nobody and only halve the slots: it does not apply, and the
//!   other two caps with eviction and the minimum body rate keep a prompt client served. Local processes are not told apart by uid: Linux tells
//!   a TCP peer's uid only through `/proc/net/tcp`, whose size grows with every socket on
//!   the machine (`TIME_WAIT` ones included), so reading it at each accept would itself be
//!   the denial of service under a connection flood; and source ports say nothing, since any
//!   process may bind any free one.
//!
//! So one peer holding many slow connections open only ever loses its own idle slots, and a
//! client that sends its request promptly is served however many slow connections are open.
//!
//! This file does no I/O: the bookkeeping is pure and the clock is passed in.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Body bytes per second below which a connection reading a request body counts as idle
/// (after [`SLOW_INPUT_GRACE_MS`]): its slot may be given to a newcomer.
pub const MIN_INPUT_BYTES_PER_SEC: u64 = 4096;
/// How long a body read may run before its rate is judged, in milliseconds.
pub const SLOW_INPUT_GRACE_MS: u64 = 1_000;
/// Most refusal or eviction log lines per listener, one per this many milliseconds; the
/// lines say how many happened since the last one, and the counters count every one.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// Connection caps of one accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once that wait for a request head.
    pub max_waiting_heads: usize,
    /// Connections at once from one peer ([`PeerKey`]).
    pub max_per_peer: usize,
}

impl AcceptLimits {
    /// `max` connections, a quarter of them (at least one) waiting for a head, and half of
    /// them (at least one) per peer.
    pub fn for_max(max: usize) -> AcceptLimits {
        AcceptLimits {
            max_connections: max,
            max_waiting_heads: (max / 4).max(1),
            max_per_peer: (max / 2).max(1),
        }
    }
}

/// Counts of what a listener turned away, for metrics. Shared as `Arc<ListenerStats>` (an
/// `Arc` only so that [`ServeOptions`](super::ServeOptions) can be built on another thread).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Newcomers refused: every slot they could take was busy.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a newcomer.
    pub evicted: AtomicU64,
    /// Requests whose head or body came too slowly (answered 408 or closed).
    pub timed_out: AtomicU64,
    /// Requests abandoned because the client hung up while they waited (long-poll, SSE).
    pub hung_up: AtomicU64,
}

impl ListenerStats {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Two stats handles are equal when they are the same counters.
impl PartialEq for ListenerStats {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ListenerStats {}

/// Who a connection is from, for [`AcceptLimits::max_per_peer`]: its IP address, with an
/// IPv4-mapped IPv6 address counted as the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey(IpAddr);

impl PeerKey {
    /// The key of a connection from `peer`.
    pub fn of(peer: SocketAddr) -> PeerKey {
        match peer.ip() {
            IpAddr::V6(v6) => PeerKey(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
            v4 => PeerKey(v4),
        }
    }

    /// Whether [`AcceptLimits::max_per_peer`] applies: not on loopback.
    pub fn is_capped(&self) -> bool {
        !self.0.is_loopback()
    }
}

/// What one connection waits for, as its [`Slot`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A handler runs or a response is written.
    Nothing,
    /// A request head, since then.
    Head { since: Instant },
    /// Request body bytes: `bytes` came since `since`.
    Body { since: Instant, bytes: u64 },
    /// Unread input discarded before the connection closes or is reused, since then.
    Closing { since: Instant },
}

/// One connection's slot, shared by the accept loop and the connection's task.
#[derive(Debug)]
pub struct Slot {
    peer: PeerKey,
    waiting: Cell<Waiting>,
}

impl Slot {
    /// A slot that waits for a head from now.
    pub fn new(peer: PeerKey, now: Instant) -> Slot {
        Slot {
            peer,
            waiting: Cell::new(Waiting::Head { since: now }),
        }
    }

    /// The peer it counts against.
    pub fn peer(&self) -> PeerKey {
        self.peer
    }

    /// The connection now waits for a request head (it is new, or between requests).
    pub fn waiting_for_head(&self, now: Instant) {
        self.waiting.set(Waiting::Head { since: now });
    }

    /// A head arrived: the request is being handled.
    pub fn busy(&self) {
        self.waiting.set(Waiting::Nothing);
    }

    /// The handler began reading a body.
    pub fn reading_body(&self, now: Instant) {
        self.waiting.set(Waiting::Body {
            since: now,
            bytes: 0,
        });
    }

    /// The connection discards unread input (a body the handler left, or input after its
    /// last response) as a courtesy: idle, since nothing depends on it.
    pub fn closing(&self, now: Instant) {
        self.waiting.set(Waiting::Closing { since: now });
    }

    /// `n` body bytes came.
    pub fn body_bytes(&self, n: usize) {
        if let Waiting::Body { since, bytes } = self.waiting.get() {
            self.waiting.set(Waiting::Body {
                since,
                bytes: bytes.saturating_add(n as u64),
            });
        }
    }

    /// Whether it waits for a head.
    pub fn waits_for_head(&self) -> bool {
        matches!(self.waiting.get(), Waiting::Head { .. })
    }

    /// Since when it has been idle (see the module documentation), if it is.
    pub fn idle_since(&self, now: Instant) -> Option<Instant> {
        match self.waiting.get() {
            Waiting::Nothing => None,
            Waiting::Head { since } | Waiting::Closing { since } => Some(since),
            Waiting::Body { since, bytes } => {
                let ms = now.saturating_duration_since(since).as_millis();
                let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                let slow = ms >= SLOW_INPUT_GRACE_MS
                    && u128::from(bytes) * 1000
                        < u128::from(MIN_INPUT_BYTES_PER_SEC) * u128::from(ms);
                slow.then_some(since)
            }
        }
    }
}

/// What the accept loop does with a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Take a free slot.
    Admit,
    /// Close the connection at this index of the slot list first, then admit.
    Evict(usize),
    /// Every slot it may take is busy: refuse it, for this reason.
    Refuse(&'static str),
}

/// Decides on a newcomer from `peer`, given the open slots, by the policy in the module
/// documentation.
pub fn admit<'a>(
    slots: impl Iterator<Item = &'a Slot> + Clone,
    peer: PeerKey,
    limits: &AcceptLimits,
    now: Instant,
) -> Admission {
    // The idle slot that has waited longest among those `pick` selects.
    let oldest_idle = |pick: &dyn Fn(&Slot) -> bool| {
        slots
            .clone()
            .enumerate()
            .filter(|(_, s)| pick(s))
            .filter_map(|(i, s)| Some((s.idle_since(now)?, i)))
            .min()
            .map(|(_, i)| i)
    };
    let (mut total, mut heads, mut mine) = (0usize, 0usize, 0usize);
    for s in slots.clone() {
        total += 1;
        heads += usize::from(s.waits_for_head());
        mine += usize::from(s.peer == peer);
    }
    if peer.is_capped() && mine >= limits.max_per_peer {
        return oldest_idle(&|s| s.peer == peer)
            .map_or(Admission::Refuse("per-peer limit"), Admission::Evict);
    }
    if total >= limits.max_connections {
        return oldest_idle(&|_| true)
            .map_or(Admission::Refuse("connection limit"), Admission::Evict);
    }
    if heads >= limits.max_waiting_heads {
        return oldest_idle(&Slot::waits_for_head)
            .map_or(Admission::Refuse("waiting-head limit"), Admission::Evict);
    }
    Admission::Admit
}

/// A log line at most once per [`REFUSAL_LOG_INTERVAL_MS`], with how many were held back.
#[derive(Debug, Default)]
pub(super) struct RateLimitedLog {
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl RateLimitedLog {
    /// Whether to log now; if so, how many lines were held back since the last one.
    pub(super) fn allow(&self, now: Instant) -> Option<u64> {
        let due = self.last.get().is_none_or(|t| {
            now.saturating_duration_since(t) >= Duration::from_millis(REFUSAL_LOG_INTERVAL_MS)
        });
        if due {
            self.last.set(Some(now));
            Some(self.held_back.replace(0))
        } else {
            self.held_back.set(self.held_back.get().saturating_add(1));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerKey = PeerKey(IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 10)));
    const B: PeerKey = PeerKey(IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 11)));

    fn limits() -> AcceptLimits {
        AcceptLimits {
            max_connections: 4,
            max_waiting_heads: 2,
            max_per_peer: 3,
        }
    }

    #[test]
    fn a_newcomer_evicts_the_longest_waiting_head_beyond_the_head_cap() {
        let t0 = Instant::now();
        let slots = [Slot::new(A, t0 + Duration::from_secs(1)), Slot::new(A, t0)];
        assert_eq!(admit(slots.iter(), B, &limits(), t0), Admission::Evict(1));
        slots[1].busy();
        assert_eq!(admit(slots.iter(), B, &limits(), t0), Admission::Admit);
    }

    #[test]
    fn busy_slots_are_never_taken_and_a_full_house_refuses() {
        let t0 = Instant::now();
        let slots: Vec<Slot> = (0..4).map(|_| Slot::new(A, t0)).collect();
        slots.iter().for_each(Slot::busy);
        assert_eq!(
            admit(slots.iter(), B, &limits(), t0),
            Admission::Refuse("connection limit")
        );
        slots[2].waiting_for_head(t0);
        assert_eq!(admit(slots.iter(), B, &limits(), t0), Admission::Evict(2));
    }

    #[test]
    fn a_peer_at_its_cap_only_loses_its_own_slots() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let slots = [
            Slot::new(B, t0),
            Slot::new(A, later),
            Slot::new(A, later),
            Slot::new(A, later),
        ];
        slots[0].busy();
        for s in &slots[1..] {
            s.busy();
        }
        assert_eq!(
            admit(slots.iter(), A, &limits(), later),
            Admission::Refuse("per-peer limit")
        );
        slots[3].waiting_for_head(later);
        slots[0].waiting_for_head(t0);
        assert_eq!(
            admit(slots.iter(), A, &limits(), later),
            Admission::Evict(3)
        );
    }

    #[test]
    fn a_body_is_idle_only_when_it_comes_slower_than_the_minimum_rate() {
        let t0 = Instant::now();
        let s = Slot::new(A, t0);
        s.reading_body(t0);
        let t1 = t0 + Duration::from_millis(SLOW_INPUT_GRACE_MS / 2);
        assert_eq!(s.idle_since(t1), None, "within the grace");
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(s.idle_since(t2), Some(t0), "no bytes at all");
        s.body_bytes(2 * MIN_INPUT_BYTES_PER_SEC as usize);
        assert_eq!(s.idle_since(t2), None, "exactly the minimum rate");
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(s.idle_since(t3), Some(t0), "fell behind");
    }

    #[test]
    fn a_mapped_ipv4_address_is_the_same_peer_as_the_ipv4_one() {
        let v4: SocketAddr = "192.168.1.10:1000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.168.1.10]:2000".parse().unwrap();
        assert_eq!(PeerKey::of(v4), PeerKey::of(mapped));
        assert_eq!(PeerKey::of(v4), A);
        let v6: SocketAddr = "[fd00::1]:1".parse().unwrap();
        assert_ne!(PeerKey::of(v6), A);
        assert!(A.is_capped());
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(
            !PeerKey::of(lo).is_capped(),
            "loopback is one address for every process"
        );
    }

    #[test]
    fn the_refusal_log_speaks_once_per_interval_and_counts_what_it_held_back() {
        let log = RateLimitedLog::default();
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_millis(1)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(2)), None);
        let later = t0 + Duration::from_millis(REFUSAL_LOG_INTERVAL_MS);
        assert_eq!(log.allow(later), Some(2));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn admission_never_exceeds_the_caps(
                states in proptest::collection::vec((0u8..3, 0u8..4, 0u64..5000), 0..12),
                newcomer in 0u8..3,
            ) {
                let t0 = Instant::now();
                let now = t0 + Duration::from_secs(10);
                let slots: Vec<Slot> = states.iter().map(|&(peer, state, age)| {
                    let s = Slot::new(PeerKey(IpAddr::from([10, 0, 0, peer])), t0);
                    let since = now - Duration::from_millis(age);
                    match state {
                        0 => s.busy(),
                        1 => s.waiting_for_head(since),
                        2 => s.closing(since),
                        _ => s.reading_body(since),
                    }
                    s
                }).collect();
                let limits = AcceptLimits { max_connections: 8, max_waiting_heads: 3, max_per_peer: 5 };
                let peer = PeerKey(IpAddr::from([10, 0, 0, newcomer]));
                match admit(slots.iter(), peer, &limits, now) {
                    Admission::Admit => {
                        prop_assert!(slots.len() < 8);
                        prop_assert!(slots.iter().filter(|s| s.peer() == peer).count() < 5);
                        prop_assert!(slots.iter().filter(|s| s.waits_for_head()).count() < 3);
                    }
                    Admission::Evict(i) => {
                        prop_assert!(slots[i].idle_since(now).is_some(), "only an idle slot is taken");
                    }
                    Admission::Refuse(_) => {}
                }
            }
        }
    }
}
