//! The shell: the per-connection loop with its time limits and request bodies as streams.
//! With `accept.rs` (the one accept loop and the overload refusal) and `client.rs`, the only
//! files of `http` that do I/O.

use std::time::Instant;

use super::*;

/// Limits for [`serve`] and [`serve_connection`]; `Default` gives the `DEFAULT_*` bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Largest request body accepted, in bytes. A handler may cap lower.
    pub max_body_bytes: u64,
    /// Connection caps of [`serve`] (see `slots.rs` for the policy).
    pub limits: AcceptLimits,
    /// See [`DEFAULT_HEAD_TIMEOUT_MS`].
    pub head_timeout_ms: u64,
    /// See [`DEFAULT_IDLE_TIMEOUT_MS`].
    pub idle_timeout_ms: u64,
    /// See [`DEFAULT_BODY_READ_TIMEOUT_MS`].
    pub body_read_timeout_ms: u64,
    /// See [`DEFAULT_MIN_BODY_BYTES_PER_SEC`].
    pub min_body_bytes_per_sec: u64,
    /// See [`DEFAULT_BODY_RATE_GRACE_MS`].
    pub body_rate_grace_ms: u64,
    /// See [`DEFAULT_WRITE_TIMEOUT_MS`].
    pub write_timeout_ms: u64,
    /// What the listener refused, evicted and timed out, for metrics.
    pub stats: std::sync::Arc<ListenerStats>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            limits: AcceptLimits::for_max(DEFAULT_MAX_CONNECTIONS),
            head_timeout_ms: DEFAULT_HEAD_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            min_body_bytes_per_sec: DEFAULT_MIN_BODY_BYTES_PER_SEC,
            body_rate_grace_ms: DEFAULT_BODY_RATE_GRACE_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            stats: std::sync::Arc::default(),
        }
    }
}

/// A request as the handler sees it.
#[derive(Debug)]
pub struct Request {
    /// The parsed head.
    pub head: RequestHead,
    /// The body, read on demand.
    pub body: RequestBody,
    /// The peer's address.
    pub peer: SocketAddr,
}

impl Request {
    /// The method.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The raw path, without the query.
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// See [`RequestHead::header`].
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// See [`RequestHead::query_param`].
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.head.query_param(name)
    }

    /// See [`RequestHead::query_param_count`].
    pub fn query_param_count(&self, name: &str) -> usize {
        self.head.query_param_count(name)
    }
}

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A byte stream and its type, erased so one connection type serves TCP and TLS alike.
trait IoStream: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> IoStream for T {}

/// Where the body of the current request stands.
#[derive(Debug)]
pub(super) enum BodyProgress {
    Done,
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    /// Reading failed; the connection cannot be reused and every read repeats the error.
    Failed(HttpError),
}

/// One connection's socket and read buffer, shared by the server loop and the request's
/// [`RequestBody`]. Borrowed only inside synchronous poll functions, never across an await.
pub(super) struct ConnIo {
    stream: Pin<Box<dyn IoStream>>,
    buf: Vec<u8>,
    start: usize,
    pub(super) body: BodyProgress,
    /// The unsent rest of a `100 Continue` the client asked for. It goes out when the
    /// handler first reads the body, so a request refused before that (a missing token)
    /// never invites the body.
    continue_owed: &'static [u8],
}

impl ConnIo {
    fn buffered(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads up to [`READ_CHUNK_BYTES`] more into the buffer; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK_BYTES, 0);
        let spare = self.buf.get_mut(old..).unwrap_or(&mut []);
        let result = self.stream.as_mut().poll_read(cx, spare);
        let filled = match &result {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.buf.truncate(old + filled);
        result
    }

    /// Reads body bytes of the current request into `out`; `Ok(0)` once the body is done.
    pub(super) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, HttpError>> {
        if let BodyProgress::Failed(err) = &self.body {
            return Poll::Ready(Err(err.clone()));
        }
        if let Err(err) = ready!(self.poll_send_continue(cx)) {
            self.body = BodyProgress::Failed(err.clone());
            return Poll::Ready(Err(err));
        }
        let polled = self.poll_body_unchecked(cx, out);
        if let Poll::Ready(Err(err)) = &polled {
            self.body = BodyProgress::Failed(err.clone());
        }
        polled
    }

    /// Writes and flushes what is owed of `100 Continue`, if anything.
    fn poll_send_continue(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        let io_err = |e: io::Error| HttpError::Io { kind: e.kind() };
        while !self.continue_owed.is_empty() {
            let n =
                ready!(self.stream.as_mut().poll_write(cx, self.continue_owed)).map_err(io_err)?;
            if n == 0 {
                return Poll::Ready(Err(HttpError::ConnectionClosed));
            }
            self.continue_owed = self.continue_owed.get(n..).unwrap_or_default();
            if self.continue_owed.is_empty() {
                ready!(self.stream.as_mut().poll_flush(cx)).map_err(io_err)?;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_body_unchecked(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, HttpError>> {
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let available = self.buf.get(self.start..).unwrap_or(&[]);
            if !available.is_empty() {
                match &mut self.body {
                    BodyProgress::Done => return Poll::Ready(Ok(0)),
                    BodyProgress::Failed(err) => return Poll::Ready(Err(err.clone())),
                    BodyProgress::Length { remaining } => {
                        let n = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(available.len())
                            .min(out.len());
                        // INVARIANT: n is at most both lengths (the min above).
                        out[..n].copy_from_slice(&available[..n]);
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            self.body = BodyProgress::Done;
                        }
                        self.consume(n);
                        return Poll::Ready(Ok(n));
                    }
                    BodyProgress::Chunked(decoder) => {
                        let step = decoder.decode(available, out.len())?;
                        let data = available.get(step.data.clone()).unwrap_or(&[]);
                        let n = data.len();
                        // INVARIANT: the decoder returns at most `out.len()` data bytes.
                        out[..n].copy_from_slice(data);
                        if decoder.is_done() {
                            self.body = BodyProgress::Done;
                        }
                        self.consume(step.consumed);
                        if n > 0 {
                            return Poll::Ready(Ok(n));
                        }
                        if matches!(self.body, BodyProgress::Done) {
                            return Poll::Ready(Ok(0));
                        }
                        if !self.buffered().is_empty() {
                            continue;
                        }
                    }
                }
            } else if matches!(self.body, BodyProgress::Done) {
                return Poll::Ready(Ok(0));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(HttpError::ConnectionClosed)),
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(HttpError::Io { kind: err.kind() })),
            }
        }
    }
}

/// The write side of a shared connection, borrowing it only inside each poll.
pub(super) struct ConnWriter(Rc<RefCell<ConnIo>>);

impl AsyncWrite for ConnWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.borrow_mut().stream.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.borrow_mut().stream.as_mut().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.borrow_mut().stream.as_mut().poll_close(cx)
    }
}

/// Runs `work` for at most `limit_ms`; `None` if the time ran out.
pub(super) async fn within<T>(limit_ms: u64, work: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        Timer::after(Duration::from_millis(limit_ms)).await;
        None
    })
    .await
}

pub(super) async fn fill(conn: &Rc<RefCell<ConnIo>>) -> io::Result<usize> {
    futures_lite::future::poll_fn(|cx| conn.borrow_mut().poll_fill(cx)).await
}

/// Writes `bytes` whole, each write and the flush within `limit_ms`.
pub(super) async fn write_all(
    writer: &mut ConnWriter,
    bytes: &[u8],
    limit_ms: u64,
) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = within(limit_ms, writer.write(rest))
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        rest = rest.get(n..).unwrap_or(&[]);
    }
    Ok(())
}

pub(super) async fn flush(writer: &mut ConnWriter, limit_ms: u64) -> io::Result<()> {
    within(limit_ms, writer.flush())
        .await
        .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Waits for the next request head. `Ok(None)`: the peer went quiet or closed between
/// requests, and the connection ends without a response.
///
/// A new connection's whole first head must come within the head limit of the accept, so
/// a head sent a byte at a time cannot hold the slot longer; between requests, the first
/// byte within the idle limit, and the rest of the head within the head limit of it.
pub(super) async fn read_head(
    conn: &Rc<RefCell<ConnIo>>,
    options: &ServeOptions,
    first: bool,
) -> Result<Option<RequestHead>, HttpError> {
    let head_limit = Duration::from_millis(options.head_timeout_ms);
    let mut deadline = Instant::now()
        + if first {
            head_limit
        } else {
            Duration::from_millis(options.idle_timeout_ms)
        };
    if conn.borrow().buffered().is_empty() {
        match until(deadline, fill(conn)).await {
            None | Some(Ok(0)) => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(HttpError::Io { kind: err.kind() }),
        }
    }
    if !first {
        deadline = Instant::now() + head_limit;
    }
    let head = until(deadline, async {
        loop {
            let parsed = {
                let io = conn.borrow();
                parse_head(io.buffered())?
            };
            if let Some((head, used)) = parsed {
                conn.borrow_mut().consume(used);
                return Ok(head);
            }
            match fill(conn).await {
                Ok(0) => return Err(HttpError::ConnectionClosed),
                Ok(_) => {}
                Err(err) => return Err(HttpError::Io { kind: err.kind() }),
            }
        }
    })
    .await
    .ok_or(HttpError::Timeout { phase: "head" })??;
    Ok(Some(head))
}

/// Runs `work` until `deadline`; `None` if it passed first.
async fn until<T>(deadline: Instant, work: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        Timer::at(deadline).await;
        None
    })
    .await
}

/// Returns when the peer closes (or breaks) the connection. Bytes it sends meanwhile (a
/// pipelined request) stay buffered for later, up to [`MAX_HEAD_BYTES`]; beyond that it
/// stops reading, and so never returns.
async fn until_hangup(conn: &Rc<RefCell<ConnIo>>) {
    loop {
        if conn.borrow().buffered().len() >= MAX_HEAD_BYTES {
            futures_lite::future::pending::<()>().await;
        }
        match fill(conn).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads and discards what is left of the current body, up to [`MAX_DRAIN_BYTES`]; true
/// if the body ended within [`MAX_DRAIN_MS`] (a trickle cannot delay the response longer).
pub(super) async fn drain_body(conn: &Rc<RefCell<ConnIo>>) -> bool {
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    let mut drained = 0u64;
    let deadline = Instant::now() + Duration::from_millis(MAX_DRAIN_MS);
    let drain = async {
        loop {
            let step =
                futures_lite::future::poll_fn(|cx| conn.borrow_mut().poll_body(cx, &mut scratch))
                    .await;
            match step {
                Ok(0) => return matches!(conn.borrow().body, BodyProgress::Done),
                Ok(n) => {
                    drained += n as u64;
                    if drained > MAX_DRAIN_BYTES {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    until(deadline, drain).await.unwrap_or(false)
}

/// Shuts down our sending side, then discards input for a short while so the peer reads
/// our last response before the kernel could answer its unread data with a reset.
pub(super) async fn close_lingering(conn: &Rc<RefCell<ConnIo>>, options: &ServeOptions) {
    let mut writer = ConnWriter(Rc::clone(conn));
    if within(options.write_timeout_ms, writer.close())
        .await
        .is_none()
    {
        return;
    }
    within(LINGER_TIMEOUT_MS, async {
        let mut discarded = 0u64;
        while discarded <= MAX_LINGER_BYTES {
            match fill(conn).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    discarded += n as u64;
                    let mut io = conn.borrow_mut();
                    let len = io.buf.len();
                    io.consume(len);
                }
            }
        }
    })
    .await;
}

/// What of the request shapes its response.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply {
    /// The request was `HEAD`: headers only.
    head_method: bool,
    /// The request was HTTP/1.0: no chunked encoding.
    http10: bool,
}

/// Writes `response`. `Ok(false)` if the connection must close afterwards (the body was
/// streamed until close); `Err` if it broke mid-way.
pub(super) async fn write_response(
    conn: &Rc<RefCell<ConnIo>>,
    response: Response,
    reply: Reply,
    keep_alive: bool,
    options: &ServeOptions,
) -> io::Result<bool> {
    let limit_ms = options.write_timeout_ms;
    let mut writer = ConnWriter(Rc::clone(conn));
    let Response {
        status,
        headers,
        body,
    } = response;
    let framing = match (&body, status) {
        (_, 204 | 304) => ResponseFraming::NoBody,
        (Body::Empty, _) => ResponseFraming::Length(0),
        (Body::Bytes(bytes), _) => ResponseFraming::Length(bytes.len() as u64),
        (Body::Reader { len, .. }, _) => ResponseFraming::Length(*len),
        (Body::Stream(_), _) if reply.http10 => ResponseFraming::UntilClose,
        (Body::Stream(_), _) => ResponseFraming::Chunked,
    };
    let http10_keep_alive = reply.http10 && keep_alive;
    let (mut encoded, body) =
        match encode_response_head(status, &headers, framing, keep_alive, http10_keep_alive) {
            Ok(encoded) => (encoded, body),
            Err(err) => {
                log::error!("handler response refused: {err}");
                let fallback = Response::json_error(500, "internal", "the response was invalid");
                let Body::Bytes(bytes) = fallback.body else {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                };
                let framing = ResponseFraming::Length(bytes.len() as u64);
                let encoded = encode_response_head(500, &fallback.headers, framing, false, false)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                write_all(&mut writer, &encoded, limit_ms).await?;
                write_all(&mut writer, &bytes, limit_ms).await?;
                flush(&mut writer, limit_ms).await?;
                return Ok(false);
            }
        };
    let send_body = !reply.head_method && framing != ResponseFraming::NoBody;
    match body {
        Body::Bytes(bytes) if send_body => {
            if bytes.len() <= COALESCE_BODY_BYTES {
                encoded.extend_from_slice(&bytes);
                write_all(&mut writer, &encoded, limit_ms).await?;
            } else {
                write_all(&mut writer, &encoded, limit_ms).await?;
                write_all(&mut writer, &bytes, limit_ms).await?;
            }
        }
        Body::Reader { len, mut reader } if send_body => {
            write_all(&mut writer, &encoded, limit_ms).await?;
            let mut left = len;
            let mut chunk = vec![0u8; READ_CHUNK_BYTES];
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                let part = chunk.get_mut(..want).unwrap_or(&mut []);
                let n = reader.read(part).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                write_all(&mut writer, part.get(..n).unwrap_or(&[]), limit_ms).await?;
                left -= n as u64;
            }
        }
        Body::Stream(mut stream) if send_body => {
            write_all(&mut writer, &encoded, limit_ms).await?;
            flush(&mut writer, limit_ms).await?;
            let chunked = framing == ResponseFraming::Chunked;
            while let Some(item) = stream.next().await {
                let data = item?;
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                    framed.extend_from_slice(&data);
                    framed.extend_from_slice(b"\r\n");
                    write_all(&mut writer, &framed, limit_ms).await?;
                } else {
                    write_all(&mut writer, &data, limit_ms).await?;
                }
                flush(&mut writer, limit_ms).await?;
            }
            if chunked {
                write_all(&mut writer, b"0\r\n\r\n", limit_ms).await?;
            }
        }
        _ => write_all(&mut writer, &encoded, limit_ms).await?,
    }
    flush(&mut writer, limit_ms).await?;
    Ok(framing != ResponseFraming::UntilClose)
}

/// Serves HTTP/1.1 on one established connection (plain TCP, or a TLS stream from
/// [`crate::tls::accept`]) until it closes, calling `handler` once per request. Returns
/// when the connection is done; never fails (problems are answered or logged at debug).
///
/// `slot` is told what the connection waits for, so its accept loop can tell idle from busy;
/// a `GET` or `HEAD` whose client hangs up while its handler waits (long-poll) or while its
/// response streams (SSE) is abandoned at once, freeing the slot.
pub async fn serve_connection<S, H, Fut>(
    stream: S,
    peer: SocketAddr,
    options: &ServeOptions,
    slot: &Rc<Slot>,
    handler: &H,
) where
    S: AsyncRead + AsyncWrite + 'static,
    H: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let conn = Rc::new(RefCell::new(ConnIo {
        stream: Box::pin(stream),
        buf: Vec::new(),
        start: 0,
        body: BodyProgress::Done,
        continue_owed: &[],
    }));
    let mut served: u32 = 0;
    loop {
        slot.waiting_for_head(Instant::now());
        let head = match read_head(&conn, options, served == 0).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(err) => {
                log::debug!("{peer}: bad request: {err}");
                if matches!(err, HttpError::Timeout { .. }) {
                    ListenerStats::bump(&options.stats.timed_out);
                }
                if err.answerable() {
                    answer_and_close(&conn, err.to_response(), options).await;
                }
                return;
            }
        };
        served += 1;
        slot.busy();
        let (progress, declared_len) = match head.body {
            BodyFraming::None => (BodyProgress::Done, Some(0)),
            BodyFraming::Length(len) if len > options.max_body_bytes => {
                let err = HttpError::BodyTooLarge {
                    limit_bytes: options.max_body_bytes,
                };
                slot.closing(Instant::now());
                answer_and_close(&conn, err.to_response(), options).await;
                return;
            }
            BodyFraming::Length(0) => (BodyProgress::Done, Some(0)),
            BodyFraming::Length(len) => (BodyProgress::Length { remaining: len }, Some(len)),
            BodyFraming::Chunked => (
                BodyProgress::Chunked(ChunkedDecoder::new(options.max_body_bytes)),
                None,
            ),
        };
        let has_body = !matches!(progress, BodyProgress::Done);
        conn.borrow_mut().body = progress;
        if head.expect_continue && has_body && head.minor_version == 1 {
            conn.borrow_mut().continue_owed = CONTINUE;
        }
        let now = Instant::now();
        if has_body {
            slot.reading_body(now);
        }
        let request = Request {
            body: RequestBody {
                conn: has_body.then(|| Rc::clone(&conn)),
                declared_len,
                timeout: Duration::from_millis(options.body_read_timeout_ms),
                timer: None,
                rate: BodyRate {
                    started: now,
                    grace: Duration::from_millis(options.body_rate_grace_ms),
                    min_bytes_per_sec: options.min_body_bytes_per_sec,
                    received: 0,
                },
                slot: has_body.then(|| Rc::clone(slot)),
                stats: has_body.then(|| std::sync::Arc::clone(&options.stats)),
            },
            head,
            peer,
        };
        let method = request.head.method.clone();
        let path = request.head.path().to_owned();
        let reply = Reply {
            head_method: request.head.method == "HEAD",
            http10: request.head.minor_version == 0,
        };
        let wants_keep_alive = request.head.keep_alive;
        // Only a request without a body can be watched for a hang-up while it is handled:
        // the handler reads the socket itself otherwise.
        let watch = !has_body && matches!(method.as_str(), "GET" | "HEAD");
        let response = if watch {
            let handled = async { Some(handler(request).await) };
            match futures_lite::future::or(handled, async {
                until_hangup(&conn).await;
                None
            })
            .await
            {
                Some(response) => response,
                None => {
                    ListenerStats::bump(&options.stats.hung_up);
                    log::debug!("{peer}: {method} {path}: the client hung up; abandoned");
                    return;
                }
            }
        } else {
            handler(request).await
        };
        slot.busy();
        log::debug!("{peer}: {method} {path} -> {}", response.status);
        let streams = watch && matches!(response.body, Body::Stream(_));

        // A body handle still alive after the handler returned may read from this
        // connection later: never reuse it then.
        let body_escaped = Rc::strong_count(&conn) > 1;
        let body_done = matches!(conn.borrow().body, BodyProgress::Done);
        // Answered without reading the body it never invited: the client may not send
        // it, so the connection cannot carry another request.
        let continue_unsent = !std::mem::take(&mut conn.borrow_mut().continue_owed).is_empty();
        let mut keep_alive = wants_keep_alive
            && !body_escaped
            && !continue_unsent
            && served < MAX_REQUESTS_PER_CONNECTION;
        if keep_alive && !body_done {
            slot.closing(Instant::now());
            keep_alive = drain_body(&conn).await;
            slot.busy();
        }
        let written = if streams {
            let writing =
                async { Some(write_response(&conn, response, reply, keep_alive, options).await) };
            match futures_lite::future::or(writing, async {
                until_hangup(&conn).await;
                None
            })
            .await
            {
                Some(written) => written,
                None => {
                    ListenerStats::bump(&options.stats.hung_up);
                    log::debug!("{peer}: {method} {path}: the client hung up; stream ended");
                    return;
                }
            }
        } else {
            write_response(&conn, response, reply, keep_alive, options).await
        };
        match written {
            Ok(true) if keep_alive => {}
            Ok(_) => {
                let unread = !matches!(conn.borrow().body, BodyProgress::Done)
                    || !conn.borrow().buffered().is_empty();
                if unread {
                    slot.closing(Instant::now());
                    close_lingering(&conn, options).await;
                } else {
                    let mut writer = ConnWriter(Rc::clone(&conn));
                    within(options.write_timeout_ms, writer.close()).await;
                }
                return;
            }
            Err(err) => {
                log::debug!("{peer}: response not written: {err}");
                return;
            }
        }
    }
    let mut writer = ConnWriter(Rc::clone(&conn));
    within(options.write_timeout_ms, writer.close()).await;
}

/// Sends `response` with `Connection: close`, then closes lingering.
pub(super) async fn answer_and_close(
    conn: &Rc<RefCell<ConnIo>>,
    response: Response,
    options: &ServeOptions,
) {
    let reply = Reply {
        head_method: false,
        http10: false,
    };
    if write_response(conn, response, reply, false, options)
        .await
        .is_ok()
    {
        close_lingering(conn, options).await;
    }
}
