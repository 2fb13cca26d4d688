//! TLS for the link and the hub: the hub's own certificate authority on disk, the client's
//! server authentication (a pinned CA file or a pinned SubjectPublicKeyInfo), and the async
//! connect/accept helpers over smol sockets.
//!
//! This file owns the four PEM files in the hub's state directory and the rustls
//! configurations built from them. It does not own sockets beyond the handshake, frames or
//! stanzas: [`connect`] and [`accept`] hand back a finished TLS stream and the caller moves
//! bytes. It is shell code: it reads and writes files, draws randomness and reads the clock
//! (certificate validity).
//!
//! Decisions:
//! - TLS 1.3 only, with the `ring` provider only. No client certificates: the hub
//!   authenticates clients by the login stanza exchange, not by TLS.
//! - Keys are ECDSA P-256: every TLS stack and `curl` speak it.
//! - State files, in the directory given to [`ensure_hub_ca`]:
//!
//!   | file             | holds                                          | mode |
//!   |------------------|------------------------------------------------|------|
//!   | `ca.pem`         | the CA certificate that daemons pin            | 0644 |
//!   | `ca-key.pem`     | the CA's PKCS#8 private key                    | 0600 |
//!   | `server.pem`     | the server certificate, issued by the CA       | 0644 |
//!   | `server-key.pem` | the server's PKCS#8 private key                | 0600 |
//!
//!   Each file is written whole (temporary file, fsync, rename). A key is written before
//!   its certificate, so a certificate file marks a complete pair: a lone key left by a crash
//!   is replaced, a lone certificate is an error ([`TlsError::KeyMissing`]).
//! - Reuse: the CA is kept forever once made. The server key is kept too, so an SPKI pin
//!   survives restarts. The server certificate is re-issued (same key) whenever it no
//!   longer verifies against the CA for every requested server name, so adding a name to
//!   the listener just works.
//! - Certificates are valid from 1975-01-01 to 4096-01-01: a reference gatekeeper must not
//!   expire under an appliance whose clock is wrong. The CA may sign leaves only (path
//!   length 0).
//! - [`Pin::Spki`] accepts exactly the leaf whose SubjectPublicKeyInfo (DER, with its outer
//!   SEQUENCE) hashes to the pin under SHA-256, the same value as `curl --pinnedpubkey
//!   sha256//…`. Name and validity are not checked for an SPKI pin: the pin is the identity.
//!   The handshake signature is still verified against that key.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_rustls::rustls;
use rand::RngExt as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest as _, Sha256};
use smol::net::TcpStream;

/// File name of the CA certificate inside the hub's state directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the hub's state directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the server certificate inside the hub's state directory.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// File name of the server private key inside the hub's state directory (mode 0600).
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Largest PEM file (certificate, key or pinned CA) this module reads, in bytes.
pub const MAX_PEM_FILE_BYTES: u64 = 64 * 1024;
/// Most certificates accepted in one pinned CA file.
pub const MAX_PINNED_CA_CERTS: usize = 16;
/// Time allowed for the TCP connect in [`connect`], in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Time allowed for a TLS handshake in [`connect`] and [`accept`], in milliseconds.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Common name of the hub CA certificate. Stable: re-issuing a server certificate
/// rebuilds the issuer name from it.
pub const CA_COMMON_NAME: &str = "interop-hub reference gatekeeper CA";
/// Common name of the hub server certificate.
pub const SERVER_COMMON_NAME: &str = "interop-hub";

/// Length of a certificate serial number we generate, in bytes.
const SERIAL_BYTES: usize = 16;
/// Prefix of the textual SPKI pin, as `curl --pinnedpubkey` writes it.
const SPKI_PIN_PREFIX: &str = "sha256//";

/// A TLS client stream over a smol TCP socket.
pub type TlsClientStream = futures_rustls::client::TlsStream<TcpStream>;
/// A TLS server stream over a smol TCP socket.
pub type TlsServerStream = futures_rustls::server::TlsStream<TcpStream>;

/// Why a TLS operation failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum TlsError {
    /// The environment: a state or pin file could not be read or written. The shell logs
    /// it and exits 1 (hub start) or 78 (a pin file named by the config).
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The operator: a file is larger than [`MAX_PEM_FILE_BYTES`] and is not read.
    FileTooLarge {
        /// The file concerned.
        path: PathBuf,
    },
    /// The operator or a damaged disk: a PEM file holds no usable item of the expected
    /// kind, or too many certificates.
    BadPem {
        /// The file concerned (`None` for PEM text passed in directly).
        path: Option<PathBuf>,
        /// What was expected: `"certificate"` or `"private key"`.
        expected: &'static str,
    },
    /// The operator: a certificate file exists but its private key file does not. Restore
    /// the key or delete the certificate to have both made anew.
    KeyMissing {
        /// The missing key file.
        key_path: PathBuf,
    },
    /// The operator or a damaged disk: a certificate does not belong to its key, or the
    /// server certificate we issued does not verify against the CA in `ca.pem`.
    StateMismatch {
        /// The certificate file concerned.
        path: PathBuf,
    },
    /// A bug or an unusable name: the certificate generator refused.
    CertGeneration {
        /// The generator's message.
        detail: String,
    },
    /// A bug or a bad certificate/key: rustls refused to build a configuration.
    Config {
        /// What rustls said.
        source: rustls::Error,
    },
    /// The caller: a server name is neither a DNS name nor an IP address.
    BadServerName {
        /// The refused name.
        name: String,
    },
    /// The caller or the operator's config: an SPKI pin is not `sha256//` followed by the
    /// base64 of 32 bytes.
    BadSpkiPin,
    /// The network: the TCP connection could not be made. The link retries with backoff.
    Connect {
        /// The address dialled.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// The network or a stalled peer: a phase did not finish in time. The link retries.
    Timeout {
        /// `"connect"` or `"handshake"`.
        phase: &'static str,
        /// The limit that ran out, in milliseconds.
        after_ms: u64,
    },
    /// The peer: its certificate was refused (pin mismatch, unknown CA, wrong name,
    /// expired). The link logs an error and retries slowly; this needs an operator.
    CertificateRejected {
        /// Why, as rustls put it.
        detail: String,
    },
    /// The peer or the network: the handshake failed for another reason.
    Handshake {
        /// The underlying error.
        source: io::Error,
    },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TlsError::FileTooLarge { path } => write!(
                f,
                "{}: larger than {MAX_PEM_FILE_BYTES} bytes",
                path.display()
            ),
            TlsError::BadPem {
                path: Some(path),
                expected,
            } => write!(f, "{}: no usable PEM {expected}", path.display()),
            TlsError::BadPem {
                path: None,
                expected,
            } => write!(f, "no usable PEM {expected}"),
            TlsError::KeyMissing { key_path } => write!(
                f,
                "{} is missing while its certificate exists",
                key_path.display()
            ),
            TlsError::StateMismatch { path } => write!(
                f,
                "{}: certificate does not match its key or its CA",
                path.display()
            ),
            TlsError::CertGeneration { detail } => {
                write!(f, "certificate generation failed: {detail}")
            }
            TlsError::Config { source } => write!(f, "TLS configuration refused: {source}"),
            TlsError::BadServerName { name } => write!(f, "{name:?} is not a valid server name"),
            TlsError::BadSpkiPin => write!(
                f,
                "SPKI pin must be {SPKI_PIN_PREFIX} followed by base64 of 32 bytes"
            ),
            TlsError::Connect { addr, source } => write!(f, "connect to {addr}: {source}"),
            TlsError::Timeout { phase, after_ms } => {
                write!(f, "TLS {phase} timed out after {after_ms} ms")
            }
            TlsError::CertificateRejected { detail } => {
                write!(f, "server certificate rejected: {detail}")
            }
            TlsError::Handshake { source } => write!(f, "TLS handshake failed: {source}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Io { source, .. }
            | TlsError::Connect { source, .. }
            | TlsError::Handshake { source } => Some(source),
            TlsError::Config { source } => Some(source),
            _ => None,
        }
    }
}

/// How a client authenticates the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Trust only the CA certificate(s) in this PEM file; the chain, validity and server
    /// name are checked as usual.
    CaFile(PathBuf),
    /// Accept exactly the leaf whose SubjectPublicKeyInfo has this SHA-256.
    Spki([u8; 32]),
}

/// The hub's TLS material, loaded or made by [`ensure_hub_ca`].
#[derive(Debug)]
pub struct HubTls {
    ca_cert_path: PathBuf,
    ca_cert_pem: String,
    server_spki_sha256: [u8; 32],
    server_config: Arc<ServerConfig>,
}

impl HubTls {
    /// The rustls server configuration (TLS 1.3, server certificate, no client auth).
    /// Cheap: clones an `Arc`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }

    /// Path of `ca.pem`, the file daemons pin with [`Pin::CaFile`].
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// The CA certificate as PEM text.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// SHA-256 of the server certificate's SubjectPublicKeyInfo, for [`Pin::Spki`].
    pub fn server_spki_sha256(&self) -> [u8; 32] {
        self.server_spki_sha256
    }
}

/// Loads the hub's CA and server certificate from `state_dir`, making whatever is missing
/// (see the module doc for the files and the reuse rules). `server_names` are the DNS
/// names and IP addresses clients dial; at least one is needed.
pub fn ensure_hub_ca(state_dir: &Path, server_names: &[&str]) -> Result<HubTls, TlsError> {
    let names: Vec<ServerName<'static>> = server_names
        .iter()
        .map(|name| parse_server_name(name))
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(TlsError::BadServerName {
            name: String::new(),
        });
    }
    fs::create_dir_all(state_dir).map_err(|source| TlsError::Io {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let ca_cert_path = state_dir.join(CA_CERT_FILE);
    let ca_key_path = state_dir.join(CA_KEY_FILE);
    let server_cert_path = state_dir.join(SERVER_CERT_FILE);
    let server_key_path = state_dir.join(SERVER_KEY_FILE);

    // The CA: kept once made.
    let (ca_key, ca_cert_pem, ca_is_new) = match read_optional(&ca_cert_path)? {
        Some(cert_pem) => {
            let key = load_key(&ca_key_path)?.ok_or_else(|| TlsError::KeyMissing {
                key_path: ca_key_path.clone(),
            })?;
            let cert = parse_one_cert(&cert_pem, &ca_cert_path)?;
            if spki_sha256_of_der(&cert, &ca_cert_path)? != sha256(&spki_of_key(&key)) {
                return Err(TlsError::StateMismatch { path: ca_cert_path });
            }
            (key, cert_pem, false)
        }
        None => {
            let key = new_key()?;
            let cert = ca_params().self_signed(&key).map_err(generation_error)?;
            write_file_atomic(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            let pem = cert.pem();
            write_file_atomic(&ca_cert_path, pem.as_bytes(), 0o644)?;
            log::info!("made a new hub CA in {}", ca_cert_path.display());
            (key, pem, true)
        }
    };
    let ca_certs = parse_certs(&ca_cert_pem, Some(&ca_cert_path))?;
    let verifier = webpki_verifier(&ca_certs)?;

    // The server key: kept once made, so SPKI pins survive restarts.
    let (server_key, key_is_new) = match load_key(&server_key_path)? {
        Some(key) => (key, false),
        None => {
            let key = new_key()?;
            write_file_atomic(&server_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            (key, true)
        }
    };
    let server_spki_sha256 = sha256(&spki_of_key(&server_key));

    // The server certificate: reused while it still verifies for every requested name.
    let existing = if ca_is_new || key_is_new {
        None
    } else {
        match read_optional(&server_cert_path)? {
            Some(pem) => {
                let cert = parse_one_cert(&pem, &server_cert_path)?;
                let fits = spki_sha256_of_der(&cert, &server_cert_path)? == server_spki_sha256
                    && verifies_for_all(&verifier, &cert, &names);
                fits.then_some(cert)
            }
            None => None,
        }
    };
    let server_cert = match existing {
        Some(cert) => cert,
        None => {
            let issuer = rcgen::Issuer::new(ca_params(), &ca_key);
            let cert = server_params(server_names)?
                .signed_by(&server_key, &issuer)
                .map_err(generation_error)?;
            let der = cert.der().clone();
            if !verifies_for_all(&verifier, &der, &names) {
                return Err(TlsError::StateMismatch { path: ca_cert_path });
            }
            write_file_atomic(&server_cert_path, cert.pem().as_bytes(), 0o644)?;
            log::info!(
                "issued a server certificate for {} in {}",
                server_names.join(", "),
                server_cert_path.display()
            );
            der
        }
    };

    let key_der =
        PrivateKeyDer::try_from(server_key.serialize_der()).map_err(|_| TlsError::BadPem {
            path: Some(server_key_path),
            expected: "private key",
        })?;
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config { source })?
        .with_no_client_auth()
        .with_single_cert(vec![server_cert], key_der)
        .map_err(|source| TlsError::Config { source })?;
    Ok(HubTls {
        ca_cert_path,
        ca_cert_pem,
        server_spki_sha256,
        server_config: Arc::new(server_config),
    })
}

/// Builds the client configuration for `pin` (TLS 1.3 only). With [`Pin::CaFile`] the
/// file is read now, bounded by [`MAX_PEM_FILE_BYTES`] and [`MAX_PINNED_CA_CERTS`].
pub fn client_config(pin: &Pin) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config { source })?;
    let config = match pin {
        Pin::CaFile(path) => {
            let pem = read_optional(path)?.ok_or_else(|| TlsError::Io {
                path: path.clone(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
            let certs = parse_certs(&pem, Some(path))?;
            builder
                .with_root_certificates(root_store(&certs)?)
                .with_no_client_auth()
        }
        Pin::Spki(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpkiPinVerifier {
                pin: *pin,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// SHA-256 of the SubjectPublicKeyInfo of the first certificate in `cert_pem`: the value
/// for [`Pin::Spki`].
pub fn spki_sha256_of_pem(cert_pem: &str) -> Result<[u8; 32], TlsError> {
    let certs = parse_certs(cert_pem, None)?;
    let first = certs.first().ok_or(TlsError::BadPem {
        path: None,
        expected: "certificate",
    })?;
    let parsed = ParsedCertificate::try_from(first).map_err(|_| TlsError::BadPem {
        path: None,
        expected: "certificate",
    })?;
    Ok(sha256(parsed.subject_public_key_info().as_ref()))
}

/// The textual form of an SPKI pin: `sha256//` and the standard base64 of the hash, as
/// `curl --pinnedpubkey` takes it.
pub fn spki_pin_to_string(pin: &[u8; 32]) -> String {
    format!(
        "{SPKI_PIN_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(pin)
    )
}

/// Parses the textual form written by [`spki_pin_to_string`]. Surrounding whitespace is
/// ignored; anything else is [`TlsError::BadSpkiPin`].
pub fn parse_spki_pin(text: &str) -> Result<[u8; 32], TlsError> {
    let b64 = text
        .trim()
        .strip_prefix(SPKI_PIN_PREFIX)
        .ok_or(TlsError::BadSpkiPin)?;
    // A 32-byte value is 44 base64 characters; refuse longer input before decoding.
    if b64.len() != 44 {
        return Err(TlsError::BadSpkiPin);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| TlsError::BadSpkiPin)?;
    bytes.try_into().map_err(|_| TlsError::BadSpkiPin)
}

/// Dials `addr` (`host:port`), then runs the TLS handshake for `server_name` with
/// `config`. Each phase has its own limit ([`CONNECT_TIMEOUT_MS`],
/// [`HANDSHAKE_TIMEOUT_MS`]). Nagle is switched off: stanzas are small and latency counts.
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsClientStream, TlsError> {
    let name = parse_server_name(server_name)?;
    let tcp = with_timeout(CONNECT_TIMEOUT_MS, "connect", async {
        TcpStream::connect(addr)
            .await
            .map_err(|source| TlsError::Connect {
                addr: addr.to_owned(),
                source,
            })
    })
    .await?;
    // Best effort: a socket that refuses the option still works, only a little slower.
    if let Err(err) = tcp.set_nodelay(true) {
        log::debug!("TCP_NODELAY refused: {err}");
    }
    let connector = futures_rustls::TlsConnector::from(config);
    with_timeout(HANDSHAKE_TIMEOUT_MS, "handshake", async {
        connector.connect(name, tcp).await.map_err(handshake_error)
    })
    .await
}

/// Runs the server side of the TLS handshake on an accepted socket, within
/// [`HANDSHAKE_TIMEOUT_MS`]. Nagle is switched off.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
) -> Result<TlsServerStream, TlsError> {
    if let Err(err) = tcp.set_nodelay(true) {
        log::debug!("TCP_NODELAY refused: {err}");
    }
    let acceptor = futures_rustls::TlsAcceptor::from(config);
    with_timeout(HANDSHAKE_TIMEOUT_MS, "handshake", async {
        acceptor.accept(tcp).await.map_err(handshake_error)
    })
    .await
}

/// Accepts exactly one leaf, by the SHA-256 of its SubjectPublicKeyInfo, and still checks
/// that the peer signed the handshake with that leaf's key.
#[derive(Debug)]
struct SpkiPinVerifier {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpkiPinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let seen = sha256(parsed.subject_public_key_info().as_ref());
        // Not a secret, but compare without an early exit anyway.
        let differs = seen
            .iter()
            .zip(self.pin.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs == 0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::BadServerName {
        name: name.to_owned(),
    })
}

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params
}

fn server_params(server_names: &[&str]) -> Result<rcgen::CertificateParams, TlsError> {
    let names: Vec<String> = server_names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).map_err(generation_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SERVER_COMMON_NAME);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    rand::rng().fill(&mut bytes);
    // A positive INTEGER of exactly SERIAL_BYTES bytes, never zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn new_key() -> Result<rcgen::KeyPair, TlsError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generation_error)
}

fn generation_error(err: rcgen::Error) -> TlsError {
    TlsError::CertGeneration {
        detail: err.to_string(),
    }
}

fn load_key(path: &Path) -> Result<Option<rcgen::KeyPair>, TlsError> {
    let Some(pem) = read_optional(path)? else {
        return Ok(None);
    };
    rcgen::KeyPair::from_pem(&pem)
        .map(Some)
        .map_err(|_| TlsError::BadPem {
            path: Some(path.to_path_buf()),
            expected: "private key",
        })
}

fn spki_of_key(key: &rcgen::KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData as _;
    key.subject_public_key_info()
}

fn spki_sha256_of_der(cert: &CertificateDer<'_>, path: &Path) -> Result<[u8; 32], TlsError> {
    let parsed = ParsedCertificate::try_from(cert).map_err(|_| TlsError::BadPem {
        path: Some(path.to_path_buf()),
        expected: "certificate",
    })?;
    Ok(sha256(parsed.subject_public_key_info().as_ref()))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Every certificate in `pem`, at least one and at most [`MAX_PINNED_CA_CERTS`].
fn parse_certs(pem: &str, path: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = || TlsError::BadPem {
        path: path.map(Path::to_path_buf),
        expected: "certificate",
    };
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        if certs.len() == MAX_PINNED_CA_CERTS {
            return Err(bad());
        }
        certs.push(item.map_err(|_| bad())?);
    }
    if certs.is_empty() {
        return Err(bad());
    }
    Ok(certs)
}

fn parse_one_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    parse_certs(pem, Some(path))?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::BadPem {
            path: Some(path.to_path_buf()),
            expected: "certificate",
        })
}

fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|source| TlsError::Config { source })?;
    }
    Ok(roots)
}

fn webpki_verifier(
    ca_certs: &[CertificateDer<'static>],
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(root_store(ca_certs)?),
        provider(),
    )
    .build()
    .map_err(|err| TlsError::Config {
        source: rustls::Error::General(err.to_string()),
    })
}

fn verifies_for_all(
    verifier: &rustls::client::WebPkiServerVerifier,
    cert: &CertificateDer<'static>,
    names: &[ServerName<'static>],
) -> bool {
    let now = UnixTime::now();
    names.iter().all(|name| {
        verifier
            .verify_server_cert(cert, &[], name, &[], now)
            .is_ok()
    })
}

/// Reads a whole file of at most [`MAX_PEM_FILE_BYTES`]; `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, TlsError> {
    let io_error = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(err)),
    };
    let mut text = String::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::FileTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(text))
}

fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::state_dir::write_file_atomic(path, bytes, mode)
        .map_err(|(path, source)| TlsError::Io { path, source })
}

fn handshake_error(err: io::Error) -> TlsError {
    let rejected = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(cert_err) => Some(format!("{cert_err:?}")),
            _ => None,
        });
    match rejected {
        Some(detail) => TlsError::CertificateRejected { detail },
        None => TlsError::Handshake { source: err },
    }
}

async fn with_timeout<T>(
    limit_ms: u64,
    phase: &'static str,
    work: impl Future<Output = Result<T, TlsError>>,
) -> Result<T, TlsError> {
    futures_lite::future::or(work, async {
        smol::Timer::after(Duration::from_millis(limit_ms)).await;
        Err(TlsError::Timeout {
            phase,
            after_ms: limit_ms,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn first_start_writes_four_files_with_private_keys_at_0600() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ensure_hub_ca(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
        assert_eq!(mode_of(&dir.path().join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir.path().join(SERVER_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir.path().join(CA_CERT_FILE)), 0o644);
        assert_eq!(mode_of(&dir.path().join(SERVER_CERT_FILE)), 0o644);
        assert_eq!(tls.ca_cert_path(), dir.path().join(CA_CERT_FILE));
        let on_disk = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(tls.ca_cert_pem(), on_disk);
        let server_pem = fs::read_to_string(dir.path().join(SERVER_CERT_FILE)).unwrap();
        assert_eq!(
            spki_sha256_of_pem(&server_pem).unwrap(),
            tls.server_spki_sha256()
        );
    }

    #[test]
    fn second_start_reuses_every_file_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        let read_all = || {
            [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE]
                .map(|f| fs::read(dir.path().join(f)).unwrap())
        };
        let before = read_all();
        ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        assert_eq!(before, read_all());
    }

    #[test]
    fn a_new_server_name_reissues_the_certificate_but_keeps_ca_and_server_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        let server_before = fs::read(dir.path().join(SERVER_CERT_FILE)).unwrap();
        let second = ensure_hub_ca(dir.path(), &["localhost", "hub.example"]).unwrap();
        assert_ne!(
            server_before,
            fs::read(dir.path().join(SERVER_CERT_FILE)).unwrap()
        );
        assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
        assert_eq!(first.server_spki_sha256(), second.server_spki_sha256());
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = ensure_hub_ca(dir.path(), &["localhost"]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMissing { .. }), "{err}");
    }

    #[test]
    fn a_lone_key_left_by_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), b"half-written").unwrap();
        ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        let key = fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(key.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_ca_certificate_of_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
        ensure_hub_ca(other.path(), &["localhost"]).unwrap();
        fs::copy(
            other.path().join(CA_CERT_FILE),
            dir.path().join(CA_CERT_FILE),
        )
        .unwrap();
        let err = ensure_hub_ca(dir.path(), &["localhost"]).unwrap_err();
        assert!(matches!(err, TlsError::StateMismatch { .. }), "{err}");
    }

    #[test]
    fn an_oversize_pem_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pem");
        fs::write(&path, vec![b'A'; MAX_PEM_FILE_BYTES as usize + 1]).unwrap();
        let err = client_config(&Pin::CaFile(path)).unwrap_err();
        assert!(matches!(err, TlsError::FileTooLarge { .. }), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        fs::write(&path, "no pem here\n").unwrap();
        let err = client_config(&Pin::CaFile(path)).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { .. }), "{err}");
    }

    #[test]
    fn an_invalid_server_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_hub_ca(dir.path(), &["not a name"]).unwrap_err();
        assert!(matches!(err, TlsError::BadServerName { .. }), "{err}");
        let err = ensure_hub_ca(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::BadServerName { .. }), "{err}");
    }

    #[test]
    fn spki_pin_text_form_is_curl_compatible() {
        let pin = [0xab; 32];
        let text = spki_pin_to_string(&pin);
        assert!(text.starts_with("sha256//"));
        assert_eq!(parse_spki_pin(&format!(" {text}\n")).unwrap(), pin);
        assert!(matches!(
            parse_spki_pin("sha256/abc"),
            Err(TlsError::BadSpkiPin)
        ));
    }

    proptest! {
        #[test]
        fn spki_pin_round_trips(pin in any::<[u8; 32]>()) {
            prop_assert_eq!(parse_spki_pin(&spki_pin_to_string(&pin)).unwrap(), pin);
        }

        #[test]
        fn spki_pin_parser_never_panics(text in ".{0,80}") {
            let _ = parse_spki_pin(&text);
        }
    }

    /// Starts a one-connection TLS echo server on loopback; returns its address.
    fn spawn_echo_server(
        ex: &smol::LocalExecutor<'static>,
        config: Arc<ServerConfig>,
    ) -> std::net::SocketAddr {
        let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        ex.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = accept(Arc::clone(&config), tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 5];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls.write_all(&buf).await;
                    let _ = tls.flush().await;
                }
            }
        })
        .detach();
        addr
    }

    fn round_trip(pin: &Pin, server_name: &str) -> Result<(), TlsError> {
        let dir = tempfile::tempdir().unwrap();
        let hub = ensure_hub_ca(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
        let pin = match pin {
            Pin::CaFile(path) if path.as_os_str() == "HUB" => {
                Pin::CaFile(hub.ca_cert_path().to_path_buf())
            }
            Pin::Spki(bytes) if *bytes == [0; 32] => Pin::Spki(hub.server_spki_sha256()),
            other => other.clone(),
        };
        let ex = smol::LocalExecutor::new();
        let addr = spawn_echo_server(&ex, hub.server_config());
        smol::block_on(ex.run(async {
            let config = client_config(&pin)?;
            let mut tls = connect(&addr.to_string(), server_name, config).await?;
            tls.write_all(b"hello").await.unwrap();
            tls.flush().await.unwrap();
            let mut back = [0u8; 5];
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            assert_eq!(
                tls.get_ref().1.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            Ok(())
        }))
    }

    fn hub_ca() -> Pin {
        Pin::CaFile(PathBuf::from("HUB"))
    }

    fn hub_spki() -> Pin {
        Pin::Spki([0; 32])
    }

    #[test]
    fn handshake_succeeds_with_the_hub_ca_pinned() {
        round_trip(&hub_ca(), "localhost").unwrap();
        round_trip(&hub_ca(), "127.0.0.1").unwrap();
    }

    #[test]
    fn handshake_succeeds_with_the_server_spki_pinned_whatever_the_name() {
        round_trip(&hub_spki(), "localhost").unwrap();
        round_trip(&hub_spki(), "any.name.example").unwrap();
    }

    #[test]
    fn handshake_is_refused_for_a_name_the_certificate_does_not_cover() {
        let err = round_trip(&hub_ca(), "other.example").unwrap_err();
        assert!(matches!(err, TlsError::CertificateRejected { .. }), "{err}");
    }

    #[test]
    fn handshake_is_refused_with_a_wrong_spki_pin() {
        let err = round_trip(&Pin::Spki([7; 32]), "localhost").unwrap_err();
        assert!(matches!(err, TlsError::CertificateRejected { .. }), "{err}");
    }

    #[test]
    fn handshake_is_refused_with_another_hubs_ca_pinned() {
        let other = tempfile::tempdir().unwrap();
        let other_hub = ensure_hub_ca(other.path(), &["localhost"]).unwrap();
        let err = round_trip(
            &Pin::CaFile(other_hub.ca_cert_path().to_path_buf()),
            "localhost",
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::CertificateRejected { .. }), "{err}");
    }

    #[test]
    fn connect_to_a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let config = client_config(&Pin::Spki([1; 32])).unwrap();
        let err = smol::block_on(connect(&addr.to_string(), "localhost", config)).unwrap_err();
        assert!(matches!(err, TlsError::Connect { .. }), "{err}");
    }
}
