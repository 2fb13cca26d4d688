//! `[api] rate_burst_requests` and `rate_requests_per_sec`: the API's token bucket, as the
//! config sets it (docs/config.md). Parsing only; the bucket itself is `api::auth`.

use super::{ConfigError, S, line_of};

/// Largest `api.rate_burst_requests` and `api.rate_requests_per_sec`, in requests.
pub const MAX_API_RATE_REQUESTS: u32 = 1_000_000;

/// The API's rate limit: a bucket of `burst_requests` refilled at `requests_per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRate {
    pub burst_requests: u32,
    pub requests_per_sec: u32,
}

impl ApiRate {
    /// Bursts of 100, then 20 requests per second: plenty for a household's devices.
    pub const DEFAULT: ApiRate = ApiRate {
        burst_requests: 100,
        requests_per_sec: 20,
    };
}

impl Default for ApiRate {
    fn default() -> Self {
        ApiRate::DEFAULT
    }
}

/// Step 2 for the two keys: each 1 to [`MAX_API_RATE_REQUESTS`], or the default.
pub(super) fn parse(
    text: &str,
    burst: &Option<S<u32>>,
    per_sec: &Option<S<u32>>,
) -> Result<ApiRate, ConfigError> {
    let one = |v: &Option<S<u32>>, key: &str, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=MAX_API_RATE_REQUESTS).contains(n.get_ref()) => Ok(*n.get_ref()),
        Some(n) => Err(ConfigError {
            line: Some(line_of(text, n.span().start)),
            message: format!("api.{key} must be 1 to {MAX_API_RATE_REQUESTS}"),
        }),
    };
    Ok(ApiRate {
        burst_requests: one(
            burst,
            "rate_burst_requests",
            ApiRate::DEFAULT.burst_requests,
        )?,
        requests_per_sec: one(
            per_sec,
            "rate_requests_per_sec",
            ApiRate::DEFAULT.requests_per_sec,
        )?,
    })
}
