//! The hub's Noise identity for profile `wa`: a root key made on first start (as the TLS CA
//! is), an intermediate and a static key under it, all under `<state>/noise/` (0700, each key
//! 0600, written atomically). Daemons pin the root's public key (`interop-hub provision`
//! prints it). The chain is issued fresh at start and again once a day
//! ([`CHAIN_REISSUE_S`]), each for [`CHAIN_LIFETIME_S`], so a hub that runs for months never
//! presents an expired chain.

use std::fs;
use std::path::{Path, PathBuf};

use interop_io::state_dir::StoreError;
use interop_proto::noise::wire::CertChain;
use interop_proto::noise::{CertIssuer, CertWindow, PrivateKey, RootPin, issue_chain};

/// Directory under the hub's state that holds the Noise keys.
pub const NOISE_DIR: &str = "noise";
/// The root key's file (32 raw bytes).
pub const NOISE_ROOT_FILE: &str = "root.key";
/// The intermediate key's file.
pub const NOISE_INTERMEDIATE_FILE: &str = "intermediate.key";
/// The static key's file (the key the handshake proves).
pub const NOISE_STATIC_FILE: &str = "static.key";
/// Serials of the root, the intermediate and the leaf.
pub const ROOT_SERIAL: u32 = 0;
pub const INTERMEDIATE_SERIAL: u32 = 1;
pub const LEAF_SERIAL: u32 = 2;
/// How long an issued chain is valid, in seconds (both certificates).
pub const CHAIN_LIFETIME_S: u64 = 7 * 24 * 3600;
/// How old a chain gets before the hub issues a new one, in seconds.
pub const CHAIN_REISSUE_S: u64 = 24 * 3600;
/// How far before "now" a chain's window starts, in seconds (clients with a slow clock).
pub const CHAIN_BACKDATE_S: u64 = 3600;

/// The hub's Noise keys and its current chain.
pub struct HubNoise {
    root: CertIssuer,
    intermediate: CertIssuer,
    static_key: PrivateKey,
    chain: CertChain,
    issued_unix_s: u64,
}

impl HubNoise {
    /// The static key the handshake proves.
    pub fn static_key(&self) -> &PrivateKey {
        &self.static_key
    }

    /// The pin daemons configure as `[gatekeeper] noise_root`.
    pub fn pin(&self) -> RootPin {
        self.root.pin()
    }

    /// The chain to present at `now_unix_s`, reissued when it is a day old.
    pub fn chain(&mut self, now_unix_s: u64) -> &CertChain {
        if now_unix_s.saturating_sub(self.issued_unix_s) >= CHAIN_REISSUE_S
            && let Ok(chain) = issue(&self.root, &self.intermediate, &self.static_key, now_unix_s)
        {
            self.chain = chain;
            self.issued_unix_s = now_unix_s;
        }
        &self.chain
    }
}

/// Lower-case hex of a root pin's key, as configs write it.
pub fn pin_hex(pin: &RootPin) -> String {
    pin.key.iter().map(|b| format!("{b:02x}")).collect()
}

fn issue(
    root: &CertIssuer,
    intermediate: &CertIssuer,
    static_key: &PrivateKey,
    now_unix_s: u64,
) -> Result<CertChain, String> {
    let window = CertWindow {
        not_before_unix_s: now_unix_s.saturating_sub(CHAIN_BACKDATE_S),
        not_after_unix_s: now_unix_s.saturating_add(CHAIN_LIFETIME_S),
    };
    issue_chain(
        root,
        intermediate,
        LEAF_SERIAL,
        &static_key.public(),
        window,
        &mut rand::rng(),
    )
    .map_err(|e| e.to_string())
}

/// Reads the hub's Noise keys from `state_dir`, making the missing ones, and issues a chain
/// for `now_unix_s`.
pub fn ensure_hub_noise(state_dir: &Path, now_unix_s: u64) -> Result<HubNoise, StoreError> {
    let dir = state_dir.join(NOISE_DIR);
    interop_io::state_dir::ensure_state_dir(&dir)?;
    let root = CertIssuer::from_parts(key_file(&dir.join(NOISE_ROOT_FILE))?, ROOT_SERIAL);
    let intermediate = CertIssuer::from_parts(
        key_file(&dir.join(NOISE_INTERMEDIATE_FILE))?,
        INTERMEDIATE_SERIAL,
    );
    let static_key = key_file(&dir.join(NOISE_STATIC_FILE))?;
    let chain = issue(&root, &intermediate, &static_key, now_unix_s).map_err(|detail| {
        StoreError::CorruptFile {
            path: dir.clone(),
            detail,
        }
    })?;
    Ok(HubNoise {
        root,
        intermediate,
        static_key,
        chain,
        issued_unix_s: now_unix_s,
    })
}

/// The key in `path`, made (32 random bytes, 0600, written then renamed) if it is missing.
fn key_file(path: &PathBuf) -> Result<PrivateKey, StoreError> {
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    match fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
            .map(PrivateKey::from_bytes)
            .map_err(|_| StoreError::CorruptFile {
                path: path.clone(),
                detail: format!(
                    "a Noise key file holds 32 bytes, this one {}; move it away to make a new key (daemons must then pin the new root)",
                    bytes.len()
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate(&mut rand::rng());
            interop_io::state_dir::write_file_atomic(path, &key.to_bytes(), 0o600)
                .map_err(|(path, source)| StoreError::Io { path, source })?;
            Ok(key)
        }
        Err(source) => Err(io(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::noise::verify_chain;

    #[test]
    fn keys_are_made_once_and_the_chain_verifies_under_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let mut a = ensure_hub_noise(dir.path(), now).unwrap();
        let b = ensure_hub_noise(dir.path(), now).unwrap();
        assert_eq!(a.pin(), b.pin(), "the root survives a restart");
        let pin = a.pin();
        let static_pub = a.static_key().public();
        let chain = prost::Message::encode_to_vec(a.chain(now));
        verify_chain(&chain, &pin, &static_pub, now).unwrap();
        // A month later the chain was reissued and still verifies.
        let later = now + 30 * 24 * 3600;
        let chain = prost::Message::encode_to_vec(a.chain(later));
        verify_chain(&chain, &pin, &static_pub, later).unwrap();
        assert_eq!(pin_hex(&pin).len(), 64);
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(NOISE_DIR)).unwrap();
        fs::write(dir.path().join(NOISE_DIR).join(NOISE_ROOT_FILE), b"short").unwrap();
        let e = ensure_hub_noise(dir.path(), 1).err().unwrap().to_string();
        assert!(e.contains("32 bytes"), "{e}");
    }
}
