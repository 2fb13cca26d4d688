//! The server's certificate chain in the `wa` handshake: issuing it (root → intermediate →
//! leaf, each an XEdDSA signature over the encoded details) and verifying it against a pinned
//! root. Verification is the only maker of [`ServerCertVerified`], which the client needs to
//! reach its transport. No I/O, no clock (`now_unix_s` comes in), no randomness of its own.
//!
//! Checks, in order, each with its own error: the chain decodes; the intermediate is issued by
//! the pinned root (serial and signature: [`NoiseError::PinMismatch`]); its window holds; the
//! leaf is issued by the intermediate (serial and signature: [`NoiseError::ChainInvalid`]); its
//! window holds; the leaf's key is the server static of this handshake
//! ([`NoiseError::LeafKeyNotServerStatic`]). An absent `notBefore`/`notAfter` bounds nothing.

use prost::Message as _;
use rand::{CryptoRng, Rng};

use super::wire::{CertChain, CertDetails, NoiseCertificate};
use super::{CertRole, KEY_BYTES, NoiseError, PrivateKey};
use crate::signal;

/// Length of an XEdDSA signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;

/// Largest encoded certificate chain we accept, in bytes. Real chains are about 350.
pub const MAX_CERT_CHAIN_BYTES: usize = 4 * 1024;

/// The root a client trusts: its raw Curve25519 public key and its serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootPin {
    pub key: [u8; KEY_BYTES],
    pub serial: u32,
}

/// A certificate's validity, in seconds since the Unix epoch, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertWindow {
    pub not_before_unix_s: u64,
    pub not_after_unix_s: u64,
}

/// A signing key and its serial: the root, or an intermediate.
#[derive(Debug, Clone)]
pub struct CertIssuer {
    key: PrivateKey,
    serial: u32,
}

impl CertIssuer {
    /// A fresh issuer (for the hub: its root on first start, then an intermediate).
    pub fn generate<R: Rng + CryptoRng>(serial: u32, rng: &mut R) -> CertIssuer {
        CertIssuer {
            key: PrivateKey::generate(rng),
            serial,
        }
    }

    /// An issuer from its stored key.
    pub fn from_parts(key: PrivateKey, serial: u32) -> CertIssuer {
        CertIssuer { key, serial }
    }

    /// The stored key, for the caller's store. Never log it.
    pub fn private_key(&self) -> &PrivateKey {
        &self.key
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The pin a client needs when this issuer is the root.
    pub fn pin(&self) -> RootPin {
        RootPin {
            key: self.key.public(),
            serial: self.serial,
        }
    }

    /// A certificate for `subject` (a raw public key), issued by this issuer.
    pub fn issue<R: Rng + CryptoRng>(
        &self,
        serial: u32,
        subject: &[u8; KEY_BYTES],
        window: CertWindow,
        rng: &mut R,
    ) -> Result<NoiseCertificate, NoiseError> {
        let details = CertDetails {
            serial: Some(serial),
            issuer_serial: Some(self.serial),
            key: Some(subject.to_vec()),
            not_before: Some(window.not_before_unix_s),
            not_after: Some(window.not_after_unix_s),
        }
        .encode_to_vec();
        let signature = signal::sign_with_raw_private(self.key.bytes(), &details, rng).ok_or(
            NoiseError::ApiMisuse {
                detail: "issuer key refused by the signature scheme",
            },
        )?;
        Ok(NoiseCertificate {
            details: Some(details),
            signature: Some(signature.to_vec()),
        })
    }
}

/// The chain a server presents: the intermediate issued by `root`, the leaf for
/// `server_static` issued by `intermediate`, both for `window`.
pub fn issue_chain<R: Rng + CryptoRng>(
    root: &CertIssuer,
    intermediate: &CertIssuer,
    leaf_serial: u32,
    server_static: &[u8; KEY_BYTES],
    window: CertWindow,
    rng: &mut R,
) -> Result<CertChain, NoiseError> {
    Ok(CertChain {
        intermediate: Some(root.issue(
            intermediate.serial,
            &intermediate.key.public(),
            window,
            rng,
        )?),
        leaf: Some(intermediate.issue(leaf_serial, server_static, window, rng)?),
    })
}

/// Proof that the server's chain verified against the pin and names the handshake's server
/// static. Only [`verify_chain`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertVerified {
    server_static: [u8; KEY_BYTES],
    leaf_serial: u32,
}

impl ServerCertVerified {
    /// The server's Noise static key the chain vouches for.
    pub fn server_static(&self) -> &[u8; KEY_BYTES] {
        &self.server_static
    }

    pub fn leaf_serial(&self) -> u32 {
        self.leaf_serial
    }
}

/// The details of one certificate, with its signature checked against `issuer_key`.
struct Checked {
    serial: u32,
    issuer_serial: u32,
    key: [u8; KEY_BYTES],
    not_before: Option<u64>,
    not_after: Option<u64>,
}

fn check(
    cert: Option<&NoiseCertificate>,
    which: CertRole,
    issuer_key: &[u8; KEY_BYTES],
) -> Result<Result<Checked, NoiseError>, NoiseError> {
    let invalid = NoiseError::ChainInvalid { which };
    let cert = cert.ok_or(invalid.clone())?;
    let (Some(details), Some(signature)) = (&cert.details, &cert.signature) else {
        return Err(invalid);
    };
    let parsed = CertDetails::decode(details.as_slice()).map_err(|_| invalid.clone())?;
    let (Some(serial), Some(key)) = (parsed.serial, &parsed.key) else {
        return Err(invalid);
    };
    let key: [u8; KEY_BYTES] = key.as_slice().try_into().map_err(|_| invalid.clone())?;
    let checked = Checked {
        serial,
        issuer_serial: parsed.issuer_serial.unwrap_or(0),
        key,
        not_before: parsed.not_before,
        not_after: parsed.not_after,
    };
    // The outer error is a malformed certificate; the inner one a signature that fails, which
    // the caller names (a wrong pin for the intermediate, a broken chain for the leaf).
    if signature.len() != SIGNATURE_BYTES
        || !signal::verify_signature(issuer_key, details, signature)
    {
        return Ok(Err(invalid));
    }
    Ok(Ok(checked))
}

fn check_window(c: &Checked, which: CertRole, now_unix_s: u64) -> Result<(), NoiseError> {
    let early = c.not_before.is_some_and(|t| now_unix_s < t);
    let late = c.not_after.is_some_and(|t| now_unix_s > t);
    if early || late {
        return Err(NoiseError::CertExpired { which });
    }
    Ok(())
}

/// Verifies the server's handshake payload (an encoded `CertChain`) against `pin`, for the
/// handshake whose server static is `server_static`, at `now_unix_s`.
pub fn verify_chain(
    chain_bytes: &[u8],
    pin: &RootPin,
    server_static: &[u8; KEY_BYTES],
    now_unix_s: u64,
) -> Result<ServerCertVerified, NoiseError> {
    if chain_bytes.len() > MAX_CERT_CHAIN_BYTES {
        return Err(NoiseError::PeerBadHandshakeMessage);
    }
    let chain = CertChain::decode(chain_bytes).map_err(|_| NoiseError::PeerBadHandshakeMessage)?;

    let inter = check(
        chain.intermediate.as_ref(),
        CertRole::Intermediate,
        &pin.key,
    )?
    .map_err(|_| NoiseError::PinMismatch)?;
    if inter.issuer_serial != pin.serial {
        return Err(NoiseError::PinMismatch);
    }
    check_window(&inter, CertRole::Intermediate, now_unix_s)?;

    let leaf = check(chain.leaf.as_ref(), CertRole::Leaf, &inter.key)??;
    if leaf.issuer_serial != inter.serial {
        return Err(NoiseError::ChainInvalid {
            which: CertRole::Leaf,
        });
    }
    check_window(&leaf, CertRole::Leaf, now_unix_s)?;

    if leaf.key != *server_static {
        return Err(NoiseError::LeafKeyNotServerStatic);
    }
    Ok(ServerCertVerified {
        server_static: leaf.key,
        leaf_serial: leaf.serial,
    })
}
