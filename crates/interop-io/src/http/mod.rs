//! A small HTTP/1.1 server, and the one HTTP/1.1 client (`client.rs`: webhooks, media
//! downloads, the hub's proxy): the sans-I/O request-head parser, chunked-body decoder and
//! response encoder, and the thin smol shell that runs them on accepted connections.
//!
//! This module owns HTTP framing only: request heads, request bodies (Content-Length or
//! chunked), keep-alive, `Expect: 100-continue`, response framing, the JSON error shape and
//! the per-connection time limits. It does not own routes, authentication, `Host` policy or
//! which address is listened on; those belong to the caller's handler and listener. The
//! parsing half ([`parse_head`], [`ChunkedDecoder`], [`encode_response_head`],
//! [`percent_decode`]) does no I/O, reads no clock and draws no randomness. Files: this one
//! parses request heads; `chunked.rs` decodes chunked bodies; `response.rs` encodes
//! responses; `body.rs` is a request body as a stream; `slots.rs` who holds the
//! connection slots; `accept.rs` is the one accept loop, spawning on the caller's executor;
//! `server.rs` is the per-connection loop; `client.rs` makes one request on a stream the
//! caller opened and streams the answer's body.
//!
//! One connection, as [`serve_connection`] runs it:
//!
//! ```text
//!  ExpectHead ──head parsed──▶ CallHandler ──Response──▶ WriteResponse ──keep-alive──▶ ExpectHead
//!      │ bad head: 4xx/5xx JSON, close    │ body unread: drain ≤ MAX_DRAIN_BYTES,      │ close
//!      │ idle or EOF: close silently      │ else close after the response              ▼
//!      ▼                                  ▼                                          Closed
//!   Closed                              (the handler reads the body as it likes)
//! ```
//!
//! Decisions:
//! - Strict framing, because a lenient one is how request smuggling starts: both
//!   `Content-Length` and `Transfer-Encoding`, repeated framing headers, a non-digit length,
//!   or a transfer coding other than exactly `chunked` are refused; chunked bodies need CRLF
//!   line ends. HTTP/1.1 requests must carry exactly one `Host`. The request target must be
//!   in origin form (`/path?query`).
//! - A request body reaches the handler as a stream ([`RequestBody`]); the handler buffers
//!   it with [`RequestBody::read_to_vec`] or [`RequestBody::read_json`] under its own cap,
//!   or streams it (media uploads). A declared `Content-Length` above
//!   [`ServeOptions::max_body_bytes`] is answered 413 before the handler runs.
//! - `Expect: 100-continue` is answered `100 Continue` when the handler first reads the
//!   body, so a handler that refuses the request first (no token) never invites the body;
//!   such a connection then closes after the response.
//! - The server owns the framing headers: `Content-Length`, `Transfer-Encoding` and
//!   `Connection` set by a handler are dropped. A handler header holding CR, LF or another
//!   control byte turns the response into a 500: a bug must not become header injection.
//! - Time limits (defaults in [`ServeOptions`]): a connection's whole first head within the
//!   head limit of the accept; later heads complete within the head limit of their first
//!   byte, which must come within the keep-alive idle limit; a body must make progress within
//!   its read limit and keep a minimum average rate; every response write must make progress
//!   within its limit. A handler itself has no limit (long-poll holds a request open), but a
//!   `GET` whose client hangs up is abandoned at once.
//! - Connection slots (`slots.rs`): caps in all, for connections still waiting for a head,
//!   and per peer (a uid on loopback); an idle connection gives up its slot to a newcomer
//!   before a newcomer is refused.
//! - Errors are JSON: `{"error": {"code": "snake_case", "message": "sentence"}}`.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use smol::Timer;

/// Largest request head (request line and headers, with the blank line), in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request head.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line of a chunked body (size and extensions, CRLF excluded), in bytes.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Largest trailer section of a chunked body, in bytes. Trailers are read and dropped.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Default cap on a request body, in bytes ([`ServeOptions::max_body_bytes`]).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Default number of connections served at once; more are answered 503 and closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default time for a request head to arrive once its first byte has, in milliseconds.
pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 10_000;
/// Default time a kept-alive connection may sit idle between requests, in milliseconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default time a body read may go without progress, in milliseconds.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default minimum average rate of a request body, in bytes per second after
/// [`DEFAULT_BODY_RATE_GRACE_MS`]: a body that falls behind it is refused with 408, so a
/// trickle of one byte per read timeout cannot hold a connection for ever.
pub const DEFAULT_MIN_BODY_BYTES_PER_SEC: u64 = MIN_INPUT_BYTES_PER_SEC;
/// Default time a request body may take before [`DEFAULT_MIN_BODY_BYTES_PER_SEC`] applies, in
/// milliseconds.
pub const DEFAULT_BODY_RATE_GRACE_MS: u64 = 5_000;
/// Default time a response write may go without progress, in milliseconds.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Most requests served on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Most unread body bytes the server discards itself to keep a connection alive.
pub const MAX_DRAIN_BYTES: u64 = 64 * 1024;
/// Longest the server discards an unread body to keep a connection alive, in milliseconds;
/// then it answers and closes instead.
pub const MAX_DRAIN_MS: u64 = 2_000;
/// How long a closing connection keeps discarding input, so the peer reads our response
/// before a reset, in milliseconds.
pub const LINGER_TIMEOUT_MS: u64 = 2_000;
/// Most input bytes discarded while lingering before a close.
pub const MAX_LINGER_BYTES: u64 = 256 * 1024;
/// Size of one socket read, in bytes.
pub const READ_CHUNK_BYTES: usize = 8 * 1024;
/// Bodies up to this size are written in one piece with their head, in bytes.
const COALESCE_BODY_BYTES: usize = 16 * 1024;
/// Time allowed to write a 503 to a connection over the limit, in milliseconds.
const OVERLOAD_WRITE_TIMEOUT_MS: u64 = 1_000;
/// Pause after a failed `accept` (for example, out of file descriptors), in milliseconds.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// Why a request could not be read. Every variant is caused by the peer (or its network);
/// the shell answers with [`HttpError::to_response`] where a response can still be sent,
/// then closes the connection.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is longer than [`MAX_HEAD_BYTES`]. 431.
    HeadTooLarge,
    /// The head has more than [`MAX_HEADERS`] fields. 431.
    TooManyHeaders,
    /// The head is not HTTP/1.x syntax. 400.
    MalformedHead {
        /// What was wrong.
        what: &'static str,
    },
    /// The HTTP version is not 1.0 or 1.1. 505.
    UnsupportedVersion,
    /// The request target is not in origin form (`/path?query`). 400.
    BadTarget,
    /// `Host` is missing from an HTTP/1.1 request, or repeated. 400.
    BadHost,
    /// The body framing headers are contradictory or malformed. 400.
    BadFraming {
        /// What was wrong.
        what: &'static str,
    },
    /// A transfer coding other than `chunked`. 501.
    UnsupportedTransferEncoding,
    /// An `Expect` other than `100-continue`. 417.
    UnsupportedExpectation,
    /// The body is longer than the cap that applies. 413.
    BodyTooLarge {
        /// The cap, in bytes.
        limit_bytes: u64,
    },
    /// The chunked body is malformed. 400.
    MalformedChunk {
        /// What was wrong.
        what: &'static str,
    },
    /// The body is not the JSON the route expects. 400.
    BadJson {
        /// What the JSON parser said.
        detail: String,
    },
    /// The peer stalled past a time limit. 408.
    Timeout {
        /// `"head"` or `"body"`.
        phase: &'static str,
    },
    /// The peer closed the connection mid-request. No response is possible.
    ConnectionClosed,
    /// The socket failed mid-request. No response is possible.
    Io {
        /// What the operating system said.
        kind: io::ErrorKind,
    },
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UnsupportedVersion => 505,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::UnsupportedExpectation => 417,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::Timeout { .. } => 408,
            HttpError::MalformedHead { .. }
            | HttpError::BadTarget
            | HttpError::BadHost
            | HttpError::BadFraming { .. }
            | HttpError::MalformedChunk { .. }
            | HttpError::BadJson { .. }
            | HttpError::ConnectionClosed
            | HttpError::Io { .. } => 400,
        }
    }

    /// The `snake_case` code in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "header_too_large",
            HttpError::TooManyHeaders => "too_many_headers",
            HttpError::MalformedHead { .. } => "bad_request",
            HttpError::UnsupportedVersion => "http_version_not_supported",
            HttpError::BadTarget => "bad_target",
            HttpError::BadHost => "bad_host",
            HttpError::BadFraming { .. } => "bad_framing",
            HttpError::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            HttpError::UnsupportedExpectation => "expectation_failed",
            HttpError::BodyTooLarge { .. } => "body_too_large",
            HttpError::MalformedChunk { .. } => "bad_chunked_body",
            HttpError::BadJson { .. } => "bad_json",
            HttpError::Timeout { .. } => "request_timeout",
            HttpError::ConnectionClosed => "connection_closed",
            HttpError::Io { .. } => "io_error",
        }
    }

    /// The JSON error response for this error.
    pub fn to_response(&self) -> Response {
        Response::json_error(self.status(), self.code(), &self.to_string())
    }

    /// Whether a response can still reach the peer.
    fn answerable(&self) -> bool {
        !matches!(self, HttpError::ConnectionClosed | HttpError::Io { .. })
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge => {
                write!(f, "request head is larger than {MAX_HEAD_BYTES} bytes")
            }
            HttpError::TooManyHeaders => {
                write!(f, "request has more than {MAX_HEADERS} header fields")
            }
            HttpError::MalformedHead { what } => write!(f, "malformed request head: {what}"),
            HttpError::UnsupportedVersion => write!(f, "only HTTP/1.0 and HTTP/1.1 are served"),
            HttpError::BadTarget => write!(f, "request target must start with '/'"),
            HttpError::BadHost => write!(f, "an HTTP/1.1 request needs exactly one Host header"),
            HttpError::BadFraming { what } => write!(f, "bad body framing: {what}"),
            HttpError::UnsupportedTransferEncoding => {
                write!(f, "only the chunked transfer coding is supported")
            }
            HttpError::UnsupportedExpectation => {
                write!(f, "only Expect: 100-continue is supported")
            }
            HttpError::BodyTooLarge { limit_bytes } => {
                write!(f, "request body is larger than {limit_bytes} bytes")
            }
            HttpError::MalformedChunk { what } => write!(f, "malformed chunked body: {what}"),
            HttpError::BadJson { detail } => write!(f, "body is not the expected JSON: {detail}"),
            HttpError::Timeout { phase } => write!(f, "request {phase} took too long"),
            HttpError::ConnectionClosed => write!(f, "connection closed mid-request"),
            HttpError::Io { kind } => write!(f, "socket error mid-request: {kind}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Why a response could not be encoded. Always a bug in the handler; the shell logs it
/// and sends a 500 instead.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// A header name is not a token, or its value holds a control byte.
    InvalidHeader {
        /// The offending header name (possibly itself the problem).
        name: String,
    },
    /// The status is outside 200..=999 (1xx are the server's to send).
    InvalidStatus {
        /// The refused status.
        status: u16,
    },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::InvalidHeader { name } => {
                write!(f, "response header {name:?} is not valid")
            }
            ResponseError::InvalidStatus { status } => {
                write!(f, "response status {status} is not allowed")
            }
        }
    }
}

impl std::error::Error for ResponseError {}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One header field as received. Names keep their case; compare them case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name.
    pub name: String,
    /// The raw field value (not necessarily UTF-8).
    pub value: Vec<u8>,
}

/// A parsed request head, owning its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The raw request target, `path[?query]`.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Every header field, in order.
    pub headers: Vec<Header>,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The raw path (no percent-decoding), without the query.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => &self.target,
        }
    }

    /// The raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The path segments between slashes, raw: `/users/%2B1/send` gives `users`, `%2B1`,
    /// `send`. Decode one with [`percent_decode`].
    pub fn path_segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// The first value of header `name` (case-insensitive), if it is valid UTF-8; trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .map(str::trim)
    }

    /// The first query parameter called `name`, form-decoded (`+` is a space). A pair whose
    /// name or value does not decode is skipped.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true)? == name)
                .then(|| percent_decode(value, true))
                .flatten()
        })
    }

    /// Every raw value of header `name` (case-insensitive), in order: for a header that must
    /// appear at most once, or whose bytes must be checked rather than skipped.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// How many query pairs are called `name` (undecodable names do not count).
    pub fn query_param_count(&self, name: &str) -> usize {
        self.query().map_or(0, |q| {
            q.split('&')
                .filter(|pair| {
                    let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    percent_decode(key, true).is_some_and(|k| k == name)
                })
                .count()
        })
    }

    /// The media type of `Content-Type`, lowercased, without parameters.
    pub fn content_type(&self) -> Option<String> {
        let value = self.header("content-type")?;
        let media = value.split(';').next().unwrap_or(value).trim();
        Some(media.to_ascii_lowercase())
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)` means more bytes are needed;
/// `Ok(Some((head, n)))` means the head used the first `n` bytes and the body (or the next
/// request) starts at `buf[n..]`. Refuses heads over [`MAX_HEAD_BYTES`] without waiting
/// for their end.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let window = buf.get(..MAX_HEAD_BYTES).unwrap_or(buf);
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let used = match request.parse(window) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::UnsupportedVersion),
        Err(err) => {
            return Err(HttpError::MalformedHead {
                what: match err {
                    httparse::Error::HeaderName => "invalid header name",
                    httparse::Error::HeaderValue => "invalid header value",
                    httparse::Error::NewLine => "invalid line end",
                    _ => "invalid request line",
                },
            });
        }
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::MalformedHead {
            what: "incomplete request line",
        });
    };
    if !target.starts_with('/') {
        return Err(HttpError::BadTarget);
    }
    let headers: Vec<Header> = request
        .headers
        .iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value.to_vec(),
        })
        .collect();
    let head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        body: body_framing(&headers, minor_version)?,
        keep_alive: keep_alive(&headers, minor_version),
        expect_continue: expect_continue(&headers)?,
        headers,
    };
    if minor_version == 1 && count(&head.headers, "host") != 1 {
        return Err(HttpError::BadHost);
    }
    Ok(Some((head, used)))
}

fn count(headers: &[Header], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

fn values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

fn body_framing(headers: &[Header], minor_version: u8) -> Result<BodyFraming, HttpError> {
    let lengths = count(headers, "content-length");
    let codings = count(headers, "transfer-encoding");
    match (lengths, codings) {
        (0, 0) => Ok(BodyFraming::None),
        (1, 0) => {
            let value = values(headers, "content-length").next().unwrap_or(b"");
            parse_content_length(value).map(BodyFraming::Length)
        }
        (0, 1) if minor_version == 0 => Err(HttpError::BadFraming {
            what: "Transfer-Encoding in an HTTP/1.0 request",
        }),
        (0, 1) => {
            let value = values(headers, "transfer-encoding").next().unwrap_or(b"");
            if value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Ok(BodyFraming::Chunked)
            } else {
                Err(HttpError::UnsupportedTransferEncoding)
            }
        }
        (0, _) => Err(HttpError::BadFraming {
            what: "repeated Transfer-Encoding",
        }),
        (_, 0) => Err(HttpError::BadFraming {
            what: "repeated Content-Length",
        }),
        _ => Err(HttpError::BadFraming {
            what: "both Content-Length and Transfer-Encoding",
        }),
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let digits = value.trim_ascii();
    let bad = HttpError::BadFraming {
        what: "Content-Length is not a decimal number",
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    digits.iter().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u64::from(digit - b'0')))
            .ok_or(HttpError::BadFraming {
                what: "Content-Length is not a decimal number",
            })
    })
}

fn connection_has(headers: &[Header], token: &[u8]) -> bool {
    values(headers, "connection").any(|value| {
        value
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

fn keep_alive(headers: &[Header], minor_version: u8) -> bool {
    if minor_version == 0 {
        connection_has(headers, b"keep-alive")
    } else {
        !connection_has(headers, b"close")
    }
}

fn expect_continue(headers: &[Header]) -> Result<bool, HttpError> {
    let mut expect = false;
    for value in values(headers, "expect") {
        if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            expect = true;
        } else {
            return Err(HttpError::UnsupportedExpectation);
        }
    }
    Ok(expect)
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_as_space`, for query strings).
/// `None` if an escape is malformed or the result is not UTF-8.
pub fn percent_decode(input: &str, plus_as_space: bool) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

mod accept;
mod body;
mod chunked;
mod client;
mod response;
mod server;
mod slots;

pub use accept::*;
pub use body::*;
pub use chunked::*;
pub use client::*;
pub use response::*;
pub use server::*;
pub use slots::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head_of(text: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_head(text.as_bytes())
    }

    fn parsed(text: &str) -> RequestHead {
        head_of(text).unwrap().unwrap().0
    }

    #[test]
    fn a_simple_get_parses_with_path_query_and_keep_alive() {
        let text = "GET /v1/inbox?after=3&limit=10 HTTP/1.1\r\nHost: localhost\r\n\r\nNEXT";
        let (head, used) = head_of(text).unwrap().unwrap();
        assert_eq!(&text[used..], "NEXT");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/v1/inbox");
        assert_eq!(head.query(), Some("after=3&limit=10"));
        assert_eq!(head.query_param("limit").as_deref(), Some("10"));
        assert_eq!(head.query_param("missing"), None);
        assert_eq!(head.body, BodyFraming::None);
        assert!(head.keep_alive);
        assert_eq!(head.header("HOST"), Some("localhost"));
    }

    #[test]
    fn an_incomplete_head_asks_for_more_bytes() {
        assert_eq!(head_of("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(head_of(""), Ok(None));
    }

    #[test]
    fn a_head_over_the_limit_is_refused_before_it_ends() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
        text.push_str(&"a".repeat(MAX_HEAD_BYTES));
        let err = head_of(&text).unwrap_err();
        assert_eq!(err, HttpError::HeadTooLarge);
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn more_than_max_headers_is_431() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS {
            text.push_str(&format!("X-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        let err = head_of(&text).unwrap_err();
        assert_eq!(err, HttpError::TooManyHeaders);
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn http11_without_host_is_refused_and_http10_without_host_is_fine() {
        assert_eq!(head_of("GET / HTTP/1.1\r\n\r\n"), Err(HttpError::BadHost));
        assert_eq!(
            head_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HttpError::BadHost)
        );
        let head = parsed("GET / HTTP/1.0\r\n\r\n");
        assert!(!head.keep_alive);
        assert!(parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn connection_close_ends_keep_alive() {
        assert!(!parsed("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn only_origin_form_targets_are_served() {
        assert_eq!(
            head_of("GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(HttpError::BadTarget)
        );
        assert_eq!(
            head_of("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(HttpError::BadTarget)
        );
    }

    #[test]
    fn other_http_versions_are_505() {
        let err = head_of("GET / HTTP/2.0\r\nHost: x\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), 505);
    }

    #[test]
    fn content_length_framing_is_strict() {
        let len = |v: &str| {
            head_of(&format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n"
            ))
        };
        assert_eq!(len("42").unwrap().unwrap().0.body, BodyFraming::Length(42));
        for bad in ["", "+4", "-1", "4 2", "0x10", "99999999999999999999", "1,1"] {
            assert!(
                matches!(len(bad), Err(HttpError::BadFraming { .. })),
                "{bad:?} accepted"
            );
        }
        let twice = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert!(matches!(head_of(twice), Err(HttpError::BadFraming { .. })));
    }

    #[test]
    fn both_length_and_chunked_is_refused_as_smuggling() {
        let text =
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(head_of(text), Err(HttpError::BadFraming { .. })));
    }

    #[test]
    fn only_plain_chunked_transfer_coding_is_accepted() {
        let te = |v: &str| {
            head_of(&format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n"
            ))
        };
        assert_eq!(te("Chunked").unwrap().unwrap().0.body, BodyFraming::Chunked);
        assert_eq!(
            te("gzip, chunked"),
            Err(HttpError::UnsupportedTransferEncoding)
        );
        assert_eq!(te("gzip").unwrap_err().status(), 501);
        let http10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(head_of(http10), Err(HttpError::BadFraming { .. })));
    }

    #[test]
    fn expect_100_continue_is_noted_and_other_expectations_are_417() {
        let head = parsed(
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(head.expect_continue);
        let err = head_of("GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), 417);
    }

    #[test]
    fn query_params_are_form_decoded() {
        let head = parsed(
            "POST /v1/messages?to=%2B4915112345678&text=Door+opened&x HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(head.query_param("to").as_deref(), Some("+4915112345678"));
        assert_eq!(head.query_param("text").as_deref(), Some("Door opened"));
        assert_eq!(head.query_param("x").as_deref(), Some(""));
        let head = parsed("GET /users/+1555/send HTTP/1.1\r\nHost: x\r\n\r\n");
        let segments: Vec<&str> = head.path_segments().collect();
        assert_eq!(segments, ["users", "+1555", "send"]);
    }

    #[test]
    fn content_type_drops_parameters_and_case() {
        let head = parsed(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: Application/JSON; charset=utf-8\r\n\r\n",
        );
        assert_eq!(head.content_type().as_deref(), Some("application/json"));
    }

    #[test]
    fn percent_decode_refuses_broken_escapes_and_bad_utf8() {
        assert_eq!(percent_decode("a%20b", false).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }

    fn decode_all(
        decoder: &mut ChunkedDecoder,
        input: &[u8],
    ) -> Result<(Vec<u8>, usize), HttpError> {
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or(&[]);
            let step = decoder.decode(rest, usize::MAX)?;
            out.extend_from_slice(&rest[step.data.clone()]);
            used += step.consumed;
            if step.consumed == 0 || decoder.is_done() {
                return Ok((out, used));
            }
        }
    }

    #[test]
    fn chunked_body_decodes_and_stops_at_its_end() {
        let input = b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nGET /";
        let mut decoder = ChunkedDecoder::new(1024);
        let (out, used) = decode_all(&mut decoder, input).unwrap();
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert!(decoder.is_done());
        assert_eq!(&input[used..], b"GET /");
    }

    #[test]
    fn chunked_body_with_bare_lf_is_refused() {
        let mut decoder = ChunkedDecoder::new(1024);
        let err = decode_all(&mut decoder, b"3\nabc\r\n0\r\n\r\n").unwrap_err();
        assert!(matches!(err, HttpError::MalformedChunk { .. }));
        let mut decoder = ChunkedDecoder::new(1024);
        let err = decode_all(&mut decoder, b"3\r\nabcX\r\n0\r\n\r\n").unwrap_err();
        assert!(matches!(err, HttpError::MalformedChunk { .. }));
    }

    #[test]
    fn chunked_body_over_the_cap_is_413_before_its_data_arrives() {
        let mut decoder = ChunkedDecoder::new(10);
        let err = decode_all(&mut decoder, b"8\r\n12345678\r\n8\r\n").unwrap_err();
        assert_eq!(err, HttpError::BodyTooLarge { limit_bytes: 10 });
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn chunk_sizes_and_lines_are_bounded() {
        let mut decoder = ChunkedDecoder::new(u64::MAX);
        let err = decode_all(&mut decoder, b"11111111111111111\r\n").unwrap_err();
        assert!(matches!(err, HttpError::MalformedChunk { .. }));
        let mut decoder = ChunkedDecoder::new(u64::MAX);
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE_BYTES));
        let err = decode_all(&mut decoder, &line).unwrap_err();
        assert!(matches!(err, HttpError::MalformedChunk { .. }));
    }

    #[test]
    fn response_head_carries_framing_and_drops_handler_framing_headers() {
        let headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Content-Length".to_owned(), "999".to_owned()),
            ("connection".to_owned(), "keep-alive".to_owned()),
        ];
        let head =
            encode_response_head(200, &headers, ResponseFraming::Length(2), true, false).unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
        );
        let head = encode_response_head(200, &[], ResponseFraming::Chunked, false, false).unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_header_injection_is_refused() {
        let headers = vec![("X-Name".to_owned(), "a\r\nSet-Cookie: x".to_owned())];
        let err =
            encode_response_head(200, &headers, ResponseFraming::NoBody, true, false).unwrap_err();
        assert!(matches!(err, ResponseError::InvalidHeader { .. }));
        let headers = vec![("Bad Name".to_owned(), "v".to_owned())];
        assert!(encode_response_head(200, &headers, ResponseFraming::NoBody, true, false).is_err());
        assert!(encode_response_head(101, &[], ResponseFraming::NoBody, true, false).is_err());
    }

    #[test]
    fn json_error_has_the_contract_shape() {
        let response = Response::json_error(404, "not_found", "no such \"route\"");
        assert_eq!(response.status, 404);
        let Body::Bytes(body) = response.body else {
            panic!("bytes body expected");
        };
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["code"], "not_found");
        assert_eq!(value["error"]["message"], "no such \"route\"");
        assert_eq!(value.as_object().unwrap().len(), 1);
    }

    fn chunk_encode(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let size = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .clamp(1, rest.len());
            i += 1;
            let (chunk, tail) = rest.split_at(size);
            out.extend_from_slice(format!("{size:X}\r\n").as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
            rest = tail;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn parse_head_never_panics_and_stays_in_bounds(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
            if let Ok(Some((_, used))) = parse_head(&input) {
                prop_assert!(used <= input.len());
            }
        }

        #[test]
        fn generated_heads_parse_back_and_every_prefix_is_incomplete(
            method in "(GET|POST|PUT|DELETE|HEAD)",
            path in "(/[a-zA-Z0-9._~%+-]{0,12}){1,4}",
            query in proptest::option::of("[a-zA-Z0-9=&%+]{0,20}"),
            extra in proptest::collection::vec(("X-[a-zA-Z0-9-]{1,10}", "[ -~]{0,30}"), 0..8),
            length in proptest::option::of(0u64..1_000_000),
        ) {
            let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let mut text = format!("{method} {target} HTTP/1.1\r\nHost: localhost:8787\r\n");
            for (name, value) in &extra {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            if let Some(len) = length {
                text.push_str(&format!("Content-Length: {len}\r\n"));
            }
            text.push_str("\r\n");
            let (head, used) = parse_head(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(used, text.len());
            prop_assert_eq!(&head.method, &method);
            prop_assert_eq!(head.path(), path.as_str());
            prop_assert_eq!(head.query(), query.as_deref());
            prop_assert_eq!(head.headers.len(), 1 + extra.len() + usize::from(length.is_some()));
            prop_assert_eq!(head.body, length.map_or(BodyFraming::None, BodyFraming::Length));
            for cut in 0..text.len() {
                prop_assert_eq!(parse_head(&text.as_bytes()[..cut]), Ok(None));
            }
        }

        #[test]
        fn chunked_round_trips_at_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            sizes in proptest::collection::vec(1usize..300, 1..8),
            feed in proptest::collection::vec(1usize..64, 1..16),
            max_data in 1usize..100,
        ) {
            let mut wire = chunk_encode(&body, &sizes);
            wire.extend_from_slice(b"NEXT");
            let mut decoder = ChunkedDecoder::new(body.len() as u64);
            let mut out = Vec::new();
            // The shell keeps unconsumed bytes buffered and appends new ones.
            let mut buffered: Vec<u8> = Vec::new();
            let mut fed = 0;
            let mut i = 0;
            while !decoder.is_done() {
                let step = decoder.decode(&buffered, max_data).unwrap();
                out.extend_from_slice(&buffered[step.data.clone()]);
                buffered.drain(..step.consumed);
                if step.consumed == 0 || buffered.is_empty() {
                    if decoder.is_done() { break; }
                    let n = feed[i % feed.len()].min(wire.len() - fed);
                    i += 1;
                    prop_assert!(n > 0, "decoder wants more than the whole body");
                    buffered.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
            prop_assert_eq!(out, body);
            let mut rest = buffered;
            rest.extend_from_slice(&wire[fed..]);
            prop_assert_eq!(rest, b"NEXT".to_vec());
        }

        #[test]
        fn chunked_decoder_never_panics_on_garbage(
            input in proptest::collection::vec(any::<u8>(), 0..1024),
            max_data in 0usize..64,
        ) {
            let mut decoder = ChunkedDecoder::new(4096);
            let mut rest: &[u8] = &input;
            while let Ok(step) = decoder.decode(rest, max_data) {
                prop_assert!(step.consumed <= rest.len());
                prop_assert!(step.data.end <= step.consumed);
                if step.consumed == 0 { break; }
                rest = &rest[step.consumed..];
            }
        }

        #[test]
        fn percent_decode_inverts_percent_encoding(text in ".{0,40}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&encoded, true), Some(text.clone()));
        }
    }
}
