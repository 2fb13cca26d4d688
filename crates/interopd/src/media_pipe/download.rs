//! Downloading a received blob over HTTPS, pinned, bounded in size and time, to a file.

use super::*;

/// Splits `https://host[:port]/path` into host, port and path (`/` when absent).
pub fn split_https_url(url: &str) -> Option<(&str, u16, &str)> {
    if url.len() > MAX_MEDIA_URL_BYTES || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = if authority.ends_with(']') {
        (authority, HTTPS_DEFAULT_PORT)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => {
                (h, p.parse().ok().filter(|p| *p != 0)?)
            }
            Some(_) => return None,
            None => (authority, HTTPS_DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port, path))
}

/// Status and Content-Length of a complete response head in `buf`, and the head's length;
/// `Ok(None)` while incomplete.
pub(super) fn parse_response_head(
    buf: &[u8],
) -> Result<Option<(u16, Option<u64>, usize)>, PipeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                return Err(PipeError::BadResponse {
                    what: "chunked body",
                });
            }
            let mut lengths = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
            let len = match (lengths.next(), lengths.next()) {
                (Some(h), None) => Some(
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or(PipeError::BadResponse {
                            what: "bad Content-Length",
                        })?,
                ),
                (None, _) => None,
                (Some(_), Some(_)) => {
                    return Err(PipeError::BadResponse {
                        what: "repeated Content-Length",
                    });
                }
            };
            Ok(Some((resp.code.unwrap_or(0), len, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(PipeError::BadResponse {
            what: "malformed head",
        }),
    }
}

/// Fetches `url` (`https://host[:port]/path`) over TLS with `tls` (pinned by the caller),
/// authenticating the server as `server_name`, and writes the body to `out` from its current
/// position. Requires status 200 and a Content-Length of at most `max_bytes`; the whole fetch
/// (connect, handshake, request, body) must end within `timeout_ms`. Returns the bytes
/// written. On error `out` holds a partial blob: the caller discards the file.
pub async fn download(
    url: &str,
    tls: Arc<ClientConfig>,
    server_name: &str,
    timeout_ms: u64,
    max_bytes: u64,
    out: &mut File,
) -> Result<u64, PipeError> {
    let work = fetch_to_file(url, tls, server_name, max_bytes, out);
    let timeout = async {
        smol::Timer::after(Duration::from_millis(timeout_ms)).await;
        Err(PipeError::Timeout { timeout_ms })
    };
    work.or(timeout).await
}

pub(super) async fn fetch_to_file(
    url: &str,
    tls: Arc<ClientConfig>,
    server_name: &str,
    max_bytes: u64,
    out: &mut File,
) -> Result<u64, PipeError> {
    let (host, port, path) = split_https_url(url).ok_or(PipeError::BadUrl)?;
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if connect_host.contains(':') {
        format!("[{connect_host}]:{port}")
    } else {
        format!("{connect_host}:{port}")
    };
    let mut stream =
        tls::connect(&addr, server_name, tls)
            .await
            .map_err(|e| PipeError::Connect {
                detail: e.to_string(),
            })?;
    let net = |e: io::Error| PipeError::Connect {
        detail: e.to_string(),
    };
    let host_header = if port == HTTPS_DEFAULT_PORT {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(net)?;
    stream.flush().await.map_err(net)?;

    let mut buf = vec![0u8; MEDIA_CHUNK_BYTES];
    let mut head = Vec::new();
    let (status, len, head_len) = loop {
        let n = stream.read(&mut buf).await.map_err(net)?;
        if n == 0 {
            return Err(PipeError::BadResponse {
                what: "closed before the head ended",
            });
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(parsed) = parse_response_head(&head)? {
            break parsed;
        }
        if head.len() > MAX_RESPONSE_HEAD_BYTES {
            return Err(PipeError::BadResponse {
                what: "head too long",
            });
        }
    };
    if status != 200 {
        return Err(PipeError::Status { status });
    }
    let Some(expected) = len else {
        return Err(PipeError::BadResponse {
            what: "no Content-Length",
        });
    };
    if expected > max_bytes {
        return Err(PipeError::BlobTooLarge {
            len: expected,
            max_bytes,
        });
    }
    let mut got: u64 = 0;
    let mut write_body = |bytes: &[u8], got: &mut u64| -> Result<(), PipeError> {
        let room = usize::try_from(expected - *got).unwrap_or(usize::MAX);
        let take = bytes.get(..room.min(bytes.len())).unwrap_or_default();
        out.write_all(take).map_err(file_error("write"))?;
        *got += take.len() as u64;
        Ok(())
    };
    write_body(head.get(head_len..).unwrap_or_default(), &mut got)?;
    drop(head);
    while got < expected {
        let n = stream.read(&mut buf).await.map_err(net)?;
        if n == 0 {
            return Err(PipeError::Truncated { expected, got });
        }
        write_body(buf.get(..n).unwrap_or_default(), &mut got)?;
    }
    Ok(got)
}
