//! A request body as the handler reads it: a stream over the connection's buffer, with the
//! read timeout, the minimum average rate and the slot bookkeeping; the framing itself
//! (Content-Length, chunked) is `ConnIo::poll_body` in `server.rs`.

use std::time::Instant;

use super::*;

/// The body of a request, read from the connection on demand. Implements `AsyncRead`
/// (errors carry an [`HttpError`] inside the `io::Error`). Each read must make progress
/// within [`ServeOptions::body_read_timeout_ms`].
pub struct RequestBody {
    pub(super) conn: Option<Rc<RefCell<ConnIo>>>,
    pub(super) declared_len: Option<u64>,
    pub(super) timeout: Duration,
    pub(super) timer: Option<Timer>,
    /// The minimum rate: from `started`, after the grace, `min_bytes_per_sec` on average.
    pub(super) rate: BodyRate,
    pub(super) slot: Option<Rc<Slot>>,
    pub(super) stats: Option<std::sync::Arc<ListenerStats>>,
}

/// The minimum average rate a request body must keep, and how far it has come.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyRate {
    pub(super) started: Instant,
    pub(super) grace: Duration,
    pub(super) min_bytes_per_sec: u64,
    pub(super) received: u64,
}

impl BodyRate {
    /// When the body falls behind the minimum rate unless more bytes come.
    fn deadline(&self) -> Instant {
        let owed_ms = match self.min_bytes_per_sec {
            0 => u64::MAX / 2,
            rate => self.received.saturating_mul(1000) / rate,
        };
        self.started + self.grace + Duration::from_millis(owed_ms)
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("declared_len", &self.declared_len)
            .field("finished", &self.conn.is_none())
            .finish()
    }
}

impl RequestBody {
    /// The body length the client declared: `Some(0)` without a body, `None` if chunked.
    pub fn declared_len(&self) -> Option<u64> {
        self.declared_len
    }

    /// Reads the whole body, refusing more than `max_bytes` ([`HttpError::BodyTooLarge`],
    /// without reading on when the declared length already exceeds it).
    pub async fn read_to_vec(mut self, max_bytes: usize) -> Result<Vec<u8>, HttpError> {
        let limit = HttpError::BodyTooLarge {
            limit_bytes: max_bytes as u64,
        };
        if self.declared_len.is_some_and(|len| len > max_bytes as u64) {
            return Err(limit);
        }
        let initial = self.declared_len.unwrap_or(0).min(READ_CHUNK_BYTES as u64) as usize;
        let mut out = Vec::with_capacity(initial);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let n = futures_lite::future::poll_fn(|cx| self.poll_read_body(cx, &mut chunk)).await?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() + n > max_bytes {
                return Err(limit);
            }
            out.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        }
    }

    /// Reads the whole body (at most `max_bytes`) and parses it as JSON.
    pub async fn read_json<T: DeserializeOwned>(self, max_bytes: usize) -> Result<T, HttpError> {
        let bytes = self.read_to_vec(max_bytes).await?;
        serde_json::from_slice(&bytes).map_err(|err| HttpError::BadJson {
            detail: err.to_string(),
        })
    }

    fn poll_read_body(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, HttpError>> {
        let Some(conn) = &self.conn else {
            return Poll::Ready(Ok(0));
        };
        let polled = conn.borrow_mut().poll_body(cx, out);
        match polled {
            Poll::Ready(Ok(n)) => {
                self.rate.received = self.rate.received.saturating_add(n as u64);
                if let Some(slot) = &self.slot {
                    slot.body_bytes(n);
                }
                if matches!(conn.borrow().body, BodyProgress::Done) {
                    // Let go of the connection: the server may reuse it at once.
                    self.conn = None;
                }
                let deadline = self.next_deadline();
                if let Some(timer) = &mut self.timer {
                    timer.set_at(deadline);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => {
                self.conn = None;
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                let deadline = self.next_deadline();
                let timer = self.timer.get_or_insert_with(|| Timer::at(deadline));
                if Pin::new(timer).poll(cx).is_ready() {
                    let phase = if Instant::now() >= self.rate.deadline() {
                        "body (slower than the minimum rate)"
                    } else {
                        "body"
                    };
                    let err = HttpError::Timeout { phase };
                    conn.borrow_mut().body = BodyProgress::Failed(err.clone());
                    self.conn = None;
                    if let Some(stats) = &self.stats {
                        ListenerStats::bump(&stats.timed_out);
                    }
                    return Poll::Ready(Err(err));
                }
                Poll::Pending
            }
        }
    }
}

impl RequestBody {
    /// The earlier of: no progress for the read timeout, or behind the minimum rate.
    fn next_deadline(&self) -> Instant {
        (Instant::now() + self.timeout).min(self.rate.deadline())
    }
}

impl AsyncRead for RequestBody {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_body(cx, buf).map_err(|err| {
            let kind = match err {
                HttpError::Timeout { .. } => io::ErrorKind::TimedOut,
                HttpError::ConnectionClosed => io::ErrorKind::UnexpectedEof,
                HttpError::Io { kind } => kind,
                _ => io::ErrorKind::InvalidData,
            };
            io::Error::new(kind, err)
        })
    }
}
