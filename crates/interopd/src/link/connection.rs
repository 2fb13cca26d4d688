//! A [`Client`] on a [`Transport`], without the engine: the integration tests' and tools' way
//! to play a plain client against a real gatekeeper (including misbehaving ones, through
//! [`Connection::next_stanza`] and [`Connection::write_raw`]). The daemon's link uses the
//! [`crate::engine::Engine`] instead.

use std::collections::VecDeque;

use interop_proto::noise::RootPin;
use interop_proto::noise::wire::ConnectReason;

use super::transport::{ConnectError, ReadOutcome, Transport};
use crate::client::{Client, Event};
use crate::clock::now_ms as wall_ms;
use crate::stanza::{self, Stanza};

/// A [`Client`] on a connection of either profile.
pub struct Connection {
    client: Client,
    transport: Transport,
    raw: VecDeque<Vec<u8>>,
    closed: bool,
    /// Never fires: [`Transport::read`] takes a wake listener, and nothing wakes a test client.
    never: event_listener::Event,
}

impl Connection {
    /// Dials `addr`, authenticates the server by `pin`, and starts the login with `token`.
    pub async fn open(
        mut client: Client,
        addr: &str,
        server_name: &str,
        pin: &crate::tls::Pin,
        token: &str,
    ) -> Result<Connection, ConnectError> {
        let transport = Transport::open(addr, server_name, pin)
            .await
            .map_err(ConnectError::Tls)?;
        client.start(token, wall_ms());
        Ok(Connection::on(client, transport))
    }

    fn on(client: Client, transport: Transport) -> Connection {
        Connection {
            client,
            transport,
            raw: VecDeque::new(),
            closed: false,
            never: event_listener::Event::new(),
        }
    }

    /// `wa`: dials `addr`, runs the Noise handshake as the client's identity key to a
    /// server whose chain leads to `pin`, with `token` (the provider JWT) in the
    /// `ClientPayload`; the login's answer is the first event.
    pub async fn open_wa(
        mut client: Client,
        addr: &str,
        pin: RootPin,
        token: &str,
    ) -> Result<Connection, ConnectError> {
        let transport =
            Transport::open_wa_as(&client, addr, pin, token, ConnectReason::UserActivated).await?;
        client.start_wa(wall_ms());
        Ok(Connection::on(client, transport))
    }

    /// The client inside.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the client back (the connection is dropped).
    pub fn into_client(mut self) -> Client {
        self.client.disconnected();
        self.client
    }

    /// Writes whatever the client has to send; `false` if the connection failed.
    pub async fn flush(&mut self) -> bool {
        while let Some(p) = self.client.poll_transmit() {
            if self.transport.write(&p).await.is_err() {
                self.closed = true;
                return false;
            }
        }
        if self.transport.flush().await.is_err() {
            self.closed = true;
            return false;
        }
        true
    }

    /// Flushes, then waits for frames until `deadline`.
    async fn read_frames(&mut self, deadline: std::time::Instant) -> ReadOutcome {
        // A write failure shows as `Closed` on the read below.
        let _ = self.flush().await;
        let mut listener = self.never.listen();
        let got = self.transport.read(deadline, &mut listener).await;
        if matches!(
            got,
            ReadOutcome::Closed | ReadOutcome::BadFrame(_) | ReadOutcome::BadStream(_)
        ) {
            self.closed = true;
        }
        got
    }

    /// The next event, reading from the server as needed; `None` after `timeout_ms`.
    /// When the transport ends, [`Event::Disconnected`] or [`Event::StreamError`].
    pub async fn next_event(&mut self, timeout_ms: u64) -> Option<Event> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        loop {
            if let Some(e) = self.client.poll_event() {
                return Some(e);
            }
            if self.closed {
                return None;
            }
            match self.read_frames(deadline).await {
                ReadOutcome::TimedOut | ReadOutcome::Woken => return None,
                ReadOutcome::Closed => {
                    self.client.disconnected();
                    return Some(Event::Disconnected);
                }
                ReadOutcome::BadFrame(e) => {
                    return Some(Event::StreamError {
                        code: e.reason().to_owned(),
                    });
                }
                ReadOutcome::BadStream(e) => {
                    return Some(Event::StreamError {
                        code: e.reason().to_owned(),
                    });
                }
                ReadOutcome::Frames(frames) => {
                    let mut rng = rand::rng();
                    for f in frames {
                        self.client.handle_frame(&f, wall_ms(), &mut rng);
                    }
                }
            }
        }
    }

    /// Reads events until one satisfies `want`; returns it and every event seen before it,
    /// or `Err` with all events seen if `timeout_ms` passes or the connection ends first.
    pub async fn wait_for(
        &mut self,
        timeout_ms: u64,
        want: impl Fn(&Event) -> bool,
    ) -> Result<(Event, Vec<Event>), Vec<Event>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            match self.next_event(left_ms).await {
                Some(e) if want(&e) => return Ok((e, seen)),
                Some(Event::Disconnected) => {
                    seen.push(Event::Disconnected);
                    return Err(seen);
                }
                Some(e) => seen.push(e),
                None => return Err(seen),
            }
        }
    }

    /// The next raw stanza from the server, bypassing the client (tests that play a
    /// misbehaving client); `None` on timeout or when the connection ends.
    pub async fn next_stanza(&mut self, timeout_ms: u64) -> Option<Stanza> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        loop {
            if let Some(f) = self.raw.pop_front() {
                return stanza::parse(&f).ok();
            }
            if self.closed {
                return None;
            }
            match self.read_frames(deadline).await {
                ReadOutcome::Frames(frames) => self.raw.extend(frames),
                ReadOutcome::TimedOut
                | ReadOutcome::Woken
                | ReadOutcome::Closed
                | ReadOutcome::BadFrame(_)
                | ReadOutcome::BadStream(_) => return None,
            }
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes raw bytes to the server (tests of hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> bool {
        self.transport.write_raw(bytes).await.is_ok() && self.transport.flush().await.is_ok()
    }
}
