//! The login handshake of profile `interop-xml/1`, both sides, sans-I/O: no I/O, no clock
//! (deadlines are computed from the `now_ms` callers pass), no randomness of its own (the
//! nonce and the signature's randomness come from the caller's RNG). It owns the four
//! login stanzas, the proof string, and the failure reasons. Accounts, tokens and
//! enlistment records belong to the hub; sockets to the shells.
//!
//! ```text
//!   client                                          server
//!   <login v account device integrator/>   ──▶     ExpectLogin
//!                                          ◀──     <challenge>NONCE</challenge>
//!   <auth token registration>                      ExpectAuth
//!     <identity>IK</identity>
//!     <signature>XEdDSA(IK, PROOF)</signature>
//!   </auth>                                ──▶
//!                                          ◀──     <success jid t enlisted/>  or
//!                                                  <failure reason text/> and close
//! ```
//!
//! `PROOF = "interop-xml/1 login\0" || nonce (32 bytes) || device JID (UTF-8)`, the device
//! JID being `{account}:{device}@interop`. The domain string keeps the signature from
//! meaning anything outside this handshake; the fixed-length nonce and the JID last make
//! the concatenation unambiguous.

use std::fmt;

use rand::{CryptoRng, Rng};

use crate::jid::{self, Jid};
use crate::signal::{self, LocalIdentity, RawKey};
use crate::stanza::Stanza;

/// The profile name carried in `<login v>`.
pub const PROTOCOL_VERSION: &str = "interop-xml/1";
/// Domain separation prefix of the signed proof.
pub const PROOF_DOMAIN: &[u8] = b"interop-xml/1 login\0";
/// Length of the server's challenge, in bytes.
pub const NONCE_BYTES: usize = 32;
/// Time a connection has from opening until `<success>`, in milliseconds. The server
/// closes it with `<failure reason="timeout">` after that.
pub const LOGIN_TIMEOUT_MS: u64 = 10_000;
/// Longest provider token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 128;

/// What the client announces in `<login>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub account: String,
    pub device: u32,
    pub integrator: String,
}

impl Hello {
    /// The device JID this login is for.
    pub fn jid(&self) -> Jid {
        Jid::interop(self.account.clone(), Some(self.device))
    }
}

/// What the client proves in `<auth>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proof {
    pub token: String,
    pub registration_id: u32,
    pub identity: RawKey,
    pub signature: [u8; 64],
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("Proof")
            .field("registration_id", &self.registration_id)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Why the server refuses a login. The server sends `<failure reason text>` and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    /// Peer: a login stanza is malformed or arrived out of order.
    BadRequest { detail: &'static str },
    /// Peer: `<login v>` names a profile we do not speak.
    UnsupportedVersion,
    /// Peer (or its configuration): no provider account has this name.
    UnknownAccount,
    /// Peer: the integrator id does not own this account.
    WrongIntegrator,
    /// Peer: the provider token is wrong.
    BadToken,
    /// Peer: the signature does not verify against the identity key.
    BadSignature,
    /// Peer (or its provider): the `wa` profile's provider JWT was refused; `reason` is
    /// the JWT check's code (`token_expired`, `bad_token_signature`, ...), `text` says why.
    TokenRefused { reason: &'static str, text: String },
    /// Peer: the `wa` profile's token names another account than the one it logs in as.
    WrongAccount,
    /// Peer: the login did not complete within [`LOGIN_TIMEOUT_MS`].
    Timeout,
    /// Environment (server side): the server could not read or write its records.
    Internal,
}

impl LoginFailure {
    /// The `reason` attribute of `<failure>`.
    pub fn reason(&self) -> &'static str {
        match self {
            LoginFailure::BadRequest { .. } => "bad_request",
            LoginFailure::UnsupportedVersion => "unsupported_version",
            LoginFailure::UnknownAccount => "unknown_account",
            LoginFailure::WrongIntegrator => "wrong_integrator",
            LoginFailure::BadToken => "bad_token",
            LoginFailure::BadSignature => "bad_signature",
            LoginFailure::TokenRefused { reason, .. } => reason,
            LoginFailure::WrongAccount => "wrong_account",
            LoginFailure::Timeout => "timeout",
            LoginFailure::Internal => "internal",
        }
    }
}

impl fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginFailure::BadRequest { detail } => write!(f, "malformed login: {detail}"),
            LoginFailure::UnsupportedVersion => {
                write!(
                    f,
                    "unsupported protocol version (this server speaks {PROTOCOL_VERSION})"
                )
            }
            LoginFailure::UnknownAccount => f.write_str("no such account"),
            LoginFailure::WrongIntegrator => f.write_str("integrator does not own this account"),
            LoginFailure::BadToken => f.write_str("provider token is wrong"),
            LoginFailure::BadSignature => f.write_str("identity signature does not verify"),
            LoginFailure::TokenRefused { text, .. } => write!(f, "provider token refused: {text}"),
            LoginFailure::WrongAccount => {
                f.write_str("the provider token is for another account than the one logging in")
            }
            LoginFailure::Timeout => f.write_str("login took too long"),
            LoginFailure::Internal => f.write_str("server error"),
        }
    }
}

impl std::error::Error for LoginFailure {}

/// The bytes the client signs: [`PROOF_DOMAIN`] || nonce || device JID.
pub fn proof_message(nonce: &[u8; NONCE_BYTES], device_jid: &Jid) -> Vec<u8> {
    let jid = device_jid.to_string();
    let mut m = Vec::with_capacity(PROOF_DOMAIN.len() + NONCE_BYTES + jid.len());
    m.extend_from_slice(PROOF_DOMAIN);
    m.extend_from_slice(nonce);
    m.extend_from_slice(jid.as_bytes());
    m
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- stanzas ------------------------------------------------------------------------------

/// `<login v account device integrator/>`.
pub fn hello_stanza(hello: &Hello) -> Stanza {
    Stanza::new("login")
        .attr("v", PROTOCOL_VERSION)
        .attr("account", hello.account.clone())
        .attr("device", hello.device.to_string())
        .attr("integrator", hello.integrator.clone())
}

/// Reads `<login>`.
pub fn parse_hello(s: &Stanza) -> Result<Hello, LoginFailure> {
    if s.tag != "login" {
        return Err(LoginFailure::BadRequest {
            detail: "expected <login>",
        });
    }
    let missing = |_| LoginFailure::BadRequest {
        detail: "missing attribute",
    };
    if s.require_attr("v").map_err(missing)? != PROTOCOL_VERSION {
        return Err(LoginFailure::UnsupportedVersion);
    }
    let account = s.require_attr("account").map_err(missing)?;
    let device = s.require_attr("device").map_err(missing)?;
    let integrator = s.require_attr("integrator").map_err(missing)?;
    let jid = Jid::parse(&format!("{account}:{device}@{}", jid::INTEROP_SERVER)).map_err(|_| {
        LoginFailure::BadRequest {
            detail: "bad account or device",
        }
    })?;
    Ok(Hello {
        account: jid.user,
        device: jid.device.unwrap_or(0),
        integrator: integrator.to_owned(),
    })
}

/// `<challenge>NONCE</challenge>`.
pub fn challenge_stanza(nonce: &[u8; NONCE_BYTES]) -> Stanza {
    Stanza::new("challenge").bytes(nonce.to_vec())
}

/// Reads `<challenge>`.
pub fn parse_challenge(s: &Stanza) -> Result<[u8; NONCE_BYTES], LoginError> {
    if s.tag != "challenge" {
        return Err(LoginError::Unexpected { tag: s.tag.clone() });
    }
    s.payload()
        .and_then(|p| <[u8; NONCE_BYTES]>::try_from(p).ok())
        .ok_or(LoginError::Malformed {
            detail: "challenge is not 32 bytes",
        })
}

/// `<auth token registration><identity/><signature/></auth>`.
pub fn auth_stanza(proof: &Proof) -> Stanza {
    Stanza::new("auth")
        .attr("token", proof.token.clone())
        .attr("registration", proof.registration_id.to_string())
        .child(Stanza::new("identity").bytes(proof.identity.to_vec()))
        .child(Stanza::new("signature").bytes(proof.signature.to_vec()))
}

/// Reads `<auth>`.
pub fn parse_auth(s: &Stanza) -> Result<Proof, LoginFailure> {
    let bad = |detail| LoginFailure::BadRequest { detail };
    if s.tag != "auth" {
        return Err(bad("expected <auth>"));
    }
    let token = s.attr_value("token").ok_or(bad("missing token"))?;
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(bad("token length"));
    }
    let registration_id: u32 = s
        .attr_value("registration")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r <= signal::REGISTRATION_ID_MASK)
        .ok_or(bad("bad registration"))?;
    let identity = s
        .child_named("identity")
        .and_then(Stanza::payload)
        .and_then(|p| RawKey::try_from(p).ok())
        .ok_or(bad("identity is not 32 bytes"))?;
    let signature = s
        .child_named("signature")
        .and_then(Stanza::payload)
        .and_then(|p| <[u8; 64]>::try_from(p).ok())
        .ok_or(bad("signature is not 64 bytes"))?;
    Ok(Proof {
        token: token.to_owned(),
        registration_id,
        identity,
        signature,
    })
}

/// `<success jid t enlisted/>`.
pub fn success_stanza(device_jid: &Jid, t_secs: u64, enlisted: bool) -> Stanza {
    Stanza::new("success")
        .attr("jid", device_jid.to_string())
        .attr("t", t_secs.to_string())
        .attr("enlisted", if enlisted { "true" } else { "false" })
}

/// `<failure reason text/>`.
pub fn failure_stanza(f: &LoginFailure) -> Stanza {
    Stanza::new("failure")
        .attr("reason", f.reason())
        .attr("text", f.to_string())
}

// ---- server side --------------------------------------------------------------------------

/// What the server knows about an account when it checks a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub token: String,
    pub integrator: String,
}

/// The server's half of the handshake, named for what it waits for.
#[derive(Debug, Clone)]
pub enum ServerLogin {
    /// Waiting for `<login>`.
    ExpectLogin { deadline_ms: u64 },
    /// Sent `<challenge>`, waiting for `<auth>`.
    ExpectAuth {
        hello: Hello,
        nonce: [u8; NONCE_BYTES],
        deadline_ms: u64,
    },
}

/// A login that passed every check; proof that [`ServerLogin::handle_auth`] ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub hello: Hello,
    pub registration_id: u32,
    pub identity: RawKey,
}

/// What the server does next.
#[derive(Debug)]
pub enum ServerStep {
    /// Send this stanza and keep waiting.
    Send(Stanza),
    /// The client proved itself: look up enlistment, then send [`success_stanza`].
    Verified(Verified),
}

impl ServerLogin {
    /// A fresh connection at `now_ms`.
    pub fn new(now_ms: u64) -> ServerLogin {
        ServerLogin::ExpectLogin {
            deadline_ms: now_ms.saturating_add(LOGIN_TIMEOUT_MS),
        }
    }

    /// When the login times out.
    pub fn deadline_ms(&self) -> u64 {
        match self {
            ServerLogin::ExpectLogin { deadline_ms } => *deadline_ms,
            ServerLogin::ExpectAuth { deadline_ms, .. } => *deadline_ms,
        }
    }

    /// Handles one stanza. `account` looks up an account by name. On `Err`, send
    /// [`failure_stanza`] and close.
    pub fn handle<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        account: impl FnOnce(&str) -> Result<Option<AccountRecord>, LoginFailure>,
        rng: &mut R,
    ) -> Result<ServerStep, LoginFailure> {
        match self {
            ServerLogin::ExpectLogin { deadline_ms } => {
                let hello = parse_hello(s)?;
                let mut nonce = [0u8; NONCE_BYTES];
                rng.fill_bytes(&mut nonce);
                let out = challenge_stanza(&nonce);
                *self = ServerLogin::ExpectAuth {
                    hello,
                    nonce,
                    deadline_ms: *deadline_ms,
                };
                Ok(ServerStep::Send(out))
            }
            ServerLogin::ExpectAuth { hello, nonce, .. } => {
                let proof = parse_auth(s)?;
                let record = account(&hello.account)?.ok_or(LoginFailure::UnknownAccount)?;
                if record.integrator != hello.integrator {
                    return Err(LoginFailure::WrongIntegrator);
                }
                if !constant_time_eq(record.token.as_bytes(), proof.token.as_bytes()) {
                    return Err(LoginFailure::BadToken);
                }
                let message = proof_message(nonce, &hello.jid());
                if !signal::verify_signature(&proof.identity, &message, &proof.signature) {
                    return Err(LoginFailure::BadSignature);
                }
                Ok(ServerStep::Verified(Verified {
                    hello: hello.clone(),
                    registration_id: proof.registration_id,
                    identity: proof.identity,
                }))
            }
        }
    }
}

// ---- client side --------------------------------------------------------------------------

/// Why the client's login did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Server refused: `<failure reason text>`. Wrong config (token, account) or a bug;
    /// the link reports it and does not retry a bad token in a tight loop.
    Refused { reason: String, text: String },
    /// Server misbehaved: a stanza we did not expect at this point.
    Unexpected { tag: String },
    /// Server misbehaved: a login stanza is malformed.
    Malformed { detail: &'static str },
    /// Bug or environment: signing failed.
    Signing,
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Refused { reason, text } => write!(f, "login refused: {reason} ({text})"),
            LoginError::Unexpected { tag } => write!(f, "unexpected <{tag}> during login"),
            LoginError::Malformed { detail } => write!(f, "malformed login stanza: {detail}"),
            LoginError::Signing => f.write_str("could not sign the login proof"),
        }
    }
}

impl std::error::Error for LoginError {}

/// What the server said on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    pub jid: Jid,
    pub t_secs: u64,
    /// This login enlisted the device (first login, or a new identity).
    pub enlisted: bool,
}

/// The client's half of the handshake.
#[derive(Debug, Clone)]
pub enum ClientLogin {
    /// Sent `<login>`, waiting for `<challenge>`.
    ExpectChallenge { hello: Hello, token: String },
    /// Sent `<auth>`, waiting for `<success>` or `<failure>`.
    ExpectResult { hello: Hello },
}

/// What the client does next.
#[derive(Debug)]
pub enum ClientStep {
    Send(Stanza),
    Done(LoggedIn),
}

impl ClientLogin {
    /// Starts a login; send the returned stanza first.
    pub fn start(hello: Hello, token: String) -> (ClientLogin, Stanza) {
        let out = hello_stanza(&hello);
        (ClientLogin::ExpectChallenge { hello, token }, out)
    }

    /// The `wa` profile's login: the handshake already carried the proof and the token
    /// (`wa_login.rs`), so the client only waits for `<success>` or `<failure>`.
    pub fn after_handshake(hello: Hello) -> ClientLogin {
        ClientLogin::ExpectResult { hello }
    }

    /// Handles one stanza from the server.
    pub fn handle<R: Rng + CryptoRng>(
        &mut self,
        s: &Stanza,
        identity: &LocalIdentity,
        rng: &mut R,
    ) -> Result<ClientStep, LoginError> {
        if s.tag == "failure" {
            return Err(LoginError::Refused {
                reason: s.attr_value("reason").unwrap_or("unknown").to_owned(),
                text: s.attr_value("text").unwrap_or("").to_owned(),
            });
        }
        match self {
            ClientLogin::ExpectChallenge { hello, token } => {
                let nonce = parse_challenge(s)?;
                let message = proof_message(&nonce, &hello.jid());
                let signature = identity
                    .sign(&message, rng)
                    .map_err(|_| LoginError::Signing)?;
                let out = auth_stanza(&Proof {
                    token: token.clone(),
                    registration_id: identity.registration_id(),
                    identity: identity.public(),
                    signature,
                });
                *self = ClientLogin::ExpectResult {
                    hello: hello.clone(),
                };
                Ok(ClientStep::Send(out))
            }
            ClientLogin::ExpectResult { hello } => {
                if s.tag != "success" {
                    return Err(LoginError::Unexpected { tag: s.tag.clone() });
                }
                let jid = s
                    .attr_value("jid")
                    .and_then(|j| Jid::parse(j).ok())
                    .filter(|j| *j == hello.jid())
                    .ok_or(LoginError::Malformed {
                        detail: "success names another jid",
                    })?;
                let t_secs = s.attr_value("t").and_then(|t| t.parse().ok()).ok_or(
                    LoginError::Malformed {
                        detail: "success has no time",
                    },
                )?;
                Ok(ClientStep::Done(LoggedIn {
                    jid,
                    t_secs,
                    enlisted: s.attr_value("enlisted") == Some("true"),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello {
            account: "acme-home".into(),
            device: 1,
            integrator: "acme".into(),
        }
    }

    fn record() -> AccountRecord {
        AccountRecord {
            token: "secret-token".into(),
            integrator: "acme".into(),
        }
    }

    /// Runs the handshake through XML both ways; returns the server's verdict.
    fn run(
        token: &str,
        signer: &LocalIdentity,
        claimed: Option<RawKey>,
    ) -> Result<Verified, LoginFailure> {
        let mut rng = rand::rng();
        let mut server = ServerLogin::new(0);
        let (mut client, first) = ClientLogin::start(hello(), token.into());
        let wire = |s: &Stanza| stanza::parse(&s.to_xml()).unwrap();
        let ServerStep::Send(ch) = server
            .handle(&wire(&first), |_| Ok(Some(record())), &mut rng)
            .unwrap()
        else {
            panic!("expected a challenge");
        };
        let ClientStep::Send(auth) = client.handle(&wire(&ch), signer, &mut rng).unwrap() else {
            panic!("expected auth");
        };
        let mut auth = wire(&auth);
        if let Some(k) = claimed {
            auth = auth_stanza(&Proof {
                identity: k,
                ..parse_auth(&auth).unwrap()
            });
        }
        match server.handle(&auth, |_| Ok(Some(record())), &mut rng)? {
            ServerStep::Verified(v) => Ok(v),
            ServerStep::Send(_) => panic!("expected a verdict"),
        }
    }

    #[test]
    fn correct_token_and_signature_are_verified() {
        let id = LocalIdentity::generate(&mut rand::rng());
        let v = run("secret-token", &id, None).unwrap();
        assert_eq!(v.identity, id.public());
        assert_eq!(v.hello, hello());
        assert_eq!(v.registration_id, id.registration_id());
    }

    #[test]
    fn wrong_token_is_refused() {
        let id = LocalIdentity::generate(&mut rand::rng());
        assert_eq!(run("guess", &id, None), Err(LoginFailure::BadToken));
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let id = LocalIdentity::generate(&mut rand::rng());
        let other = LocalIdentity::generate(&mut rand::rng()).public();
        assert_eq!(
            run("secret-token", &id, Some(other)),
            Err(LoginFailure::BadSignature)
        );
    }

    #[test]
    fn wrong_integrator_and_unknown_account_are_refused() {
        let mut rng = rand::rng();
        let id = LocalIdentity::generate(&mut rng);
        for (lookup, want) in [
            (None, LoginFailure::UnknownAccount),
            (
                Some(AccountRecord {
                    integrator: "other".into(),
                    ..record()
                }),
                LoginFailure::WrongIntegrator,
            ),
        ] {
            let mut server = ServerLogin::new(0);
            server
                .handle(&hello_stanza(&hello()), |_| Ok(None), &mut rng)
                .unwrap();
            let auth = auth_stanza(&Proof {
                token: "secret-token".into(),
                registration_id: 1,
                identity: id.public(),
                signature: [0; 64],
            });
            let got = server.handle(&auth, |_| Ok(lookup.clone()), &mut rng);
            assert_eq!(got.err(), Some(want));
        }
    }

    #[test]
    fn other_version_is_unsupported() {
        let s = hello_stanza(&hello()).attr("v", "interop-xml/9");
        assert_eq!(parse_hello(&s), Err(LoginFailure::UnsupportedVersion));
    }

    #[test]
    fn client_reports_failure_reason() {
        let (mut c, _) = ClientLogin::start(hello(), "t".into());
        let id = LocalIdentity::generate(&mut rand::rng());
        let err = c
            .handle(
                &failure_stanza(&LoginFailure::BadToken),
                &id,
                &mut rand::rng(),
            )
            .unwrap_err();
        assert!(matches!(err, LoginError::Refused { reason, .. } if reason == "bad_token"));
    }

    #[test]
    fn proof_message_layout_is_domain_nonce_jid() {
        let m = proof_message(&[7; 32], &Jid::interop("a-b", Some(3)));
        assert_eq!(&m[..20], b"interop-xml/1 login\0");
        assert_eq!(&m[20..52], &[7; 32]);
        assert_eq!(&m[52..], b"a-b:3@interop");
    }

    proptest! {
        #[test]
        fn login_parsers_never_panic(tag in "(login|auth|challenge|x)", attrs in proptest::collection::vec(("[a-z]{1,12}", "\\PC{0,20}"), 0..6), payload in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut s = Stanza::new(tag);
            for (k, v) in attrs { s = s.attr(k, v); }
            let s = s.child(Stanza::new("identity").bytes(payload.clone())).child(Stanza::new("signature").bytes(payload));
            let _ = parse_hello(&s);
            let _ = parse_auth(&s);
            let _ = parse_challenge(&s);
        }
    }
}
