//! Provider tokens for the `wa` profile's login: JWTs (RFC 7519) in the JWS compact form
//! (RFC 7515), verified against the provider's JWKS (RFC 7517), with no I/O.
//!
//! In the `wa` profile the daemon sends `ClientPayload{interopData{accountId, token}}`; the
//! token is a JWT that the provider (the integrator) signed, and the gatekeeper checks it
//! against that provider's key set. The caller reads the JWKS (it is configuration), passes
//! the clock in as `now_unix_s`, and says which issuer, audience and subject it expects.
//!
//! What is checked, in this order: the size ([`MAX_JWT_BYTES`]), the compact form (three
//! unpadded base64url parts), the header (`alg` one of ES256, EdDSA, RS256; no `crit`; `typ`
//! absent or `JWT`), the key (by `kid` when the token names one, else every key of the
//! token's `alg`), the signature, then the claims: `exp` (required), `nbf` and `iat`
//! (optional) with [`CLOCK_LEEWAY_S`] each way, `iss`, `aud` (a string, or an array that
//! contains the audience) and `sub`.
//!
//! Algorithm confusion is refused by construction: a key's algorithm is fixed when the JWKS
//! is parsed (from its `kty`/`crv`, and its `alg` if present, which must agree), and a token
//! is only ever checked with keys of its own `alg`. There are no symmetric keys (`oct` keys
//! are skipped), so an HS256 token "signed" with a public key is refused, as is `alg: none`.
//! Header fields that point to other keys (`jwk`, `jku`, `x5u`, `x5c`) are ignored: the only
//! keys are the caller's.
//!
//! JSON is parsed by serde_json; a duplicated member keeps its last value, as in most JWT
//! libraries. Errors never carry token bytes: `alg` and `kid` are kept only when short and
//! printable, otherwise replaced by `?`.
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// The longest token accepted, in bytes; a longer one is [`JwtError::TooLong`].
pub const MAX_JWT_BYTES: usize = 4096;
/// The largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 65_536;
/// The most keys a JWKS may hold (usable or not).
pub const MAX_JWKS_KEYS: usize = 16;
/// How far `exp`, `nbf` and `iat` may be off the caller's clock, in seconds.
pub const CLOCK_LEEWAY_S: u64 = 60;
/// The most entries an `aud` array may have.
pub const MAX_AUDIENCES: usize = 16;
/// The longest `alg` or `kid` an error repeats; longer ones are shown as `?`.
pub const MAX_ECHOED_NAME_BYTES: usize = 64;
/// RSA moduli accepted, in bits (RS256).
pub const RSA_MIN_BITS: usize = 2048;
pub const RSA_MAX_BITS: usize = 4096;
/// The longest RSA public exponent accepted, in bytes (ring allows up to 33 bits).
pub const RSA_MAX_EXPONENT_BYTES: usize = 5;

const P256_COORD_BYTES: usize = 32;
const ED25519_KEY_BYTES: usize = 32;
const ES256_SIG_BYTES: usize = 64;
const ED25519_SIG_BYTES: usize = 64;

/// A signature algorithm this verifier supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    EdDsa,
    Rs256,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            "RS256" => Some(Alg::Rs256),
            _ => None,
        }
    }
}

/// A public key, in the form ring verifies with.
#[derive(Clone)]
enum KeyMaterial {
    /// Uncompressed SEC1 point: `04 || x || y`.
    P256(Vec<u8>),
    Ed25519([u8; ED25519_KEY_BYTES]),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Alg,
    material: KeyMaterial,
}

/// A parsed key set: the usable signing keys of a JWKS. Public keys only.
#[derive(Clone)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for key in &self.keys {
            list.entry(&(key.alg, key.kid.as_deref()));
        }
        list.finish()
    }
}

impl Jwks {
    /// Parses a JWKS document (`{"keys":[...]}`). Keys this verifier cannot use are skipped:
    /// other key types or curves (`oct`, P-384, Ed448), other algorithms, `use` other than
    /// `sig`, `key_ops` without `verify`. A usable key that is malformed (bad base64, wrong
    /// length, an `alg` that disagrees with its `kty`/`crv`, RSA outside 2048..4096 bits) is an
    /// error, and so is a set with no usable key: both are the configuration's fault.
    pub fn parse(json: &[u8]) -> Result<Jwks, JwtError> {
        let bad = |detail| JwtError::BadJwks { detail };
        if json.len() > MAX_JWKS_BYTES {
            return Err(bad("larger than MAX_JWKS_BYTES"));
        }
        let doc: Value = serde_json::from_slice(json).map_err(|_| bad("not JSON"))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(bad("no \"keys\" array"))?;
        if list.len() > MAX_JWKS_KEYS {
            return Err(bad("more than MAX_JWKS_KEYS keys"));
        }
        let mut keys = Vec::new();
        for entry in list {
            let jwk = entry.as_object().ok_or(bad("a key is not an object"))?;
            if let Some(key) = parse_jwk(jwk)? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(bad("no usable signing key (ES256, EdDSA or RS256)"));
        }
        Ok(Jwks { keys })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true for a parsed set; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One JWK: `Ok(None)` when it is not a key this verifier uses.
fn parse_jwk(jwk: &Map<String, Value>) -> Result<Option<Key>, JwtError> {
    let bad = |detail| JwtError::BadJwks { detail };
    let text = |name: &str| -> Result<Option<&str>, JwtError> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad("a key member that must be a string is not")),
        }
    };
    if let Some(usage) = text("use")?
        && usage != "sig"
    {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or(bad("key_ops is not an array"))?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kty = text("kty")?.ok_or(bad("a key has no kty"))?;
    let crv = text("crv")?;
    let implied = match (kty, crv) {
        ("EC", Some("P-256")) => Alg::Es256,
        ("OKP", Some("Ed25519")) => Alg::EdDsa,
        ("RSA", _) => Alg::Rs256,
        _ => return Ok(None),
    };
    match text("alg")? {
        None => {}
        Some(name) => match Alg::from_name(name) {
            Some(alg) if alg == implied => {}
            Some(_) => return Err(bad("a key's alg disagrees with its kty/crv")),
            // An RSA key for PS256 or RS512, say: not ours to use.
            None => return Ok(None),
        },
    }
    let b64 = |name: &str| -> Result<Vec<u8>, JwtError> {
        let value = text(name)?.ok_or(bad("a key lacks one of its public members"))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| bad("a key member is not unpadded base64url"))
    };
    let material = match implied {
        Alg::Es256 => {
            let (x, y) = (b64("x")?, b64("y")?);
            if x.len() != P256_COORD_BYTES || y.len() != P256_COORD_BYTES {
                return Err(bad("a P-256 coordinate is not 32 bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * P256_COORD_BYTES);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::P256(point)
        }
        Alg::EdDsa => {
            let x: [u8; ED25519_KEY_BYTES] = b64("x")?
                .try_into()
                .map_err(|_| bad("an Ed25519 key is not 32 bytes"))?;
            KeyMaterial::Ed25519(x)
        }
        Alg::Rs256 => {
            let (mut n, mut e) = (b64("n")?, b64("e")?);
            strip_leading_zeros(&mut n);
            strip_leading_zeros(&mut e);
            let bits = match n.first() {
                Some(top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
                None => 0,
            };
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(bad("an RSA modulus is outside 2048..4096 bits"));
            }
            if e.is_empty() || e.len() > RSA_MAX_EXPONENT_BYTES {
                return Err(bad("an RSA exponent is empty or too long"));
            }
            KeyMaterial::Rsa { n, e }
        }
    };
    Ok(Some(Key {
        kid: text("kid")?.map(str::to_owned),
        alg: implied,
        material,
    }))
}

fn strip_leading_zeros(bytes: &mut Vec<u8>) {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
}

/// What the caller expects of a token, and its clock.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The provider: the integrator id (`acme`).
    pub issuer: &'a str,
    /// The gatekeeper the token is for.
    pub audience: &'a str,
    /// The account logging in (`acme-home`).
    pub subject: &'a str,
    pub now_unix_s: u64,
}

/// The registered claims of a token. `aud` is the audience that matched (verify) or the first
/// one (peek) when the token gives an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: Option<u64>,
    pub nbf: Option<u64>,
    pub exp: u64,
}

/// Why a token (or a JWKS) was refused. [`JwtError::BadJwks`] is the configuration's fault;
/// every other variant is the peer's (its token). No variant holds token bytes beyond a short,
/// printable `alg` or `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// Peer: the token is longer than [`MAX_JWT_BYTES`].
    TooLong,
    /// Peer: not a JWS compact serialization with the JSON we need.
    Malformed { detail: &'static str },
    /// Peer: `alg` is not one we verify (`none`, `HS256`, ...), or not the one of the key its
    /// `kid` names.
    UnsupportedAlg { alg: String },
    /// Peer: no key in the set has the token's `kid` (or, without a `kid`, its `alg`).
    UnknownKey { kid: Option<String> },
    /// Peer: the signature does not verify under the key(s) chosen.
    BadSignature,
    /// Peer: `exp` plus the leeway is past.
    Expired { exp: u64 },
    /// Peer: `nbf` (or `iat`) is further in the future than the leeway.
    NotYetValid { nbf: u64 },
    /// Peer: `iss` is not the expected provider.
    WrongIssuer,
    /// Peer: `aud` does not name the expected audience.
    WrongAudience,
    /// Peer: `sub` is not the account logging in.
    WrongSubject,
    /// Configuration: the JWKS could not be used.
    BadJwks { detail: &'static str },
}

impl JwtError {
    /// A short fixed code for logs, metrics and the login failure the peer is told.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::TooLong => "token_too_long",
            JwtError::Malformed { .. } => "malformed_token",
            JwtError::UnsupportedAlg { .. } => "unsupported_token_alg",
            JwtError::UnknownKey { .. } => "unknown_token_key",
            JwtError::BadSignature => "bad_token_signature",
            JwtError::Expired { .. } => "token_expired",
            JwtError::NotYetValid { .. } => "token_not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::WrongSubject => "wrong_account",
            JwtError::BadJwks { .. } => "bad_jwks",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLong => write!(f, "peer token: longer than {MAX_JWT_BYTES} bytes"),
            JwtError::Malformed { detail } => write!(f, "peer token: malformed: {detail}"),
            JwtError::UnsupportedAlg { alg } => {
                write!(f, "peer token: alg {alg:?} is not accepted for this key")
            }
            JwtError::UnknownKey { kid: Some(kid) } => {
                write!(
                    f,
                    "peer token: no key with kid {kid:?} in the provider's JWKS"
                )
            }
            JwtError::UnknownKey { kid: None } => {
                write!(f, "peer token: no kid, and no key of its alg in the JWKS")
            }
            JwtError::BadSignature => write!(f, "peer token: signature does not verify"),
            JwtError::Expired { exp } => write!(f, "peer token: expired (exp {exp})"),
            JwtError::NotYetValid { nbf } => write!(f, "peer token: not valid before {nbf}"),
            JwtError::WrongIssuer => write!(f, "peer token: issued by another provider"),
            JwtError::WrongAudience => write!(f, "peer token: meant for another audience"),
            JwtError::WrongSubject => write!(f, "peer token: names another account"),
            JwtError::BadJwks { detail } => write!(f, "configuration: JWKS unusable: {detail}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// A header name (`alg`, `kid`) as an error may repeat it.
fn echo(name: &str) -> String {
    let printable = name.bytes().all(|b| b.is_ascii_graphic());
    if printable && name.len() <= MAX_ECHOED_NAME_BYTES {
        name.to_owned()
    } else {
        "?".to_owned()
    }
}

/// The three parts of a compact JWS, decoded where we need them.
struct Parts<'t> {
    signed: &'t str,
    header: Map<String, Value>,
    payload: Map<String, Value>,
    signature: Vec<u8>,
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    let malformed = |detail| JwtError::Malformed { detail };
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLong);
    }
    let (signed, sig_b64) = token.rsplit_once('.').ok_or(malformed("no '.'"))?;
    let (header_b64, payload_b64) = signed.split_once('.').ok_or(malformed("not three parts"))?;
    if payload_b64.contains('.') {
        return Err(malformed("more than three parts (JWE is not accepted)"));
    }
    let object = |b64: &str, what| -> Result<Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| malformed(what))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(malformed(what)),
        }
    };
    let header = object(header_b64, "header is not a base64url JSON object")?;
    let payload = object(payload_b64, "payload is not a base64url JSON object")?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| malformed("signature is not base64url"))?;
    Ok(Parts {
        signed,
        header,
        payload,
        signature,
    })
}

fn claim_str(payload: &Map<String, Value>, name: &'static str) -> Result<String, JwtError> {
    match payload.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(JwtError::Malformed {
            detail: "iss or sub is not a string",
        }),
        None => Err(JwtError::Malformed {
            detail: "iss or sub is missing",
        }),
    }
}

fn claim_time(payload: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    match payload.get(name) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or(JwtError::Malformed {
            detail: "exp, nbf or iat is not a non-negative integer",
        }),
    }
}

/// `aud` as a list: a string is a list of one.
fn audiences(payload: &Map<String, Value>) -> Result<Vec<&str>, JwtError> {
    let malformed = |detail| JwtError::Malformed { detail };
    match payload.get("aud") {
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(list)) => {
            if list.is_empty() || list.len() > MAX_AUDIENCES {
                return Err(malformed("aud array is empty or longer than MAX_AUDIENCES"));
            }
            list.iter()
                .map(|v| v.as_str().ok_or(malformed("aud array holds a non-string")))
                .collect()
        }
        Some(_) => Err(malformed("aud is neither a string nor an array")),
        None => Err(malformed("aud is missing")),
    }
}

/// The claims, typed, with `aud` set to the first audience.
fn claims(payload: &Map<String, Value>) -> Result<Claims, JwtError> {
    let aud = audiences(payload)?
        .first()
        .map(|s| (*s).to_owned())
        .unwrap_or_default();
    Ok(Claims {
        iss: claim_str(payload, "iss")?,
        sub: claim_str(payload, "sub")?,
        aud,
        iat: claim_time(payload, "iat")?,
        nbf: claim_time(payload, "nbf")?,
        exp: claim_time(payload, "exp")?.ok_or(JwtError::Malformed {
            detail: "exp is missing",
        })?,
    })
}

/// Reads a token's claims **WITHOUT CHECKING ITS SIGNATURE OR ITS TIMES.**
///
/// For the daemon's own log line ("token expires in N days") about a token it holds, and
/// nothing else: anyone can write a token that peeks well. Never decide anything on what
/// this returns; the gatekeeper uses [`verify`].
pub fn peek_claims(token: &str) -> Result<Claims, JwtError> {
    let parts = split(token)?;
    claims(&parts.payload)
}

/// Verifies `token` against `jwks` and `expect`, and returns its claims.
pub fn verify(token: &str, jwks: &Jwks, expect: &Expect<'_>) -> Result<Claims, JwtError> {
    let parts = split(token)?;
    let header = &parts.header;
    let alg_name = match header.get("alg") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(JwtError::Malformed {
                detail: "header has no string alg",
            });
        }
    };
    if header.contains_key("crit") {
        return Err(JwtError::Malformed {
            detail: "header has crit, which we do not support",
        });
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("JWT") => {}
        Some(_) => {
            return Err(JwtError::Malformed {
                detail: "header typ is not JWT",
            });
        }
    }
    let alg = Alg::from_name(alg_name).ok_or_else(|| JwtError::UnsupportedAlg {
        alg: echo(alg_name),
    })?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(JwtError::Malformed {
                detail: "header kid is not a string",
            });
        }
    };
    let named: Vec<&Key> = jwks
        .keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .collect();
    if named.is_empty() {
        return Err(JwtError::UnknownKey { kid: kid.map(echo) });
    }
    let candidates: Vec<&Key> = named.into_iter().filter(|k| k.alg == alg).collect();
    if candidates.is_empty() {
        return Err(match kid {
            // The key the token names is of another algorithm: alg confusion.
            Some(_) => JwtError::UnsupportedAlg {
                alg: echo(alg_name),
            },
            None => JwtError::UnknownKey { kid: None },
        });
    }
    let signed = parts.signed.as_bytes();
    if !candidates
        .iter()
        .any(|key| signature_ok(key, signed, &parts.signature))
    {
        return Err(JwtError::BadSignature);
    }
    check_claims(&parts.payload, expect)
}

fn signature_ok(key: &Key, signed: &[u8], sig: &[u8]) -> bool {
    match &key.material {
        KeyMaterial::P256(point) => {
            sig.len() == ES256_SIG_BYTES
                && UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, sig)
                    .is_ok()
        }
        KeyMaterial::Ed25519(x) => {
            sig.len() == ED25519_SIG_BYTES
                && UnparsedPublicKey::new(&signature::ED25519, x)
                    .verify(signed, sig)
                    .is_ok()
        }
        KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, sig)
            .is_ok(),
    }
}

fn check_claims(payload: &Map<String, Value>, expect: &Expect<'_>) -> Result<Claims, JwtError> {
    let now = expect.now_unix_s;
    let mut out = claims(payload)?;
    if now >= out.exp.saturating_add(CLOCK_LEEWAY_S) {
        return Err(JwtError::Expired { exp: out.exp });
    }
    for start in [out.nbf, out.iat].into_iter().flatten() {
        if start > now.saturating_add(CLOCK_LEEWAY_S) {
            return Err(JwtError::NotYetValid { nbf: start });
        }
    }
    if out.iss != expect.issuer {
        return Err(JwtError::WrongIssuer);
    }
    if !audiences(payload)?.contains(&expect.audience) {
        return Err(JwtError::WrongAudience);
    }
    expect.audience.clone_into(&mut out.aud);
    if out.sub != expect.subject {
        return Err(JwtError::WrongSubject);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
