//! Keys at the boundary, and our own identity: raw 32-byte wire keys to and from the
//! Signal crate's types, signatures, fingerprints and safety numbers, and the local identity
//! record.

use super::*;

pub(super) fn public_from_raw<E>(raw: &RawKey) -> Result<PublicKey, SignalError<E>> {
    PublicKey::from_djb_public_key_bytes(raw).map_err(|_| SignalError::BadKey)
}

pub(super) fn raw_from_public<E>(key: &PublicKey) -> Result<RawKey, SignalError<E>> {
    key.public_key_bytes()
        .try_into()
        .map_err(|_| SignalError::Internal {
            detail: "public key is not 32 bytes".into(),
        })
}

pub(super) fn key_pair_from_raw(
    private: &[u8; 32],
    table: &'static str,
) -> Result<KeyPair, RowError> {
    let corrupt = RowError {
        table,
        detail: "bad private key",
    };
    let private = PrivateKey::deserialize(private).map_err(|_| corrupt)?;
    let public = private.public_key().map_err(|_| RowError {
        table,
        detail: "bad private key",
    })?;
    Ok(KeyPair::new(public, private))
}

/// Verifies an XEdDSA signature made by the identity whose raw public key is `identity`.
pub fn verify_signature(identity: &RawKey, message: &[u8], signature: &[u8]) -> bool {
    match PublicKey::from_djb_public_key_bytes(identity) {
        Ok(k) => k.verify_signature(message, signature),
        Err(_) => false,
    }
}

/// An XEdDSA signature by a raw Curve25519 private key (the `wa` Noise certificates), or
/// `None` if the Signal crate refuses the key.
pub fn sign_with_raw_private<R: Rng + CryptoRng>(
    private: &[u8; 32],
    message: &[u8],
    rng: &mut R,
) -> Option<[u8; 64]> {
    PrivateKey::deserialize(private)
        .ok()?
        .calculate_signature(message, rng)
        .ok()
}

/// A numeric fingerprint of one identity key: 30 digits in six groups, computed as Signal's
/// displayable fingerprints are (iterated SHA-512 over the key and a stable identifier).
/// Compare the two sides' fingerprints out of band, or use [`safety_number`].
pub fn fingerprint(identity: &RawKey, stable_id: &str) -> String {
    let mut prefixed = [0u8; 33];
    prefixed[0] = KEY_TYPE_DJB;
    prefixed[1..].copy_from_slice(identity);
    let mut h = Sha512::new();
    h.update([0u8, 0u8]);
    h.update(prefixed);
    h.update(stable_id.as_bytes());
    let mut digest = h.finalize();
    for _ in 1..FINGERPRINT_ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(prefixed);
        digest = h.finalize();
    }
    let mut out = String::with_capacity(35);
    for (i, chunk) in digest.chunks_exact(5).take(6).enumerate() {
        let mut n: u64 = 0;
        for b in chunk {
            n = (n << 8) | u64::from(*b);
        }
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{:05}", n % 100_000));
    }
    out
}

/// The safety number both sides display: the two fingerprints, lower one first.
pub fn safety_number(a: (&RawKey, &str), b: (&RawKey, &str)) -> String {
    let fa = fingerprint(a.0, a.1);
    let fb = fingerprint(b.0, b.1);
    if fa <= fb {
        format!("{fa} {fb}")
    } else {
        format!("{fb} {fa}")
    }
}

/// Our identity key pair and registration id.
pub struct LocalIdentity {
    pub(super) registration_id: u32,
    pub(super) key_pair: IdentityKeyPair,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("LocalIdentity")
            .field("registration_id", &self.registration_id)
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// A fresh identity with a random 14-bit registration id (never 0).
    pub fn generate<R: Rng + CryptoRng>(rng: &mut R) -> LocalIdentity {
        let key_pair = IdentityKeyPair::generate(rng);
        let mut registration_id = rng.next_u32() & REGISTRATION_ID_MASK;
        if registration_id == 0 {
            registration_id = 1;
        }
        LocalIdentity {
            registration_id,
            key_pair,
        }
    }

    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// Our raw public identity key.
    pub fn public(&self) -> RawKey {
        let mut out = [0u8; 32];
        let bytes = self.key_pair.identity_key().public_key().public_key_bytes();
        if bytes.len() == 32 {
            out.copy_from_slice(bytes);
        }
        out
    }

    /// Our private identity key, for `LocalIdentity::noise_static` (in `noise`, so this
    /// module does not import the one that imports it). Never logged; not exported.
    pub(crate) fn private_key_bytes(&self) -> [u8; 32] {
        *self.key_pair.private_key().serialize()
    }

    /// An XEdDSA signature by our identity key (used for the login proof).
    pub fn sign<R: Rng + CryptoRng>(
        &self,
        message: &[u8],
        rng: &mut R,
    ) -> Result<[u8; 64], SignalError<std::convert::Infallible>> {
        self.key_pair
            .private_key()
            .calculate_signature(message, rng)
            .map_err(|e| SignalError::Internal {
                detail: e.to_string(),
            })
    }

    /// The stored bytes, row version [`LOCAL_IDENTITY_ROW_VERSION`]: version, registration
    /// id, private key, public key.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(69);
        v.push(LOCAL_IDENTITY_ROW_VERSION);
        v.extend_from_slice(&self.registration_id.to_be_bytes());
        v.extend_from_slice(self.key_pair.private_key().serialize());
        v.extend_from_slice(&self.public());
        v
    }

    /// Parses a version 2 row, or a version 1 row (no public key), whose public key it
    /// derives from the private one.
    fn decode(b: &[u8]) -> Result<LocalIdentity, RowError> {
        let corrupt = |detail| RowError {
            table: "local_identity",
            detail,
        };
        let mut r = Reader::new(b, "local_identity");
        let version = r.u8()?;
        let registration_id = r.u32()?;
        let private: [u8; 32] = r.array()?;
        let kp = match version {
            1 => key_pair_from_raw(&private, "local_identity")?,
            2 => {
                let public: [u8; 32] = r.array()?;
                let private =
                    PrivateKey::deserialize(&private).map_err(|_| corrupt("bad private key"))?;
                let public = PublicKey::from_djb_public_key_bytes(&public)
                    .map_err(|_| corrupt("bad public key"))?;
                KeyPair::new(public, private)
            }
            _ => return Err(corrupt("unknown row version")),
        };
        r.end()?;
        let key_pair = IdentityKeyPair::new(IdentityKey::new(kp.public_key), kp.private_key);
        Ok(LocalIdentity {
            registration_id,
            key_pair,
        })
    }
}

/// Row version of a `local_identity` value. Version 2 stores the public key beside the
/// private one, so that no encrypt or decrypt derives it again (an X25519 base-point
/// multiply, most of the CPU of one such operation); version 1 rows are still read.
pub const LOCAL_IDENTITY_ROW_VERSION: u8 = 2;

/// Rewrites a version 1 `local_identity` row as the current version (a schema migration
/// step); true if it did. Refuses a row whose stored and derived public keys would differ.
pub fn upgrade_identity_record<S: SignalStore>(txn: &S) -> Result<bool, Fail<S>> {
    let Some(b) = txn.get(LOCAL_IDENTITY, IDENTITY_KEY)? else {
        return Ok(false);
    };
    if b.first() != Some(&1) {
        return Ok(false);
    }
    let id = LocalIdentity::decode(&b).map_err(corrupt)?;
    txn.put(LOCAL_IDENTITY, IDENTITY_KEY, &id.encode())?;
    Ok(true)
}

/// Our identity from the store, creating and storing one on first use.
pub fn ensure_identity<S: SignalStore, R: Rng + CryptoRng>(
    txn: &S,
    rng: &mut R,
) -> Result<LocalIdentity, Fail<S>> {
    if let Some(id) = local_identity(txn)? {
        return Ok(id);
    }
    let id = LocalIdentity::generate(rng);
    txn.put(LOCAL_IDENTITY, IDENTITY_KEY, &id.encode())?;
    Ok(id)
}

/// Our identity, if one was created.
pub fn local_identity<S: SignalStore>(txn: &S) -> Result<Option<LocalIdentity>, Fail<S>> {
    match txn.get(LOCAL_IDENTITY, IDENTITY_KEY)? {
        Some(b) => Ok(Some(LocalIdentity::decode(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

pub(super) fn require_identity<S: SignalStore>(txn: &S) -> Result<LocalIdentity, Fail<S>> {
    local_identity(txn)?.ok_or(SignalError::Internal {
        detail: "no local identity yet".into(),
    })
}
