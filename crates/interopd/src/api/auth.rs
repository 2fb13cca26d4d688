//! Who may use the local API: the bearer token file, the `Host` check that stops DNS
//! rebinding, and the per-token rate limit. The token file is the only I/O here
//! ([`load_or_create_token`]); the checks are pure functions of their inputs, and the rate
//! limiter takes `now` as a parameter.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng as _;

/// The token file's name inside the state directory.
pub const TOKEN_FILE_NAME: &str = "api-token";
/// Random bytes in a fresh token (rendered as twice as many hex digits).
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Shortest token accepted from an existing file, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token accepted from an existing file, in bytes.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Requests one token may make in a burst before it is limited.
pub const RATE_LIMIT_BURST_REQUESTS: u32 = RATE_DEFAULT.burst_requests;
/// Sustained requests per second one token may make.
pub const RATE_LIMIT_REQUESTS_PER_SEC: u32 = RATE_DEFAULT.requests_per_sec;
/// Where the defaults live: the config's `[api]` rate keys (docs/config.md).
const RATE_DEFAULT: crate::config::ApiRate = crate::config::ApiRate::DEFAULT;

/// Why the token file could not be used. The daemon logs it and exits with status 1.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenError {
    /// Environment: the file could not be read, created or restricted to mode 0600.
    Io { path: PathBuf, source: io::Error },
    /// Environment (an edited file): the token is shorter or longer than allowed, or holds
    /// bytes other than visible ASCII.
    Malformed { path: PathBuf },
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "API token {}: {source}", path.display()),
            Self::Malformed { path } => write!(
                f,
                "API token {}: must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} visible ASCII characters; delete the file to get a new token",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TokenError {}

/// Reads `<state>/api-token`, creating it (mode 0600, 64 hex digits) on first start. An
/// existing file is re-restricted to 0600.
pub fn load_or_create_token(state_dir: &Path) -> Result<String, TokenError> {
    let path = state_dir.join(TOKEN_FILE_NAME);
    let io_err = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| TokenError::Malformed { path: path.clone() })?;
            let token = text.trim();
            let ok = (MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len())
                && token.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(TokenError::Malformed { path });
            }
            Ok(token.to_string())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut random = [0u8; TOKEN_RANDOM_BYTES];
            rand::rng().fill_bytes(&mut random);
            let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err)?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            Ok(token)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Whether `header` (the `Authorization` value) carries `token`. Compares in constant time.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(value) = header else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    crate::login::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// The `Host` values the API accepts: the listen address itself, `localhost`, and the
/// configured names, each with or without the listen port. Lowercase.
pub fn allowed_hosts(listen: SocketAddr, names: &[String]) -> Vec<String> {
    let port = listen.port();
    let ip = match listen {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut out = Vec::new();
    for name in [ip, "localhost".to_string()]
        .into_iter()
        .chain(names.iter().map(|n| n.to_ascii_lowercase()))
    {
        out.push(format!("{name}:{port}"));
        out.push(name);
    }
    out
}

/// Whether a `Host` header value is one of `allowed` (case-insensitive).
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    host.is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)))
}

/// A token bucket: `burst` requests at once, refilled at `per_sec` a second.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    burst: u32,
    per_sec: u32,
    /// Available requests, in thousandths.
    milli_tokens: u64,
    last_ms: u64,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: u32) -> RateLimiter {
        RateLimiter {
            burst,
            per_sec,
            milli_tokens: u64::from(burst) * 1000,
            last_ms: 0,
        }
    }

    /// Takes one request at `now_ms`; `Err(secs)` says how long to wait (for `Retry-After`).
    pub fn check(&mut self, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(self.burst) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(self.per_sec)))
            .min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            Ok(())
        } else if self.per_sec == 0 {
            Err(60)
        } else {
            let missing_ms = (1000 - self.milli_tokens).div_ceil(u64::from(self.per_sec));
            Err(missing_ms.div_ceil(1000).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a.len(), 2 * TOKEN_RANDOM_BYTES);
        let mode = fs::metadata(dir.path().join(TOKEN_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), a);
    }

    #[test]
    fn a_malformed_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TOKEN_FILE_NAME), "short\n").unwrap();
        assert!(matches!(
            load_or_create_token(dir.path()),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[test]
    fn bearer_check_needs_the_exact_token() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(bearer_matches(Some("bearer abc"), "abc"));
        for bad in [
            None,
            Some("Bearer abd"),
            Some("Bearer ab"),
            Some("Basic abc"),
            Some("abc"),
        ] {
            assert!(!bearer_matches(bad, "abc"), "{bad:?}");
        }
    }

    #[test]
    fn host_check_accepts_listen_address_localhost_and_configured_names() {
        let allowed = allowed_hosts("127.0.0.1:8787".parse().unwrap(), &["House.local".into()]);
        for ok in [
            "127.0.0.1:8787",
            "localhost:8787",
            "LOCALHOST",
            "house.local:8787",
        ] {
            assert!(host_allowed(Some(ok), &allowed), "{ok}");
        }
        for bad in [None, Some("evil.example"), Some("127.0.0.1:9999"), Some("")] {
            assert!(!host_allowed(bad, &allowed), "{bad:?}");
        }
        let v6 = allowed_hosts("[::1]:80".parse().unwrap(), &[]);
        assert!(host_allowed(Some("[::1]:80"), &v6));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn rate_limiter_never_allows_more_than_burst_plus_refill(
                burst in 1u32..50,
                per_sec in 0u32..50,
                steps in proptest::collection::vec(0u64..500, 1..200),
            ) {
                let mut r = RateLimiter::new(burst, per_sec);
                let mut now = 0;
                let mut allowed = 0u64;
                for step in steps {
                    now += step;
                    if r.check(now).is_ok() {
                        allowed += 1;
                    }
                }
                let max = u64::from(burst) + now * u64::from(per_sec) / 1000 + 1;
                prop_assert!(allowed <= max, "{} > {}", allowed, max);
            }

            #[test]
            fn bearer_check_never_panics(h in ".{0,80}") {
                let _ = bearer_matches(Some(&h), "token-token-token");
            }
        }
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refills() {
        let mut r = RateLimiter::new(3, 2);
        for _ in 0..3 {
            r.check(1000).unwrap();
        }
        assert_eq!(r.check(1000), Err(1));
        r.check(1500).unwrap();
        assert!(r.check(1500).is_err());
    }
}
