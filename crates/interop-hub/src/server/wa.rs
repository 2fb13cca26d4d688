//! The hub's `wa` connections: the first byte of a connection picks its profile ([`sniff`]),
//! then [`serve_wa`] runs the Noise handshake as responder, checks the `ClientPayload` and its
//! provider JWT, hands the verified login to the core and moves stanzas as binary nodes in
//! sealed frames. The core sees the same stanzas, as text, as on `interop-xml/1`.
//!
//! Every refusal is logged with the side at fault; a refusal after the handshake is also told
//! to the client as `<failure reason text/>` before the close, as on `interop-xml/1`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use smol::net::TcpStream;

use super::{ConnCodec, READ_BUFFER_BYTES, Shared, now_ms, run_conn};
use crate::provider::{self, JWT_AUDIENCE};
use crate::state::ConnId;
use interop_proto::jid;
use interop_proto::jwt::{self, Expect, JwtError};
use interop_proto::login::{self, LoginFailure, Verified};
use interop_proto::wa_login::{self, WaClaim};
use interop_proto::wa_stream::{AcceptStep, WaAccept, WaStream};

/// How long a client has to send its first byte, in milliseconds.
pub const SNIFF_TIMEOUT_MS: u64 = 10_000;
/// How long a client has from its first byte to the end of the Noise handshake.
pub const WA_HANDSHAKE_TIMEOUT_MS: u64 = login::LOGIN_TIMEOUT_MS;

/// Which profile a connection speaks, by its first byte.
pub enum Sniffed {
    /// `'W'`: the `wa` prologue.
    Wa,
    /// `0x16`: a TLS handshake record, `interop-xml/1`.
    Tls,
}

/// Peeks at the first byte; `None` (logged) if it is neither profile's or never comes.
pub async fn sniff(tcp: &TcpStream) -> Option<Sniffed> {
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let mut first = [0u8; 1];
    let peeked = async { Some(tcp.peek(&mut first).await) }
        .or(async {
            smol::Timer::after(Duration::from_millis(SNIFF_TIMEOUT_MS)).await;
            None
        })
        .await;
    match peeked {
        Some(Ok(1)) => match first[0] {
            b'W' => Some(Sniffed::Wa),
            0x16 => Some(Sniffed::Tls),
            b => {
                log::info!(
                    "hub: {peer}: first byte 0x{b:02x} is neither the wa prologue ('W') nor a TLS handshake (0x16); closing"
                );
                None
            }
        },
        Some(Ok(_)) | Some(Err(_)) => None,
        None => {
            log::info!("hub: {peer}: sent nothing within {SNIFF_TIMEOUT_MS} ms; closing");
            None
        }
    }
}

/// Why a `wa` handshake or login did not complete, for the log.
enum Refused {
    /// The connection ended or timed out before the handshake finished.
    Gone(&'static str),
    /// The client broke the handshake (bad prologue, bad message, bad tag).
    Handshake(String),
    /// The login was refused; the client was told, and the refusal logged.
    Login,
}

/// Serves one `wa` connection from its first byte to its close.
pub async fn serve_wa(shared: Shared, mut tcp: TcpStream, peer: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_millis(WA_HANDSHAKE_TIMEOUT_MS);
    let (stream, claim) = match handshake(&shared, &mut tcp, peer, deadline).await {
        Ok(done) => done,
        Err(Refused::Gone(why)) => {
            log::info!("hub: wa {peer}: {why}");
            return;
        }
        Err(Refused::Handshake(e)) => {
            log::warn!("hub: wa {peer}: the client broke the Noise handshake: {e}");
            return;
        }
        Err(Refused::Login) => return,
    };
    let mut stream = stream;
    let verified = match check_login(&shared, &claim) {
        Ok(v) => v,
        Err(f) => {
            log::info!(
                "hub: wa {peer}: login of account id {} refused: {} ({f})",
                claim.account_id,
                f.reason()
            );
            let text = login::failure_stanza(&f).to_xml();
            if let Ok(bytes) = stream.seal(&text) {
                let _ = tcp.write_all(&bytes).await;
                let _ = tcp.flush().await;
            }
            return;
        }
    };
    let (tx, rx) = smol::channel::unbounded();
    let conn = {
        let mut sh = shared.borrow_mut();
        let id = sh.hub.connect_verified(verified, now_ms());
        sh.conns.insert(id, tx);
        id
    };
    log::debug!("hub: wa connection {conn} from {peer}");
    run_conn(shared, conn, rx, tcp, WaCodec(stream)).await;
}

/// `wa` after the handshake: one sealed binary node per frame.
struct WaCodec(WaStream);

impl ConnCodec for WaCodec {
    fn decode(&mut self, bytes: &[u8]) -> (Vec<Vec<u8>>, Option<&'static str>) {
        self.0.push(bytes);
        let mut texts = Vec::new();
        loop {
            match self.0.next() {
                Ok(Some(text)) => texts.push(text),
                Ok(None) => return (texts, None),
                Err(e) => {
                    log::warn!("hub: a wa client sent a bad frame: {e}");
                    return (texts, Some(e.reason()));
                }
            }
        }
    }

    fn encode(&mut self, conn: ConnId, text: &[u8]) -> Option<Vec<u8>> {
        match self.0.seal(text) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!("hub: wa connection {conn}: cannot seal a stanza: {e}");
                None
            }
        }
    }
}

/// Runs the responder's handshake until the client's finish, before `deadline`.
async fn handshake(
    shared: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    deadline: std::time::Instant,
) -> Result<(WaStream, WaClaim), Refused> {
    let mut accept = {
        let mut sh = shared.borrow_mut();
        let now_s = now_ms() / 1000;
        let noise = &mut sh.noise;
        let chain = noise.chain(now_s).clone();
        WaAccept::start(noise.static_key(), &chain, &mut rand::rng())
            .map_err(|e| Refused::Handshake(e.to_string()))?
    };
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let read = async { Some(tcp.read(&mut buf).await) }
            .or(async {
                smol::Timer::at(deadline).await;
                None
            })
            .await;
        let n = match read {
            None => return Err(Refused::Gone("the Noise handshake timed out")),
            Some(Ok(0)) | Some(Err(_)) => {
                return Err(Refused::Gone("closed during the Noise handshake"));
            }
            Some(Ok(n)) => n,
        };
        accept.push(buf.get(..n).unwrap_or_default());
        loop {
            match accept
                .poll()
                .map_err(|e| Refused::Handshake(e.to_string()))?
            {
                AcceptStep::NeedMore => break,
                AcceptStep::Send(bytes) => {
                    if tcp.write_all(&bytes).await.is_err() || tcp.flush().await.is_err() {
                        return Err(Refused::Gone("closed during the Noise handshake"));
                    }
                }
                AcceptStep::Finished {
                    client_static,
                    client_payload,
                    mut stream,
                } => {
                    return match wa_login::parse_client_payload(&client_payload, &client_static) {
                        Ok(claim) => Ok((stream, claim)),
                        Err(f) => {
                            log::info!(
                                "hub: wa {peer}: the client's ClientPayload is refused: {f}"
                            );
                            let text = login::failure_stanza(&f).to_xml();
                            if let Ok(bytes) = stream.seal(&text) {
                                let _ = tcp.write_all(&bytes).await;
                                let _ = tcp.flush().await;
                            }
                            Err(Refused::Login)
                        }
                    };
                }
            }
        }
    }
}

/// Finds the account `claim` names and checks its token against the provider's JWKS.
fn check_login(shared: &Shared, claim: &WaClaim) -> Result<Verified, LoginFailure> {
    let state_dir = shared.borrow().state_dir.clone();
    let account = super::FileAccounts::new(&state_dir)
        .by_account_id(claim.account_id)
        .map_err(|e| {
            log::error!("hub: {e}");
            LoginFailure::Internal
        })?
        .ok_or(LoginFailure::UnknownAccount)?;
    let integrator = jid::integrator_of(&account).to_owned();
    let jwks = provider::load_jwks(&state_dir, &integrator)
        .map_err(|e| {
            log::error!("hub: the JWKS of provider {integrator}: {e}");
            LoginFailure::Internal
        })?
        .ok_or_else(|| LoginFailure::TokenRefused {
            reason: "no_provider_keys",
            text: format!("the gatekeeper has no JWKS for provider {integrator}"),
        })?;
    let expect = Expect {
        issuer: &integrator,
        audience: JWT_AUDIENCE,
        subject: &account,
        now_unix_s: now_ms() / 1000,
    };
    match jwt::verify(&claim.token, &jwks, &expect) {
        Ok(_) => Ok(claim.verified(&account, &integrator)),
        Err(JwtError::WrongSubject) => Err(LoginFailure::WrongAccount),
        Err(e) => Err(LoginFailure::TokenRefused {
            reason: e.reason(),
            text: e.to_string(),
        }),
    }
}
