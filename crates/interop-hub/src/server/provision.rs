//! Provider accounts: `interop-hub provision` makes (or finds) one and says what a daemon
//! needs to log in as it.

use super::*;

/// Why `interop-hub provision` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProvisionError {
    /// Caller: the account name is not `{integrator}-{user}`.
    BadAccount { name: String },
    /// Caller: `--connect` is not `HOST:PORT`.
    BadConnect { addr: String },
    /// Environment: the accounts directory or token file could not be written.
    Store(StoreError),
    /// Environment: the CA could not be made.
    Tls(tls::TlsError),
    /// Environment: the test provider's signing key could not be made or used.
    Provider(crate::provider::ProviderError),
}

impl std::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProvisionError::BadAccount { name } => write!(
                f,
                "account {name:?} must be {{integrator}}-{{user}}: integrator of [a-z0-9], user of [a-z0-9._-] (for example acme-home)"
            ),
            ProvisionError::BadConnect { addr } => {
                write!(f, "--connect {addr:?} must be HOST:PORT")
            }
            ProvisionError::Store(e) => write!(f, "{e}"),
            ProvisionError::Tls(e) => write!(f, "{e}"),
            ProvisionError::Provider(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProvisionError {}

/// What a daemon needs to log in to this hub as a provisioned account. The daemon's side
/// renders it as an `interopd.conf` (the hub knows no daemon config format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub integrator: String,
    pub user: String,
    /// The provider token. Never logged.
    pub token: String,
    /// The `host:port` the daemon dials (the hub's `--listen`).
    pub server_addr: String,
    /// The name in the hub's certificate.
    pub server_name: String,
    /// The hub's CA (PEM) that the daemon pins (the link on `interop-xml/1`, and the media
    /// proxy on both profiles).
    pub ca_file: PathBuf,
    /// The profile the config speaks.
    pub profile: interop_proto::WireProfile,
    /// On `wa`: the hub's Noise root public key (64 hex digits) the daemon pins.
    pub noise_root: Option<String>,
}

/// How long a provider JWT that `provision --profile wa` mints is valid, in seconds. The
/// daemon warns as the end nears; provisioning again mints a new one.
pub const PROVISIONED_TOKEN_LIFETIME_S: u64 = 365 * 24 * 3600;

/// Creates (or finds) provider account `name` in `state_dir` and returns what a daemon that
/// dials `connect` and pins `<state_dir>/ca.pem` needs on `profile`. Makes the CA (and on
/// `wa` the Noise keys and the integrator's test provider key) if the hub has never made
/// them. On `wa` the token is a JWT the hub signs as the integrator's test provider, valid
/// for [`PROVISIONED_TOKEN_LIFETIME_S`].
pub fn provision(
    state_dir: &Path,
    name: &str,
    connect: &str,
    profile: interop_proto::WireProfile,
) -> Result<Provisioned, ProvisionError> {
    let bad = || ProvisionError::BadAccount {
        name: name.to_owned(),
    };
    jid::check_account(name).map_err(|_| bad())?;
    let (integrator, user) = name.split_once('-').ok_or_else(bad)?;
    if integrator.is_empty()
        || !integrator
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || user.is_empty()
    {
        return Err(bad());
    }
    let (host, port) = connect
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| ProvisionError::BadConnect {
            addr: connect.to_owned(),
        })?;
    let state_dir = std::path::absolute(state_dir).map_err(|source| {
        ProvisionError::Store(StoreError::Io {
            path: state_dir.to_path_buf(),
            source,
        })
    })?;
    let ca = state_dir.join(tls::CA_CERT_FILE);
    if !ca.exists() {
        tls::ensure_hub_ca(&state_dir, SERVER_NAMES).map_err(ProvisionError::Tls)?;
    }
    let mut token = provision_account(&state_dir, name).map_err(ProvisionError::Store)?;
    let _ = port;
    let mut noise_root = None;
    if profile == interop_proto::WireProfile::Wa {
        let now_s = now_ms() / 1000;
        let noise = ensure_hub_noise(&state_dir, now_s).map_err(ProvisionError::Store)?;
        noise_root = Some(pin_hex(&noise.pin()));
        let key = crate::provider::ensure_provider(&state_dir, integrator)
            .map_err(ProvisionError::Provider)?;
        let claims = interop_proto::jwt::Claims {
            iss: integrator.to_owned(),
            sub: name.to_owned(),
            aud: crate::provider::JWT_AUDIENCE.to_owned(),
            iat: Some(now_s),
            nbf: None,
            exp: now_s.saturating_add(PROVISIONED_TOKEN_LIFETIME_S),
        };
        token = key.sign(&claims).map_err(ProvisionError::Provider)?;
    }
    Ok(Provisioned {
        integrator: integrator.to_owned(),
        user: user.to_owned(),
        token,
        server_addr: connect.to_owned(),
        server_name: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        ca_file: ca,
        profile,
        noise_root,
    })
}
