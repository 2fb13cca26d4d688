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
use super::frame::{MAX_WA_FRAME_BYTES, WA_PROLOGUE, encode_frame};
use super::symmetric::{SplitKeys, SymmetricState, aead_key, dh, nonce};
use super::wire::{CertChain, ClientFinish, ClientHello, HandshakeMessage, ServerHello};
use super::{KEY_BYTES, MAX_HANDSHAKE_MESSAGE_BYTES, NoiseError, PrivateKey, TAG_BYTES};

/// Length of an encrypted static key in the handshake (key and tag), in bytes.
pub const SEALED_KEY_BYTES: usize = KEY_BYTES + TAG_BYTES;

/// Frames one transport direction may seal before its counter runs out. WhatsApp's peers
/// write the counter into 4 bytes, so we stop at 2^32 rather than wrap.
pub const MAX_FRAMES_PER_DIRECTION: u64 = 1 << 32;

/// Largest `ClientPayload` the initiator can send, in bytes: one Noise message holds the
/// sealed static key and the sealed payload.
pub const MAX_CLIENT_PAYLOAD_BYTES: usize =
    MAX_HANDSHAKE_MESSAGE_BYTES - SEALED_KEY_BYTES - TAG_BYTES;

/// Largest encoded `CertChain` the responder can send, in bytes: one Noise message holds the
/// ephemeral key, the sealed static key and the sealed chain.
pub const MAX_CHAIN_BYTES: usize =
    MAX_HANDSHAKE_MESSAGE_BYTES - KEY_BYTES - SEALED_KEY_BYTES - TAG_BYTES;

fn bad(_: impl Sized) -> NoiseError {
    NoiseError::PeerBadHandshakeMessage
}

/// One handshake frame body as the `HandshakeMessage` it must be.
fn decode_handshake(frame: &[u8]) -> Result<HandshakeMessage, NoiseError> {
    if frame.len() > MAX_HANDSHAKE_MESSAGE_BYTES {
        return Err(NoiseError::PeerBadHandshakeMessage);
    }
    HandshakeMessage::decode(frame).map_err(bad)
}

/// A public key the peer sent in the clear: exactly 32 bytes.
fn public_key(bytes: &[u8]) -> Result<[u8; KEY_BYTES], NoiseError> {
    bytes.try_into().map_err(bad)
}

/// A sealed static key the peer sent: exactly 48 bytes.
fn sealed_key(bytes: &[u8]) -> Result<&[u8], NoiseError> {
    if bytes.len() == SEALED_KEY_BYTES {
        Ok(bytes)
    } else {
        Err(NoiseError::PeerBadHandshakeMessage)
    }
}

/// A sealed payload the peer sent: at least its tag.
fn sealed_payload(bytes: &[u8]) -> Result<&[u8], NoiseError> {
    if bytes.len() >= TAG_BYTES {
        Ok(bytes)
    } else {
        Err(NoiseError::PeerBadHandshakeMessage)
    }
}

/// The first step of both roles, `-> e` as WhatsApp runs it: `MixHash(e.pub)` and nothing
/// else. Standard Noise would also `MixHash` the message's empty payload here; WhatsApp's
/// clients (pyaileys, Baileys, whatsmeow) do not, so neither do we.
fn after_client_hello(client_ephemeral: &[u8; KEY_BYTES]) -> SymmetricState {
    let mut ss = SymmetricState::new(&WA_PROLOGUE);
    ss.mix_hash(client_ephemeral);
    ss
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
        ClientHandshake::start_with(static_key, PrivateKey::generate(rng))
    }

    /// [`ClientHandshake::start`] with a given ephemeral key (for known-answer tests).
    pub(super) fn start_with(
        static_key: &PrivateKey,
        ephemeral: PrivateKey,
    ) -> Result<(ExpectServerHello, Vec<u8>), NoiseError> {
        let e = ephemeral.public();
        let ss = after_client_hello(&e);
        let hello = HandshakeMessage {
            client_hello: Some(ClientHello {
                ephemeral: Some(e.to_vec()),
                ..ClientHello::default()
            }),
            ..HandshakeMessage::default()
        };
        let mut out = WA_PROLOGUE.to_vec();
        out.extend_from_slice(&encode_frame(&hello.encode_to_vec())?);
        let state = ExpectServerHello {
            ss,
            s: static_key.clone(),
            e: ephemeral,
        };
        Ok((state, out))
    }
}

/// The initiator waits for the `ServerHello` frame.
pub struct ExpectServerHello {
    ss: SymmetricState,
    s: PrivateKey,
    e: PrivateKey,
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
        let (re, s, payload) = (public_key(&e)?, sealed_key(&s)?, sealed_payload(&payload)?);
        // <- e, ee, s, es, payload
        self.ss.mix_hash(&re);
        self.ss.mix_key(dh(&self.e, &re)?);
        let server_static = public_key(&self.ss.decrypt_and_hash(s)?)?;
        self.ss.mix_key(dh(&self.e, &server_static)?);
        let chain = self.ss.decrypt_and_hash(payload)?;
        let verified = cert::verify_chain(&chain, pin, &server_static, now_unix_s)?;
        Ok(SendClientFinish {
            ss: self.ss,
            s: self.s,
            re,
            verified,
        })
    }

    /// The handshake hash so far, for tests that pin it.
    #[cfg(test)]
    pub(super) fn handshake_hash(&self) -> [u8; super::symmetric::HASH_BYTES] {
        self.ss.handshake_hash()
    }
}

/// The initiator has verified the server and sends its `ClientFinish`.
pub struct SendClientFinish {
    ss: SymmetricState,
    s: PrivateKey,
    re: [u8; KEY_BYTES],
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
        // -> s, se, payload
        let s = self.ss.encrypt_and_hash(&self.s.public())?;
        self.ss.mix_key(dh(&self.s, &self.re)?);
        let payload = self.ss.encrypt_and_hash(client_payload)?;
        let finish = HandshakeMessage {
            client_finish: Some(ClientFinish {
                r#static: Some(s),
                payload: Some(payload),
            }),
            ..HandshakeMessage::default()
        };
        let frame = encode_frame(&finish.encode_to_vec())?;
        let transport = NoiseTransport::client(self.ss.split(), self.verified);
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
        ServerHandshake::start_with(static_key, chain, PrivateKey::generate(rng))
    }

    /// [`ServerHandshake::start`] with a given ephemeral key (for known-answer tests).
    pub(super) fn start_with(
        static_key: &PrivateKey,
        chain: &CertChain,
        ephemeral: PrivateKey,
    ) -> Result<ExpectClientHello, NoiseError> {
        let chain = chain.encode_to_vec();
        if chain.len() > MAX_CHAIN_BYTES {
            return Err(NoiseError::ApiMisuse {
                detail: "certificate chain longer than one Noise message holds",
            });
        }
        Ok(ExpectClientHello {
            s: static_key.clone(),
            e: ephemeral,
            chain,
        })
    }
}

/// The responder waits for the `ClientHello` frame (after the prologue).
pub struct ExpectClientHello {
    s: PrivateKey,
    e: PrivateKey,
    chain: Vec<u8>,
}

impl ExpectClientHello {
    /// Reads the `ClientHello`; returns the next state and the `ServerHello` frame to send.
    pub fn handle_client_hello(
        self,
        frame: &[u8],
    ) -> Result<(ExpectClientFinish, Vec<u8>), NoiseError> {
        let re = decode_handshake(frame)?
            .client_hello
            .and_then(|ch| ch.ephemeral)
            .ok_or(NoiseError::PeerBadHandshakeMessage)?;
        let re = public_key(&re)?;
        let mut ss = after_client_hello(&re);
        // <- e, ee, s, es, payload
        let e = self.e.public();
        ss.mix_hash(&e);
        // A low-order client ephemeral is refused here (`PeerLowOrderKey`).
        ss.mix_key(dh(&self.e, &re)?);
        let s = ss.encrypt_and_hash(&self.s.public())?;
        ss.mix_key(dh(&self.s, &re)?);
        let payload = ss.encrypt_and_hash(&self.chain)?;
        let hello = HandshakeMessage {
            server_hello: Some(ServerHello {
                ephemeral: Some(e.to_vec()),
                r#static: Some(s),
                payload: Some(payload),
            }),
            ..HandshakeMessage::default()
        };
        Ok((
            ExpectClientFinish { ss, e: self.e },
            encode_frame(&hello.encode_to_vec())?,
        ))
    }
}

/// The responder waits for the `ClientFinish` frame.
pub struct ExpectClientFinish {
    ss: SymmetricState,
    e: PrivateKey,
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
        let (s, payload) = (sealed_key(&s)?, sealed_payload(&payload)?);
        // -> s, se, payload
        let client_static = public_key(&self.ss.decrypt_and_hash(s)?)?;
        self.ss.mix_key(dh(&self.e, &client_static)?);
        let client_payload = self.ss.decrypt_and_hash(payload)?;
        Ok(ClientFinished {
            client_static,
            client_payload,
            transport: NoiseTransport::server(self.ss.split()),
        })
    }

    /// The handshake hash so far, for tests that pin it.
    #[cfg(test)]
    pub(super) fn handshake_hash(&self) -> [u8; super::symmetric::HASH_BYTES] {
        self.ss.handshake_hash()
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
    fn client(keys: SplitKeys, _verified: ServerCertVerified) -> NoiseTransport {
        NoiseTransport::from_keys(&keys.initiator_to_responder, &keys.responder_to_initiator)
    }

    fn server(keys: SplitKeys) -> NoiseTransport {
        NoiseTransport::from_keys(&keys.responder_to_initiator, &keys.initiator_to_responder)
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
