//! The wall clock, read only by shells. Cores never call it: they take `now_ms` as a
//! parameter, which keeps them deterministic and testable with a virtual clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970, saturating far in the
/// future).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
