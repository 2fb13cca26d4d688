//! The link's transport: a pinned TLS connection that moves frame payloads, with the only
//! `.await`s on the gatekeeper's socket. It knows frames, not stanzas; the [`Engine`]
//! decides what goes out and reads what comes in.
//!
//! [`Engine`]: crate::engine::Engine

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};

use crate::frame::{self, FrameReader, framed};

/// Bytes read from the socket at a time.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// A TLS connection to the gatekeeper, framed.
pub struct Transport {
    stream: crate::tls::TlsClientStream,
    reader: FrameReader,
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
    /// The peer broke the framing; the connection is unusable.
    BadFrame(frame::FrameError),
    /// Whole frame payloads (possibly none, when a read ended mid-frame).
    Frames(Vec<Vec<u8>>),
}

impl Transport {
    /// Dials `addr` and authenticates the server by `pin`.
    pub async fn open(
        addr: &str,
        server_name: &str,
        pin: &crate::tls::Pin,
    ) -> Result<Transport, crate::tls::TlsError> {
        let config = crate::tls::client_config(pin)?;
        let stream = crate::tls::connect(addr, server_name, config).await?;
        Ok(Transport {
            stream,
            reader: FrameReader::default(),
            buf: vec![0u8; READ_CHUNK_BYTES],
        })
    }

    /// Frames and writes one payload. The engine only hands out payloads that fit a frame,
    /// so a framing refusal here is a bug: it is logged and the payload dropped.
    pub async fn write(&mut self, payload: &[u8]) -> Result<(), ()> {
        match framed(payload) {
            Ok(f) => self.stream.write_all(&f).await.map_err(|_| ()),
            Err(e) => {
                log::error!(
                    "link: a {}-byte payload did not frame: {e:?}",
                    payload.len()
                );
                Ok(())
            }
        }
    }

    /// Writes bytes as they are, unframed (tests of hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.stream.write_all(bytes).await.map_err(|_| ())
    }

    /// Flushes what [`write`](Self::write) buffered.
    pub async fn flush(&mut self) -> Result<(), ()> {
        self.stream.flush().await.map_err(|_| ())
    }

    /// Waits for bytes until `deadline` or until `wake` fires, and returns the whole frames
    /// they completed. A read cancelled by the timer or a wake consumes nothing: smol and
    /// rustls keep unread bytes in their buffers.
    pub async fn read(
        &mut self,
        deadline: std::time::Instant,
        wake: &mut event_listener::EventListener,
    ) -> ReadOutcome {
        let Transport {
            stream,
            reader,
            buf,
        } = self;
        let read = async { Some(Some(stream.read(buf).await)) };
        let timer = async {
            smol::Timer::at(deadline).await;
            None
        };
        let woken = async {
            wake.await;
            Some(None)
        };
        match read.or(woken).or(timer).await {
            None => ReadOutcome::TimedOut,
            Some(None) => ReadOutcome::Woken,
            Some(Some(Ok(0))) | Some(Some(Err(_))) => ReadOutcome::Closed,
            Some(Some(Ok(n))) => match reader.feed(buf.get(..n).unwrap_or_default()) {
                Ok(frames) => ReadOutcome::Frames(frames),
                Err(e) => ReadOutcome::BadFrame(e),
            },
        }
    }
}
