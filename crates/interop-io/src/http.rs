//! A small HTTP/1.1 server: the sans-I/O request-head parser, chunked-body decoder and
//! response encoder, and the thin smol shell that runs them on accepted connections.
//!
//! This file owns HTTP framing only: request heads, request bodies (Content-Length or
//! chunked), keep-alive, `Expect: 100-continue`, response framing, the JSON error shape and
//! the per-connection time limits. It does not own routes, authentication, `Host` policy or
//! which address is listened on; those belong to the caller's handler and listener. The
//! parsing half ([`parse_head`], [`ChunkedDecoder`], [`encode_response_head`],
//! [`percent_decode`]) does no I/O, reads no clock and draws no randomness.
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
//! - `Expect: 100-continue` is answered `100 Continue` as soon as the head passes these
//!   checks, before the handler runs.
//! - The server owns the framing headers: `Content-Length`, `Transfer-Encoding` and
//!   `Connection` set by a handler are dropped. A handler header holding CR, LF or another
//!   control byte turns the response into a 500: a bug must not become header injection.
//! - Time limits (defaults in [`ServeOptions`]): a connection's first byte within the head
//!   limit; each head complete within the head limit of its first byte; keep-alive idle
//!   limit between requests; the body read and every response write must make progress
//!   within their limits. A handler itself has no limit (long-poll holds a request open).
//! - Errors are JSON: `{"error": {"code": "snake_case", "message": "sentence"}}`.

use std::cell::{Cell, RefCell};
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
/// Default time a response write may go without progress, in milliseconds.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Most requests served on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Most unread body bytes the server discards itself to keep a connection alive.
pub const MAX_DRAIN_BYTES: u64 = 64 * 1024;
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

/// What one [`ChunkedDecoder::decode`] call did: it used `input[..consumed]`, and
/// `input[data]` (inside that) is body data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used, control and data alike.
    pub consumed: usize,
    /// Where the body data of this step lies in the input (possibly empty).
    pub data: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In the hex digits of a chunk size; `digits` read so far.
    Size { digits: u8 },
    /// After the size, in extensions or whitespace, waiting for CR.
    Extension,
    /// Waiting for the LF that ends a size line.
    SizeLf,
    /// In chunk data.
    Data { remaining: u64 },
    /// Waiting for the CR after chunk data.
    DataCr,
    /// Waiting for the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line, waiting for CR.
    Trailer,
    /// Waiting for the LF that ends a trailer line.
    TrailerLf,
    /// Waiting for the LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// The sans-I/O decoder of a `Transfer-Encoding: chunked` body.
///
/// Strict: line ends are CRLF, sizes are 1–16 hex digits, each size line is at most
/// [`MAX_CHUNK_LINE_BYTES`], the trailer section at most [`MAX_TRAILER_BYTES`] (and
/// dropped), and the data in total at most the cap given to [`ChunkedDecoder::new`]. It
/// stops exactly after the final CRLF, so a pipelined next request is left untouched.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    line_bytes: usize,
    trailer_bytes: usize,
    total_bytes: u64,
    max_body_bytes: u64,
}

impl ChunkedDecoder {
    /// A decoder that refuses more than `max_body_bytes` of data in total.
    pub fn new(max_body_bytes: u64) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            line_bytes: 0,
            trailer_bytes: 0,
            total_bytes: 0,
            max_body_bytes,
        }
    }

    /// Whether the final chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Body data bytes decoded so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Decodes from `input`, returning at most one run of at most `max_data` data bytes.
    /// Uses every control byte it can; when it used all of `input` without finishing, it
    /// needs more. After an error the decoder must be dropped.
    pub fn decode(&mut self, input: &[u8], max_data: usize) -> Result<Decoded, HttpError> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data { remaining } => {
                    let available = input.len() - i;
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(available)
                        .min(max_data);
                    if take == 0 {
                        break;
                    }
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                    return Ok(Decoded {
                        consumed: i + take,
                        data: i..i + take,
                    });
                }
                _ => {
                    self.step(b)?;
                    i += 1;
                }
            }
        }
        Ok(Decoded {
            consumed: i,
            data: i..i,
        })
    }

    /// Advances over one control byte.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        let malformed = |what| Err(HttpError::MalformedChunk { what });
        match self.state {
            ChunkState::Size { digits } => match hex_value(b) {
                Some(value) => {
                    if digits == 16 {
                        return malformed("chunk size has more than 16 hex digits");
                    }
                    self.size = (self.size << 4) | u64::from(value);
                    self.state = ChunkState::Size { digits: digits + 1 };
                    self.line_bytes += 1;
                }
                None if digits == 0 => return malformed("chunk size is not hex"),
                None => return self.after_size(b),
            },
            ChunkState::Extension => self.after_size(b)?,
            ChunkState::SizeLf => {
                if b != b'\n' {
                    return malformed("chunk size line does not end in CRLF");
                }
                self.line_bytes = 0;
                if self.size == 0 {
                    self.state = ChunkState::TrailerStart;
                } else {
                    if self.size > self.max_body_bytes - self.total_bytes {
                        return Err(HttpError::BodyTooLarge {
                            limit_bytes: self.max_body_bytes,
                        });
                    }
                    self.total_bytes += self.size;
                    self.state = ChunkState::Data {
                        remaining: self.size,
                    };
                    self.size = 0;
                }
            }
            ChunkState::DataCr => {
                if b != b'\r' {
                    return malformed("chunk data does not end in CRLF");
                }
                self.state = ChunkState::DataLf;
            }
            ChunkState::DataLf => {
                if b != b'\n' {
                    return malformed("chunk data does not end in CRLF");
                }
                self.state = ChunkState::Size { digits: 0 };
            }
            ChunkState::TrailerStart | ChunkState::Trailer => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return malformed("trailer section too large");
                }
                self.state = match (self.state, b) {
                    (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                    (_, b'\r') => ChunkState::TrailerLf,
                    (_, b'\n') => return malformed("trailer line does not end in CRLF"),
                    _ => ChunkState::Trailer,
                };
            }
            ChunkState::TrailerLf => {
                if b != b'\n' {
                    return malformed("trailer line does not end in CRLF");
                }
                self.state = ChunkState::TrailerStart;
            }
            ChunkState::EndLf => {
                if b != b'\n' {
                    return malformed("chunked body does not end in CRLF");
                }
                self.state = ChunkState::Done;
            }
            ChunkState::Data { .. } | ChunkState::Done => {}
        }
        Ok(())
    }

    /// One byte after the size digits: extension text, or the CR that ends the line.
    fn after_size(&mut self, b: u8) -> Result<(), HttpError> {
        self.line_bytes += 1;
        if self.line_bytes > MAX_CHUNK_LINE_BYTES {
            return Err(HttpError::MalformedChunk {
                what: "chunk size line too long",
            });
        }
        match b {
            b'\r' => self.state = ChunkState::SizeLf,
            b'\n' | 0 => {
                return Err(HttpError::MalformedChunk {
                    what: "chunk size line does not end in CRLF",
                });
            }
            b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
            _ if self.state == ChunkState::Extension => {}
            _ => {
                return Err(HttpError::MalformedChunk {
                    what: "chunk size is not hex",
                });
            }
        }
        Ok(())
    }
}

/// A response body.
pub enum Body {
    /// No body (`Content-Length: 0`, or nothing at all for 204 and 304).
    Empty,
    /// These bytes, with `Content-Length`.
    Bytes(Vec<u8>),
    /// Exactly `len` bytes from `reader`, with `Content-Length` (files, ranges). A reader
    /// that ends early aborts the connection.
    Reader {
        /// The number of bytes sent.
        len: u64,
        /// Where they come from.
        reader: Pin<Box<dyn AsyncRead>>,
    },
    /// Chunks as they come, with `Transfer-Encoding: chunked`, each flushed at once
    /// (server-sent events). An `Err` item aborts the connection.
    Stream(futures_lite::stream::BoxedLocal<io::Result<Vec<u8>>>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => write!(f, "Empty"),
            Body::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Body::Reader { len, .. } => write!(f, "Reader({len} bytes)"),
            Body::Stream(_) => write!(f, "Stream"),
        }
    }
}

/// A response: status, headers (without framing headers), body.
#[derive(Debug)]
pub struct Response {
    /// The status code, 200..=999.
    pub status: u16,
    /// Header fields. Framing headers (`Content-Length`, `Transfer-Encoding`,
    /// `Connection`) are the server's and are dropped.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A response with no headers and no body.
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// A response carrying `body` as `content_type`.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response::empty(status)
            .with_header("Content-Type", content_type)
            .with_body(Body::Bytes(body))
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, text: &str) -> Self {
        Response::bytes(
            status,
            "text/plain; charset=utf-8",
            text.as_bytes().to_vec(),
        )
    }

    /// An `application/json` response holding `value`.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::bytes(status, "application/json", body),
            Err(err) => {
                log::error!("response JSON could not be encoded: {err}");
                Response::json_error(500, "internal", "the response could not be encoded")
            }
        }
    }

    /// The error shape every API error uses:
    /// `{"error": {"code": CODE, "message": MESSAGE}}`.
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        #[derive(Serialize)]
        struct Detail<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: Detail<'a>,
        }
        let body = ErrorBody {
            error: Detail { code, message },
        };
        // Two string fields always serialize; the fallback is never sent in practice.
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        Response::bytes(status, "application/json", bytes)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body and no length (204, 304).
    NoBody,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the connection closes (HTTP/1.0 streaming).
    UntilClose,
}

/// Encodes a response head: status line, the handler's headers (framing headers dropped),
/// the framing header and `Connection`, then the blank line. `http10_keep_alive` adds
/// `Connection: keep-alive` for an HTTP/1.0 client.
pub fn encode_response_head(
    status: u16,
    headers: &[(String, String)],
    framing: ResponseFraming,
    keep_alive: bool,
    http10_keep_alive: bool,
) -> Result<Vec<u8>, ResponseError> {
    if !(200..=999).contains(&status) {
        return Err(ResponseError::InvalidStatus { status });
    }
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).into_bytes();
    for (name, value) in headers {
        if !is_token(name) || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ResponseError::InvalidHeader { name: name.clone() });
        }
        let reserved = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r));
        if !reserved {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    match framing {
        ResponseFraming::NoBody | ResponseFraming::UntilClose => {}
        ResponseFraming::Length(len) => {
            out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if !keep_alive || framing == ResponseFraming::UntilClose {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10_keep_alive {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The reason phrase sent after `status` (informative only; clients ignore it).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------------------
// The shell: sockets, timers and the per-connection loop.
// ---------------------------------------------------------------------------------------

/// Limits for [`serve`] and [`serve_connection`]; `Default` gives the `DEFAULT_*` bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Largest request body accepted, in bytes. A handler may cap lower.
    pub max_body_bytes: u64,
    /// Connections served at once by [`serve`]; more are answered 503.
    pub max_connections: usize,
    /// See [`DEFAULT_HEAD_TIMEOUT_MS`].
    pub head_timeout_ms: u64,
    /// See [`DEFAULT_IDLE_TIMEOUT_MS`].
    pub idle_timeout_ms: u64,
    /// See [`DEFAULT_BODY_READ_TIMEOUT_MS`].
    pub body_read_timeout_ms: u64,
    /// See [`DEFAULT_WRITE_TIMEOUT_MS`].
    pub write_timeout_ms: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            head_timeout_ms: DEFAULT_HEAD_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
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
}

/// A byte stream and its type, erased so one connection type serves TCP and TLS alike.
trait IoStream: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> IoStream for T {}

/// Where the body of the current request stands.
#[derive(Debug)]
enum BodyProgress {
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
struct ConnIo {
    stream: Pin<Box<dyn IoStream>>,
    buf: Vec<u8>,
    start: usize,
    body: BodyProgress,
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
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, HttpError>> {
        if let BodyProgress::Failed(err) = &self.body {
            return Poll::Ready(Err(err.clone()));
        }
        let polled = self.poll_body_unchecked(cx, out);
        if let Poll::Ready(Err(err)) = &polled {
            self.body = BodyProgress::Failed(err.clone());
        }
        polled
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

/// The body of a request, read from the connection on demand. Implements `AsyncRead`
/// (errors carry an [`HttpError`] inside the `io::Error`). Each read must make progress
/// within [`ServeOptions::body_read_timeout_ms`].
pub struct RequestBody {
    conn: Option<Rc<RefCell<ConnIo>>>,
    declared_len: Option<u64>,
    timeout: Duration,
    timer: Option<Timer>,
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
                if matches!(conn.borrow().body, BodyProgress::Done) {
                    // Let go of the connection: the server may reuse it at once.
                    self.conn = None;
                }
                if let Some(timer) = &mut self.timer {
                    timer.set_after(self.timeout);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => {
                self.conn = None;
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                let timer = self.timer.get_or_insert_with(|| Timer::after(self.timeout));
                if Pin::new(timer).poll(cx).is_ready() {
                    let err = HttpError::Timeout { phase: "body" };
                    conn.borrow_mut().body = BodyProgress::Failed(err.clone());
                    self.conn = None;
                    return Poll::Ready(Err(err));
                }
                Poll::Pending
            }
        }
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

/// The write side of a shared connection, borrowing it only inside each poll.
struct ConnWriter(Rc<RefCell<ConnIo>>);

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
async fn within<T>(limit_ms: u64, work: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        Timer::after(Duration::from_millis(limit_ms)).await;
        None
    })
    .await
}

async fn fill(conn: &Rc<RefCell<ConnIo>>) -> io::Result<usize> {
    futures_lite::future::poll_fn(|cx| conn.borrow_mut().poll_fill(cx)).await
}

/// Writes `bytes` whole, each write and the flush within `limit_ms`.
async fn write_all(writer: &mut ConnWriter, bytes: &[u8], limit_ms: u64) -> io::Result<()> {
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

async fn flush(writer: &mut ConnWriter, limit_ms: u64) -> io::Result<()> {
    within(limit_ms, writer.flush())
        .await
        .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Waits for the next request head. `Ok(None)`: the peer went quiet or closed between
/// requests, and the connection ends without a response.
async fn read_head(
    conn: &Rc<RefCell<ConnIo>>,
    options: &ServeOptions,
    first: bool,
) -> Result<Option<RequestHead>, HttpError> {
    if conn.borrow().buffered().is_empty() {
        let wait_ms = if first {
            options.head_timeout_ms
        } else {
            options.idle_timeout_ms
        };
        match within(wait_ms, fill(conn)).await {
            None | Some(Ok(0)) => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(HttpError::Io { kind: err.kind() }),
        }
    }
    let head = within(options.head_timeout_ms, async {
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

/// Reads and discards what is left of the current body, up to [`MAX_DRAIN_BYTES`]; true
/// if the body ended.
async fn drain_body(conn: &Rc<RefCell<ConnIo>>, options: &ServeOptions) -> bool {
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    let mut drained = 0u64;
    loop {
        let step = within(
            options.body_read_timeout_ms,
            futures_lite::future::poll_fn(|cx| conn.borrow_mut().poll_body(cx, &mut scratch)),
        )
        .await;
        match step {
            Some(Ok(0)) => return matches!(conn.borrow().body, BodyProgress::Done),
            Some(Ok(n)) => {
                drained += n as u64;
                if drained > MAX_DRAIN_BYTES {
                    return false;
                }
            }
            Some(Err(_)) | None => return false,
        }
    }
}

/// Shuts down our sending side, then discards input for a short while so the peer reads
/// our last response before the kernel could answer its unread data with a reset.
async fn close_lingering(conn: &Rc<RefCell<ConnIo>>, options: &ServeOptions) {
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
struct Reply {
    /// The request was `HEAD`: headers only.
    head_method: bool,
    /// The request was HTTP/1.0: no chunked encoding.
    http10: bool,
}

/// Writes `response`. `Ok(false)` if the connection must close afterwards (the body was
/// streamed until close); `Err` if it broke mid-way.
async fn write_response(
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
pub async fn serve_connection<S, H, Fut>(
    stream: S,
    peer: SocketAddr,
    options: &ServeOptions,
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
    }));
    let mut served: u32 = 0;
    loop {
        let head = match read_head(&conn, options, served == 0).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(err) => {
                log::debug!("{peer}: bad request: {err}");
                if err.answerable() {
                    answer_and_close(&conn, err.to_response(), options).await;
                }
                return;
            }
        };
        served += 1;
        let (progress, declared_len) = match head.body {
            BodyFraming::None => (BodyProgress::Done, Some(0)),
            BodyFraming::Length(len) if len > options.max_body_bytes => {
                let err = HttpError::BodyTooLarge {
                    limit_bytes: options.max_body_bytes,
                };
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
            let mut writer = ConnWriter(Rc::clone(&conn));
            let sent = async {
                write_all(
                    &mut writer,
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    options.write_timeout_ms,
                )
                .await?;
                flush(&mut writer, options.write_timeout_ms).await
            };
            if sent.await.is_err() {
                return;
            }
        }
        let request = Request {
            body: RequestBody {
                conn: has_body.then(|| Rc::clone(&conn)),
                declared_len,
                timeout: Duration::from_millis(options.body_read_timeout_ms),
                timer: None,
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
        let response = handler(request).await;
        log::debug!("{peer}: {method} {path} -> {}", response.status);

        // A body handle still alive after the handler returned may read from this
        // connection later: never reuse it then.
        let body_escaped = Rc::strong_count(&conn) > 1;
        let body_done = matches!(conn.borrow().body, BodyProgress::Done);
        let mut keep_alive =
            wants_keep_alive && !body_escaped && served < MAX_REQUESTS_PER_CONNECTION;
        if keep_alive && !body_done {
            keep_alive = drain_body(&conn, options).await;
        }
        match write_response(&conn, response, reply, keep_alive, options).await {
            Ok(true) if keep_alive => {}
            Ok(_) => {
                let unread = !matches!(conn.borrow().body, BodyProgress::Done)
                    || !conn.borrow().buffered().is_empty();
                if unread {
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
async fn answer_and_close(conn: &Rc<RefCell<ConnIo>>, response: Response, options: &ServeOptions) {
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

/// Accepts connections on `listener` forever and serves each with [`serve_connection`] on
/// a task of its own, all on the current thread. At most
/// [`ServeOptions::max_connections`] are served at once; the rest get a 503 and are closed.
/// Stop it by dropping the future: every connection it serves is dropped with it.
pub async fn serve<H, Fut>(listener: smol::net::TcpListener, options: ServeOptions, handler: H)
where
    H: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = Response> + 'static,
{
    let handler = Rc::new(handler);
    let options = Rc::new(options);
    let active = Rc::new(Cell::new(0usize));
    let executor = smol::LocalExecutor::new();
    executor
        .run(async {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        log::warn!("accept failed: {err}");
                        Timer::after(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                        continue;
                    }
                };
                if let Err(err) = stream.set_nodelay(true) {
                    log::debug!("{peer}: TCP_NODELAY refused: {err}");
                }
                if active.get() >= options.max_connections {
                    log::warn!("{peer}: refused, {} connections open", active.get());
                    executor.spawn(refuse_overloaded(stream)).detach();
                    continue;
                }
                let guard = ActiveGuard::enter(&active);
                let handler = Rc::clone(&handler);
                let options = Rc::clone(&options);
                executor
                    .spawn(async move {
                        serve_connection(stream, peer, &options, &*handler).await;
                        drop(guard);
                    })
                    .detach();
            }
        })
        .await
}

/// Counts an open connection while alive (also the media host's accept loop).
pub struct ActiveGuard(Rc<Cell<usize>>);

impl ActiveGuard {
    pub fn enter(active: &Rc<Cell<usize>>) -> Self {
        active.set(active.get() + 1);
        ActiveGuard(Rc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

async fn refuse_overloaded(mut stream: smol::net::TcpStream) {
    let response = Response::json_error(503, "overloaded", "too many connections; retry later");
    let Body::Bytes(body) = response.body else {
        return;
    };
    let framing = ResponseFraming::Length(body.len() as u64);
    let Ok(mut bytes) = encode_response_head(503, &response.headers, framing, false, false) else {
        return;
    };
    bytes.extend_from_slice(&body);
    within(OVERLOAD_WRITE_TIMEOUT_MS, async {
        if stream.write_all(&bytes).await.is_ok() {
            let _ = stream.flush().await;
            let _ = stream.close().await;
        }
    })
    .await;
}

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
