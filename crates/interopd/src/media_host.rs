//! The HTTPS media host: serves our Outgoing blobs to the gatekeeper's media proxy
//! (docs/media.md, docs/protocol.md section 17).
//!
//! This file owns the media host's routes (`GET`/`HEAD /m/{id}`), its TLS identity (an
//! operator's certificate, or a self-signed one made once under `<state>/media-host/`) and
//! the SPKI pin the gatekeeper registers for it, the `Range` parser, and a streaming file
//! body that the local API reuses for received media. It does not own the files or rows
//! (`media_store`), HTTP framing (`http`), or the TLS handshake (`tls`). It is shell code: it
//! reads files, reads the wall clock for expiry, and listens on a socket.
//!
//! Decisions:
//! - No authentication: an id is 128 random bits and a blob is ciphertext. Only Outgoing
//!   rows are served; an Incoming id is unknown here.
//! - A blob past its `expires_ms` answers 404 and is removed at once (row, then file).
//! - Bodies stream from the file in [`MEDIA_HOST_CHUNK_BYTES`] reads with a
//!   `Content-Length` (the hub's proxy refuses chunked answers): memory per connection is
//!   bounded whatever the blob's size. File reads are synchronous on the one executor
//!   thread; each is at most one chunk.
//! - `Range`: one range (`bytes=a-b`, `a-`, `-n`) gives 206 with `Content-Range`; an
//!   unsatisfiable one 416 with `Content-Range: bytes */len`; a malformed or multi-range
//!   header, or an `If-Range` that is not our `ETag`, is ignored (200, whole blob), as
//!   RFC 9110 section 14.2 allows.
//! - Errors use the API's JSON shape: `{"error": {"code", "message"}}`.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::io::AsyncRead;
use futures_rustls::rustls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ParsedCertificate;
use sha2::{Digest as _, Sha256};

use crate::config::MediaConfig;
use crate::http::{self, Body, Request, RequestHead, Response, ServeOptions};
use crate::media_store::{self, Direction, MediaId, MediaStore, MediaStoreError};
use crate::store::{Store, StoreError};
use crate::tls;

/// Connections (including TLS handshakes) the media host serves at once; more are closed
/// at accept.
pub const MEDIA_HOST_MAX_CONNECTIONS: usize = 32;
/// Largest request body the media host reads, in bytes: its requests have none.
pub const MEDIA_HOST_MAX_BODY_BYTES: u64 = 0;
/// Size of one file read while streaming a body, in bytes (one buffer per response).
pub const MEDIA_HOST_CHUNK_BYTES: usize = 64 * 1024;
/// Longest `Range` header parsed, in bytes; a longer one is ignored.
pub const MAX_RANGE_HEADER_BYTES: usize = 256;
/// Most certificates read from `media.cert_file`.
pub const MAX_MEDIA_HOST_CERT_CHAIN: usize = 8;
/// Directory under the state directory for the self-signed identity.
pub const MEDIA_HOST_DIR_NAME: &str = "media-host";
/// The self-signed certificate's file in [`MEDIA_HOST_DIR_NAME`] (mode 0644).
pub const MEDIA_HOST_CERT_FILE: &str = "cert.pem";
/// The self-signed certificate's private key in [`MEDIA_HOST_DIR_NAME`] (mode 0600).
pub const MEDIA_HOST_KEY_FILE: &str = "key.pem";
/// The certificate's name when `media.public_url`'s host cannot be one.
pub const MEDIA_HOST_FALLBACK_NAME: &str = "interopd-media";
/// The path prefix of a blob: `/m/{32 hex digits}`.
pub const BLOB_PATH_PREFIX: &str = "/m/";

/// The path of a blob on the media host, `/m/{hex}` (the message's `directPath`).
pub fn blob_path(id: &MediaId) -> String {
    format!("{BLOB_PATH_PREFIX}{}", id.to_hex())
}

/// The URL of a blob: `{public_url}/m/{hex}` (the message's `url`).
pub fn blob_url(public_url: &str, id: &MediaId) -> String {
    format!(
        "{}{}",
        public_url.strip_suffix('/').unwrap_or(public_url),
        blob_path(id)
    )
}

/// [`ServeOptions`] for the media host: the `http` defaults for time limits, with
/// [`MEDIA_HOST_MAX_CONNECTIONS`] and [`MEDIA_HOST_MAX_BODY_BYTES`].
pub fn serve_options() -> ServeOptions {
    ServeOptions {
        max_body_bytes: MEDIA_HOST_MAX_BODY_BYTES,
        limits: http::AcceptLimits::for_max(MEDIA_HOST_MAX_CONNECTIONS),
        ..ServeOptions::default()
    }
}

// ---- Range -------------------------------------------------------------------------------

/// A `Range` header that names no byte of the representation. Caused by the client; answered
/// 416 with `Content-Range: bytes */len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// The range starts at or past the end, or is an empty suffix.
    Unsatisfiable {
        /// The representation's length, in bytes.
        len: u64,
    },
}

impl std::fmt::Display for RangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RangeError::Unsatisfiable { len } => {
                write!(f, "the range is outside the {len} bytes of the blob")
            }
        }
    }
}

impl std::error::Error for RangeError {}

/// Parses a `Range` header for a representation of `len` bytes. `Ok(Some((first, last)))`
/// is one satisfiable range, inclusive, clamped to the end; `Ok(None)` means serve the
/// whole representation (a malformed header, another unit, several ranges, or one over
/// [`MAX_RANGE_HEADER_BYTES`]); `Err` is an unsatisfiable range (416). Sans-I/O.
pub fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, RangeError> {
    if header.len() > MAX_RANGE_HEADER_BYTES {
        return Ok(None);
    }
    let Some((unit, set)) = header.trim().split_once('=') else {
        return Ok(None);
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    let set = set.trim_matches([' ', '\t']);
    if set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = Err(RangeError::Unsatisfiable { len });
    match (first.is_empty(), decimal(first), decimal(last)) {
        // `-n`: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                return unsatisfiable;
            }
            Ok(Some((len - n.min(len), len - 1)))
        }
        // `a-` and `a-b`.
        (false, Some(a), last_pos) => {
            if !last.is_empty() && last_pos.is_none() {
                return Ok(None);
            }
            if last_pos.is_some_and(|b| b < a) {
                return Ok(None);
            }
            if a >= len {
                return unsatisfiable;
            }
            let end = last_pos.unwrap_or(u64::MAX).min(len - 1);
            Ok(Some((a, end)))
        }
        _ => Ok(None),
    }
}

/// 1*DIGIT as a number, saturating at `u64::MAX` (a position past any file); `None` if
/// empty or not all digits.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

// ---- the streaming file body --------------------------------------------------------------

/// `len` bytes of a file from `offset`, read [`MEDIA_HOST_CHUNK_BYTES`] at a time with
/// positioned reads (the file's cursor is not used). For [`Body::Reader`].
#[derive(Debug)]
pub struct FileBody {
    file: File,
    offset: u64,
    remaining: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FileBody {
    /// A body of `len` bytes of `file` starting at `offset`.
    pub fn new(file: File, offset: u64, len: u64) -> FileBody {
        FileBody {
            file,
            offset,
            remaining: len,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(MEDIA_HOST_CHUNK_BYTES);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let target = self.buf.get_mut(..want).unwrap_or_default();
        let n = loop {
            match self.file.read_at(target, self.offset) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.offset += n as u64;
        self.remaining -= n as u64;
        self.start = 0;
        self.end = n;
        Ok(())
    }
}

impl AsyncRead for FileBody {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.start == this.end {
            if this.remaining == 0 || out.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if let Err(e) = this.refill() {
                return Poll::Ready(Err(e));
            }
        }
        let ready = this.buf.get(this.start..this.end).unwrap_or_default();
        let n = ready.len().min(out.len());
        let (dst, src) = (out.get_mut(..n), ready.get(..n));
        if let (Some(dst), Some(src)) = (dst, src) {
            dst.copy_from_slice(src);
        }
        this.start += n;
        Poll::Ready(Ok(n))
    }
}

/// The response for a file of `len` bytes, honouring the request's `Range` (and `If-Range`
/// against `etag`): 200 with the whole file, 206 with one range, or 416. Sets
/// `Content-Type`, `Accept-Ranges: bytes` and, when given, `ETag` (a quoted strong tag).
pub fn file_response(
    head: &RequestHead,
    file: File,
    len: u64,
    content_type: &str,
    etag: Option<&str>,
) -> Response {
    let if_range_ok = match head.header("if-range") {
        None => true,
        Some(tag) => etag.is_some_and(|e| e == tag),
    };
    let range = match head.header("range") {
        Some(h) if if_range_ok => parse_range(h, len),
        _ => Ok(None),
    };
    let base = |response: Response| {
        let response = response
            .with_header("Content-Type", content_type)
            .with_header("Accept-Ranges", "bytes");
        match etag {
            Some(e) => response.with_header("ETag", e),
            None => response,
        }
    };
    match range {
        Err(e) => Response::json_error(416, "range_not_satisfiable", &e.to_string())
            .with_header("Content-Range", &format!("bytes */{len}"))
            .with_header("Accept-Ranges", "bytes"),
        Ok(Some((first, last))) => {
            let body_len = last - first + 1;
            base(Response::empty(206))
                .with_header("Content-Range", &format!("bytes {first}-{last}/{len}"))
                .with_body(Body::Reader {
                    len: body_len,
                    reader: Box::pin(FileBody::new(file, first, body_len)),
                })
        }
        Ok(None) if len == 0 => base(Response::empty(200)),
        Ok(None) => base(Response::empty(200)).with_body(Body::Reader {
            len,
            reader: Box::pin(FileBody::new(file, 0, len)),
        }),
    }
}

// ---- routes --------------------------------------------------------------------------------

/// Answers one request at `now_ms`. `GET`/`HEAD /m/{id}` serves an unexpired Outgoing blob;
/// every other path is 404, another method on a blob path 405.
pub fn respond(store: &Store, media: &MediaStore, head: &RequestHead, now_ms: u64) -> Response {
    let mut segments = head.path_segments();
    let id = match (segments.next(), segments.next(), segments.next()) {
        (Some("m"), Some(hex), None) => MediaId::parse_hex(hex),
        _ => None,
    };
    let Some(id) = id else {
        return Response::json_error(404, "not_found", "no such route");
    };
    if head.method != "GET" && head.method != "HEAD" {
        return Response::json_error(405, "method_not_allowed", "only GET and HEAD")
            .with_header("Allow", "GET, HEAD");
    }
    match open_blob(store, media, &id, now_ms) {
        Ok(Some((file, len))) => {
            let etag = format!("\"{}\"", id.to_hex());
            file_response(head, file, len, "application/octet-stream", Some(&etag))
        }
        Ok(None) => Response::json_error(404, "not_found", "no such blob"),
        Err(LookupError::Store(e)) => {
            log::error!("media host: {e}");
            Response::json_error(503, "store_unavailable", "the media store is unavailable")
        }
        Err(LookupError::Media(e)) => {
            log::error!("media host: {e}");
            Response::json_error(503, "media_store_unavailable", "the blob cannot be read")
        }
    }
}

enum LookupError {
    Store(StoreError),
    Media(MediaStoreError),
}

impl From<StoreError> for LookupError {
    fn from(e: StoreError) -> Self {
        LookupError::Store(e)
    }
}

impl From<MediaStoreError> for LookupError {
    fn from(e: MediaStoreError) -> Self {
        LookupError::Media(e)
    }
}

/// The file of an unexpired Outgoing blob; an expired one is removed (row committed first,
/// then the file) and reads as absent.
fn open_blob(
    store: &Store,
    media: &MediaStore,
    id: &MediaId,
    now_ms: u64,
) -> Result<Option<(File, u64)>, LookupError> {
    let txn = store.begin()?;
    let row = match media_store::get_row(&txn, id)? {
        Some(row) if row.direction == Direction::Outgoing => row,
        _ => {
            txn.abort()?;
            return Ok(None);
        }
    };
    if row.expires_ms <= now_ms {
        media_store::remove_row(&txn, id)?;
        txn.commit()?;
        media.remove(Direction::Outgoing, id)?;
        log::info!("media host: blob {id} expired; removed");
        return Ok(None);
    }
    txn.abort()?;
    let found = media.open_file(Direction::Outgoing, id)?;
    if found.is_none() {
        log::warn!("media host: blob {id} has a row but no file");
    }
    Ok(found)
}

/// Serves the media host over TLS with `tls_config` on `listener` forever, through the one
/// accept loop ([`http::serve_tls`]) on `ex`; at most `options.limits.max_connections` at once
/// (more are closed at accept). Use [`serve_options`] for the media host's bounds. Stop it
/// by dropping the future.
pub async fn serve(
    ex: Rc<smol::LocalExecutor<'static>>,
    listener: smol::net::TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    store: Rc<Store>,
    media: Rc<MediaStore>,
    options: ServeOptions,
) {
    let handler = move |req: Request| {
        std::future::ready(respond(&store, &media, &req.head, crate::clock::now_ms()))
    };
    http::serve_tls(ex, listener, "media host", tls_config, options, handler).await
}

// ---- TLS identity ---------------------------------------------------------------------------

/// Why the media host's TLS identity could not be loaded or made.
#[derive(Debug)]
#[non_exhaustive]
pub enum MediaHostError {
    /// The environment: a certificate or key file could not be read or written. The daemon
    /// logs it and exits 1 (78 if the file is named by the config).
    Io { path: PathBuf, source: io::Error },
    /// The operator: a file is larger than [`tls::MAX_PEM_FILE_BYTES`].
    FileTooLarge { path: PathBuf },
    /// The operator or a damaged disk: no usable PEM item of the expected kind, or more
    /// than [`MAX_MEDIA_HOST_CERT_CHAIN`] certificates.
    BadPem {
        path: PathBuf,
        /// `"certificate"` or `"private key"`.
        expected: &'static str,
    },
    /// The operator: only one of `media.cert_file` and `media.key_file` is set.
    HalfIdentity,
    /// The operator: `<state>/media-host/cert.pem` exists without its key. Restore the key,
    /// or delete the certificate to have both made anew (and register the new pin).
    KeyMissing { key_path: PathBuf },
    /// The operator or a damaged disk: the certificate does not belong to the key.
    KeyMismatch { path: PathBuf },
    /// A bug: the certificate generator refused.
    CertGeneration { detail: String },
    /// The operator (a certificate rustls refuses) or a bug.
    Config { source: rustls::Error },
}

impl std::fmt::Display for MediaHostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaHostError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            MediaHostError::FileTooLarge { path } => write!(
                f,
                "{}: larger than {} bytes",
                path.display(),
                tls::MAX_PEM_FILE_BYTES
            ),
            MediaHostError::BadPem { path, expected } => {
                write!(f, "{}: no usable PEM {expected}", path.display())
            }
            MediaHostError::HalfIdentity => {
                f.write_str("media.cert_file and media.key_file must be set together")
            }
            MediaHostError::KeyMissing { key_path } => write!(
                f,
                "{} is missing while its certificate exists",
                key_path.display()
            ),
            MediaHostError::KeyMismatch { path } => {
                write!(f, "{}: certificate does not match its key", path.display())
            }
            MediaHostError::CertGeneration { detail } => {
                write!(f, "certificate generation failed: {detail}")
            }
            MediaHostError::Config { source } => {
                write!(f, "media host TLS configuration refused: {source}")
            }
        }
    }
}

impl std::error::Error for MediaHostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MediaHostError::Io { source, .. } => Some(source),
            MediaHostError::Config { source } => Some(source),
            _ => None,
        }
    }
}

/// The pin of `cert`: `sha256//` and the base64 SHA-256 of its SubjectPublicKeyInfo, the
/// value `interop-hub provision --media-pin` (and `curl --pinnedpubkey`) takes.
pub fn spki_pin(cert: &CertificateDer<'_>) -> Result<String, MediaHostError> {
    let parsed = ParsedCertificate::try_from(cert).map_err(|_| MediaHostError::BadPem {
        path: PathBuf::new(),
        expected: "certificate",
    })?;
    let hash: [u8; 32] = Sha256::digest(parsed.subject_public_key_info().as_ref()).into();
    Ok(tls::spki_pin_to_string(&hash))
}

/// The media host's TLS server configuration (TLS 1.3, no client auth) and its SPKI pin.
/// With `cfg.cert_file`/`cfg.key_file` those files are used; otherwise a P-256 key and a
/// self-signed certificate for `cfg.public_url`'s host are made once under
/// `<state_dir>/media-host/` (key 0600, written before its certificate) and reused, so the
/// pin survives restarts.
pub fn load_or_create_identity(
    state_dir: &Path,
    cfg: &MediaConfig,
) -> Result<(Arc<rustls::ServerConfig>, String), MediaHostError> {
    let (chain, key) = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => operator_identity(cert, key)?,
        (None, None) => self_signed_identity(&state_dir.join(MEDIA_HOST_DIR_NAME), cfg)?,
        _ => return Err(MediaHostError::HalfIdentity),
    };
    let pin = match chain.first() {
        Some(leaf) => spki_pin(leaf)?,
        None => {
            return Err(MediaHostError::BadPem {
                path: cfg.cert_file.clone().unwrap_or_default(),
                expected: "certificate",
            });
        }
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|source| MediaHostError::Config { source })?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|source| MediaHostError::Config { source })?;
    Ok((Arc::new(config), pin))
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn operator_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, MediaHostError> {
    let missing = |path: &Path| MediaHostError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotFound),
    };
    let cert_pem = read_pem_file(cert_path)?.ok_or_else(|| missing(cert_path))?;
    let key_pem = read_pem_file(key_path)?.ok_or_else(|| missing(key_path))?;
    let chain = parse_chain(&cert_pem, cert_path)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| MediaHostError::BadPem {
            path: key_path.to_path_buf(),
            expected: "private key",
        })?;
    Ok((chain, key))
}

fn self_signed_identity(dir: &Path, cfg: &MediaConfig) -> Result<Identity, MediaHostError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MediaHostError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let key_path = dir.join(MEDIA_HOST_KEY_FILE);
    let cert_path = dir.join(MEDIA_HOST_CERT_FILE);
    let bad_key = || MediaHostError::BadPem {
        path: key_path.clone(),
        expected: "private key",
    };
    let key = match read_pem_file(&key_path)? {
        Some(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|_| bad_key())?,
        None => {
            if cert_path.exists() {
                return Err(MediaHostError::KeyMissing { key_path });
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(generation_error)?;
            write_file_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            key
        }
    };
    let key_spki = {
        use rcgen::PublicKeyData as _;
        key.subject_public_key_info()
    };
    let cert = match read_pem_file(&cert_path)? {
        Some(pem) => {
            let chain = parse_chain(&pem, &cert_path)?;
            let leaf = chain.into_iter().next().ok_or(MediaHostError::BadPem {
                path: cert_path.clone(),
                expected: "certificate",
            })?;
            let parsed =
                ParsedCertificate::try_from(&leaf).map_err(|_| MediaHostError::BadPem {
                    path: cert_path.clone(),
                    expected: "certificate",
                })?;
            if parsed.subject_public_key_info().as_ref() != key_spki.as_slice() {
                return Err(MediaHostError::KeyMismatch { path: cert_path });
            }
            leaf
        }
        None => {
            let name = cfg
                .public_url
                .as_deref()
                .and_then(crate::config::parse_media_public_url)
                .map(|(host, _)| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string()
                });
            let params = name
                .and_then(|n| rcgen::CertificateParams::new(vec![n]).ok())
                .map_or_else(
                    || rcgen::CertificateParams::new(vec![MEDIA_HOST_FALLBACK_NAME.to_string()]),
                    Ok,
                )
                .map_err(generation_error)?;
            let cert = params.self_signed(&key).map_err(generation_error)?;
            write_file_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            let der = cert.der().clone();
            if let Ok(pin) = spki_pin(&der) {
                log::info!(
                    "media host: made a self-signed certificate in {}; its pin is {pin}",
                    cert_path.display()
                );
            }
            der
        }
    };
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| bad_key())?;
    Ok((vec![cert], key_der))
}

fn generation_error(err: rcgen::Error) -> MediaHostError {
    MediaHostError::CertGeneration {
        detail: err.to_string(),
    }
}

fn parse_chain(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MediaHostError> {
    let bad = || MediaHostError::BadPem {
        path: path.to_path_buf(),
        expected: "certificate",
    };
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        if chain.len() == MAX_MEDIA_HOST_CERT_CHAIN {
            return Err(bad());
        }
        chain.push(item.map_err(|_| bad())?);
    }
    if chain.is_empty() {
        return Err(bad());
    }
    Ok(chain)
}

/// A whole PEM file of at most [`tls::MAX_PEM_FILE_BYTES`]; `None` if it does not exist.
fn read_pem_file(path: &Path) -> Result<Option<String>, MediaHostError> {
    let io_err = |source| MediaHostError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut text = String::new();
    file.take(tls::MAX_PEM_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > tls::MAX_PEM_FILE_BYTES {
        return Err(MediaHostError::FileTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(text))
}

fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MediaHostError> {
    interop_io::state_dir::write_file_atomic(path, bytes, mode)
        .map_err(|(path, source)| MediaHostError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_store::{MediaRow, put_row};
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: m\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        http::parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn ranges_of_each_form_are_inclusive_and_clamped() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-200", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=5-", 100), Ok(Some((5, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("Bytes=1-1", 100), Ok(Some((1, 1))));
        assert_eq!(parse_range(" bytes=1-2 ", 100), Ok(Some((1, 2))));
        assert_eq!(parse_range("bytes= 1-2", 100), Ok(Some((1, 2))));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Ok(Some((0, 99)))
        );
    }

    #[test]
    fn unsatisfiable_ranges_are_errors() {
        let e = Err(RangeError::Unsatisfiable { len: 100 });
        assert_eq!(parse_range("bytes=100-", 100), e);
        assert_eq!(parse_range("bytes=100-200", 100), e);
        assert_eq!(parse_range("bytes=-0", 100), e);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), e);
        assert_eq!(
            parse_range("bytes=0-", 0),
            Err(RangeError::Unsatisfiable { len: 0 })
        );
        assert_eq!(
            parse_range("bytes=-5", 0),
            Err(RangeError::Unsatisfiable { len: 0 })
        );
    }

    #[test]
    fn malformed_or_multiple_ranges_are_ignored() {
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=1-+2",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=0-1,",
        ] {
            assert_eq!(parse_range(header, 100), Ok(None), "{header:?}");
        }
        let long = format!("bytes=0-{}", "0".repeat(MAX_RANGE_HEADER_BYTES));
        assert_eq!(parse_range(&long, 100), Ok(None));
    }

    #[test]
    fn range_vectors_from_the_rfc_parse_as_listed() {
        let path = concat!(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../.."),
            "/tests/data/media_host/ranges.txt"
        );
        let text = fs::read_to_string(path).unwrap();
        let mut n = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let fields: Vec<&str> = line.split(" | ").collect();
            let [header, len, want] = fields[..] else {
                panic!("bad vector line {line:?}");
            };
            let len: u64 = len.parse().unwrap();
            let want = match want {
                "whole" => Ok(None),
                "416" => Err(RangeError::Unsatisfiable { len }),
                range => {
                    let (a, b) = range.split_once('-').unwrap();
                    Ok(Some((a.parse().unwrap(), b.parse().unwrap())))
                }
            };
            assert_eq!(parse_range(header, len), want, "{line}");
            n += 1;
        }
        assert!(n >= 10, "only {n} vectors");
    }

    proptest! {
        #[test]
        fn range_parser_never_panics_and_stays_inside(header in "\\PC{0,40}", len in 0u64..1000) {
            if let Ok(Some((first, last))) = parse_range(&header, len) {
                prop_assert!(first <= last && last < len);
            }
        }

        #[test]
        fn generated_ranges_match_a_model(
            a in 0u64..300,
            b in 0u64..300,
            form in 0u8..3,
            len in 0u64..200,
        ) {
            let (header, want) = match form {
                0 => (format!("bytes={a}-{b}"), if b < a { Ok(None) } else if a >= len {
                    Err(RangeError::Unsatisfiable { len })
                } else { Ok(Some((a, b.min(len - 1)))) }),
                1 => (format!("bytes={a}-"), if a >= len {
                    Err(RangeError::Unsatisfiable { len })
                } else { Ok(Some((a, len - 1))) }),
                _ => (format!("bytes=-{b}"), if b == 0 || len == 0 {
                    Err(RangeError::Unsatisfiable { len })
                } else { Ok(Some((len - b.min(len), len - 1))) }),
            };
            prop_assert_eq!(parse_range(&header, len), want);
        }
    }

    fn body_bytes(response: Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let Response {
            status,
            headers,
            body,
        } = response;
        let bytes = match body {
            Body::Empty => Vec::new(),
            Body::Bytes(b) => b,
            Body::Reader { len, mut reader } => smol::block_on(async {
                let mut out = Vec::new();
                reader.read_to_end(&mut out).await.unwrap();
                assert_eq!(out.len() as u64, len);
                out
            }),
            Body::Stream(_) => panic!("media bodies are never chunked"),
        };
        (status, headers, bytes)
    }

    fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn temp_file(data: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, data).unwrap();
        (dir, File::open(&path).unwrap())
    }

    #[test]
    fn file_bodies_stream_in_bounded_chunks_from_any_offset() {
        let data: Vec<u8> = (0..3 * MEDIA_HOST_CHUNK_BYTES + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let (_dir, file) = temp_file(&data);
        let mut body = FileBody::new(file, 5, data.len() as u64 - 5);
        let mut out = Vec::new();
        smol::block_on(body.read_to_end(&mut out)).unwrap();
        assert_eq!(out, &data[5..]);
        assert!(body.buf.len() <= MEDIA_HOST_CHUNK_BYTES);
    }

    #[test]
    fn file_response_honours_range_and_if_range() {
        let data = b"0123456789";
        let etag = "\"tag\"";
        let respond = |headers: &[(&str, &str)]| {
            let (_dir, file) = temp_file(data);
            body_bytes(file_response(
                &head("GET", "/m/x", headers),
                file,
                10,
                "audio/ogg",
                Some(etag),
            ))
        };
        let (status, headers, body) = respond(&[]);
        assert_eq!((status, body.as_slice()), (200, &data[..]));
        assert_eq!(header_of(&headers, "content-type"), Some("audio/ogg"));
        assert_eq!(header_of(&headers, "accept-ranges"), Some("bytes"));
        assert_eq!(header_of(&headers, "etag"), Some(etag));
        let (status, headers, body) = respond(&[("Range", "bytes=2-4")]);
        assert_eq!((status, body.as_slice()), (206, &b"234"[..]));
        assert_eq!(header_of(&headers, "content-range"), Some("bytes 2-4/10"));
        let (status, _, body) = respond(&[("Range", "bytes=2-4"), ("If-Range", etag)]);
        assert_eq!((status, body.len()), (206, 3));
        let (status, _, body) = respond(&[("Range", "bytes=2-4"), ("If-Range", "\"old\"")]);
        assert_eq!((status, body.len()), (200, 10));
        let (status, headers, _) = respond(&[("Range", "bytes=10-")]);
        assert_eq!(status, 416);
        assert_eq!(header_of(&headers, "content-range"), Some("bytes */10"));
        let (status, _, body) = respond(&[("Range", "lines=1-2")]);
        assert_eq!((status, body.len()), (200, 10));
    }

    struct Host {
        state: tempfile::TempDir,
        store: Rc<Store>,
        media: Rc<MediaStore>,
    }

    fn host() -> Host {
        let state = tempfile::tempdir().unwrap();
        let store = Rc::new(Store::open(state.path()).unwrap());
        let media = Rc::new(MediaStore::open(state.path(), 1 << 30).unwrap());
        Host {
            state,
            store,
            media,
        }
    }

    fn blob(h: &Host, direction: Direction, data: &[u8], expires_ms: u64) -> MediaId {
        let mut rng = rand::rng();
        let id = MediaId::random(&mut rng);
        let mut temp = h.media.create_temp(&mut rng).unwrap();
        std::io::Write::write_all(temp.file(), data).unwrap();
        h.media.persist(temp, direction, &id).unwrap();
        let txn = h.store.begin().unwrap();
        let row = MediaRow {
            direction,
            len: data.len() as u64,
            created_ms: 1,
            expires_ms,
            mimetype: "image/jpeg".into(),
            message_id: "3EB0AA".into(),
        };
        put_row(&txn, &id, &row).unwrap();
        txn.commit().unwrap();
        id
    }

    #[test]
    fn routes_other_than_blobs_are_404_and_other_methods_405() {
        let h = host();
        let id = blob(&h, Direction::Outgoing, b"ct", u64::MAX);
        let path = blob_path(&id);
        let status = |method: &str, path: &str| {
            respond(&h.store, &h.media, &head(method, path, &[]), 5).status
        };
        assert_eq!(status("GET", &path), 200);
        assert_eq!(status("HEAD", &path), 200);
        assert_eq!(status("POST", &path), 405);
        assert_eq!(status("DELETE", &path), 405);
        assert_eq!(status("GET", "/"), 404);
        assert_eq!(status("POST", "/v1/media"), 404);
        assert_eq!(status("GET", &format!("{path}/x")), 404);
        assert_eq!(status("GET", &path.to_uppercase()), 404);
        assert_eq!(
            status("GET", &format!("/m/{}", MediaId([0; 16]).to_hex())),
            404
        );
        let allow = respond(&h.store, &h.media, &head("PUT", &path, &[]), 5);
        assert_eq!(header_of(&allow.headers, "allow"), Some("GET, HEAD"));
    }

    #[test]
    fn incoming_media_is_not_served_by_the_host() {
        let h = host();
        let id = blob(&h, Direction::Incoming, b"plaintext", u64::MAX);
        let r = respond(&h.store, &h.media, &head("GET", &blob_path(&id), &[]), 5);
        assert_eq!(r.status, 404);
    }

    #[test]
    fn blob_urls_join_the_public_url_and_the_path() {
        let id = MediaId([0xab; 16]);
        let want = format!("https://h:1/m/{}", "ab".repeat(16));
        assert_eq!(blob_url("https://h:1", &id), want);
        assert_eq!(blob_url("https://h:1/", &id), want);
    }

    fn media_config() -> MediaConfig {
        MediaConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            public_url: Some("https://localhost:8443".into()),
            ..MediaConfig::default()
        }
    }

    #[test]
    fn self_signed_identity_is_made_once_with_a_private_key_and_reused() {
        let state = tempfile::tempdir().unwrap();
        let (_, pin) = load_or_create_identity(state.path(), &media_config()).unwrap();
        assert!(pin.starts_with("sha256//"));
        tls::parse_spki_pin(&pin).unwrap();
        let dir = state.path().join(MEDIA_HOST_DIR_NAME);
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(MEDIA_HOST_KEY_FILE), 0o600);
        assert_eq!(mode(MEDIA_HOST_CERT_FILE), 0o644);
        let cert_before = fs::read(dir.join(MEDIA_HOST_CERT_FILE)).unwrap();
        let (_, again) = load_or_create_identity(state.path(), &media_config()).unwrap();
        assert_eq!(again, pin);
        assert_eq!(
            fs::read(dir.join(MEDIA_HOST_CERT_FILE)).unwrap(),
            cert_before
        );
        // The pin is the key's: a lost certificate is re-made with the same pin.
        fs::remove_file(dir.join(MEDIA_HOST_CERT_FILE)).unwrap();
        let (_, remade) = load_or_create_identity(state.path(), &media_config()).unwrap();
        assert_eq!(remade, pin);
        let pem = fs::read_to_string(dir.join(MEDIA_HOST_CERT_FILE)).unwrap();
        assert_eq!(
            tls::spki_pin_to_string(&tls::spki_sha256_of_pem(&pem).unwrap()),
            pin
        );
    }

    #[test]
    fn a_certificate_without_its_key_or_of_another_key_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        load_or_create_identity(state.path(), &media_config()).unwrap();
        load_or_create_identity(other.path(), &media_config()).unwrap();
        let dir = state.path().join(MEDIA_HOST_DIR_NAME);
        fs::copy(
            other
                .path()
                .join(MEDIA_HOST_DIR_NAME)
                .join(MEDIA_HOST_CERT_FILE),
            dir.join(MEDIA_HOST_CERT_FILE),
        )
        .unwrap();
        let err = load_or_create_identity(state.path(), &media_config()).unwrap_err();
        assert!(matches!(err, MediaHostError::KeyMismatch { .. }), "{err}");
        fs::remove_file(dir.join(MEDIA_HOST_KEY_FILE)).unwrap();
        let err = load_or_create_identity(state.path(), &media_config()).unwrap_err();
        assert!(matches!(err, MediaHostError::KeyMissing { .. }), "{err}");
    }

    #[test]
    fn operator_certificate_files_are_used_as_given() {
        let state = tempfile::tempdir().unwrap();
        let made = tempfile::tempdir().unwrap();
        let (_, pin) = load_or_create_identity(made.path(), &media_config()).unwrap();
        let cfg = MediaConfig {
            cert_file: Some(made.path().join("media-host/cert.pem")),
            key_file: Some(made.path().join("media-host/key.pem")),
            ..media_config()
        };
        let (_, got) = load_or_create_identity(state.path(), &cfg).unwrap();
        assert_eq!(got, pin);
        assert!(!state.path().join(MEDIA_HOST_DIR_NAME).exists());
        let half = MediaConfig {
            key_file: None,
            ..cfg.clone()
        };
        assert!(matches!(
            load_or_create_identity(state.path(), &half),
            Err(MediaHostError::HalfIdentity)
        ));
        let swapped = MediaConfig {
            cert_file: cfg.key_file.clone(),
            key_file: cfg.cert_file.clone(),
            ..cfg
        };
        assert!(matches!(
            load_or_create_identity(state.path(), &swapped),
            Err(MediaHostError::BadPem { .. })
        ));
    }

    /// One request over a fresh pinned TLS connection; the status, the head's headers and
    /// the body.
    async fn fetch(
        addr: std::net::SocketAddr,
        pin: &str,
        request_head: &str,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let config =
            tls::client_config(&tls::Pin::Spki(tls::parse_spki_pin(pin).unwrap())).unwrap();
        let mut stream = tls::connect(&addr.to_string(), "localhost", config)
            .await
            .unwrap();
        stream
            .write_all(
                format!("{request_head}Host: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(used) = parsed.parse(&raw).unwrap() else {
            panic!("incomplete response head");
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (parsed.code.unwrap(), headers, raw[used..].to_vec())
    }

    #[test]
    fn host_serves_blobs_over_pinned_tls_with_ranges_and_expiry() {
        let h = host();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let live = blob(&h, Direction::Outgoing, &data, u64::MAX);
        let expired = blob(&h, Direction::Outgoing, b"old", 1);
        let (tls_config, pin) = load_or_create_identity(h.state.path(), &media_config()).unwrap();
        let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let ex = Rc::new(smol::LocalExecutor::new());
        let server = serve(
            Rc::clone(&ex),
            listener,
            tls_config,
            Rc::clone(&h.store),
            Rc::clone(&h.media),
            serve_options(),
        );
        let client = async {
            let live_path = blob_path(&live);
            let (status, headers, body) =
                fetch(addr, &pin, &format!("GET {live_path} HTTP/1.1\r\n")).await;
            assert_eq!(status, 200);
            assert_eq!(body, data);
            assert_eq!(header_of(&headers, "content-length"), Some("200000"));
            assert_eq!(
                header_of(&headers, "content-type"),
                Some("application/octet-stream")
            );

            let (status, headers, body) = fetch(
                addr,
                &pin,
                &format!("GET {live_path} HTTP/1.1\r\nRange: bytes=100-70099\r\n"),
            )
            .await;
            assert_eq!(status, 206);
            assert_eq!(body, &data[100..70_100]);
            assert_eq!(
                header_of(&headers, "content-range"),
                Some("bytes 100-70099/200000")
            );

            let (status, headers, _) = fetch(
                addr,
                &pin,
                &format!("GET {live_path} HTTP/1.1\r\nRange: bytes=200000-\r\n"),
            )
            .await;
            assert_eq!(status, 416);
            assert_eq!(header_of(&headers, "content-range"), Some("bytes */200000"));

            let (status, headers, body) =
                fetch(addr, &pin, &format!("HEAD {live_path} HTTP/1.1\r\n")).await;
            assert_eq!(status, 200);
            assert_eq!(header_of(&headers, "content-length"), Some("200000"));
            assert!(body.is_empty());

            let unknown = blob_path(&MediaId([1; 16]));
            let (status, _, body) = fetch(addr, &pin, &format!("GET {unknown} HTTP/1.1\r\n")).await;
            assert_eq!(status, 404);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["code"], "not_found");

            let (status, _, _) = fetch(
                addr,
                &pin,
                &format!("GET {} HTTP/1.1\r\n", blob_path(&expired)),
            )
            .await;
            assert_eq!(status, 404);
        };
        smol::block_on(ex.run(async {
            let done = async {
                client.await;
                true
            };
            let served_forever = async {
                server.await;
                false
            };
            assert!(done.or(served_forever).await);
        }));
        assert!(!h.media.path(Direction::Outgoing, &expired).exists());
        let txn = h.store.begin().unwrap();
        assert!(media_store::get_row(&txn, &expired).unwrap().is_none());
        assert!(media_store::get_row(&txn, &live).unwrap().is_some());
        assert_eq!(h.media.usage_bytes(), data.len() as u64);
    }

    #[test]
    fn a_client_pinned_to_another_key_is_refused() {
        let h = host();
        let (tls_config, _) = load_or_create_identity(h.state.path(), &media_config()).unwrap();
        let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let ex = Rc::new(smol::LocalExecutor::new());
        let server = serve(
            Rc::clone(&ex),
            listener,
            tls_config,
            Rc::clone(&h.store),
            Rc::clone(&h.media),
            serve_options(),
        );
        let client = async {
            let config = tls::client_config(&tls::Pin::Spki([7; 32])).unwrap();
            tls::connect(&addr.to_string(), "localhost", config)
                .await
                .is_err()
        };
        let refused = smol::block_on(ex.run(client.or(async {
            server.await;
            false
        })));
        assert!(refused);
    }
}
