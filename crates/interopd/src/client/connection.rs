//! The async shell of the [`Client`]: a TLS connection that moves its frames, with the
//! only `.await`s of the client. The link drives it.

use super::*;

/// Why [`Connection::open`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// Environment or server: TCP or TLS failed (including a pin mismatch).
    Tls(crate::tls::TlsError),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A [`Client`] on a TLS connection: the shell that moves its frames.
pub struct Connection {
    client: Client,
    stream: crate::tls::TlsClientStream,
    reader: FrameReader,
    raw: VecDeque<Vec<u8>>,
    closed: bool,
    /// Stanzas too large to frame, `(id, bytes)`, not sent; [`Connection::flush`] reports them
    /// one per call, whichever flush (its own or the one before a read) met them.
    unsent: VecDeque<(String, usize)>,
}

use crate::clock::now_ms as wall_ms;

/// What one read from the server gave.
/// Why [`Connection::flush`] did not send everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushError {
    /// Environment: the connection failed while writing; it is closed.
    Write,
    /// Bug or outside data over a bound: stanza `id` is `len` bytes, over the frame bound, and
    /// was not sent. The caller fails the outbox row it belongs to.
    TooLarge { id: String, len: usize },
}

/// The `id` attribute of a serialised stanza's root element, if it has one in its first bytes.
pub(super) fn stanza_id(xml: &[u8]) -> Option<&str> {
    let head = xml.get(..xml.len().min(512))?;
    let end = head.iter().position(|&b| b == b'>')?;
    let open = std::str::from_utf8(head.get(..end)?).ok()?;
    let start = open.find(" id=\"")? + 5;
    let rest = open.get(start..)?;
    rest.get(..rest.find('"')?)
}

pub(super) enum ReadOutcome {
    TimedOut,
    /// The caller's wake listener fired (new outbox rows, a read mark).
    Woken,
    Closed,
    BadFrame(frame::FrameError),
    Frames(Vec<Vec<u8>>),
}

impl Connection {
    /// Dials `addr`, authenticates the server by `pin`, and starts the login with `token`.
    pub async fn open(
        client: Client,
        addr: &str,
        server_name: &str,
        pin: &crate::tls::Pin,
        token: &str,
    ) -> Result<Connection, ConnectError> {
        let config = crate::tls::client_config(pin).map_err(ConnectError::Tls)?;
        let stream = crate::tls::connect(addr, server_name, config)
            .await
            .map_err(ConnectError::Tls)?;
        let mut c = Connection {
            client,
            stream,
            reader: FrameReader::default(),
            raw: VecDeque::new(),
            closed: false,
            unsent: VecDeque::new(),
        };
        c.client.start(token, wall_ms());
        Ok(c)
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

    /// Writes whatever the client has to send. A stanza too large to frame is not sent; each
    /// such stanza is reported by one call ([`FlushError::TooLarge`], with its id), so a caller
    /// flushes until `Ok` or [`FlushError::Write`]. The stanzas after it still go out.
    pub async fn flush(&mut self) -> Result<(), FlushError> {
        self.write_out().await?;
        match self.unsent.pop_front() {
            Some((id, len)) => Err(FlushError::TooLarge { id, len }),
            None => Ok(()),
        }
    }

    /// Writes every queued payload, setting aside the ones too large to frame.
    async fn write_out(&mut self) -> Result<(), FlushError> {
        use futures_lite::AsyncWriteExt as _;
        while let Some(p) = self.client.poll_transmit() {
            let Ok(f) = framed(&p) else {
                let id = stanza_id(&p).unwrap_or("?").to_owned();
                self.unsent.push_back((id, p.len()));
                continue;
            };
            if self.stream.write_all(&f).await.is_err() {
                self.closed = true;
                return Err(FlushError::Write);
            }
        }
        if self.stream.flush().await.is_err() {
            self.closed = true;
            return Err(FlushError::Write);
        }
        Ok(())
    }

    /// Flushes, then waits for bytes until `deadline` and feeds them to the frame reader.
    /// Shared by [`next_event`](Self::next_event) and [`next_stanza`](Self::next_stanza).
    pub(super) async fn read_frames(
        &mut self,
        deadline: std::time::Instant,
        wake: Option<&mut event_listener::EventListener>,
    ) -> ReadOutcome {
        use futures_lite::{AsyncReadExt as _, FutureExt as _};
        // A write failure shows as `Closed` on the read below; stanzas set aside as too large
        // wait for the caller's own `flush`.
        let _ = self.write_out().await;
        let mut buf = vec![0u8; 16 * 1024];
        // A read cancelled by the timer or a wake consumes nothing: smol and rustls keep
        // unread bytes in their buffers.
        let read = async { Some(Some(self.stream.read(&mut buf).await)) };
        let timer = async {
            smol::Timer::at(deadline).await;
            None
        };
        let woken = async {
            match wake {
                Some(listener) => {
                    listener.await;
                    Some(None)
                }
                None => std::future::pending().await,
            }
        };
        match read.or(woken).or(timer).await {
            None => ReadOutcome::TimedOut,
            Some(None) => ReadOutcome::Woken,
            Some(Some(Ok(0))) | Some(Some(Err(_))) => {
                self.closed = true;
                ReadOutcome::Closed
            }
            Some(Some(Ok(n))) => match self.reader.feed(buf.get(..n).unwrap_or_default()) {
                Ok(frames) => ReadOutcome::Frames(frames),
                Err(e) => {
                    self.closed = true;
                    ReadOutcome::BadFrame(e)
                }
            },
        }
    }

    /// The next event, reading from the server as needed; `None` after `timeout_ms`.
    pub async fn next_event(&mut self, timeout_ms: u64) -> Option<Event> {
        self.next_event_or_wake(timeout_ms, None).await
    }

    /// As [`next_event`](Self::next_event), but also returns `None` as soon as `wake` fires,
    /// so a caller sleeping until its next deadline still hears about new work at once.
    pub async fn next_event_or_wake(
        &mut self,
        timeout_ms: u64,
        mut wake: Option<&mut event_listener::EventListener>,
    ) -> Option<Event> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        loop {
            if let Some(e) = self.client.poll_event() {
                return Some(e);
            }
            if self.closed {
                return None;
            }
            match self.read_frames(deadline, wake.as_deref_mut()).await {
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
            match self.read_frames(deadline, None).await {
                ReadOutcome::Frames(frames) => self.raw.extend(frames),
                ReadOutcome::TimedOut
                | ReadOutcome::Woken
                | ReadOutcome::Closed
                | ReadOutcome::BadFrame(_) => {
                    return None;
                }
            }
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes raw bytes to the server (tests of hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> bool {
        use futures_lite::AsyncWriteExt as _;
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }
}
