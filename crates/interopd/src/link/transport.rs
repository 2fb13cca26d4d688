//! The link's transport, with the only `.await`s on the gatekeeper's socket. It moves stanza
//! payloads (their `interop-xml/1` text, the engine's one form) over either profile:
//!
//! - `interop-xml/1`: a pinned TLS connection, each payload in a length-prefixed frame;
//! - `wa`: plain TCP, the `WA` prologue and a Noise XX handshake whose server chain must lead
//!   to the pinned root and whose `ClientFinish` carries our `ClientPayload`; then each
//!   payload is one binary node in one sealed frame ([`WaStream`] converts at the edge).
//!
//! It knows payloads, not stanzas; the [`Engine`] decides what goes out and reads what comes
//! in.
//!
//! [`Engine`]: crate::engine::Engine

use std::fmt;
use std::time::Duration;

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use interop_proto::noise::{NoiseError, PrivateKey, RootPin};
use interop_proto::wa_stream::{DialStep, WaDial, WaStream, WaStreamError};
use smol::net::TcpStream;

use crate::frame::{self, FrameReader, framed};

/// Bytes read from the socket at a time.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Time allowed for the TCP connect of a `wa` dial, in milliseconds: the TLS path's
/// ([`crate::tls::CONNECT_TIMEOUT_MS`]).
pub const WA_CONNECT_TIMEOUT_MS: u64 = crate::tls::CONNECT_TIMEOUT_MS;
/// Time allowed for a `wa` Noise handshake, from our `ClientHello` to the server's
/// authenticated `ServerHello`, in milliseconds.
pub const WA_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Why a dial failed. Each variant says whose fault it is; none carries key bytes or the
/// token.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// `interop-xml/1`. Environment or server: TCP or TLS failed (including a pin mismatch).
    Tls(crate::tls::TlsError),
    /// `wa`. Network: the TCP connection could not be made. The link retries with backoff.
    WaConnect {
        addr: String,
        source: std::io::Error,
    },
    /// `wa`. Network or a stalled gatekeeper: `phase` (`"connect"` or `"handshake"`) did not
    /// finish within `after_ms`.
    WaTimeout { phase: &'static str, after_ms: u64 },
    /// `wa`. Network or gatekeeper: the socket failed or closed during the handshake (a
    /// gatekeeper that does not speak `wa` on this port usually just closes).
    WaClosed { source: Option<std::io::Error> },
    /// `wa`. Gatekeeper or configuration: the Noise handshake failed (pin, chain, clock),
    /// or, for [`NoiseError::ApiMisuse`] and [`NoiseError::Rng`], our side could not start.
    WaHandshake(WaStreamError),
    /// `wa`. Environment (our store): the client could not read its identity for the
    /// handshake.
    WaClient { detail: String },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tls(e) => write!(f, "{e}"),
            ConnectError::WaConnect { addr, source } => write!(f, "connect to {addr}: {source}"),
            ConnectError::WaTimeout { phase, after_ms } => {
                write!(f, "wa {phase} timed out after {after_ms} ms")
            }
            ConnectError::WaClosed { source: None } => f.write_str(
                "the gatekeeper closed the connection during the Noise handshake: check that [gatekeeper] address speaks profile \"wa\"",
            ),
            ConnectError::WaClosed { source: Some(e) } => {
                write!(f, "the connection failed during the Noise handshake: {e}")
            }
            ConnectError::WaHandshake(WaStreamError::Noise(n)) => match n {
                NoiseError::PinMismatch => f.write_str(
                    "the gatekeeper's certificate chain does not lead to [gatekeeper] noise_root: check the pin, or the address points at another server",
                ),
                NoiseError::CertExpired { .. } => write!(
                    f,
                    "the gatekeeper's Noise certificate is outside its validity window ({n}): check this machine's clock, or the gatekeeper's certificates"
                ),
                NoiseError::ApiMisuse { .. } | NoiseError::Rng => {
                    write!(f, "could not start our Noise handshake (our side): {n}")
                }
                _ => write!(f, "the gatekeeper's Noise handshake is invalid: {n}"),
            },
            ConnectError::WaHandshake(e) => write!(f, "the Noise handshake failed: {e}"),
            ConnectError::WaClient { detail } => {
                write!(f, "cannot read our identity for the Noise handshake: {detail}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

enum Wire {
    Tls {
        stream: Box<crate::tls::TlsClientStream>,
        reader: FrameReader,
    },
    Wa {
        tcp: TcpStream,
        stream: Box<WaStream>,
    },
}

/// A connection to the gatekeeper on either profile.
pub struct Transport {
    wire: Wire,
    buf: Vec<u8>,
}

/// What one wait on the socket gave.
pub enum ReadOutcome {
    /// The deadline passed.
    TimedOut,
    /// The caller's wake listener fired (new outbox rows, a read mark).
    Woken,
    /// The peer closed, or the read failed.
    Closed,
    /// `interop-xml/1`: the peer broke the framing; the connection is unusable.
    BadFrame(frame::FrameError),
    /// `wa`: the peer sent a frame that does not open, or a node that is not a stanza; the
    /// connection is unusable.
    BadStream(WaStreamError),
    /// Whole stanza payloads (possibly none, when a read ended mid-frame).
    Frames(Vec<Vec<u8>>),
}

async fn within<T>(
    limit_ms: u64,
    phase: &'static str,
    work: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    work.or(async {
        smol::Timer::after(Duration::from_millis(limit_ms)).await;
        Err(ConnectError::WaTimeout {
            phase,
            after_ms: limit_ms,
        })
    })
    .await
}

impl Transport {
    /// `interop-xml/1`: dials `addr` and authenticates the server by `pin`.
    pub async fn open(
        addr: &str,
        server_name: &str,
        pin: &crate::tls::Pin,
    ) -> Result<Transport, crate::tls::TlsError> {
        let config = crate::tls::client_config(pin)?;
        let stream = crate::tls::connect(addr, server_name, config).await?;
        Ok(Transport {
            wire: Wire::Tls {
                stream: Box::new(stream),
                reader: FrameReader::default(),
            },
            buf: vec![0u8; READ_CHUNK_BYTES],
        })
    }

    /// `wa` as `client`: its identity is the Noise static key and its `ClientPayload` carries
    /// the provider `token` and why we connect ([`Transport::open_wa`]).
    pub async fn open_wa_as(
        client: &crate::client::Client,
        addr: &str,
        pin: RootPin,
        token: &str,
        reason: interop_proto::noise::wire::ConnectReason,
    ) -> Result<Transport, ConnectError> {
        let (hello, key) = client
            .wa_hello(None, reason)
            .map_err(|e| ConnectError::WaClient {
                detail: e.to_string(),
            })?;
        let payload = interop_proto::wa_login::client_payload(&hello, token);
        Transport::open_wa(addr, pin, &key, payload).await
    }

    /// `wa`: dials `addr`, runs the Noise handshake as `static_key` (our identity key) to a
    /// server whose chain leads to `pin`, and sends `client_payload` (the encoded
    /// `ClientPayload`, with the token) in our `ClientFinish`. The login's answer comes as
    /// the first stanza.
    pub async fn open_wa(
        addr: &str,
        pin: RootPin,
        static_key: &PrivateKey,
        client_payload: Vec<u8>,
    ) -> Result<Transport, ConnectError> {
        let mut tcp = within(WA_CONNECT_TIMEOUT_MS, "connect", async {
            TcpStream::connect(addr)
                .await
                .map_err(|source| ConnectError::WaConnect {
                    addr: addr.to_owned(),
                    source,
                })
        })
        .await?;
        // Best effort: a socket that refuses the option still works, only a little slower.
        if let Err(e) = tcp.set_nodelay(true) {
            log::debug!("TCP_NODELAY refused: {e}");
        }
        let (mut dial, hello) = WaDial::start(static_key, pin, client_payload, &mut rand::rng())
            .map_err(ConnectError::WaHandshake)?;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let stream = within(WA_HANDSHAKE_TIMEOUT_MS, "handshake", async {
            let io = |source| ConnectError::WaClosed {
                source: Some(source),
            };
            tcp.write_all(&hello).await.map_err(io)?;
            tcp.flush().await.map_err(io)?;
            loop {
                let n = tcp.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Err(ConnectError::WaClosed { source: None });
                }
                let now_unix_s = crate::clock::now_ms() / 1000;
                let got = buf.get(..n).unwrap_or_default();
                match dial
                    .push(got, now_unix_s)
                    .map_err(ConnectError::WaHandshake)?
                {
                    DialStep::NeedMore => {}
                    DialStep::Ready { finish, stream } => {
                        tcp.write_all(&finish).await.map_err(io)?;
                        tcp.flush().await.map_err(io)?;
                        return Ok(stream);
                    }
                }
            }
        })
        .await?;
        Ok(Transport {
            wire: Wire::Wa {
                tcp,
                stream: Box::new(stream),
            },
            buf,
        })
    }

    /// Writes one payload, framed (or sealed) for the profile. The engine only hands out
    /// payloads that fit and are stanzas, so a refusal here is a bug: it is logged and the
    /// payload dropped.
    pub async fn write(&mut self, payload: &[u8]) -> Result<(), ()> {
        let bytes = match &mut self.wire {
            Wire::Tls { .. } => framed(payload).map_err(|e| format!("{e:?}")),
            Wire::Wa { stream, .. } => stream.seal(payload).map_err(|e| e.to_string()),
        };
        match bytes {
            Ok(b) => self.write_raw(&b).await,
            Err(e) => {
                log::error!(
                    "link: a {}-byte payload did not frame (our bug): {e}",
                    payload.len()
                );
                Ok(())
            }
        }
    }

    /// Writes bytes as they are, unframed (tests of hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ()> {
        match &mut self.wire {
            Wire::Tls { stream, .. } => stream.write_all(bytes).await.map_err(|_| ()),
            Wire::Wa { tcp, .. } => tcp.write_all(bytes).await.map_err(|_| ()),
        }
    }

    /// Flushes what [`write`](Self::write) buffered.
    pub async fn flush(&mut self) -> Result<(), ()> {
        match &mut self.wire {
            Wire::Tls { stream, .. } => stream.flush().await.map_err(|_| ()),
            Wire::Wa { tcp, .. } => tcp.flush().await.map_err(|_| ()),
        }
    }

    /// Waits for bytes until `deadline` or until `wake` fires, and returns the whole stanza
    /// payloads they completed. A read cancelled by the timer or a wake consumes nothing:
    /// smol and rustls keep unread bytes in their buffers.
    pub async fn read(
        &mut self,
        deadline: std::time::Instant,
        wake: &mut event_listener::EventListener,
    ) -> ReadOutcome {
        let Transport { wire, buf } = self;
        let read = async {
            let r = match wire {
                Wire::Tls { stream, .. } => stream.read(buf).await,
                Wire::Wa { tcp, .. } => tcp.read(buf).await,
            };
            Some(Some(r))
        };
        let timer = async {
            smol::Timer::at(deadline).await;
            None
        };
        let woken = async {
            wake.await;
            Some(None)
        };
        let n = match read.or(woken).or(timer).await {
            None => return ReadOutcome::TimedOut,
            Some(None) => return ReadOutcome::Woken,
            Some(Some(Ok(0))) | Some(Some(Err(_))) => return ReadOutcome::Closed,
            Some(Some(Ok(n))) => n,
        };
        let got = buf.get(..n).unwrap_or_default();
        match wire {
            Wire::Tls { reader, .. } => match reader.feed(got) {
                Ok(frames) => ReadOutcome::Frames(frames),
                Err(e) => ReadOutcome::BadFrame(e),
            },
            Wire::Wa { stream, .. } => {
                stream.push(got);
                let mut frames = Vec::new();
                loop {
                    match stream.next() {
                        Ok(Some(text)) => frames.push(text),
                        Ok(None) => return ReadOutcome::Frames(frames),
                        // The stanzas before it were whole, but the stream is over: none is
                        // acked, so the gatekeeper delivers them again.
                        Err(e) => return ReadOutcome::BadStream(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wa_dial_errors_say_whose_fault_they_are() {
        let pin = ConnectError::WaHandshake(WaStreamError::Noise(NoiseError::PinMismatch));
        assert_eq!(
            pin.to_string(),
            "the gatekeeper's certificate chain does not lead to [gatekeeper] noise_root: check the pin, or the address points at another server"
        );
        let clock = ConnectError::WaHandshake(WaStreamError::Noise(NoiseError::CertExpired {
            which: interop_proto::noise::CertRole::Leaf,
        }));
        assert!(
            clock.to_string().contains("check this machine's clock"),
            "{clock}"
        );
        let ours = ConnectError::WaHandshake(WaStreamError::Noise(NoiseError::Rng));
        assert!(ours.to_string().contains("(our side)"), "{ours}");
        let closed = ConnectError::WaClosed { source: None };
        assert!(
            closed.to_string().contains("speaks profile \"wa\""),
            "{closed}"
        );
        let slow = ConnectError::WaTimeout {
            phase: "handshake",
            after_ms: WA_HANDSHAKE_TIMEOUT_MS,
        };
        assert_eq!(slow.to_string(), "wa handshake timed out after 10000 ms");
    }

    #[test]
    fn a_wa_dial_to_a_closed_port_is_a_connect_error() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let key = PrivateKey::from_bytes([7; 32]);
        let pin = RootPin {
            key: [1; 32],
            serial: 0,
        };
        let got = smol::block_on(Transport::open_wa(&addr.to_string(), pin, &key, Vec::new()));
        assert!(
            matches!(got, Err(ConnectError::WaConnect { .. })),
            "{:?}",
            got.err()
        );
    }
}
