//! A `wa` connection as a byte pipe, both sides, sans-I/O: the Noise handshake driven from
//! whatever bytes arrive, then the stanza stream, where each sealed frame is one binary node.
//!
//! The engines above keep a stanza's `interop-xml/1` text as its stored and logged form (the
//! outbox row, the hub's offline queue), so this pipe takes and gives that text and converts at
//! the edge: out, text → [`Stanza`] → binary node → sealed frame; in, the reverse. At that edge
//! a WhatsApp user's device 0 becomes the bare user JID, as WhatsApp writes it
//! ([`stanza::wa_jids`]). One stanza model, two encodings ([`crate::stanza`]); the socket sees
//! only the binary one.
//!
//! ```text
//!   client: WaDial::start ─▶ bytes ─▶ … push(bytes) ─▶ DialStep::Ready{finish, stream}
//!   server: WaAccept::start ─▶ push(bytes) ─▶ AcceptStep::Send(hello) ─▶ … AcceptStep::Finished
//!   both:   WaStream::seal(text) ─▶ frame bytes;   push(bytes), next() ─▶ text payloads
//! ```

use core::fmt;

use rand::{CryptoRng, Rng};

use crate::noise::wire::CertChain;
use crate::noise::{
    ClientHandshake, ExpectClientFinish, ExpectClientHello, ExpectServerHello, FrameReader,
    NoiseError, NoiseTransport, PrivateKey, RootPin, ServerHandshake, encode_frame,
};
use crate::stanza::{self, StanzaError};
use crate::stanza::{BinaryError, MAX_INFLATED_NODE_BYTES, Writer, parse_binary};

/// Largest frame either side reads after the handshake: a node of
/// [`MAX_INFLATED_NODE_BYTES`], one flag byte and the GCM tag. Smaller than the transport's
/// 2^24 − 1, because no stanza of ours is bigger.
pub const MAX_WA_STANZA_FRAME_BYTES: usize = MAX_INFLATED_NODE_BYTES + 1 + crate::noise::TAG_BYTES;
/// Largest handshake frame either side reads (a `HandshakeMessage` with a certificate chain
/// or a `ClientPayload`).
pub const MAX_WA_HANDSHAKE_FRAME_BYTES: usize = 16 * 1024;

/// What went wrong on a `wa` stream. All but [`WaStreamError::Ours`] are the peer's fault;
/// the shell logs [`WaStreamError::reason`] and the Display, and closes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WaStreamError {
    /// The Noise layer: handshake, certificate chain, pin, frame size or GCM tag.
    Noise(NoiseError),
    /// Peer: a frame opened but is not a binary node we read (unknown token, too deep, ...).
    Node(BinaryError),
    /// Peer: the node decoded but is not a stanza of the vocabulary.
    Stanza(StanzaError),
    /// Bug (ours): a payload we were given to send is not a stanza, or does not encode.
    Ours { detail: String },
}

impl WaStreamError {
    /// A short fixed code for logs and the close reason.
    pub fn reason(&self) -> &'static str {
        match self {
            WaStreamError::Noise(e) => e.reason(),
            WaStreamError::Node(e) => e.reason(),
            WaStreamError::Stanza(e) => e.reason(),
            WaStreamError::Ours { .. } => "internal",
        }
    }
}

impl fmt::Display for WaStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaStreamError::Noise(e) => write!(f, "{e}"),
            WaStreamError::Node(e) => write!(f, "peer sent a bad binary node: {e}"),
            WaStreamError::Stanza(e) => write!(f, "peer sent a bad stanza: {e}"),
            WaStreamError::Ours { detail } => write!(f, "could not encode our stanza: {detail}"),
        }
    }
}

impl std::error::Error for WaStreamError {}

impl From<NoiseError> for WaStreamError {
    fn from(e: NoiseError) -> Self {
        WaStreamError::Noise(e)
    }
}

/// The stanza stream after a handshake.
pub struct WaStream {
    transport: NoiseTransport,
    reader: FrameReader,
    us: Writer,
}

impl WaStream {
    fn peer(&self) -> Writer {
        match self.us {
            Writer::Client => Writer::Server,
            Writer::Server => Writer::Client,
        }
    }

    /// The bytes to write for one stanza, given as its text.
    pub fn seal(&mut self, text: &[u8]) -> Result<Vec<u8>, WaStreamError> {
        let mut s = stanza::parse(text).map_err(|e| WaStreamError::Ours {
            detail: e.to_string(),
        })?;
        stanza::wa_jids::to_wa(&mut s, self.us);
        let node = s.to_binary(self.us).map_err(|e| WaStreamError::Ours {
            detail: e.to_string(),
        })?;
        Ok(self.transport.seal(&node)?)
    }

    /// Bytes from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.reader.push(bytes);
    }

    /// The next whole stanza from the peer, as text; `Ok(None)` until more bytes arrive.
    // Not an Iterator: each call can fail, and `None` means "not yet", not "never".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Vec<u8>>, WaStreamError> {
        let Some(frame) = self.reader.next_frame()? else {
            return Ok(None);
        };
        let node = self.transport.open(&frame)?;
        let mut s = parse_binary(&node, self.peer()).map_err(WaStreamError::Node)?;
        s.validate().map_err(WaStreamError::Stanza)?;
        stanza::wa_jids::from_wa(&mut s, self.peer());
        Ok(Some(s.to_xml()))
    }
}

/// The client's handshake, fed the server's bytes.
pub struct WaDial {
    state: Option<ExpectServerHello>,
    reader: FrameReader,
    pin: RootPin,
    client_payload: Vec<u8>,
}

/// What a dial did with the bytes it got.
// Made once per connection and taken apart at once, so the big variant is never copied about.
#[allow(clippy::large_enum_variant)]
pub enum DialStep {
    /// Waiting for more of the `ServerHello`.
    NeedMore,
    /// The server is authenticated: write `finish`, then use `stream`.
    Ready { finish: Vec<u8>, stream: WaStream },
}

impl WaDial {
    /// Starts a handshake as `static_key`, to a server whose chain must lead to `pin`, that
    /// will carry `client_payload` (an encoded `ClientPayload`). Write the returned bytes.
    pub fn start<R: Rng + CryptoRng>(
        static_key: &PrivateKey,
        pin: RootPin,
        client_payload: Vec<u8>,
        rng: &mut R,
    ) -> Result<(WaDial, Vec<u8>), WaStreamError> {
        let (state, hello) = ClientHandshake::start(static_key, rng)?;
        Ok((
            WaDial {
                state: Some(state),
                reader: FrameReader::frames_only(MAX_WA_HANDSHAKE_FRAME_BYTES),
                pin,
                client_payload,
            },
            hello,
        ))
    }

    /// Bytes from the server, at `now_unix_s` (for the certificates' windows).
    pub fn push(&mut self, bytes: &[u8], now_unix_s: u64) -> Result<DialStep, WaStreamError> {
        self.reader.push(bytes);
        let Some(frame) = self.reader.next_frame()? else {
            return Ok(DialStep::NeedMore);
        };
        let state = self.state.take().ok_or(NoiseError::ApiMisuse {
            detail: "dial pushed after it was ready",
        })?;
        let finish = state.handle_server_hello(&frame, &self.pin, now_unix_s)?;
        let (transport, finish) = finish.finish(&self.client_payload)?;
        let mut reader = FrameReader::frames_only(MAX_WA_STANZA_FRAME_BYTES);
        // A server may send its first stanza before reading our finish; keep what came.
        reader.push(&self.reader.take_buffered());
        Ok(DialStep::Ready {
            finish,
            stream: WaStream {
                transport,
                reader,
                us: Writer::Client,
            },
        })
    }
}

/// The server's handshake, fed the client's bytes.
pub struct WaAccept {
    state: AcceptState,
    reader: FrameReader,
}

enum AcceptState {
    Hello(ExpectClientHello),
    Finish(ExpectClientFinish),
    Done,
}

/// What an accept did with the bytes it got.
// Made once per connection and taken apart at once, so the big variant is never copied about.
#[allow(clippy::large_enum_variant)]
pub enum AcceptStep {
    /// Waiting for more bytes.
    NeedMore,
    /// Write these bytes (the `ServerHello`), then push more.
    Send(Vec<u8>),
    /// The handshake is complete: the client proved `client_static`; check `client_payload`
    /// (still encoded) before trusting anything on `stream`.
    Finished {
        client_static: [u8; 32],
        client_payload: Vec<u8>,
        stream: WaStream,
    },
}

impl WaAccept {
    /// Prepares to answer one client with our static key and its chain.
    pub fn start<R: Rng + CryptoRng>(
        static_key: &PrivateKey,
        chain: &CertChain,
        rng: &mut R,
    ) -> Result<WaAccept, WaStreamError> {
        Ok(WaAccept {
            state: AcceptState::Hello(ServerHandshake::start(static_key, chain, rng)?),
            reader: FrameReader::expecting_prologue(MAX_WA_HANDSHAKE_FRAME_BYTES),
        })
    }

    /// Bytes from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.reader.push(bytes);
    }

    /// The next step; call until [`AcceptStep::NeedMore`].
    pub fn poll(&mut self) -> Result<AcceptStep, WaStreamError> {
        if matches!(self.state, AcceptState::Done) {
            return Err(NoiseError::ApiMisuse {
                detail: "accept polled after it finished",
            }
            .into());
        }
        let Some(frame) = self.reader.next_frame()? else {
            return Ok(AcceptStep::NeedMore);
        };
        match core::mem::replace(&mut self.state, AcceptState::Done) {
            AcceptState::Hello(h) => {
                let (next, hello) = h.handle_client_hello(&frame)?;
                self.state = AcceptState::Finish(next);
                Ok(AcceptStep::Send(hello))
            }
            AcceptState::Finish(f) => {
                let done = f.handle_client_finish(&frame)?;
                let mut reader = FrameReader::frames_only(MAX_WA_STANZA_FRAME_BYTES);
                reader.push(&self.reader.take_buffered());
                Ok(AcceptStep::Finished {
                    client_static: done.client_static,
                    client_payload: done.client_payload,
                    stream: WaStream {
                        transport: done.transport,
                        reader,
                        us: Writer::Server,
                    },
                })
            }
            AcceptState::Done => Err(NoiseError::ApiMisuse {
                detail: "accept polled after it finished",
            }
            .into()),
        }
    }
}

/// A frame for raw bytes (tests of hostile input that bypass the seal).
pub fn raw_frame(body: &[u8]) -> Result<Vec<u8>, WaStreamError> {
    Ok(encode_frame(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{CertIssuer, CertWindow, issue_chain};

    const NOW: u64 = 1_800_000_000;

    struct Server {
        key: PrivateKey,
        chain: CertChain,
        pin: RootPin,
    }

    fn server(rng: &mut rand::rngs::ThreadRng) -> Server {
        let root = CertIssuer::generate(0, rng);
        let inter = CertIssuer::generate(1, rng);
        let key = PrivateKey::generate(rng);
        let window = CertWindow {
            not_before_unix_s: NOW - 10,
            not_after_unix_s: NOW + 10,
        };
        let chain = issue_chain(&root, &inter, 2, &key.public(), window, rng).unwrap();
        Server {
            key,
            chain,
            pin: root.pin(),
        }
    }

    /// Runs a handshake in memory; returns both streams and what the server learnt.
    fn connect(
        s: &Server,
        pin: RootPin,
    ) -> Result<(WaStream, WaStream, [u8; 32], Vec<u8>), WaStreamError> {
        let rng = &mut rand::rng();
        let client_key = PrivateKey::generate(rng);
        let (mut dial, hello) = WaDial::start(&client_key, pin, b"payload".to_vec(), rng)?;
        let mut accept = WaAccept::start(&s.key, &s.chain, rng)?;
        accept.push(&hello);
        let AcceptStep::Send(server_hello) = accept.poll()? else {
            panic!("no server hello");
        };
        // Split the server hello to show the dial waits for a whole frame.
        let (a, b) = server_hello.split_at(5);
        assert!(matches!(dial.push(a, NOW)?, DialStep::NeedMore));
        let DialStep::Ready {
            finish,
            stream: client,
        } = dial.push(b, NOW)?
        else {
            panic!("dial not ready");
        };
        accept.push(&finish);
        match accept.poll()? {
            AcceptStep::Finished {
                client_static,
                client_payload,
                stream,
            } => {
                assert_eq!(client_static, client_key.public());
                Ok((client, stream, client_static, client_payload))
            }
            _ => panic!("accept not finished"),
        }
    }

    #[test]
    fn stanzas_travel_both_ways_as_binary_nodes() {
        let s = server(&mut rand::rng());
        let (mut c, mut srv, _, payload) = connect(&s, s.pin).unwrap();
        assert_eq!(payload, b"payload");
        let text = br#"<iq id="1" type="get" xmlns="w:p"><ping/></iq>"#;
        let frame = c.seal(text).unwrap();
        assert!(!frame.windows(4).any(|w| w == b"ping"), "sealed, not text");
        srv.push(&frame);
        let got = srv.next().unwrap().unwrap();
        assert_eq!(
            crate::stanza::parse(&got).unwrap(),
            crate::stanza::parse(text).unwrap()
        );
        assert_eq!(srv.next().unwrap(), None);
        let back = br#"<success jid="acme-home:1@interop" t="5" enlisted="true"/>"#;
        c.push(&srv.seal(back).unwrap());
        let got = c.next().unwrap().unwrap();
        assert_eq!(
            crate::stanza::parse(&got).unwrap(),
            crate::stanza::parse(back).unwrap()
        );
    }

    #[test]
    fn device_zero_crosses_as_the_bare_user_and_reads_back_as_device_zero() {
        let s = server(&mut rand::rng());
        let (mut c, mut srv, _, _) = connect(&s, s.pin).unwrap();
        let text = br#"<message id="3EB0AE" to="15550100@s.whatsapp.net" type="text"><participants><to jid="15550100:0@s.whatsapp.net"><enc v="2" type="pkmsg">AAEC</enc></to></participants></message>"#;
        srv.push(&c.seal(text).unwrap());
        let got = srv.next().unwrap().unwrap();
        assert_eq!(
            crate::stanza::parse(&got).unwrap(),
            crate::stanza::parse(text).unwrap()
        );
        // What the peer sees once a frame is opened: the bare user where device 0 stands.
        srv.push(&c.seal(text).unwrap());
        let sealed = srv.reader.next_frame().unwrap().unwrap();
        let node = srv.transport.open(&sealed).unwrap();
        let wire = parse_binary(&node, Writer::Client).unwrap();
        let to = wire.child_named("participants").unwrap();
        let to = to.child_named("to").unwrap();
        assert_eq!(to.attr_value("jid"), Some("15550100@s.whatsapp.net"));
    }

    #[test]
    fn a_wrong_pin_fails_the_dial() {
        let rng = &mut rand::rng();
        let s = server(rng);
        let other = CertIssuer::generate(0, rng).pin();
        let e = connect(&s, other).err().unwrap();
        assert_eq!(e, WaStreamError::Noise(NoiseError::PinMismatch));
    }

    #[test]
    fn a_forged_tag_a_truncated_frame_and_a_bad_node_are_errors() {
        let s = server(&mut rand::rng());
        let (mut c, mut srv, _, _) = connect(&s, s.pin).unwrap();
        let mut frame = c.seal(br#"<ack id="1" class="message"/>"#).unwrap();
        let last = frame.len() - 1;
        frame[last] ^= 1;
        srv.push(&frame);
        assert_eq!(srv.next().unwrap_err().reason(), "decrypt-failed");

        let (mut c, mut srv, _, _) = connect(&s, s.pin).unwrap();
        let frame = c.seal(br#"<ack id="1" class="message"/>"#).unwrap();
        srv.push(&frame[..frame.len() - 1]);
        assert_eq!(srv.next().unwrap(), None, "a truncated frame waits");

        let (mut c, mut srv, _, _) = connect(&s, s.pin).unwrap();
        // A node whose tag is the reserved token 0: sealed correctly, but not a stanza.
        let bad = c.transport.seal(&[0, 248, 1, 0]).unwrap();
        srv.push(&bad);
        let e = srv.next().unwrap_err();
        assert!(matches!(e, WaStreamError::Node(_)), "{e:?}");
    }

    #[test]
    fn a_stream_that_does_not_start_with_the_prologue_is_refused() {
        let rng = &mut rand::rng();
        let s = server(rng);
        let mut accept = WaAccept::start(&s.key, &s.chain, rng).unwrap();
        accept.push(b"\x16\x03\x01\x02\x00");
        assert_eq!(accept.poll().err().unwrap().reason(), "bad-prologue");
    }
}
