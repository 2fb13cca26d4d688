//! The daemon's configuration file (`/etc/interopd/interopd.conf`, TOML). Sans-I/O: it takes
//! the file's text and path and returns a validated [`Config`] or a [`ConfigError`] that names
//! the line. Parsing is two steps, as in ripgrep: the raw TOML into plain structs (unknown keys
//! are errors, so a typo never silently falls back to a default), then validation into the
//! types the daemon uses. Every key, its default and unit is in docs/config.md; a test parses
//! every example config shipped in the repository.
//!
//! This file must not open sockets or read other files; relative paths are resolved against
//! the config file's directory but not checked for existence (the shell does that).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod api_rate;
pub mod backup;
mod media;
pub mod mqtt;
mod render;
pub mod trigger;
mod wire;
pub use api_rate::{ApiRate, MAX_API_RATE_REQUESTS};
pub use backup::BackupConfig;
pub use mqtt::MqttConfig;
use render::{hex, toml_string};
pub use trigger::TriggerConfig;
use wire::parse_hex32;
pub use wire::{PROFILE_WHEN_ABSENT, WHATSAPP_NOISE_ROOT, max_token_bytes, parse_noise_root};

/// The default config file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/interopd/interopd.conf";
/// The default local API address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8787";
/// [`DEFAULT_API_ADDR`] as a socket address (a test checks they agree).
pub const DEFAULT_API_SOCKET: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8787),
);
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/interopd";
/// Largest config file we read, in bytes.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Keepalive bounds (the gatekeeper expects a ping every 20 to 30 s).
pub const MIN_KEEPALIVE_SECS: u64 = 20;
pub const MAX_KEEPALIVE_SECS: u64 = 30;
pub const DEFAULT_KEEPALIVE_SECS: u64 = 25;
/// Longest integrator id or user name, in bytes (the joined account name has its own bound,
/// `jid::MAX_ACCOUNT_BYTES`).
pub const MAX_NAME_BYTES: usize = 64;
/// Default `media.blob_expiry_secs`: our blobs are served for 30 days.
pub const DEFAULT_MEDIA_BLOB_EXPIRY_SECS: u64 = 30 * 24 * 60 * 60;
/// Default `media.retention_secs`: received media is kept for 30 days.
pub const DEFAULT_MEDIA_RETENTION_SECS: u64 = 30 * 24 * 60 * 60;
/// Default `media.quota_bytes`: 1 GiB for hosted blobs and received media together.
pub const DEFAULT_MEDIA_QUOTA_BYTES: u64 = 1024 * 1024 * 1024;
/// Shortest `media.blob_expiry_secs` and `media.retention_secs`, in seconds.
pub const MIN_MEDIA_LIFETIME_SECS: u64 = 60;
/// Longest `media.blob_expiry_secs` and `media.retention_secs` (about ten years), in seconds.
pub const MAX_MEDIA_LIFETIME_SECS: u64 = 3650 * 24 * 60 * 60;
/// Smallest `media.quota_bytes`, in bytes.
pub const MIN_MEDIA_QUOTA_BYTES: u64 = 1024 * 1024;
/// Longest `media.public_url`, in bytes.
pub const MAX_MEDIA_PUBLIC_URL_BYTES: usize = 256;

/// A bad configuration. The daemon prints it and exits with status 78 (EX_CONFIG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line in the file, when the error can be tied to one.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// How the daemon authenticates the gatekeeper's TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPin {
    /// Trust only certificates issued by this CA (PEM file).
    CaFile(PathBuf),
    /// Accept only a server key whose SubjectPublicKeyInfo hashes (SHA-256) to this.
    SpkiSha256([u8; 32]),
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our integrator id at the gatekeeper.
    pub integrator: String,
    /// This household's account name.
    pub user: String,
    /// The provider token issued by the gatekeeper (a JWT on `wa`). Never logged.
    pub token: String,
    /// `[gatekeeper] profile`: how the link talks to the gatekeeper.
    pub profile: interop_proto::WireProfile,
    /// `[gatekeeper] noise_root` and `noise_root_serial`: the Noise root the link pins; set
    /// exactly when `profile` is `wa`.
    pub noise_root: Option<interop_proto::noise::RootPin>,
    /// The gatekeeper's `host:port`.
    pub server_addr: String,
    /// The name in the gatekeeper's certificate.
    pub server_name: String,
    pub pin: ServerPin,
    pub keepalive_secs: u64,
    pub api_addr: SocketAddr,
    /// Extra `Host` header names the API accepts (besides the listen address and localhost).
    pub api_host_names: Vec<String>,
    /// `[api] rate_burst_requests` and `rate_requests_per_sec`: the API's token bucket.
    pub api_rate: ApiRate,
    pub state_dir: PathBuf,
    /// Where inbound messages and status changes are POSTed, if anywhere.
    pub webhook: Option<WebhookConfig>,
    /// The `[media]` section (defaults when absent).
    pub media: MediaConfig,
    /// The `[[trigger]]` entries: trigger URLs, in file order.
    pub triggers: Vec<TriggerConfig>,
    /// The `[mqtt]` section: the MQTT bridge, if configured.
    pub mqtt: Option<MqttConfig>,
    /// The `[backup]` section: scheduled backups, off when absent.
    pub backup: Option<BackupConfig>,
    /// Set by `interopd run --reset-identity`, never by the file: start with a new identity
    /// even though the state directory shows an earlier one ([`crate::daemon::earlier_life`]).
    pub reset_identity: bool,
}

/// The `[media]` section, validated: `public_url` is set exactly when `listen` is, and
/// `cert_file` and `key_file` are both set or both absent (and only with `listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Where the HTTPS media host listens; `None`: no media host (sending media is off).
    pub listen: Option<SocketAddr>,
    /// `https://host:port` as the gatekeeper reaches the media host, without a trailing
    /// slash; blob URLs are `{public_url}/m/{id}`.
    pub public_url: Option<String>,
    /// The media host's certificate chain (PEM); `None`: a self-signed one is made under
    /// `<state>/media-host/`.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
    /// How long a blob we host is served after it was uploaded, in seconds.
    pub blob_expiry_secs: u64,
    /// How long received media is kept, in seconds.
    pub retention_secs: u64,
    /// Disk space for hosted blobs and received media together, in bytes.
    pub quota_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            listen: None,
            public_url: None,
            cert_file: None,
            key_file: None,
            blob_expiry_secs: DEFAULT_MEDIA_BLOB_EXPIRY_SECS,
            retention_secs: DEFAULT_MEDIA_RETENTION_SECS,
            quota_bytes: DEFAULT_MEDIA_QUOTA_BYTES,
        }
    }
}

impl MediaConfig {
    /// `blob_expiry_secs` in milliseconds.
    pub fn blob_expiry_ms(&self) -> u64 {
        self.blob_expiry_secs.saturating_mul(1000)
    }

    /// `retention_secs` in milliseconds.
    pub fn retention_ms(&self) -> u64 {
        self.retention_secs.saturating_mul(1000)
    }
}

/// Splits a media host's public URL, `https://host:port` (a trailing `/` allowed, nothing
/// else after the port), into host and port. An IPv6 host keeps its brackets. This is the
/// origin form `interop-hub provision --media-host` registers.
pub fn parse_media_public_url(url: &str) -> Option<(String, u16)> {
    if url.len() > MAX_MEDIA_PUBLIC_URL_BYTES {
        return None;
    }
    let authority = url.strip_prefix("https://")?;
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b"/?#@\\".contains(&b))
    {
        return None;
    }
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if port.to_string().len() != authority.len() - host.len() - 1 {
        // A sign or leading zeros: not the canonical form the hub compares.
        return None;
    }
    let ok_host = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty() && !host.contains([':', '[', ']']),
    };
    ok_host.then(|| (host.to_string(), port))
}

/// Longest webhook URL or secret, in bytes.
pub const MAX_WEBHOOK_FIELD_BYTES: usize = 1024;

/// The `[webhook]` section, validated: a plain-HTTP URL split into its parts, and the HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The URL as written (`http://host[:port]/path`).
    pub url: String,
    /// The host to connect to (a name, an IPv4 address, or an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// The request target, starting with `/` (path and query).
    pub target: String,
    /// The HMAC-SHA256 key for `X-Interopd-Signature`. Never logged.
    pub secret: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Splits `http://host[:port][/target]` into host, port (default 80) and target (default `/`).
/// Only plain HTTP: webhook receivers are household services on the local network.
pub fn parse_webhook_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => (rest.get(..i)?, rest.get(i..)?.to_string()),
        None => (rest, "/".to_string()),
    };
    let target = if target.starts_with('?') {
        format!("/{target}")
    } else {
        target
    };
    if authority.contains('@') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        match after {
            "" => (h, 80),
            p => (h, p.strip_prefix(':')?.parse().ok()?),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 80),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port, target))
}

impl Config {
    /// Checks what the config names on disk, after [`parse`]: `gatekeeper.ca_file` must be a
    /// readable PEM file of CA certificates, or the daemon would stay up with a pin that can
    /// never match. `check-config` and `run` both call it (exit 78).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if let ServerPin::CaFile(path) = &self.pin {
            crate::tls::client_config(&crate::tls::Pin::CaFile(path.clone())).map_err(|e| {
                ConfigError {
                    line: None,
                    message: format!("gatekeeper.ca_file {}: {e}", path.display()),
                }
            })?;
        }
        trigger::check_files(&self.triggers)?;
        mqtt::check_files(self.mqtt.as_ref())
    }

    /// Our account as the gatekeeper knows it: `{integrator}-{user}`.
    pub fn account(&self) -> String {
        format!("{}-{}", self.integrator, self.user)
    }
}

impl std::fmt::Display for Config {
    /// Renders a complete config file that parses back to the same [`Config`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |s: &str| toml_string(s);
        writeln!(
            f,
            "# interopd configuration. Keys: docs/config.md. Keep this file mode 0600:"
        )?;
        writeln!(f, "# it holds the provider token.")?;
        writeln!(f)?;
        writeln!(f, "[account]")?;
        writeln!(f, "integrator = {}", q(&self.integrator))?;
        writeln!(f, "user = {}", q(&self.user))?;
        writeln!(f, "token = {}", q(&self.token))?;
        writeln!(f)?;
        writeln!(f, "[gatekeeper]")?;
        writeln!(f, "address = {}", q(&self.server_addr))?;
        writeln!(f, "server_name = {}", q(&self.server_name))?;
        wire::render(f, self.profile, self.noise_root.as_ref())?;
        match &self.pin {
            ServerPin::CaFile(p) => writeln!(f, "ca_file = {}", q(&p.to_string_lossy()))?,
            ServerPin::SpkiSha256(h) => writeln!(f, "spki_sha256 = {}", q(&hex(h)))?,
        }
        writeln!(f, "keepalive_secs = {}", self.keepalive_secs)?;
        writeln!(f)?;
        writeln!(f, "[api]")?;
        writeln!(f, "listen = {}", q(&self.api_addr.to_string()))?;
        if !self.api_addr.ip().is_loopback() {
            writeln!(f, "allow_non_loopback = true")?;
        }
        if !self.api_host_names.is_empty() {
            let names: Vec<String> = self.api_host_names.iter().map(|n| q(n)).collect();
            writeln!(f, "host_names = [{}]", names.join(", "))?;
        }
        if self.api_rate != ApiRate::default() {
            writeln!(f, "rate_burst_requests = {}", self.api_rate.burst_requests)?;
            writeln!(
                f,
                "rate_requests_per_sec = {}",
                self.api_rate.requests_per_sec
            )?;
        }
        if let Some(w) = &self.webhook {
            writeln!(f)?;
            writeln!(f, "[webhook]")?;
            writeln!(f, "url = {}", q(&w.url))?;
            writeln!(f, "secret = {}", q(&w.secret))?;
        }
        let m = &self.media;
        if *m != MediaConfig::default() {
            writeln!(f)?;
            writeln!(f, "[media]")?;
            if let Some(l) = &m.listen {
                writeln!(f, "listen = {}", q(&l.to_string()))?;
            }
            if let Some(u) = &m.public_url {
                writeln!(f, "public_url = {}", q(u))?;
            }
            if let Some(p) = &m.cert_file {
                writeln!(f, "cert_file = {}", q(&p.to_string_lossy()))?;
            }
            if let Some(p) = &m.key_file {
                writeln!(f, "key_file = {}", q(&p.to_string_lossy()))?;
            }
            writeln!(f, "blob_expiry_secs = {}", m.blob_expiry_secs)?;
            writeln!(f, "retention_secs = {}", m.retention_secs)?;
            writeln!(f, "quota_bytes = {}", m.quota_bytes)?;
        }
        writeln!(f)?;
        writeln!(f, "[state]")?;
        writeln!(f, "dir = {}", q(&self.state_dir.to_string_lossy()))?;
        trigger::render(f, &self.triggers)?;
        mqtt::render(f, self.mqtt.as_ref())?;
        backup::render(f, self.backup.as_ref())
    }
}

// ---- step 1: raw ------------------------------------------------------------------------

type S<T> = toml::Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    account: RawAccount,
    gatekeeper: RawGatekeeper,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    state: RawState,
    webhook: Option<RawWebhook>,
    #[serde(default)]
    media: media::RawMedia,
    #[serde(default)]
    trigger: Vec<S<trigger::RawTrigger>>,
    mqtt: Option<mqtt::RawMqtt>,
    backup: Option<S<backup::RawBackup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: S<String>,
    secret: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    integrator: S<String>,
    user: S<String>,
    token: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatekeeper {
    address: S<String>,
    server_name: Option<S<String>>,
    ca_file: Option<S<String>>,
    spki_sha256: Option<S<String>>,
    keepalive_secs: Option<S<u64>>,
    profile: Option<S<String>>,
    noise_root: Option<S<String>>,
    noise_root_serial: Option<S<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<S<String>>,
    #[serde(default)]
    allow_non_loopback: bool,
    #[serde(default)]
    host_names: Vec<String>,
    rate_burst_requests: Option<S<u32>>,
    rate_requests_per_sec: Option<S<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<S<String>>,
}

// ---- step 2: validated ------------------------------------------------------------------

/// Parses and validates a config file's text. `path` is used to resolve relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError {
            line: None,
            message: format!(
                "file is {} bytes, over the limit of {MAX_CONFIG_BYTES}",
                text.len()
            ),
        });
    }
    let raw: Raw = toml::from_str(text).map_err(|e| ConfigError {
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let err = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };

    let integrator = name(&raw.account.integrator, "account.integrator")
        .map_err(|m| err(raw.account.integrator.span(), m))?;
    let user =
        name(&raw.account.user, "account.user").map_err(|m| err(raw.account.user.span(), m))?;
    if crate::jid::check_account(&format!("{integrator}-{user}")).is_err() {
        return Err(err(
            raw.account.user.span(),
            format!(
                "the account name \"{integrator}-{user}\" is longer than {} bytes",
                crate::jid::MAX_ACCOUNT_BYTES
            ),
        ));
    }
    let g = &raw.gatekeeper;
    let wire = wire::RawWire {
        profile: &g.profile,
        noise_root: &g.noise_root,
        noise_root_serial: &g.noise_root_serial,
        section: g.address.span(),
    };
    let (profile, noise_root) = wire::parse(&wire, &raw.account.token, &err)?;
    let token = raw.account.token.get_ref().clone();
    let server_addr = g.address.get_ref().clone();
    let Some((host, port)) = server_addr.rsplit_once(':') else {
        return Err(err(
            g.address.span(),
            format!("gatekeeper.address {server_addr:?} must be host:port"),
        ));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(err(
            g.address.span(),
            format!("gatekeeper.address {server_addr:?} must be host:port"),
        ));
    }
    let server_name = match &g.server_name {
        Some(n) if n.get_ref().is_empty() => {
            return Err(err(
                n.span(),
                "gatekeeper.server_name must not be empty".into(),
            ));
        }
        Some(n) => n.get_ref().clone(),
        None => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    };
    let pin = match (&g.ca_file, &g.spki_sha256) {
        (Some(_), Some(s)) => {
            return Err(err(
                s.span(),
                "set either gatekeeper.ca_file or gatekeeper.spki_sha256, not both".into(),
            ));
        }
        (Some(ca), None) => ServerPin::CaFile(resolve(ca.get_ref())),
        (None, Some(s)) => ServerPin::SpkiSha256(parse_hex32(s.get_ref()).ok_or_else(|| {
            err(
                s.span(),
                "gatekeeper.spki_sha256 must be 64 hex digits".into(),
            )
        })?),
        (None, None) => {
            return Err(err(
                g.address.span(),
                "the gatekeeper's certificate must be pinned: set gatekeeper.ca_file or gatekeeper.spki_sha256".into(),
            ));
        }
    };
    let keepalive_secs = match &g.keepalive_secs {
        None => DEFAULT_KEEPALIVE_SECS,
        Some(k) if (MIN_KEEPALIVE_SECS..=MAX_KEEPALIVE_SECS).contains(k.get_ref()) => *k.get_ref(),
        Some(k) => {
            return Err(err(
                k.span(),
                format!(
                    "gatekeeper.keepalive_secs must be {MIN_KEEPALIVE_SECS} to {MAX_KEEPALIVE_SECS}"
                ),
            ));
        }
    };

    let api_rate = api_rate::parse(
        text,
        &raw.api.rate_burst_requests,
        &raw.api.rate_requests_per_sec,
    )?;
    let (api_addr, api_span) = match &raw.api.listen {
        Some(l) => (l.get_ref().as_str(), Some(l.span())),
        None => (DEFAULT_API_ADDR, None),
    };
    let api_err = |m: String| ConfigError {
        line: api_span.clone().map(|s| line_of(text, s.start)),
        message: m,
    };
    let api_addr: SocketAddr = api_addr.parse().map_err(|_| {
        api_err(format!(
            "api.listen {api_addr:?} must be an IP address and port"
        ))
    })?;
    if !api_addr.ip().is_loopback() && !raw.api.allow_non_loopback {
        return Err(api_err(format!(
            "api.listen {api_addr} is not a loopback address; set api.allow_non_loopback = true to expose the API on the network"
        )));
    }
    let state_dir = match &raw.state.dir {
        Some(d) if d.get_ref().is_empty() => {
            return Err(err(d.span(), "state.dir must not be empty".into()));
        }
        Some(d) => resolve(d.get_ref()),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let webhook = match &raw.webhook {
        None => None,
        Some(w) => {
            if w.url.get_ref().len() > MAX_WEBHOOK_FIELD_BYTES {
                return Err(err(w.url.span(), "webhook.url is too long".into()));
            }
            let Some((host, port, target)) = parse_webhook_url(w.url.get_ref()) else {
                return Err(err(
                    w.url.span(),
                    format!(
                        "webhook.url {:?} must be http://host[:port]/path",
                        w.url.get_ref()
                    ),
                ));
            };
            let secret = w.secret.get_ref();
            if secret.is_empty() || secret.len() > MAX_WEBHOOK_FIELD_BYTES {
                return Err(err(
                    w.secret.span(),
                    format!("webhook.secret must be 1 to {MAX_WEBHOOK_FIELD_BYTES} bytes"),
                ));
            }
            Some(WebhookConfig {
                url: w.url.get_ref().clone(),
                host,
                port,
                target,
                secret: secret.clone(),
            })
        }
    };
    let media = media::parse(&raw.media, text, &resolve)?;
    let triggers = trigger::parse(text, &raw.trigger, &resolve, media.public_url.is_some())?;
    let mqtt = mqtt::parse(
        text,
        raw.mqtt.as_ref(),
        &format!("{integrator}-{user}"),
        &resolve,
    )?;
    let backup = backup::parse(text, raw.backup.as_ref(), &resolve, &state_dir, path)?;
    Ok(Config {
        integrator,
        user,
        token,
        profile,
        noise_root,
        server_addr,
        server_name,
        pin,
        keepalive_secs,
        api_addr,
        api_host_names: raw.api.host_names,
        api_rate,
        state_dir,
        webhook,
        media,
        triggers,
        mqtt,
        backup,
        reset_identity: false,
    })
}

fn name(v: &S<String>, key: &str) -> Result<String, String> {
    let s = v.get_ref();
    // The integrator id ends at the first '-' of the account name, so it cannot hold one.
    let allowed = |b: u8| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || (key == "account.user" && matches!(b, b'.' | b'_' | b'-'))
    };
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.bytes().all(allowed)
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(s.clone())
    } else if key == "account.user" {
        Err(format!(
            "{key} {s:?} must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    } else {
        Err(format!("{key} {s:?} must be lowercase letters and digits"))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|b| *b == b'\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[account]
integrator = "acme"
user = "home"
token = "secret-token"

[gatekeeper]
address = "127.0.0.1:5222"
server_name = "localhost"
ca_file = "ca.pem"
"#;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/interopd/interopd.conf"))
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = p(GOOD).unwrap();
        assert_eq!(c.account(), "acme-home");
        assert_eq!(c.api_addr.to_string(), DEFAULT_API_ADDR);
        assert_eq!(c.api_addr, DEFAULT_API_SOCKET);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.keepalive_secs, DEFAULT_KEEPALIVE_SECS);
        assert_eq!(
            c.pin,
            ServerPin::CaFile(PathBuf::from("/etc/interopd/ca.pem"))
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let text = GOOD.replace("user = \"home\"", "user = \"home\"\nusr = \"typo\"");
        let e = p(&text).unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("usr"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = p("[account]\nintegrator = \"a\"\nuser = \n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn non_loopback_api_needs_explicit_permission() {
        let text = format!("{GOOD}\n[api]\nlisten = \"0.0.0.0:8787\"\n");
        let e = p(&text).unwrap_err();
        assert!(e.message.contains("allow_non_loopback"), "{e}");
        assert_eq!(e.line, Some(13));
        let text = format!("{GOOD}\n[api]\nlisten = \"0.0.0.0:8787\"\nallow_non_loopback = true\n");
        assert!(p(&text).is_ok());
    }

    #[test]
    fn server_must_be_pinned_one_way() {
        let unpinned = GOOD.replace("ca_file = \"ca.pem\"\n", "");
        assert!(p(&unpinned).unwrap_err().message.contains("pinned"));
        let both = format!("{GOOD}spki_sha256 = \"{}\"\n", "ab".repeat(32));
        assert!(p(&both).unwrap_err().message.contains("not both"));
        let spki = unpinned.clone() + &format!("spki_sha256 = \"{}\"\n", "ab".repeat(32));
        assert_eq!(p(&spki).unwrap().pin, ServerPin::SpkiSha256([0xab; 32]));
        let bad = unpinned + "spki_sha256 = \"xyz\"\n";
        assert!(p(&bad).unwrap_err().message.contains("64 hex"));
    }

    #[test]
    fn the_api_rate_limit_is_configurable_and_bounded() {
        let p = |t: &str| parse(t, Path::new("interopd.conf"));
        assert_eq!(p(GOOD).unwrap().api_rate, ApiRate::default());
        let fast =
            format!("{GOOD}\n[api]\nrate_burst_requests = 5000\nrate_requests_per_sec = 2000\n");
        let c = p(&fast).unwrap();
        assert_eq!(
            (c.api_rate.burst_requests, c.api_rate.requests_per_sec),
            (5000, 2000)
        );
        let zero = format!("{GOOD}\n[api]\nrate_requests_per_sec = 0\n");
        assert!(
            p(&zero)
                .unwrap_err()
                .message
                .contains("api.rate_requests_per_sec")
        );
    }

    #[test]
    fn bad_values_are_refused_with_reasons() {
        for (from, to, needle) in [
            ("user = \"home\"", "user = \"Home\"", "account.user"),
            (
                "integrator = \"acme\"",
                "integrator = \"ac-me\"",
                "account.integrator",
            ),
            ("user = \"home\"", "user = \"\"", "account.user"),
            ("token = \"secret-token\"", "token = \"\"", "token"),
            (
                "address = \"127.0.0.1:5222\"",
                "address = \"nohost\"",
                "host:port",
            ),
            (
                "address = \"127.0.0.1:5222\"",
                "address = \"h:0\"",
                "host:port",
            ),
            (
                "ca_file = \"ca.pem\"",
                "ca_file = \"ca.pem\"\nkeepalive_secs = 5",
                "keepalive",
            ),
        ] {
            let e = p(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.message.contains(needle), "{to}: {e}");
            assert!(e.line.is_some(), "{to}: {e}");
        }
    }

    #[test]
    fn joined_account_name_and_token_obey_login_bounds() {
        let long_user = format!("user = \"{}\"", "h".repeat(MAX_NAME_BYTES));
        let e = p(&GOOD.replace("user = \"home\"", &long_user)).unwrap_err();
        assert!(e.message.contains("longer than"), "{e}");
        let long_token = format!(
            "token = \"{}\"",
            "t".repeat(crate::login::MAX_TOKEN_BYTES + 1)
        );
        let e = p(&GOOD.replace("token = \"secret-token\"", &long_token)).unwrap_err();
        assert!(e.message.contains("token"), "{e}");
        assert_eq!(e.line, Some(5));
    }

    #[test]
    fn rendered_config_parses_back_to_the_same_config() {
        let mut c = p(GOOD).unwrap();
        c.token = "tok\"en\\with\nodd chars".into();
        c.api_host_names = vec!["house.local".into()];
        c.api_rate = ApiRate {
            burst_requests: 5000,
            requests_per_sec: 2000,
        };
        c.webhook = Some(WebhookConfig {
            url: "http://ha.local:8123/api/webhook/door".into(),
            host: "ha.local".into(),
            port: 8123,
            target: "/api/webhook/door".into(),
            secret: "s3cret".into(),
        });
        c.state_dir = PathBuf::from("/var/lib/interopd");
        let again = p(&c.to_string()).unwrap();
        assert_eq!(again, c);
        c.pin = ServerPin::SpkiSha256([7; 32]);
        assert_eq!(p(&c.to_string()).unwrap(), c);
    }

    const ROOT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn wa(extra: &str) -> String {
        GOOD.replace(
            "ca_file = \"ca.pem\"\n",
            &format!("ca_file = \"ca.pem\"\nprofile = \"wa\"\n{extra}"),
        )
    }

    #[test]
    fn a_config_without_profile_speaks_interop_xml1() {
        let c = p(GOOD).unwrap();
        assert_eq!(c.profile, interop_proto::WireProfile::InteropXml1);
        assert_eq!(c.noise_root, None);
        assert!(c.to_string().contains("profile = \"interop-xml/1\""));
    }

    #[test]
    fn the_wa_profile_pins_a_noise_root_with_its_serial() {
        let c = p(&wa(&format!("noise_root = \"{ROOT}\"\n"))).unwrap();
        assert_eq!(c.profile, interop_proto::WireProfile::Wa);
        let root = c.noise_root.unwrap();
        assert_eq!((root.key[0], root.key[31], root.serial), (0x01, 0xef, 0));
        let c = p(&wa(&format!(
            "noise_root = \"{ROOT}\"\nnoise_root_serial = 7\n"
        )))
        .unwrap();
        assert_eq!(c.noise_root.map(|r| r.serial), Some(7));
        let whatsapp = p(&wa(&format!("noise_root = \"{WHATSAPP_NOISE_ROOT}\"\n"))).unwrap();
        assert_eq!(whatsapp.noise_root.map(|r| r.key[0]), Some(0x14));
    }

    #[test]
    fn wire_profile_errors_name_the_key_and_the_line() {
        let root = format!("noise_root = \"{ROOT}\"\n");
        for (text, needle, line) in [
            (
                GOOD.replace("ca_file", "profile = \"xmpp\"\nca_file"),
                "gatekeeper.profile \"xmpp\"",
                10,
            ),
            (wa(""), "noise_root (the gatekeeper's Noise root", 8),
            (wa("noise_root = \"abc\"\n"), "64 hex digits", 12),
            (
                GOOD.replace("ca_file", &format!("{root}ca_file")),
                "has no effect on profile \"interop-xml/1\"",
                10,
            ),
            (
                GOOD.replace("ca_file", "noise_root_serial = 1\nca_file"),
                "gatekeeper.noise_root_serial has no effect",
                10,
            ),
            (wa(&format!("{root}noise_root_serial = -1\n")), "", 13),
        ] {
            let e = p(&text).unwrap_err();
            assert!(e.message.contains(needle), "{needle}: {e}");
            assert_eq!(e.line, Some(line), "{needle}: {e}");
        }
    }

    #[test]
    fn the_token_bound_follows_the_profile() {
        let root = format!("noise_root = \"{ROOT}\"\n");
        let jwt = "j".repeat(crate::login::MAX_TOKEN_BYTES + 1);
        let long = |t: &str| format!("token = \"{t}\"");
        let xml = GOOD.replace("token = \"secret-token\"", &long(&jwt));
        let e = p(&xml).unwrap_err();
        assert!(
            e.message
                .contains("1 to 128 bytes on profile \"interop-xml/1\""),
            "{e}"
        );
        assert_eq!(e.line, Some(5));
        let on_wa = wa(&root).replace("token = \"secret-token\"", &long(&jwt));
        assert_eq!(p(&on_wa).unwrap().token, jwt);
        let too_long = "j".repeat(interop_proto::wa_login::MAX_WA_TOKEN_BYTES + 1);
        let e = p(&wa(&root).replace("token = \"secret-token\"", &long(&too_long))).unwrap_err();
        assert!(e.message.contains("on profile \"wa\""), "{e}");
        assert_eq!(e.line, Some(5));
        let e = p(&wa(&root).replace("token = \"secret-token\"", "token = \"\"")).unwrap_err();
        assert!(e.message.contains("account.token must be 1 to"), "{e}");
    }

    #[test]
    fn a_rendered_wa_config_parses_back_to_the_same_config() {
        let mut c = p(&wa(&format!("noise_root = \"{ROOT}\"\n"))).unwrap();
        let text = c.to_string();
        assert!(
            text.contains("profile = \"wa\"") && text.contains(ROOT),
            "{text}"
        );
        assert_eq!(p(&text).unwrap(), c);
        c.noise_root = c
            .noise_root
            .map(|r| interop_proto::noise::RootPin { serial: 3, ..r });
        assert_eq!(p(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn webhook_urls_split_into_host_port_and_target() {
        let ok = |u: &str| parse_webhook_url(u).unwrap();
        assert_eq!(ok("http://h"), ("h".into(), 80, "/".into()));
        assert_eq!(ok("http://h:81/a?b=c"), ("h".into(), 81, "/a?b=c".into()));
        assert_eq!(ok("http://[::1]:9/x"), ("::1".into(), 9, "/x".into()));
        assert_eq!(ok("http://h?q"), ("h".into(), 80, "/?q".into()));
        for bad in [
            "https://h/",
            "http://",
            "http://h:0/",
            "http://u@h/",
            "http://h/a b",
            "h/x",
        ] {
            assert!(parse_webhook_url(bad).is_none(), "{bad}");
        }
        let text = format!("{GOOD}\n[webhook]\nurl = \"ftp://x\"\nsecret = \"s\"\n");
        assert!(p(&text).unwrap_err().message.contains("webhook.url"));
        let text = format!("{GOOD}\n[webhook]\nurl = \"http://x/\"\nsecret = \"\"\n");
        assert!(p(&text).unwrap_err().message.contains("webhook.secret"));
    }

    const MEDIA: &str = r#"
[media]
listen = "0.0.0.0:8443"
public_url = "https://media.example.net:8443/"
cert_file = "media.pem"
key_file = "/etc/interopd/media-key.pem"
blob_expiry_secs = 86400
retention_secs = 3600
quota_bytes = 2000000
"#;

    #[test]
    fn media_section_is_optional_and_off_by_default() {
        let c = p(GOOD).unwrap();
        assert_eq!(c.media, MediaConfig::default());
        assert_eq!(c.media.listen, None);
        assert_eq!(c.media.blob_expiry_secs, DEFAULT_MEDIA_BLOB_EXPIRY_SECS);
        assert_eq!(c.media.retention_secs, DEFAULT_MEDIA_RETENTION_SECS);
        assert_eq!(c.media.quota_bytes, DEFAULT_MEDIA_QUOTA_BYTES);
        let limits_only = format!("{GOOD}\n[media]\nquota_bytes = 5000000\n");
        let c = p(&limits_only).unwrap();
        assert_eq!(c.media.listen, None);
        assert_eq!(c.media.quota_bytes, 5_000_000);
    }

    #[test]
    fn media_section_parses_every_key() {
        let c = p(&format!("{GOOD}{MEDIA}")).unwrap();
        let m = &c.media;
        assert_eq!(m.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert_eq!(
            m.public_url.as_deref(),
            Some("https://media.example.net:8443")
        );
        assert_eq!(m.cert_file, Some(PathBuf::from("/etc/interopd/media.pem")));
        assert_eq!(
            m.key_file,
            Some(PathBuf::from("/etc/interopd/media-key.pem"))
        );
        assert_eq!(m.blob_expiry_secs, 86_400);
        assert_eq!(m.blob_expiry_ms(), 86_400_000);
        assert_eq!(m.retention_secs, 3_600);
        assert_eq!(m.retention_ms(), 3_600_000);
        assert_eq!(m.quota_bytes, 2_000_000);
    }

    #[test]
    fn media_listen_needs_a_public_url_and_the_url_needs_listen() {
        let no_url = format!("{GOOD}\n[media]\nlisten = \"0.0.0.0:8443\"\n");
        let e = p(&no_url).unwrap_err();
        assert!(e.message.contains("media.public_url"), "{e}");
        assert_eq!(e.line, Some(13));
        for key in [
            "public_url = \"https://h:1\"",
            "cert_file = \"c.pem\"\nkey_file = \"k.pem\"",
        ] {
            let e = p(&format!("{GOOD}\n[media]\n{key}\n")).unwrap_err();
            assert!(e.message.contains("without media.listen"), "{key}: {e}");
            assert_eq!(e.line, Some(13), "{key}");
        }
    }

    #[test]
    fn media_values_are_checked_with_reasons_and_lines() {
        let full = format!("{GOOD}{MEDIA}");
        for (from, to, needle) in [
            (
                "listen = \"0.0.0.0:8443\"",
                "listen = \"nowhere\"",
                "media.listen",
            ),
            (
                "public_url = \"https://media.example.net:8443/\"",
                "public_url = \"http://media.example.net:8443\"",
                "media.public_url",
            ),
            (
                "cert_file = \"media.pem\"\n",
                "",
                "both media.cert_file and media.key_file",
            ),
            (
                "blob_expiry_secs = 86400",
                "blob_expiry_secs = 59",
                "blob_expiry_secs",
            ),
            (
                "retention_secs = 3600",
                "retention_secs = 999999999999",
                "retention_secs",
            ),
            ("quota_bytes = 2000000", "quota_bytes = 1000", "quota_bytes"),
            ("quota_bytes = 2000000", "quota = 2000000", "quota"),
        ] {
            let text = full.replace(from, to);
            let e = p(&text).unwrap_err();
            assert!(e.message.contains(needle), "{to}: {e}");
            assert!(e.line.is_some(), "{to}: {e}");
        }
    }

    #[test]
    fn media_public_urls_must_be_https_origins_with_a_port() {
        let ok = |u: &str| parse_media_public_url(u).unwrap();
        assert_eq!(ok("https://h:8443"), ("h".into(), 8443));
        assert_eq!(ok("https://h:8443/"), ("h".into(), 8443));
        assert_eq!(ok("https://10.0.0.2:1"), ("10.0.0.2".into(), 1));
        assert_eq!(ok("https://[::1]:8443"), ("[::1]".into(), 8443));
        for bad in [
            "http://h:1",
            "https://h",
            "https://h:0",
            "https://h:08443",
            "https://h:+1",
            "https://h:1/m",
            "https://h:1?x",
            "https://u@h:1",
            "https://:1",
            "https://::1:1",
            "https://[zz]:1",
            "https://h h:1",
        ] {
            assert!(parse_media_public_url(bad).is_none(), "{bad}");
        }
        let long = format!("https://{}:1", "h".repeat(MAX_MEDIA_PUBLIC_URL_BYTES));
        assert!(parse_media_public_url(&long).is_none());
    }

    #[test]
    fn rendered_media_section_parses_back_to_the_same_config() {
        let mut c = p(&format!("{GOOD}{MEDIA}")).unwrap();
        assert_eq!(p(&c.to_string()).unwrap(), c);
        c.media.cert_file = None;
        c.media.key_file = None;
        assert_eq!(p(&c.to_string()).unwrap(), c);
        c.media = MediaConfig {
            quota_bytes: MIN_MEDIA_QUOTA_BYTES,
            ..MediaConfig::default()
        };
        assert_eq!(p(&c.to_string()).unwrap(), c);
        c.media = MediaConfig::default();
        assert!(!c.to_string().contains("[media]"));
    }

    #[test]
    fn oversize_file_is_refused() {
        let big = "#".repeat(MAX_CONFIG_BYTES + 1);
        assert!(p(&big).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn shipped_example_configs_parse() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("board/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "conf") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&text, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n > 0, "no example config found in {}", dir.display());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,400}") {
                let _ = p(&text);
            }

            #[test]
            fn webhook_url_parser_never_panics(url in "http://.{0,60}") {
                if let Some((host, port, target)) = parse_webhook_url(&url) {
                    prop_assert!(!host.is_empty() && port != 0 && target.starts_with('/'));
                }
            }

            #[test]
            fn media_public_url_parser_never_panics(url in "https://.{0,60}") {
                if let Some((host, port)) = parse_media_public_url(&url) {
                    prop_assert!(!host.is_empty() && port != 0);
                    let origin = format!("{host}:{port}");
                    prop_assert!(url.contains(&origin));
                }
            }

            #[test]
            fn error_lines_are_within_the_file(extra in "[a-z_ =\"\\[\\]0-9\n]{0,80}") {
                let text = format!("{GOOD}{extra}");
                if let Err(e) = p(&text)
                    && let Some(l) = e.line
                {
                    prop_assert!(l >= 1 && l <= text.lines().count() + 1);
                }
            }
        }
    }
}
