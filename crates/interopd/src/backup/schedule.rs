//! When the next scheduled backup is due, what the archives are called, which ones rotation
//! deletes, and when `/healthz` should warn (docs/backup.md, "Scheduled backups").
//!
//! No I/O, no clock: every function takes `now` (ms since the Unix epoch, wall clock, since
//! archive names are UTC times) and the names found in the directory, and the shell
//! (`backup::scheduled`) does the waiting, the writing and the deleting.
//!
//! ```text
//!  Schedule::new(every, last success read back from the newest archive, now)
//!     │ due_ms(): last + every, or now + min(every, FIRST_BACKUP_DELAY_MS) with none
//!     ▼
//!  run ──ok──▶ succeeded(now): due = now + every, rotation deletes names beyond `keep`
//!      └─err─▶ failed(now):    due = now + every (retried at the next interval)
//! ```

/// The first backup of a daemon with none in the directory is due this long after start, or
/// after one interval if that is shorter, in milliseconds: the link logs in first.
pub const FIRST_BACKUP_DELAY_MS: u64 = 60_000;
/// Every archive name starts with this.
pub const ARCHIVE_PREFIX: &str = "interopd-backup-";
/// The name's ending for an encrypted archive (age around tar).
pub const ENCRYPTED_SUFFIX: &str = ".tar.age";
/// The name's ending for an unencrypted archive (`encrypt = false`).
pub const PLAIN_SUFFIX: &str = ".tar";
/// Length of the UTC time in a name, `YYYYMMDDTHHMMSSZ`.
const STAMP_LEN: usize = 16;

/// The schedule of one daemon's backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    every_ms: u64,
    due_ms: u64,
    last_success_ms: Option<u64>,
    /// Since when a missing success counts as overdue: the last success, else the start.
    since_ms: u64,
}

impl Schedule {
    /// The schedule of a daemon starting at `now_ms`, whose newest archive (if any) was
    /// written at `last_success_ms`. A restart does not postpone a due backup: one due while
    /// the daemon was down runs at once. A last success in the future (the clock was set
    /// back) counts as now.
    pub fn new(every_secs: u64, last_success_ms: Option<u64>, now_ms: u64) -> Schedule {
        let every_ms = every_secs.saturating_mul(1000);
        let last = last_success_ms.map(|l| l.min(now_ms));
        let due_ms = match last {
            Some(l) => l.saturating_add(every_ms).max(now_ms),
            None => now_ms.saturating_add(every_ms.min(FIRST_BACKUP_DELAY_MS)),
        };
        Schedule {
            every_ms,
            due_ms,
            last_success_ms: last,
            since_ms: last.unwrap_or(now_ms),
        }
    }

    /// When the next run is due, ms since the epoch.
    pub fn due_ms(&self) -> u64 {
        self.due_ms
    }

    /// Whether a run is due at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        now_ms >= self.due_ms
    }

    /// The last success, ms since the epoch.
    pub fn last_success_ms(&self) -> Option<u64> {
        self.last_success_ms
    }

    /// A run that started at `now_ms` succeeded.
    pub fn succeeded(&mut self, now_ms: u64) {
        self.last_success_ms = Some(now_ms);
        self.since_ms = now_ms;
        self.due_ms = now_ms.saturating_add(self.every_ms);
    }

    /// A run failed at `now_ms`: the next try is one interval later.
    pub fn failed(&mut self, now_ms: u64) {
        self.due_ms = now_ms.saturating_add(self.every_ms);
    }

    /// How long ago, in ms, the last success was (or the daemon started, with none), when that
    /// is more than twice the interval: the `/healthz` warning. `None` while all is well.
    pub fn overdue_ms(&self, now_ms: u64) -> Option<u64> {
        let age = now_ms.saturating_sub(self.since_ms);
        (age > self.every_ms.saturating_mul(2)).then_some(age)
    }
}

/// The archive name for a backup taken at `now_ms`: `interopd-backup-20261208T013000Z.tar.age`
/// (UTC, to the second; `.tar` when unencrypted). Names sort in time order.
pub fn archive_name(now_ms: u64, encrypted: bool) -> String {
    let secs = now_ms / 1000;
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let suffix = if encrypted {
        ENCRYPTED_SUFFIX
    } else {
        PLAIN_SUFFIX
    };
    format!("{ARCHIVE_PREFIX}{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z{suffix}")
}

/// When the archive called `name` was taken, ms since the epoch; `None` for any name that
/// [`archive_name`] does not make (other files in the directory, partial files).
pub fn archive_time_ms(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(ARCHIVE_PREFIX)?;
    let stamp = rest
        .strip_suffix(ENCRYPTED_SUFFIX)
        .or_else(|| rest.strip_suffix(PLAIN_SUFFIX))?;
    let b = stamp.as_bytes();
    if b.len() != STAMP_LEN || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let digits = b.get(from..to)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (h, mi, s) = (num(9, 11)?, num(11, 13)?, num(13, 15)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    // A day past the month's end (Feb 30) does not round-trip: not one of our names.
    if civil_from_days(days) != (y, mo, d) {
        return None;
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(secs * 1000)
}

/// Of the names in the directory, the archives to delete so that the newest `keep` remain,
/// oldest first. Names that are not archives are never chosen.
pub fn rotation<'a>(names: &[&'a str], keep: u32) -> Vec<&'a str> {
    let mut ours: Vec<(u64, &str)> = names
        .iter()
        .filter_map(|n| archive_time_ms(n).map(|t| (t, *n)))
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep as usize);
    ours.into_iter().take(excess).map(|(_, n)| n).collect()
}

/// The newest archive among `names` and its time.
pub fn newest<'a>(names: &[&'a str]) -> Option<(&'a str, u64)> {
    names
        .iter()
        .filter_map(|n| archive_time_ms(n).map(|t| (*n, t)))
        .max_by_key(|(n, t)| (*t, *n))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// (year >= 1970, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    const T0: u64 = 1_796_688_000_000; // 2026-12-08T00:00:00Z

    #[test]
    fn archive_names_are_utc_times_that_read_back() {
        assert_eq!(
            archive_name(T0 + 5_400_123, true),
            "interopd-backup-20261208T013000Z.tar.age"
        );
        assert_eq!(
            archive_name(0, false),
            "interopd-backup-19700101T000000Z.tar"
        );
        assert_eq!(
            archive_name(951_782_400_000, false), // 2000-02-29, a leap day
            "interopd-backup-20000229T000000Z.tar"
        );
        for t in [0, T0, T0 + 5_400_000, 951_782_400_000, 4_102_444_799_000] {
            assert_eq!(archive_time_ms(&archive_name(t, true)), Some(t));
            assert_eq!(archive_time_ms(&archive_name(t, false)), Some(t));
        }
    }

    #[test]
    fn other_files_are_not_archives() {
        for name in [
            "interopd-backup-20261208T013000Z.tar.age.partial",
            "interopd-backup-20261208T013000Z.tar.age.snapshot.redb",
            "interopd-backup-20261308T013000Z.tar",
            "interopd-backup-20260230T013000Z.tar",
            "interopd-backup-20261208T253000Z.tar",
            "interopd-backup-20261208T013000Z.zip",
            "interopd-backup-20261208 013000Z.tar",
            "interopd-backup-+0261208T013000Z.tar",
            "notes.txt",
            "",
        ] {
            assert_eq!(archive_time_ms(name), None, "{name}");
        }
    }

    #[test]
    fn rotation_deletes_the_oldest_beyond_keep_and_nothing_else() {
        let names: Vec<String> = (0..5)
            .map(|i| archive_name(T0 + i * DAY_MS, i % 2 == 0))
            .collect();
        let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
        all.push("README");
        all.push("interopd-backup-20261208T013000Z.tar.age.partial");
        all.reverse();
        assert_eq!(
            rotation(&all, 3),
            vec![names[0].as_str(), names[1].as_str()]
        );
        assert!(rotation(&all, 5).is_empty());
        assert!(rotation(&all, 9).is_empty());
        assert_eq!(rotation(&all, 1).len(), 4);
        assert_eq!(newest(&all), Some((names[4].as_str(), T0 + 4 * DAY_MS)));
        assert_eq!(newest(&["README"]), None);
    }

    #[test]
    fn the_first_backup_comes_soon_after_start_then_one_each_interval() {
        let every = 86_400;
        let mut s = Schedule::new(every, None, T0);
        assert_eq!(s.due_ms(), T0 + FIRST_BACKUP_DELAY_MS);
        assert!(!s.is_due(T0 + FIRST_BACKUP_DELAY_MS - 1));
        assert!(s.is_due(T0 + FIRST_BACKUP_DELAY_MS));
        s.succeeded(T0 + FIRST_BACKUP_DELAY_MS);
        assert_eq!(s.due_ms(), T0 + FIRST_BACKUP_DELAY_MS + DAY_MS);
        // A short interval is not stretched to the first-backup delay.
        assert_eq!(Schedule::new(2, None, T0).due_ms(), T0 + 2000);
    }

    #[test]
    fn a_restart_keeps_the_rhythm_and_runs_a_backup_missed_while_down() {
        let every = 86_400;
        // Restarted every hour: the backup stays due a day after the last one, not an hour
        // after each start.
        let last = T0;
        for hour in 1..24 {
            let s = Schedule::new(every, Some(last), T0 + hour * 3_600_000);
            assert_eq!(s.due_ms(), T0 + DAY_MS, "hour {hour}");
        }
        // Down for two days: due at once.
        let s = Schedule::new(every, Some(last), T0 + 2 * DAY_MS);
        assert!(s.is_due(T0 + 2 * DAY_MS));
        // A newest archive from the future (clock set back) counts as now.
        let s = Schedule::new(every, Some(T0 + 10 * DAY_MS), T0);
        assert_eq!(s.due_ms(), T0 + DAY_MS);
    }

    #[test]
    fn a_failure_retries_at_the_next_interval_and_keeps_the_last_success() {
        let mut s = Schedule::new(3600, Some(T0), T0 + 3_600_000);
        s.failed(T0 + 3_600_000);
        assert_eq!(s.due_ms(), T0 + 7_200_000);
        assert_eq!(s.last_success_ms(), Some(T0));
    }

    #[test]
    fn healthz_warns_once_the_last_success_is_older_than_twice_the_interval() {
        let mut s = Schedule::new(3600, Some(T0), T0);
        assert_eq!(s.overdue_ms(T0 + 7_200_000), None);
        assert_eq!(s.overdue_ms(T0 + 7_200_001), Some(7_200_001));
        s.failed(T0 + 7_200_001);
        assert!(s.overdue_ms(T0 + 7_200_001).is_some());
        s.succeeded(T0 + 8_000_000);
        assert_eq!(s.overdue_ms(T0 + 8_000_000), None);
        // With no success at all, the clock starts at the daemon's start.
        let s = Schedule::new(3600, None, T0);
        assert_eq!(s.overdue_ms(T0 + 7_000_000), None);
        assert!(s.overdue_ms(T0 + 7_300_000).is_some());
    }
}
