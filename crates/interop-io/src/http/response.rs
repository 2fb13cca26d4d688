//! Responses: the body kinds, the JSON error shape, and the response head encoder, which
//! owns the framing headers. Sans-I/O.

use super::*;

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

pub(super) fn is_token(name: &str) -> bool {
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
