//! Both roles of the `wa` Noise XX handshake as states named for what they wait for, and the
//! transport both reach. Inputs are frame bodies (from [`super::FrameReader`]); outputs are
//! whole frames ready for the socket. No I/O, no clock (`now_unix_s` comes in), and no
//! randomness but the caller's RNG, drawn once per handshake for the ephemeral key.
//!
//! ```text
//!   initiator: ClientHandshake::start ─▶ ExpectServerHello ─(chain verified)─▶
//!              SendClientFinish ─▶ NoiseTransport
//!   responder: ServerHandshake::start ─▶ ExpectClientHello ─▶ ExpectClientFinish ─▶
//!              ClientFinished { client static, ClientPayload bytes, NoiseTransport }
//! ```
//!
//! The client's transport needs a [`ServerCertVerified`], which only
//! [`super::cert::verify_chain`] makes, so skipping the check does not compile.

use core::fmt;

use prost::Message as _;
use rand::{CryptoRng, Rng};
use ring::aead::{Aad, LessSafeKey};

use super::cert::{self, RootPin, ServerCertVerified};
use super::crypto::{Resolver, aead_key, nonce};
use super::frame::{MAX_WA_FRAME_BYTES, WA_PROLOGUE, encode_frame};
use super::wire::{CertChain, ClientFinish, ClientHello, HandshakeMessage, ServerHello};
use super::{
    KEY_BYTES, MAX_HANDSHAKE_MESSAGE_BYTES, NOISE_PATTERN, NoiseError, PrivateKey, TAG_BYTES,
};

/// Length of an encrypted static key in the handshake (key and tag), in bytes.
pub const SEALED_KEY_BYTES: usize = KEY_BYTES + TAG_BYTES;

/// Frames one transport direction may seal before its counter runs out. WhatsApp's peers
/// write the counter into 4 bytes, so we stop at 2^32 rather than wrap.
pub const MAX_FRAMES_PER_DIRECTION: u64 = 1 << 32;

/// Largest `ClientPayload` the initiator can send, in bytes: one Noise message holds the
/// sealed static key and the sealed payload.
pub const MAX_CLIENT_PAYLOAD_BYTES: usize =
    MAX_HANDSHAKE_MESSAGE_BYTES - SEALED_KEY_BYTES - TAG_BYTES;

fn bad(_: impl Sized) -> NoiseError {
    NoiseError::PeerBadHandshakeMessage
}

fn build(
    static_key: &PrivateKey,
    initiator: bool,
    ephemeral_seed: [u8; KEY_BYTES],
) -> Result<snow::HandshakeState, NoiseError> {
    let misuse = |_| NoiseError::ApiMisuse {
        detail: "noise state refused its parameters",
    };
    let params: snow::params::NoiseParams = NOISE_PATTERN.parse().map_err(misuse)?;
    let builder = snow::Builder::with_resolver(params, Box::new(Resolver::new(ephemeral_seed)))
        .prologue(&WA_PROLOGUE)
        .map_err(misuse)?
        .local_private_key(static_key.bytes())
        .map_err(misuse)?;
    if initiator {
        builder.build_initiator().map_err(misuse)
    } else {
        builder.build_responder().map_err(misuse)
    }
}

fn seed<R: Rng + CryptoRng>(rng: &mut R) -> [u8; KEY_BYTES] {
    let mut seed = [0u8; KEY_BYTES];
    rng.fill_bytes(&mut seed);
    seed
}

/// One handshake frame body as the `HandshakeMessage` it must be.
fn decode_handshake(frame: &[u8]) -> Result<HandshakeMessage, NoiseError> {
    if frame.len() > MAX_HANDSHAKE_MESSAGE_BYTES {
        return Err(NoiseError::PeerBadHandshakeMessage);
    }
    HandshakeMessage::decode(frame).map_err(bad)
}

fn remote_static(hs: &snow::HandshakeState) -> Result<[u8; KEY_BYTES], NoiseError> {
    hs.get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(NoiseError::PeerBadHandshakeMessage)
}

/// The initiator's entry point.
pub struct ClientHandshake;

impl ClientHandshake {
    /// Starts a handshake with our static key; returns the state and the bytes to send: the
    /// prologue and the `ClientHello` frame.
    pub fn start<R: Rng + CryptoRng>(
        static_key: &PrivateKey,
        rng: &mut R,
    ) -> Result<(ExpectServerHello, Vec<u8>), NoiseError> {
        let mut hs = build(static_key, true, seed(rng))?;
        // snow wants room for a tag even where the first message has none.
        let mut e = [0u8; KEY_BYTES + TAG_BYTES];
        let n = hs.write_message(&[], &mut e).map_err(|_| NoiseError::Rng)?;
        let hello = HandshakeMessage {
            client_hello: Some(ClientHello {
                ephemeral: e.get(..n).map(<[u8]>::to_vec),
                ..ClientHello::default()
            }),
            ..HandshakeMessage::default()
        };
        let mut out = WA_PROLOGUE.to_vec();
        out.extend_from_slice(&encode_frame(&hello.encode_to_vec())?);
        Ok((ExpectServerHello { hs }, out))
    }
}

/// The initiator waits for the `ServerHello` frame.
pub struct ExpectServerHello {
    hs: snow::HandshakeState,
}

impl ExpectServerHello {
    /// Reads the `ServerHello`, then verifies the certificate chain it carries against `pin`
    /// at `now_unix_s`, for the server static this handshake learnt.
    pub fn handle_server_hello(
        mut self,
        frame: &[u8],
        pin: &RootPin,
        now_unix_s: u64,
    ) -> Result<SendClientFinish, NoiseError> {
        let sh = decode_handshake(frame)?
            .server_hello
            .ok_or(NoiseError::PeerBadHandshakeMessage)?;
        let (Some(e), Some(s), Some(payload)) = (sh.ephemeral, sh.r#static, sh.payload) else {
            return Err(NoiseError::PeerBadHandshakeMessage);
        };
        if e.len() != KEY_BYTES || s.len() != SEALED_KEY_BYTES || payload.len() < TAG_BYTES {
            return Err(NoiseError::PeerBadHandshakeMessage);
        }
        let mut message = e;
        message.extend_from_slice(&s);
        message.extend_from_slice(&payload);
        if message.len() > MAX_HANDSHAKE_MESSAGE_BYTES {
            return Err(NoiseError::PeerBadHandshakeMessage);
        }
        let mut chain = vec![0u8; message.len()];
        let n = self.hs.read_message(&message, &mut chain).map_err(bad)?;
        chain.truncate(n);
        let server_static = remote_static(&self.hs)?;
        let verified = cert::verify_chain(&chain, pin, &server_static, now_unix_s)?;
        Ok(SendClientFinish {
            hs: self.hs,
            verified,
        })
    }
}

/// The initiator has verified the server and sends its `ClientFinish`.
pub struct SendClientFinish {
    hs: snow::HandshakeState,
    verified: ServerCertVerified,
}

impl SendClientFinish {
    /// What the verified chain vouched for.
    pub fn server_cert(&self) -> &ServerCertVerified {
        &self.verified
    }

    /// Seals our static key and `client_payload` (an encoded `ClientPayload`); returns the
    /// transport and the `ClientFinish` frame to send.
    pub fn finish(
        mut self,
        client_payload: &[u8],
    ) -> Result<(NoiseTransport, Vec<u8>), NoiseError> {
        if client_payload.len() > MAX_CLIENT_PAYLOAD_BYTES {
            return Err(NoiseError::ApiMisuse {
                detail: "ClientPayload longer than one Noise message holds",
            });
        }
        let mut message = vec![0u8; SEALED_KEY_BYTES + client_payload.len() + TAG_BYTES];
        let n = self
            .hs
            .write_message(client_payload, &mut message)
            .map_err(|_| NoiseError::ApiMisuse {
                detail: "noise state refused ClientFinish",
            })?;
        message.truncate(n);
        let (s, payload) = message.split_at(SEALED_KEY_BYTES.min(message.len()));
        let finish = HandshakeMessage {
            client_finish: Some(ClientFinish {
                r#static: Some(s.to_vec()),
                payload: Some(payload.to_vec()),
            }),
            ..HandshakeMessage::default()
        };
        let frame = encode_frame(&finish.encode_to_vec())?;
        let transport = NoiseTransport::client(&mut self.hs, self.verified);
        Ok((transport, frame))
    }
}

/// The responder's entry point.
pub struct ServerHandshake;

impl ServerHandshake {
    /// Prepares to answer one client with our static key and the chain that vouches for it.
    /// The shell reads the client's bytes with [`super::FrameReader::expecting_prologue`].
    pub fn start<R: Rng + CryptoRng>(
        static_key: &PrivateKey,
        chain: &CertChain,
        rng: &mut R,
    ) -> Result<ExpectClientHello, NoiseError> {
        Ok(ExpectClientHello {
            hs: build(static_key, false, seed(rng))?,
            chain: chain.encode_to_vec(),
        })
    }
}

/// The responder waits for the `ClientHello` frame (after the prologue).
pub struct ExpectClientHello {
    hs: snow::HandshakeState,
    chain: Vec<u8>,
}

impl ExpectClientHello {
    /// Reads the `ClientHello`; returns the next state and the `ServerHello` frame to send.
    pub fn handle_client_hello(
        mut self,
        frame: &[u8],
    ) -> Result<(ExpectClientFinish, Vec<u8>), NoiseError> {
        let e = decode_handshake(frame)?
            .client_hello
            .and_then(|ch| ch.ephemeral)
            .ok_or(NoiseError::PeerBadHandshakeMessage)?;
        if e.len() != KEY_BYTES {
            return Err(NoiseError::PeerBadHandshakeMessage);
        }
        let mut nothing = [0u8; KEY_BYTES + TAG_BYTES];
        self.hs.read_message(&e, &mut nothing).map_err(bad)?;
        let mut message = vec![0u8; KEY_BYTES + SEALED_KEY_BYTES + self.chain.len() + TAG_BYTES];
        let n = self
            .hs
            .write_message(&self.chain, &mut message)
            // A low-order client ephemeral makes our DH refuse it.
            .map_err(bad)?;
        message.truncate(n);
        let (e, rest) = message.split_at(KEY_BYTES.min(message.len()));
        let (s, payload) = rest.split_at(SEALED_KEY_BYTES.min(rest.len()));
        let hello = HandshakeMessage {
            server_hello: Some(ServerHello {
                ephemeral: Some(e.to_vec()),
                r#static: Some(s.to_vec()),
                payload: Some(payload.to_vec()),
            }),
            ..HandshakeMessage::default()
        };
        Ok((
            ExpectClientFinish { hs: self.hs },
            encode_frame(&hello.encode_to_vec())?,
        ))
    }
}

/// The responder waits for the `ClientFinish` frame.
pub struct ExpectClientFinish {
    hs: snow::HandshakeState,
}

/// What the responder learnt: check `client_payload` (its token) before using `transport`.
pub struct ClientFinished {
    /// The client's Noise static public key.
    pub client_static: [u8; KEY_BYTES],
    /// The decrypted, still encoded `ClientPayload`.
    pub client_payload: Vec<u8>,
    pub transport: NoiseTransport,
}

impl fmt::Debug for ClientFinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFinished")
            .field("client_payload_bytes", &self.client_payload.len())
            .finish_non_exhaustive()
    }
}

impl ExpectClientFinish {
    /// Reads the `ClientFinish`; returns the client's static key, its payload and the
    /// transport.
    pub fn handle_client_finish(mut self, frame: &[u8]) -> Result<ClientFinished, NoiseError> {
        let cf = decode_handshake(frame)?
            .client_finish
            .ok_or(NoiseError::PeerBadHandshakeMessage)?;
        let (Some(s), Some(payload)) = (cf.r#static, cf.payload) else {
            return Err(NoiseError::PeerBadHandshakeMessage);
        };
        if s.len() != SEALED_KEY_BYTES || payload.len() < TAG_BYTES {
            return Err(NoiseError::PeerBadHandshakeMessage);
        }
        let mut message = s;
        message.extend_from_slice(&payload);
        if message.len() > MAX_HANDSHAKE_MESSAGE_BYTES {
            return Err(NoiseError::PeerBadHandshakeMessage);
        }
        let mut client_payload = vec![0u8; message.len()];
        let n = self
            .hs
            .read_message(&message, &mut client_payload)
            .map_err(bad)?;
        client_payload.truncate(n);
        let client_static = remote_static(&self.hs)?;
        Ok(ClientFinished {
            client_static,
            client_payload,
            transport: NoiseTransport::server(&mut self.hs),
        })
    }
}

/// The sealed frames after the handshake: one AES-256-GCM key and implicit counter per
/// direction, no associated data. A frame that fails to open ends the transport: every
/// later call fails with [`NoiseError::DecryptFailed`].
pub struct NoiseTransport {
    send: LessSafeKey,
    recv: LessSafeKey,
    sent: u64,
    received: u64,
    broken: bool,
    max_frame_bytes: usize,
}

impl fmt::Debug for NoiseTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseTransport")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl NoiseTransport {
    /// The client's transport; the proof token is why it cannot exist unverified.
    fn client(hs: &mut snow::HandshakeState, _verified: ServerCertVerified) -> NoiseTransport {
        let (initiator_to_responder, responder_to_initiator) = hs.dangerously_get_raw_split();
        NoiseTransport::from_keys(&initiator_to_responder, &responder_to_initiator)
    }

    fn server(hs: &mut snow::HandshakeState) -> NoiseTransport {
        let (initiator_to_responder, responder_to_initiator) = hs.dangerously_get_raw_split();
        NoiseTransport::from_keys(&responder_to_initiator, &initiator_to_responder)
    }

    fn from_keys(send: &[u8; KEY_BYTES], recv: &[u8; KEY_BYTES]) -> NoiseTransport {
        NoiseTransport {
            send: aead_key(send),
            recv: aead_key(recv),
            sent: 0,
            received: 0,
            broken: false,
            max_frame_bytes: MAX_WA_FRAME_BYTES,
        }
    }

    /// Lowers the largest frame this side seals, in bytes (capped at the 3-byte length).
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> NoiseTransport {
        self.max_frame_bytes = max_frame_bytes.min(MAX_WA_FRAME_BYTES);
        self
    }

    /// Seals `plaintext` into a whole frame, ready for the socket.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if plaintext.len() + TAG_BYTES > self.max_frame_bytes {
            return Err(NoiseError::ApiMisuse {
                detail: "plaintext longer than a frame holds",
            });
        }
        if self.sent >= MAX_FRAMES_PER_DIRECTION {
            return Err(NoiseError::ApiMisuse {
                detail: "frame counter exhausted",
            });
        }
        let mut body = plaintext.to_vec();
        self.send
            .seal_in_place_append_tag(nonce(self.sent), Aad::empty(), &mut body)
            .map_err(|_| NoiseError::ApiMisuse {
                detail: "AES-GCM refused to seal",
            })?;
        self.sent += 1;
        encode_frame(&body)
    }

    /// Opens one frame body (as [`super::FrameReader`] returns it).
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if self.broken || self.received >= MAX_FRAMES_PER_DIRECTION {
            return Err(NoiseError::DecryptFailed);
        }
        let mut body = frame.to_vec();
        let len = match self
            .recv
            .open_in_place(nonce(self.received), Aad::empty(), &mut body)
        {
            Ok(plain) => plain.len(),
            Err(_) => {
                self.broken = true;
                return Err(NoiseError::DecryptFailed);
            }
        };
        self.received += 1;
        body.truncate(len);
        Ok(body)
    }
}
