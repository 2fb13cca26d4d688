//! The hub as its own test provider for the `wa` profile's login token (docs/protocol-wa.md,
//! "The provider token (JWT)").
//!
//! In the `wa` profile a daemon logs in with a JWT that its provider (the integrator) signed;
//! the hub checks it against that provider's JWKS with `interop_proto::jwt::verify`. For
//! tests and the demo the hub is the provider too: it keeps one ES256 key per integrator in
//! `<state>/providers/<integrator>/key.der` (PKCS#8, mode 0600) and publishes its public half
//! in `jwks.json` beside it. A real provider puts its own `jwks.json` there instead; the hub
//! never overwrites an existing one.
//!
//! Token convention: `iss` = the integrator id (`acme`), `sub` = the account (`acme-home`),
//! `aud` = [`JWT_AUDIENCE`].
//!
//! Each file is written whole (temporary file, fsync, rename, fsync of the directory), the
//! key before the JWKS, so a crash leaves either nothing or a key whose JWKS is made next time.
use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use interop_proto::jwt::{Claims, Jwks, JwtError, MAX_JWKS_BYTES};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use sha2::{Digest as _, Sha256};

/// The `aud` of every token the hub accepts.
pub const JWT_AUDIENCE: &str = "interop-hub";
/// Directory of providers inside the hub's state directory.
pub const PROVIDERS_DIR: &str = "providers";
/// The provider's private key (PKCS#8 DER).
pub const KEY_FILE: &str = "key.der";
/// The JWKS the hub trusts for the provider.
pub const JWKS_FILE: &str = "jwks.json";
/// The largest key file read; a P-256 PKCS#8 document is about 140 bytes.
pub const MAX_KEY_FILE_BYTES: usize = 4096;
/// The longest integrator id (a path component).
pub const MAX_INTEGRATOR_BYTES: usize = 64;
/// Hex digits of the public key's SHA-256 that make its `kid`.
pub const KID_HEX_DIGITS: usize = 16;

/// Why a provider key or JWKS could not be made, read or used.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProviderError {
    /// Caller: the integrator id is not `[a-z0-9]+` (at most [`MAX_INTEGRATOR_BYTES`]).
    BadIntegrator { name: String },
    /// Environment: a file or directory could not be read or written.
    Io { path: PathBuf, source: io::Error },
    /// Configuration: the key file is not a P-256 PKCS#8 key (or is too large).
    CorruptKey { path: PathBuf },
    /// Configuration: the JWKS file is larger than `MAX_JWKS_BYTES` or does not parse.
    BadJwks { path: PathBuf, error: JwtError },
    /// Environment: the system RNG failed (key generation or signing).
    Crypto,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::BadIntegrator { name } => write!(
                f,
                "provider: integrator {name:?} must be [a-z0-9], at most {MAX_INTEGRATOR_BYTES} bytes"
            ),
            ProviderError::Io { path, source } => {
                write!(f, "provider: {}: {source}", path.display())
            }
            ProviderError::CorruptKey { path } => write!(
                f,
                "provider: {} is not a P-256 PKCS#8 key; remove it to make a new one (tokens signed with the old key stop verifying)",
                path.display()
            ),
            ProviderError::BadJwks { path, error } => {
                write!(f, "provider: {}: {error}", path.display())
            }
            ProviderError::Crypto => write!(f, "provider: the system RNG failed"),
        }
    }
}

impl std::error::Error for ProviderError {}

/// A provider's ES256 signing key. Its `Debug` shows the `kid` only.
pub struct ProviderKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderKey(kid {})", self.kid())
    }
}

impl Drop for ProviderKey {
    fn drop(&mut self) {
        self.pkcs8.fill(0);
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl ProviderKey {
    /// A new key from the system RNG.
    pub fn generate() -> Result<ProviderKey, ProviderError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| ProviderError::Crypto)?;
        ProviderKey::from_pkcs8(doc.as_ref()).map_err(|_| ProviderError::Crypto)
    }

    /// A key from its PKCS#8 DER. A document that is not a P-256 key is
    /// [`ProviderError::CorruptKey`] (with an empty path: the caller knows where it came from).
    pub fn from_pkcs8(der: &[u8]) -> Result<ProviderKey, ProviderError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| ProviderError::CorruptKey {
                path: PathBuf::new(),
            })?;
        Ok(ProviderKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// The public key's id: the first [`KID_HEX_DIGITS`] hex digits of the SHA-256 of its
    /// uncompressed point.
    pub fn kid(&self) -> String {
        let digest = Sha256::digest(self.pair.public_key().as_ref());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        hex.chars().take(KID_HEX_DIGITS).collect()
    }

    /// The JWKS with this key alone.
    pub fn jwks_json(&self) -> String {
        // The uncompressed point is 0x04 || x || y, 32 bytes each.
        let point = self.pair.public_key().as_ref();
        let coords = point.get(1..).unwrap_or_default();
        let (x, y) = coords.split_at(coords.len() / 2);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y),
            "kid": self.kid(), "alg": "ES256", "use": "sig",
        }]})
        .to_string()
    }

    /// A compact JWS of `claims`, with header `{"alg":"ES256","typ":"JWT","kid":..}`. `aud` is
    /// a string; absent `iat`/`nbf` are left out.
    pub fn sign(&self, claims: &Claims) -> Result<String, ProviderError> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid()});
        let mut body = serde_json::json!({
            "iss": claims.iss, "sub": claims.sub, "aud": claims.aud, "exp": claims.exp,
        });
        if let Some(iat) = claims.iat {
            body["iat"] = iat.into();
        }
        if let Some(nbf) = claims.nbf {
            body["nbf"] = nbf.into();
        }
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(body.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|_| ProviderError::Crypto)?;
        Ok(format!("{signed}.{}", b64(sig.as_ref())))
    }
}

/// `<state>/providers/<integrator>`, once the id is known to be a safe path component.
fn provider_dir(state_dir: &Path, integrator: &str) -> Result<PathBuf, ProviderError> {
    let ok = !integrator.is_empty()
        && integrator.len() <= MAX_INTEGRATOR_BYTES
        && integrator
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(ProviderError::BadIntegrator {
            name: integrator.to_owned(),
        });
    }
    Ok(state_dir.join(PROVIDERS_DIR).join(integrator))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ProviderError {
    let path = path.to_path_buf();
    move |source| ProviderError::Io { path, source }
}

/// Reads at most `max` bytes of `path`: `Ok(None)` if it does not exist, `Err(None)` if it is
/// longer.
fn read_bounded(path: &Path, max: usize) -> Result<Option<Vec<u8>>, Option<ProviderError>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Some(io_error(path)(e))),
    };
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| Some(io_error(path)(e)))?;
    if bytes.len() > max {
        return Err(None);
    }
    Ok(Some(bytes))
}

fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProviderError> {
    interop_io::state_dir::write_file_atomic(path, bytes, mode)
        .map_err(|(path, source)| ProviderError::Io { path, source })
}

/// The hub's signing key for `integrator`: `<state>/providers/<integrator>/key.der` (0600)
/// and `jwks.json`, made on first use. An existing `jwks.json` is left as it is (a real
/// provider's, say).
pub fn ensure_provider(state_dir: &Path, integrator: &str) -> Result<ProviderKey, ProviderError> {
    let dir = provider_dir(state_dir, integrator)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_error(&dir))?;
    let key_path = dir.join(KEY_FILE);
    let corrupt = || ProviderError::CorruptKey {
        path: key_path.clone(),
    };
    let key = match read_bounded(&key_path, MAX_KEY_FILE_BYTES) {
        Ok(Some(der)) => ProviderKey::from_pkcs8(&der).map_err(|_| corrupt())?,
        Ok(None) => {
            let key = ProviderKey::generate()?;
            write_file_atomic(&key_path, &key.pkcs8, 0o600)?;
            key
        }
        Err(Some(e)) => return Err(e),
        Err(None) => return Err(corrupt()),
    };
    let jwks_path = dir.join(JWKS_FILE);
    match fs::symlink_metadata(&jwks_path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_file_atomic(&jwks_path, key.jwks_json().as_bytes(), 0o644)?;
        }
        Err(e) => return Err(io_error(&jwks_path)(e)),
    }
    Ok(key)
}

/// The JWKS the hub trusts for `integrator`: `<state>/providers/<integrator>/jwks.json`
/// (a real provider can put its own JWKS there instead). `Ok(None)` when there is none.
/// Bounded read ([`MAX_JWKS_BYTES`]).
pub fn load_jwks(state_dir: &Path, integrator: &str) -> Result<Option<Jwks>, ProviderError> {
    let path = provider_dir(state_dir, integrator)?.join(JWKS_FILE);
    let too_large = JwtError::BadJwks {
        detail: "larger than MAX_JWKS_BYTES",
    };
    let bytes = match read_bounded(&path, MAX_JWKS_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(Some(e)) => return Err(e),
        Err(None) => {
            return Err(ProviderError::BadJwks {
                path,
                error: too_large,
            });
        }
    };
    Jwks::parse(&bytes)
        .map(Some)
        .map_err(|error| ProviderError::BadJwks { path, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::jwt::{CLOCK_LEEWAY_S, Expect, verify};
    use std::os::unix::fs::PermissionsExt as _;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            iss: "acme".into(),
            sub: "acme-home".into(),
            aud: JWT_AUDIENCE.into(),
            iat: Some(NOW),
            nbf: None,
            exp: NOW + 3600,
        }
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: "acme",
            audience: JWT_AUDIENCE,
            subject: "acme-home",
            now_unix_s: NOW,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn sign_then_verify_with_the_loaded_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let key = ensure_provider(dir.path(), "acme").unwrap();
        let base = dir.path().join(PROVIDERS_DIR).join("acme");
        assert_eq!(mode_of(&base.join(KEY_FILE)), 0o600);
        assert_eq!(mode_of(&base), 0o700);
        let jwks = load_jwks(dir.path(), "acme").unwrap().unwrap();
        assert_eq!(jwks.len(), 1);
        let token = key.sign(&claims()).unwrap();
        assert_eq!(verify(&token, &jwks, &expect()).unwrap(), claims());
        // The same key the second time, and the JWKS still matches it.
        let again = ensure_provider(dir.path(), "acme").unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(key.kid().len(), KID_HEX_DIGITS);
        let late = Expect {
            now_unix_s: NOW + 3600 + CLOCK_LEEWAY_S,
            ..expect()
        };
        assert!(verify(&again.sign(&claims()).unwrap(), &jwks, &late).is_err());
        assert!(!format!("{key:?}").contains(&b64(&key.pkcs8)));
    }

    #[test]
    fn no_jwks_is_none_and_bad_integrators_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_jwks(dir.path(), "acme").unwrap().is_none());
        for bad in [
            "",
            "../etc",
            "Acme",
            "a-b",
            &"a".repeat(MAX_INTEGRATOR_BYTES + 1),
        ] {
            assert!(matches!(
                ensure_provider(dir.path(), bad),
                Err(ProviderError::BadIntegrator { .. })
            ));
            assert!(matches!(
                load_jwks(dir.path(), bad),
                Err(ProviderError::BadIntegrator { .. })
            ));
        }
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        ensure_provider(dir.path(), "acme").unwrap();
        let path = dir.path().join(PROVIDERS_DIR).join("acme").join(KEY_FILE);
        for junk in [
            b"junk".to_vec(),
            Vec::new(),
            vec![0x30; MAX_KEY_FILE_BYTES + 1],
        ] {
            fs::write(&path, &junk).unwrap();
            let err = ensure_provider(dir.path(), "acme").unwrap_err();
            assert!(matches!(&err, ProviderError::CorruptKey { path: p } if *p == path));
            assert!(err.to_string().contains("key.der"), "{err}");
        }
        assert!(matches!(
            ProviderKey::from_pkcs8(b"junk"),
            Err(ProviderError::CorruptKey { .. })
        ));
    }

    #[test]
    fn a_bad_or_oversize_jwks_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        ensure_provider(dir.path(), "acme").unwrap();
        let path = dir.path().join(PROVIDERS_DIR).join("acme").join(JWKS_FILE);
        for junk in [b"{".to_vec(), vec![b' '; MAX_JWKS_BYTES + 1]] {
            fs::write(&path, &junk).unwrap();
            let err = load_jwks(dir.path(), "acme").unwrap_err();
            assert!(matches!(err, ProviderError::BadJwks { .. }), "{err}");
            assert!(err.to_string().contains("configuration"), "{err}");
        }
    }

    #[test]
    fn a_jwks_replaced_by_another_providers_refuses_the_hubs_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let ours = ensure_provider(dir.path(), "acme").unwrap();
        let theirs = ProviderKey::generate().unwrap();
        let path = dir.path().join(PROVIDERS_DIR).join("acme").join(JWKS_FILE);
        fs::write(&path, theirs.jwks_json()).unwrap();
        // ensure_provider leaves the provider's JWKS alone.
        ensure_provider(dir.path(), "acme").unwrap();
        let jwks = load_jwks(dir.path(), "acme").unwrap().unwrap();
        let token = ours.sign(&claims()).unwrap();
        assert_eq!(
            verify(&token, &jwks, &expect()),
            Err(JwtError::UnknownKey {
                kid: Some(ours.kid())
            })
        );
        // The same key id in their set, but their key: the signature fails.
        let forged_jwks = theirs.jwks_json().replace(&theirs.kid(), &ours.kid());
        let jwks = Jwks::parse(forged_jwks.as_bytes()).unwrap();
        assert_eq!(
            verify(&token, &jwks, &expect()),
            Err(JwtError::BadSignature)
        );
        assert!(verify(&theirs.sign(&claims()).unwrap(), &jwks, &expect()).is_err());
    }
}
