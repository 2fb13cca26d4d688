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
    let host_header = if port == HTTPS_DEFAULT_PORT {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let req = crate::http::ClientRequest {
        method: "GET",
        target: path,
        host: &host_header,
        headers: &[("Accept", "application/octet-stream")],
        body: &[],
    };
    let mut resp = crate::http::request(&mut stream, &req, MAX_RESPONSE_HEAD_BYTES)
        .await
        .map_err(client_error)?;
    if resp.head.status != 200 {
        return Err(PipeError::Status {
            status: resp.head.status,
        });
    }
    if resp.head.chunked {
        return Err(PipeError::BadResponse {
            what: "chunked body",
        });
    }
    let Some(expected) = resp.head.content_length else {
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
    let mut buf = vec![0u8; MEDIA_CHUNK_BYTES];
    let mut got: u64 = 0;
    loop {
        let n = resp
            .read_body(&mut buf, max_bytes)
            .await
            .map_err(client_error)?;
        if n == 0 {
            return Ok(got);
        }
        out.write_all(buf.get(..n).unwrap_or_default())
            .map_err(file_error("write"))?;
        got += n as u64;
    }
}

/// What a failed exchange with the media host means for the download.
fn client_error(e: crate::http::ClientError) -> PipeError {
    use crate::http::ClientError as C;
    let what = match e {
        C::Io(e) => {
            return PipeError::Connect {
                detail: e.to_string(),
            };
        }
        C::BodyTooLarge { len, max_bytes } => return PipeError::BlobTooLarge { len, max_bytes },
        C::Truncated { expected, got } => return PipeError::Truncated { expected, got },
        C::ClosedBeforeHead => "closed before the head ended",
        C::HeadTooLong { .. } => "head too long",
        C::MalformedHead => "malformed head",
        C::BadContentLength => "bad or repeated Content-Length",
        C::ChunkedBody => "chunked body",
    };
    PipeError::BadResponse { what }
}
