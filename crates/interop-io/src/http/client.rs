//! The one HTTP/1.1 client: the daemon's webhooks and media downloads and the hub's media
//! proxy all make their requests through it. It writes one request on a stream the caller
//! opened (plain TCP or pinned TLS), reads the response head within a bound, and streams
//! the body in the caller's buffer, never more than it declared. Every request asks for
//! `Connection: close`; the caller drops the stream after one exchange.

use std::io;

use futures_lite::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Most header lines a response head may have.
pub const MAX_CLIENT_RESPONSE_HEADERS: usize = 64;
/// Bytes read from the stream at a time while the head is incomplete.
const HEAD_READ_BYTES: usize = 1024;

/// One request: method, target (path and query), `Host` value, extra header lines, body.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub host: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// What a response head says that the callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The one `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// Whether a `Transfer-Encoding` was given; its body is not readable with this client.
    pub chunked: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ClientError {
    /// Writing or reading the stream failed.
    Io(io::Error),
    /// The server closed before the head ended.
    ClosedBeforeHead,
    /// The head is longer than the caller's bound.
    HeadTooLong { max_bytes: usize },
    /// The head is not HTTP/1.1 (or has more than [`MAX_CLIENT_RESPONSE_HEADERS`] lines).
    MalformedHead,
    /// `Content-Length` is not a number, or is given twice.
    BadContentLength,
    /// The body was to be read, but it is chunked.
    ChunkedBody,
    /// The body is longer than the caller's bound.
    BodyTooLarge { len: u64, max_bytes: u64 },
    /// The server closed before the declared body ended.
    Truncated { expected: u64, got: u64 },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::ClosedBeforeHead => f.write_str("closed before the response head ended"),
            ClientError::HeadTooLong { max_bytes } => {
                write!(f, "response head over {max_bytes} bytes")
            }
            ClientError::MalformedHead => f.write_str("malformed response head"),
            ClientError::BadContentLength => f.write_str("bad or repeated Content-Length"),
            ClientError::ChunkedBody => f.write_str("chunked body"),
            ClientError::BodyTooLarge { len, max_bytes } => {
                write!(f, "body of {len} bytes, over {max_bytes}")
            }
            ClientError::Truncated { expected, got } => {
                write!(f, "body ended after {got} of {expected} bytes")
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// Parses a complete response head at the start of `buf`: `Ok(None)` while incomplete,
/// else the head and its length in bytes.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_CLIENT_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ClientError::MalformedHead),
    };
    let status = resp.code.ok_or(ClientError::MalformedHead)?;
    let mut content_length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(ClientError::BadContentLength)?;
            if content_length.replace(len).is_some() {
                return Err(ClientError::BadContentLength);
            }
        }
    }
    Ok(Some((
        ResponseHead {
            status,
            content_length,
            chunked,
        },
        n,
    )))
}

/// The response to one request: its head, then its body on demand.
pub struct ClientResponse<'s, S> {
    pub head: ResponseHead,
    stream: &'s mut S,
    /// Body bytes that came with the head and are not yet handed out.
    leftover: Vec<u8>,
    /// Body bytes handed out so far.
    got: u64,
}

/// Writes `req` on `stream` and reads the response head, at most `max_head_bytes` of it.
pub async fn request<'s, S>(
    stream: &'s mut S,
    req: &ClientRequest<'_>,
    max_head_bytes: usize,
) -> Result<ClientResponse<'s, S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.target, req.host
    );
    for (name, value) in req.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !req.body.is_empty() || req.method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    if !req.body.is_empty() {
        stream.write_all(req.body).await?;
    }
    stream.flush().await?;

    let mut buf = Vec::with_capacity(HEAD_READ_BYTES);
    let mut chunk = [0u8; HEAD_READ_BYTES];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::ClosedBeforeHead);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some((head, len)) = parse_response_head(&buf)? {
            let leftover = buf.split_off(len.min(buf.len()));
            return Ok(ClientResponse {
                head,
                stream,
                leftover,
                got: 0,
            });
        }
        if buf.len() > max_head_bytes {
            return Err(ClientError::HeadTooLong {
                max_bytes: max_head_bytes,
            });
        }
    }
}

impl<S: AsyncRead + Unpin> ClientResponse<'_, S> {
    /// The next piece of the body into `buf`: its length, or 0 at the end. The body ends at
    /// its `Content-Length` (bytes after it are ignored), or without one when the server
    /// closes. A body over `max_bytes`, declared or read, is an error before it is handed out.
    pub async fn read_body(
        &mut self,
        buf: &mut [u8],
        max_bytes: u64,
    ) -> Result<usize, ClientError> {
        if self.head.chunked {
            return Err(ClientError::ChunkedBody);
        }
        if let Some(len) = self.head.content_length
            && len > max_bytes
        {
            return Err(ClientError::BodyTooLarge { len, max_bytes });
        }
        let room = match self.head.content_length {
            Some(len) => len - self.got,
            None => u64::MAX,
        };
        if room == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = if self.leftover.is_empty() {
            let n = self
                .stream
                .read(buf.get_mut(..want).unwrap_or_default())
                .await?;
            if n == 0 {
                if let Some(expected) = self.head.content_length {
                    return Err(ClientError::Truncated {
                        expected,
                        got: self.got,
                    });
                }
                return Ok(0);
            }
            n
        } else {
            let n = want.min(self.leftover.len());
            buf.get_mut(..n)
                .unwrap_or_default()
                .copy_from_slice(self.leftover.get(..n).unwrap_or_default());
            self.leftover.drain(..n);
            n
        };
        self.got += n as u64;
        if self.head.content_length.is_none() && self.got > max_bytes {
            return Err(ClientError::BodyTooLarge {
                len: self.got,
                max_bytes,
            });
        }
        Ok(n)
    }

    /// The whole body, at most `max_bytes` of it.
    pub async fn read_to_end(mut self, max_bytes: u64) -> Result<Vec<u8>, ClientError> {
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = self.read_body(&mut chunk, max_bytes).await?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A stream that answers with `input`, `step` bytes per read at most, and keeps what is
    /// written to it.
    struct Scripted {
        input: Vec<u8>,
        at: usize,
        step: usize,
        written: Vec<u8>,
    }

    impl Scripted {
        fn new(input: &[u8], step: usize) -> Self {
            Scripted {
                input: input.to_vec(),
                at: 0,
                step: step.max(1),
                written: Vec::new(),
            }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.step.min(buf.len()).min(self.input.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.input[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const GET: ClientRequest<'static> = ClientRequest {
        method: "GET",
        target: "/m/abc",
        host: "media.example:8443",
        headers: &[("Accept", "application/octet-stream")],
        body: b"",
    };

    fn fetch(input: &[u8], step: usize, max: u64) -> Result<(u16, Vec<u8>), ClientError> {
        smol::block_on(async {
            let mut s = Scripted::new(input, step);
            let resp = request(&mut s, &GET, 1024).await?;
            let status = resp.head.status;
            Ok((status, resp.read_to_end(max).await?))
        })
    }

    #[test]
    fn the_request_is_one_head_with_host_headers_and_close() {
        let mut s = Scripted::new(b"HTTP/1.1 204 No Content\r\n\r\n", 64);
        let post = ClientRequest {
            method: "POST",
            target: "/hook",
            host: "127.0.0.1:9",
            headers: &[("Content-Type", "application/json")],
            body: b"{}",
        };
        let head = smol::block_on(request(&mut s, &post, 1024)).unwrap().head;
        assert_eq!(head.status, 204);
        assert_eq!(
            s.written,
            b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn a_body_ends_at_its_length_whatever_the_read_sizes() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        for step in [1, 2, 7, 40, 4096] {
            assert_eq!(
                fetch(input, step, 5).unwrap(),
                (200, b"hello".to_vec()),
                "{step}"
            );
        }
    }

    #[test]
    fn without_a_length_the_body_ends_at_close_within_the_bound() {
        let input = b"HTTP/1.1 200 OK\r\n\r\n0123456789";
        assert_eq!(fetch(input, 3, 10).unwrap().1, b"0123456789");
        assert!(matches!(
            fetch(input, 3, 9),
            Err(ClientError::BodyTooLarge {
                len: 10,
                max_bytes: 9
            })
        ));
    }

    #[test]
    fn a_declared_length_over_the_bound_is_refused_before_any_byte() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n0123456789a";
        assert!(matches!(
            fetch(input, 64, 10),
            Err(ClientError::BodyTooLarge {
                len: 11,
                max_bytes: 10
            })
        ));
    }

    #[test]
    fn a_short_body_is_truncated_and_a_missing_head_says_so() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert!(matches!(
            fetch(input, 64, 100),
            Err(ClientError::Truncated {
                expected: 9,
                got: 3
            })
        ));
        assert!(matches!(
            fetch(b"HTTP/1.1 200 OK\r\nContent", 5, 100),
            Err(ClientError::ClosedBeforeHead)
        ));
    }

    #[test]
    fn a_head_over_its_bound_is_refused() {
        let mut input = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        input.resize(5000, b'a');
        assert!(matches!(
            fetch(&input, 512, 100),
            Err(ClientError::HeadTooLong { max_bytes: 1024 })
        ));
    }

    #[test]
    fn lengths_must_be_one_number_and_chunked_bodies_are_not_read() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
        ] {
            assert!(matches!(
                fetch(bad, 64, 100),
                Err(ClientError::BadContentLength)
            ));
        }
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        // The head is still read (a webhook only needs the status)...
        let head = smol::block_on(async {
            let mut s = Scripted::new(chunked, 64);
            request(&mut s, &GET, 1024).await.map(|r| r.head)
        })
        .unwrap();
        assert!(head.chunked);
        // ...but the body is not.
        assert!(matches!(
            fetch(chunked, 64, 100),
            Err(ClientError::ChunkedBody)
        ));
        assert!(matches!(
            fetch(b"HTTP/9 OK\r\n\r\n", 64, 100),
            Err(ClientError::MalformedHead)
        ));
    }

    proptest::proptest! {
        #[test]
        fn the_head_parser_never_panics_and_agrees_with_itself_on_every_prefix(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)
        ) {
            let whole = parse_response_head(&bytes);
            if let Ok(Some((head, n))) = &whole {
                // A complete head parses the same with anything after it.
                let mut more = bytes[..*n].to_vec();
                more.extend_from_slice(b"trailing");
                let again = parse_response_head(&more).unwrap().unwrap();
                proptest::prop_assert_eq!(again, (*head, *n));
            }
        }

        #[test]
        fn any_split_of_a_response_reads_the_same_body(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            step in 1usize..50,
        ) {
            let mut input = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
            input.extend_from_slice(&body);
            let (status, got) = fetch(&input, step, 200).unwrap();
            proptest::prop_assert_eq!(status, 200);
            proptest::prop_assert_eq!(got, body);
        }
    }
}
