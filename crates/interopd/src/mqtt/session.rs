//! One MQTT 3.1.1 client session as a state machine: no I/O, no clock (time is passed in as
//! `now_ms`), no randomness. The shell (`mqtt/mod.rs`) dials when [`Session::poll_dial`]
//! says so, feeds the bytes it reads to [`Session::handle_bytes`], writes what
//! [`Session::poll_transmit`] gives, and sleeps until [`Session::poll_timeout`]; the
//! bridge reads [`Session::poll_event`] and calls [`Session::publish`], [`Session::ack`] and
//! [`Session::subscribe`]. The packets are encoded and decoded by the `symqtt-codec` crate.
//!
//! ```text
//!   WaitingToDial ──poll_dial──▶ Dialing ──handle_dialed──▶ ExpectConnAck ──accepted──▶ Connected
//!        ▲                          │ dial failed               │ refused, timeout        │ closed, keepalive,
//!        └───────── backoff ◀───────┴───────────────────────────┴─────────────────────────┘ bad packet
//! ```
//!
//! - Keepalive: a PINGREQ when nothing was sent for half the keepalive; no PINGRESP within
//!   the keepalive closes the session.
//! - Reconnect: [`RECONNECT_MIN_MS`], doubling up to [`RECONNECT_MAX_MS`]; a CONNACK that
//!   accepts us starts it over.
//! - The session is persistent (`clean_session = 0`), so the broker keeps our subscriptions
//!   and the QoS 1 messages for them while we are away, and sends again the ones we did not
//!   PUBACK. Our own QoS 1 publishes in flight are forgotten on a close; the bridge publishes
//!   again from its durable state.
//! - Every packet's size is checked against [`MAX_PACKET_BYTES`] before it is buffered. A
//!   larger PUBLISH is not a reason to drop the connection (the broker would send it again
//!   for ever): its topic and packet id are read, the rest is skipped as it streams in, and
//!   the bridge gets [`SessionEvent::Oversized`] to acknowledge and report it.

use std::collections::{BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use symqtt_codec::QoS;
use symqtt_codec::v3::{
    ConnAck, Connect, ConnectReturnCode, Packet, PingReq, PubAck, Publish, Subscribe,
    SubscribeFilter, Will,
};

/// First reconnect delay, in milliseconds.
pub const RECONNECT_MIN_MS: u64 = 1_000;
/// Longest reconnect delay, in milliseconds.
pub const RECONNECT_MAX_MS: u64 = 60_000;
/// How long the broker has to answer CONNECT, in milliseconds.
pub const CONNACK_TIMEOUT_MS: u64 = 10_000;
/// Largest packet we take whole (its remaining length), in bytes: a command's payload bound
/// ([`super::commands::MAX_COMMAND_PAYLOAD_BYTES`]) and room for its topic. A larger PUBLISH
/// is skipped and reported; any other larger packet closes the session.
pub const MAX_PACKET_BYTES: usize = super::commands::MAX_COMMAND_PAYLOAD_BYTES + 1024;
/// Most of our QoS 1 publishes waiting for their PUBACK at once: room for discovery (three
/// configs, and two messages per contact at most) and the inbox window.
pub const MAX_IN_FLIGHT: usize = 256;

/// What the session needs to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub client_id: String,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
    pub keepalive_secs: u16,
    /// The last will: published retained (QoS 1) by the broker when we vanish.
    pub will_topic: String,
    pub will_payload: Vec<u8>,
}

/// Why a session closed; the shell logs it and the session waits its backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Environment: the TCP or TLS connection could not be made (`detail` says why).
    DialFailed { detail: String },
    /// Peer: the broker (or the network) closed the connection.
    Closed,
    /// Peer: no CONNACK within [`CONNACK_TIMEOUT_MS`].
    ConnAckTimeout,
    /// Peer: no PINGRESP within the keepalive.
    KeepaliveTimeout,
    /// Peer or operator: the broker refused CONNECT with this return code (4: bad user name
    /// or password; 5: not authorized, which is what mosquitto answers a wrong password).
    Refused { code: u8 },
    /// Peer: a packet the codec refused, one over [`MAX_PACKET_BYTES`], or one out of place.
    Protocol { detail: String },
}

impl CloseReason {
    /// Whether the broker refused our credentials (CONNACK 4 or 5).
    pub fn is_bad_login(&self) -> bool {
        matches!(self, CloseReason::Refused { code: 4 | 5 })
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DialFailed { detail } => write!(f, "cannot connect: {detail}"),
            Self::Closed => write!(f, "the broker closed the connection"),
            Self::ConnAckTimeout => write!(f, "no CONNACK within {CONNACK_TIMEOUT_MS} ms"),
            Self::KeepaliveTimeout => write!(f, "no PINGRESP within the keepalive"),
            Self::Refused { code: 4 } => {
                write!(
                    f,
                    "the broker refused the login: bad user name or password (CONNACK 4)"
                )
            }
            Self::Refused { code: 5 } => write!(
                f,
                "the broker refused the login: not authorized, a wrong user name or password (CONNACK 5)"
            ),
            Self::Refused { code } => write!(f, "the broker refused the login (CONNACK {code})"),
            Self::Protocol { detail } => write!(f, "protocol error: {detail}"),
        }
    }
}

/// What the bridge learns from the session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The broker accepted CONNECT. Subscribe and publish now.
    Connected { session_present: bool },
    /// A message for one of our subscriptions. `pkid` is set for QoS 1: [`Session::ack`] it
    /// once it is handled (and committed).
    Message {
        topic: String,
        payload: Bytes,
        pkid: Option<u16>,
        retain: bool,
    },
    /// A PUBLISH over [`MAX_PACKET_BYTES`] (`len` is its remaining length); its payload was
    /// skipped. Acknowledge `pkid` like a message.
    Oversized {
        topic: String,
        pkid: Option<u16>,
        len: usize,
    },
    /// The broker acknowledged our QoS 1 publish `pkid`.
    Acked { pkid: u16 },
    /// The session closed; what was in flight is forgotten. The session dials again after
    /// `retry_in_ms`.
    Closed {
        reason: CloseReason,
        retry_in_ms: u64,
    },
}

/// Why the bridge's call could not be done now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// Bug in the caller or a race: the session is not connected.
    NotConnected,
    /// Back-pressure: [`MAX_IN_FLIGHT`] QoS 1 publishes wait for their PUBACK.
    WindowFull,
    /// Caller: the codec refused the packet (a topic over 65535 bytes, a NUL in it).
    Encode { detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WaitingToDial { at_ms: u64 },
    Dialing,
    ExpectConnAck { since_ms: u64 },
    Connected,
}

/// A PUBLISH over the bound whose header we are reading, or whose payload we are skipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Skip {
    remaining: usize,
}

/// The session. See the file's doc for the drive order.
pub struct Session {
    config: SessionConfig,
    state: State,
    failures: u32,
    transmit: BytesMut,
    received: BytesMut,
    skip: Option<Skip>,
    events: VecDeque<SessionEvent>,
    next_pkid: u16,
    in_flight: BTreeSet<u16>,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
}

impl Session {
    /// A session that dials at once.
    pub fn new(config: SessionConfig, now_ms: u64) -> Session {
        Session {
            config,
            state: State::WaitingToDial { at_ms: now_ms },
            failures: 0,
            transmit: BytesMut::new(),
            received: BytesMut::new(),
            skip: None,
            events: VecDeque::new(),
            next_pkid: 1,
            in_flight: BTreeSet::new(),
            last_sent_ms: now_ms,
            ping_sent_ms: None,
        }
    }

    /// Whether the broker accepted us on this connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether a connection is in use (waiting for CONNACK, or connected).
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::ExpectConnAck { .. } | State::Connected)
    }

    /// The password the next CONNECT carries (the bridge reads its file before each dial).
    pub fn set_password(&mut self, password: Option<String>) {
        self.config.password = password;
    }

    /// Our QoS 1 publishes waiting for their PUBACK.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True (once) when the shell should dial now.
    pub fn poll_dial(&mut self, now_ms: u64) -> bool {
        match self.state {
            State::WaitingToDial { at_ms } if now_ms >= at_ms => {
                self.state = State::Dialing;
                true
            }
            _ => false,
        }
    }

    /// The connection is up: CONNECT goes out.
    pub fn handle_dialed(&mut self, now_ms: u64) {
        self.transmit.clear();
        self.received.clear();
        self.skip = None;
        self.in_flight.clear();
        self.ping_sent_ms = None;
        let c = &self.config;
        let connect = Connect {
            clean_session: false,
            keep_alive: c.keepalive_secs,
            client_id: c.client_id.clone(),
            will: Some(Will {
                topic: c.will_topic.clone(),
                message: Bytes::from(c.will_payload.clone()),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: c.username.clone(),
            password: c.password.clone().map(Bytes::from),
        };
        self.state = State::ExpectConnAck { since_ms: now_ms };
        if let Err(e) = self.send(&Packet::Connect(connect), now_ms) {
            self.close(CloseReason::Protocol { detail: e }, now_ms);
        }
    }

    /// The connection could not be made.
    pub fn handle_dial_failed(&mut self, detail: String, now_ms: u64) {
        self.close(CloseReason::DialFailed { detail }, now_ms);
    }

    /// The connection ended (EOF or a read/write error).
    pub fn handle_closed(&mut self, now_ms: u64) {
        if matches!(self.state, State::ExpectConnAck { .. } | State::Connected) {
            self.close(CloseReason::Closed, now_ms);
        }
    }

    /// Bytes read from the connection.
    pub fn handle_bytes(&mut self, mut bytes: &[u8], now_ms: u64) {
        if !matches!(self.state, State::ExpectConnAck { .. } | State::Connected) {
            return;
        }
        if let Some(skip) = &mut self.skip {
            let n = skip.remaining.min(bytes.len());
            skip.remaining -= n;
            bytes = bytes.get(n..).unwrap_or_default();
            if skip.remaining == 0 {
                self.skip = None;
            }
        }
        self.received.extend_from_slice(bytes);
        if let Err(detail) = self.drain_received(now_ms) {
            self.close(CloseReason::Protocol { detail }, now_ms);
        }
    }

    /// Decodes every whole packet in `received`.
    fn drain_received(&mut self, now_ms: u64) -> Result<(), String> {
        while self.skip.is_none() {
            let Some((first, remaining, header_len)) = peek_header(&self.received)? else {
                return Ok(());
            };
            if remaining > MAX_PACKET_BYTES {
                if first >> 4 != 3 {
                    return Err(format!(
                        "a packet of {remaining} bytes, over the limit of {MAX_PACKET_BYTES}"
                    ));
                }
                if !self.start_skip(first, remaining, header_len)? {
                    return Ok(());
                }
                continue;
            }
            let packet = match Packet::decode(&mut self.received) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            self.handle_packet(packet, now_ms)?;
        }
        // Bytes beyond the skipped payload belong to the next packet.
        if let Some(skip) = &mut self.skip {
            let n = skip.remaining.min(self.received.len());
            let _ = self.received.split_to(n);
            skip.remaining -= n;
            if skip.remaining == 0 {
                self.skip = None;
                return self.drain_received(now_ms);
            }
        }
        Ok(())
    }

    /// Reads the topic and packet id of an oversized PUBLISH and starts skipping the rest;
    /// false when not enough of it has arrived yet.
    fn start_skip(
        &mut self,
        first: u8,
        remaining: usize,
        header_len: usize,
    ) -> Result<bool, String> {
        let qos = (first >> 1) & 0x03;
        let buf = &self.received[..];
        let Some(len_bytes) = buf.get(header_len..header_len + 2) else {
            return Ok(false);
        };
        // INVARIANT: `len_bytes` is the 2-byte range just taken with `get`.
        let topic_len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let pkid_len = if qos > 0 { 2 } else { 0 };
        let head = 2 + topic_len + pkid_len;
        let Some(head_bytes) = buf.get(header_len + 2..header_len + head) else {
            return Ok(false);
        };
        // INVARIANT: `head_bytes` holds `topic_len + pkid_len` bytes (taken with `get`), and
        // the packet id's two are read only when `pkid_len` is 2; `received` holds at least
        // `header_len + head` bytes, so the `split_to` below cannot panic.
        let topic = String::from_utf8(head_bytes[..topic_len].to_vec())
            .map_err(|_| "a PUBLISH topic that is not UTF-8".to_string())?;
        let pkid = (qos > 0)
            .then(|| u16::from_be_bytes([head_bytes[topic_len], head_bytes[topic_len + 1]]));
        let _ = self.received.split_to(header_len + head);
        self.skip = Some(Skip {
            remaining: remaining.saturating_sub(head),
        });
        self.events.push_back(SessionEvent::Oversized {
            topic,
            pkid,
            len: remaining,
        });
        Ok(true)
    }

    fn handle_packet(&mut self, packet: Packet, now_ms: u64) -> Result<(), String> {
        match (self.state, packet) {
            (
                State::ExpectConnAck { .. },
                Packet::ConnAck(ConnAck {
                    session_present,
                    return_code,
                }),
            ) => {
                if return_code != ConnectReturnCode::Accepted {
                    self.close(
                        CloseReason::Refused {
                            code: return_code as u8,
                        },
                        now_ms,
                    );
                    return Ok(());
                }
                self.state = State::Connected;
                self.failures = 0;
                self.events
                    .push_back(SessionEvent::Connected { session_present });
                Ok(())
            }
            (State::Connected, Packet::Publish(p)) => {
                self.events.push_back(SessionEvent::Message {
                    topic: p.topic,
                    payload: p.payload,
                    pkid: p.pkid.filter(|_| p.qos != QoS::AtMostOnce),
                    retain: p.retain,
                });
                Ok(())
            }
            (State::Connected, Packet::PubAck(PubAck { pkid })) => {
                if self.in_flight.remove(&pkid) {
                    self.events.push_back(SessionEvent::Acked { pkid });
                }
                Ok(())
            }
            (State::Connected, Packet::PingResp(_)) => {
                self.ping_sent_ms = None;
                Ok(())
            }
            (State::Connected, Packet::SubAck(_) | Packet::UnsubAck(_)) => Ok(()),
            (_, other) => Err(format!("unexpected {:?} packet", packet_name(&other))),
        }
    }

    /// Checks the connect and keepalive deadlines.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state {
            State::ExpectConnAck { since_ms } if now_ms >= since_ms + CONNACK_TIMEOUT_MS => {
                self.close(CloseReason::ConnAckTimeout, now_ms);
            }
            State::Connected => {
                let keepalive_ms = u64::from(self.config.keepalive_secs) * 1000;
                if let Some(sent) = self.ping_sent_ms {
                    if now_ms >= sent + keepalive_ms {
                        self.close(CloseReason::KeepaliveTimeout, now_ms);
                    }
                } else if now_ms >= self.last_sent_ms + keepalive_ms / 2 {
                    self.ping_sent_ms = Some(now_ms);
                    if let Err(e) = self.send(&Packet::PingReq(PingReq), now_ms) {
                        self.close(CloseReason::Protocol { detail: e }, now_ms);
                    }
                }
            }
            _ => {}
        }
    }

    /// When [`Session::handle_timeout`] (or [`Session::poll_dial`]) should be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let keepalive_ms = u64::from(self.config.keepalive_secs) * 1000;
        match self.state {
            State::WaitingToDial { at_ms } => Some(at_ms),
            State::Dialing => None,
            State::ExpectConnAck { since_ms } => Some(since_ms + CONNACK_TIMEOUT_MS),
            State::Connected => Some(match self.ping_sent_ms {
                Some(sent) => sent + keepalive_ms,
                None => self.last_sent_ms + keepalive_ms / 2,
            }),
        }
    }

    /// Bytes to write, if any (everything queued so far).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Publishes `payload` on `topic`. QoS 1 returns the packet id whose
    /// [`SessionEvent::Acked`] will follow; QoS 0 returns `None`.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos1: bool,
        retain: bool,
        now_ms: u64,
    ) -> Result<Option<u16>, SessionError> {
        if self.state != State::Connected {
            return Err(SessionError::NotConnected);
        }
        let pkid = if qos1 {
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                return Err(SessionError::WindowFull);
            }
            Some(self.take_pkid())
        } else {
            None
        };
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: if qos1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            retain,
            topic: topic.to_string(),
            pkid,
            payload,
        });
        self.send(&packet, now_ms)
            .map_err(|detail| SessionError::Encode { detail })?;
        if let Some(p) = pkid {
            self.in_flight.insert(p);
        }
        Ok(pkid)
    }

    /// Subscribes to `filters` at QoS 1.
    pub fn subscribe(&mut self, filters: &[String], now_ms: u64) -> Result<(), SessionError> {
        if self.state != State::Connected {
            return Err(SessionError::NotConnected);
        }
        let pkid = self.take_pkid();
        let packet = Packet::Subscribe(Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                .collect(),
        });
        self.send(&packet, now_ms)
            .map_err(|detail| SessionError::Encode { detail })
    }

    /// PUBACKs the broker's QoS 1 message `pkid` (after it was handled and committed).
    pub fn ack(&mut self, pkid: u16, now_ms: u64) {
        if self.state != State::Connected {
            return;
        }
        if let Err(e) = self.send(&Packet::PubAck(PubAck { pkid }), now_ms) {
            self.close(CloseReason::Protocol { detail: e }, now_ms);
        }
    }

    /// A packet id not in flight (ids run 1..=65535; at most [`MAX_IN_FLIGHT`] are taken).
    fn take_pkid(&mut self) -> u16 {
        loop {
            let p = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.in_flight.contains(&p) {
                return p;
            }
        }
    }

    fn send(&mut self, packet: &Packet, now_ms: u64) -> Result<(), String> {
        packet
            .encode(&mut self.transmit)
            .map_err(|e| e.to_string())?;
        self.last_sent_ms = now_ms;
        Ok(())
    }

    fn close(&mut self, reason: CloseReason, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(16);
        let retry_in_ms = RECONNECT_MIN_MS
            .saturating_mul(1u64 << shift)
            .min(RECONNECT_MAX_MS);
        self.state = State::WaitingToDial {
            at_ms: now_ms + retry_in_ms,
        };
        self.transmit.clear();
        self.received.clear();
        self.skip = None;
        self.in_flight.clear();
        self.ping_sent_ms = None;
        self.events.push_back(SessionEvent::Closed {
            reason,
            retry_in_ms,
        });
    }
}

/// The first byte, the remaining length and the fixed header's length of the packet at the
/// front of `buf`; `None` until they have all arrived.
fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, value, 2 + i)));
        }
    }
    Err("a malformed remaining length".into())
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}
