//! Trigger URLs: `GET|POST /v1/triggers/{name}?key=…` sends the message a `[[trigger]]`
//! configures, for buttons, cameras and scripts that can make a GET and nothing else.
//!
//! Each trigger has its own random key in `<state>/trigger-keys/<name>` (file 0600, directory
//! 0700), made on the daemon's first start with the trigger or by `interopd trigger-url`.
//! The key is read from its file on every fire, so `interopd trigger-url NAME --rotate` takes
//! effect at once in a running daemon. A key is not the API token: it fires one trigger and
//! opens no other route (the dispatcher refuses a `key` on them, see [`super::Api`]).
//!
//! A wrong or missing key and an unknown name get the same 401, after the same constant-time
//! comparison (against a throwaway key for an unknown name), so names cannot be probed. Only
//! a fire with the right key spends the trigger's own budget ([`FireLimit`]), so a stranger's
//! wrong guesses cannot starve a doorbell; once spent, 429 with `Retry-After`. The message
//! goes through the same enqueue path as `POST /v1/messages` (or `POST /v1/media` with an
//! image), so its 202 also follows the durable commit.
//!
//! Keys are never logged; fires log the trigger name and the message id.

use std::cell::RefCell;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rand::Rng as _;

use super::{Api, media, messages, now_ms};
use crate::config::{Config, TriggerConfig};
use crate::http::{Request, Response};
use crate::login::constant_time_eq;
use crate::metrics::Counter;

/// The directory of key files inside the state directory.
pub const TRIGGER_KEYS_DIR_NAME: &str = "trigger-keys";
/// Random bytes in a fresh key (rendered as twice as many hex digits).
pub const TRIGGER_KEY_RANDOM_BYTES: usize = 32;
/// Shortest key accepted from an existing file, in bytes.
pub const MIN_TRIGGER_KEY_BYTES: usize = 16;
/// Longest key accepted from an existing file, in bytes (and read from it).
pub const MAX_TRIGGER_KEY_BYTES: usize = 128;

/// Why a key file could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TriggerKeyError {
    /// Environment: the file or its directory could not be read, written or restricted.
    Io { path: PathBuf, source: io::Error },
    /// Environment (an edited file): the key is too short or long, or holds bytes other than
    /// `A-Z a-z 0-9 - _` (what a URL carries unescaped).
    Malformed { path: PathBuf },
}

impl std::fmt::Display for TriggerKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "trigger key {}: {source}", path.display()),
            Self::Malformed { path } => write!(
                f,
                "trigger key {}: must be {MIN_TRIGGER_KEY_BYTES} to {MAX_TRIGGER_KEY_BYTES} of A-Z, a-z, 0-9, '-' and '_'; run `interopd trigger-url NAME --rotate` for a new one",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TriggerKeyError {}

/// The key file of trigger `name` (a name [`crate::config::trigger::valid_name`] accepts).
pub fn key_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(TRIGGER_KEYS_DIR_NAME).join(name)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> TriggerKeyError + '_ {
    move |source| TriggerKeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `<state>/trigger-keys` (0700) if absent and restricts it to 0700.
fn ensure_dir(state_dir: &Path) -> Result<PathBuf, TriggerKeyError> {
    let dir = state_dir.join(TRIGGER_KEYS_DIR_NAME);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&dir)(e)),
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
    Ok(dir)
}

fn valid_key(k: &str) -> bool {
    (MIN_TRIGGER_KEY_BYTES..=MAX_TRIGGER_KEY_BYTES).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads trigger `name`'s key; `None` when its file does not exist.
pub fn read_key(state_dir: &Path, name: &str) -> Result<Option<String>, TriggerKeyError> {
    let path = key_path(state_dir, name);
    let mut text = String::new();
    let read = fs::File::open(&path).and_then(|f| {
        io::Read::read_to_string(
            &mut io::Read::take(f, MAX_TRIGGER_KEY_BYTES as u64 + 2),
            &mut text,
        )
    });
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(TriggerKeyError::Malformed { path });
        }
        Err(e) => return Err(io_err(&path)(e)),
    }
    let key = text.trim();
    if valid_key(key) {
        Ok(Some(key.to_string()))
    } else {
        Err(TriggerKeyError::Malformed { path })
    }
}

/// A fresh key: [`TRIGGER_KEY_RANDOM_BYTES`] random bytes as hex.
fn fresh_key() -> String {
    let mut random = [0u8; TRIGGER_KEY_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut random);
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `key` as trigger `name`'s key file (0600) through a temporary file and a rename,
/// so a reader sees the old key or the new one, never a torn file.
fn write_key(state_dir: &Path, name: &str, key: &str) -> Result<(), TriggerKeyError> {
    let dir = ensure_dir(state_dir)?;
    let path = key_path(state_dir, name);
    let temp = dir.join(format!(".{name}.new"));
    let _ = fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io_err(&temp))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&temp))?;
    fs::rename(&temp, &path).map_err(io_err(&path))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))
}

/// Trigger `name`'s key, made if it has none yet. An existing file is re-restricted to 0600.
pub fn load_or_create_key(state_dir: &Path, name: &str) -> Result<String, TriggerKeyError> {
    ensure_dir(state_dir)?;
    let path = key_path(state_dir, name);
    if let Some(k) = read_key(state_dir, name)? {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))?;
        return Ok(k);
    }
    let key = fresh_key();
    write_key(state_dir, name, &key)?;
    Ok(key)
}

/// Replaces trigger `name`'s key with a fresh one; the old key stops working at once.
pub fn rotate_key(state_dir: &Path, name: &str) -> Result<String, TriggerKeyError> {
    let key = fresh_key();
    write_key(state_dir, name, &key)?;
    Ok(key)
}

/// Makes a key for every configured trigger that has none (the daemon's start).
pub fn ensure_keys(config: &Config) -> Result<(), TriggerKeyError> {
    for t in &config.triggers {
        let existed = key_path(&config.state_dir, &t.name).exists();
        load_or_create_key(&config.state_dir, &t.name)?;
        if !existed {
            log::info!(
                "trigger {}: made its key; `interopd trigger-url {}` prints its URL",
                t.name,
                t.name
            );
        }
    }
    Ok(())
}

/// The URL that fires trigger `name` with `key`: on the first of `api.host_names` if the
/// config names any (the name a device on the network uses, which the Host check accepts),
/// else on the listen address.
pub fn url(config: &Config, name: &str, key: &str) -> String {
    let port = config.api_addr.port();
    let host = match config.api_host_names.first() {
        Some(h) => h.to_ascii_lowercase(),
        None => match config.api_addr {
            std::net::SocketAddr::V4(a) => a.ip().to_string(),
            std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
        },
    };
    format!("http://{host}:{port}/v1/triggers/{name}?key={key}")
}

/// One trigger's budget, as a generic cell rate: `burst` fires at once, then one more each
/// `interval_ms`. Sans-I/O: `now_ms` is passed in.
#[derive(Debug, Clone)]
pub struct FireLimit {
    burst: u32,
    interval_ms: u64,
    /// When the budget is whole again (the theoretical arrival time), in ms.
    full_at_ms: u64,
}

impl FireLimit {
    /// A full budget.
    pub fn new(burst: u32, interval_secs: u64) -> FireLimit {
        FireLimit {
            burst: burst.max(1),
            interval_ms: interval_secs.saturating_mul(1000).max(1),
            full_at_ms: 0,
        }
    }

    /// Spends one fire at `now_ms`; `Err(secs)` says how long until the next (for
    /// `Retry-After`).
    pub fn check(&mut self, now_ms: u64) -> Result<(), u64> {
        let full_at = self.full_at_ms.max(now_ms);
        let slack = u64::from(self.burst - 1).saturating_mul(self.interval_ms);
        let ahead = full_at - now_ms;
        if ahead > slack {
            return Err((ahead - slack).div_ceil(1000).max(1));
        }
        self.full_at_ms = full_at.saturating_add(self.interval_ms);
        Ok(())
    }
}

/// The configured triggers and their budgets, as the API holds them.
pub(crate) struct Triggers {
    state_dir: PathBuf,
    entries: Vec<(TriggerConfig, RefCell<FireLimit>)>,
}

impl Triggers {
    pub(crate) fn new(state_dir: PathBuf, triggers: Vec<TriggerConfig>) -> Triggers {
        let entries = triggers
            .into_iter()
            .map(|t| {
                let limit = FireLimit::new(t.rate_burst, t.rate_interval_secs);
                (t, RefCell::new(limit))
            })
            .collect();
        Triggers { state_dir, entries }
    }
}

fn unauthorized() -> Response {
    Response::json_error(
        401,
        "unauthorized",
        "this trigger URL's key is wrong or missing; `interopd trigger-url NAME` prints the right URL",
    )
}

/// `GET|POST /v1/triggers/{name}?key=…`.
pub async fn fire(api: &Rc<Api>, req: Request, name: &str) -> Response {
    let given = match req.query_param_count("key") {
        1 => req.query_param("key").unwrap_or_default(),
        _ => String::new(),
    };
    let found = api.triggers.entries.iter().find(|(t, _)| t.name == name);
    let expected = match found {
        None => None,
        Some((t, _)) => match read_key(&api.triggers.state_dir, &t.name) {
            Ok(k) => k,
            Err(e) => {
                log::warn!("trigger {}: {e}", t.name);
                None
            }
        },
    };
    // An unknown name, or one without a usable key file, is compared against a key nobody
    // holds, so every refusal takes the same path.
    let expected = expected.unwrap_or_else(fresh_key);
    let key_ok = constant_time_eq(given.as_bytes(), expected.as_bytes());
    let Some((trigger, limit)) = found.filter(|_| key_ok && !given.is_empty()) else {
        api.metrics.inc(Counter::TriggerRefusedKey);
        return unauthorized();
    };
    if let Err(retry_secs) = limit.borrow_mut().check(now_ms()) {
        api.metrics.inc(Counter::TriggerRateLimited);
        return Response::json_error(
            429,
            "trigger_rate_limited",
            "this trigger fired more often than its rate_burst and rate_interval_secs allow; retry after the time in Retry-After",
        )
        .with_header("Retry-After", &retry_secs.to_string());
    }
    let response = match (&trigger.media_file, trigger.media_mimetype()) {
        (Some(path), Some(mimetype)) => send_image(api, trigger, path, mimetype).await,
        _ => messages::queue_send(
            api,
            None,
            &trigger.to,
            messages::Body::Text(trigger.text.clone()),
            None,
            None,
        ),
    };
    if response.status == 202 {
        api.metrics.inc(Counter::TriggerFired);
        log::info!("trigger {}: fired", trigger.name);
    } else {
        log::warn!(
            "trigger {}: the send was refused with status {}",
            trigger.name,
            response.status
        );
    }
    response
}

/// The trigger's image with its text as the caption, through `POST /v1/media`'s path.
async fn send_image(
    api: &Rc<Api>,
    trigger: &TriggerConfig,
    path: &Path,
    mimetype: &str,
) -> Response {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            log::error!(
                "trigger {}: media_file {}: {e}",
                trigger.name,
                path.display()
            );
            return Response::json_error(
                503,
                "trigger_media_unavailable",
                "this trigger's media_file cannot be read; see the daemon's log",
            );
        }
    };
    let declared = file.metadata().ok().map(|m| m.len());
    let q = media::SendQuery {
        recipient: trigger.to.clone(),
        kind: crate::media_pipe::SendKind::Image,
        mimetype: mimetype.to_string(),
        caption: Some(trigger.text.clone()),
        filename: None,
        seconds: None,
    };
    // A local file of at most the image bound: blocking reads are short and the daemon's one
    // thread does the same for blob files.
    let mut body = futures_lite::io::AssertAsync::new(file);
    media::send_stream(api, None, &q, &mut body, declared).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_with_private_modes_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path(), "doorbell").unwrap();
        assert_eq!(a.len(), 2 * TRIGGER_KEY_RANDOM_BYTES);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path(dir.path(), "doorbell")), 0o600);
        assert_eq!(mode(&dir.path().join(TRIGGER_KEYS_DIR_NAME)), 0o700);
        assert_eq!(load_or_create_key(dir.path(), "doorbell").unwrap(), a);
        let b = rotate_key(dir.path(), "doorbell").unwrap();
        assert_ne!(a, b);
        assert_eq!(read_key(dir.path(), "doorbell").unwrap(), Some(b.clone()));
        assert_eq!(mode(&key_path(dir.path(), "doorbell")), 0o600);
        assert_eq!(read_key(dir.path(), "gate").unwrap(), None);
    }

    #[test]
    fn a_malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dir(dir.path()).unwrap();
        for bad in [
            "short",
            "has space in it here ok",
            &"k".repeat(200),
            "a&b=c0123456789abc",
        ] {
            fs::write(key_path(dir.path(), "d"), bad).unwrap();
            assert!(
                matches!(
                    read_key(dir.path(), "d"),
                    Err(TriggerKeyError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_fire_limit_allows_a_burst_then_one_per_interval() {
        let mut l = FireLimit::new(3, 10);
        for _ in 0..3 {
            l.check(1_000).unwrap();
        }
        assert_eq!(l.check(1_000), Err(10));
        assert_eq!(l.check(5_500), Err(6));
        l.check(11_000).unwrap();
        assert!(l.check(11_000).is_err());
        // A long quiet spell refills the whole burst, and no more.
        for _ in 0..3 {
            l.check(1_000_000).unwrap();
        }
        assert!(l.check(1_000_000).is_err());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        for bad in [&b"abd"[..], b"ab", b"abcd", b""] {
            assert!(!constant_time_eq(bad, b"abc"), "{bad:?}");
        }
    }

    #[test]
    fn the_url_names_a_configured_host_or_the_listen_address() {
        let text = "[account]\nintegrator = \"a\"\nuser = \"h\"\ntoken = \"t\"\n[gatekeeper]\naddress = \"h:1\"\nca_file = \"c\"\n";
        let mut c = crate::config::parse(text, Path::new("/x.conf")).unwrap();
        assert_eq!(
            url(&c, "doorbell", "k1"),
            "http://127.0.0.1:8787/v1/triggers/doorbell?key=k1"
        );
        c.api_host_names = vec!["Pi.local".into()];
        assert_eq!(
            url(&c, "doorbell", "k1"),
            "http://pi.local:8787/v1/triggers/doorbell?key=k1"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn the_fire_limit_never_allows_more_than_burst_plus_refill(
                burst in 1u32..20,
                interval in 1u64..30,
                steps in proptest::collection::vec(0u64..5_000, 1..200),
            ) {
                let mut l = FireLimit::new(burst, interval);
                let (mut now, mut allowed) = (0u64, 0u64);
                for step in steps {
                    now += step;
                    if l.check(now).is_ok() {
                        allowed += 1;
                    }
                }
                prop_assert!(allowed <= u64::from(burst) + now / (interval * 1000));
            }
        }
    }
}
