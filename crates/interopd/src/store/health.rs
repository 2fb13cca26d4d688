//! The store's health: the first I/O failure of the database file, and the reopen that
//! clears it.
//!
//! After a failed read or write (a full disk, an I/O error), redb refuses every later call
//! with "Previous I/O error occurred" until the file is opened again; only what committed
//! before the failure is in the file. So the first such error marks the store failed: from
//! then on [`Store::begin`](super::Store::begin) answers the recorded failure at once, the
//! API answers `507 insufficient_storage` (disk full) or `503 store_unavailable`, and
//! `/healthz` says `store: failed`. The daemon calls [`Store::recover`](super::Store::recover)
//! every [`STORE_REOPEN_INTERVAL_MS`]: it checks that [`STORE_RECOVERY_FREE_BYTES`] can be
//! written beside the file, then drops the database and opens it again (with the integrity
//! check of every open), which clears the failure.
//!
//! ```text
//!   Ok ──I/O error──▶ Failed { since, disk_full } ──recover(): space + reopen ok──▶ Ok
//!                        │ └──recover() fails: stays Failed (retried)
//!                        └─ not disk_full for STORE_GIVE_UP_MS: the daemon stops feeding the
//!                           systemd watchdog, so systemd restarts the service
//! ```
//!
//! A full disk never gives up: a restart cannot free space, and the daemon that stays up keeps
//! explaining itself (507, `/healthz`, the log) and recovers within a second of space coming
//! back. This file does no I/O of its own except the free-space probe.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use super::StoreError;

/// How often the daemon tries to reopen a failed store, in milliseconds.
pub const STORE_REOPEN_INTERVAL_MS: u64 = 1_000;
/// Free space a reopen first proves by writing (and syncing, then deleting) a probe file of
/// this size beside the database, in bytes: reopening into a disk that is still full would
/// only fail again at the next write.
pub const STORE_RECOVERY_FREE_BYTES: usize = 1024 * 1024;
/// How long a store failed by something other than a full disk may stay failed before the
/// daemon stops feeding the systemd watchdog, in milliseconds.
pub const STORE_GIVE_UP_MS: u64 = 60_000;
/// The probe file's name in the state directory.
const PROBE_FILE_NAME: &str = "interopd.space-probe";

/// Why and since when the store is failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When the first failing call came back.
    pub since: Instant,
    /// The file system was full (at the first failure, or at a later one).
    pub disk_full: bool,
    /// What redb or the probe said.
    pub detail: String,
}

impl Failure {
    /// The failure as the error every call answers while it lasts.
    pub fn error(&self) -> StoreError {
        StoreError::Failed {
            detail: self.detail.clone(),
            disk_full: self.disk_full,
        }
    }
}

/// Shared by the store and its transactions.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failure: RefCell<Option<Failure>>,
    failures: Cell<u64>,
    reopens: Cell<u64>,
}

impl Health {
    /// Passes `e` through, recording it first if it is an I/O failure.
    pub(crate) fn note(&self, e: StoreError) -> StoreError {
        if let StoreError::Failed { detail, disk_full } = &e {
            let mut f = self.failure.borrow_mut();
            match f.as_mut() {
                Some(known) => known.disk_full |= *disk_full,
                None => {
                    self.failures.set(self.failures.get().saturating_add(1));
                    log::error!(
                        "{e}; every store call fails until the database is reopened, which is \
                         tried every {STORE_REOPEN_INTERVAL_MS} ms"
                    );
                    *f = Some(Failure {
                        since: Instant::now(),
                        disk_full: *disk_full,
                        detail: detail.clone(),
                    });
                }
            }
        }
        e
    }

    pub(crate) fn failure(&self) -> Option<Failure> {
        self.failure.borrow().clone()
    }

    pub(crate) fn clear(&self) {
        if self.failure.borrow_mut().take().is_some() {
            self.reopens.set(self.reopens.get().saturating_add(1));
        }
    }

    /// Times the store failed, and times it was reopened since.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.failures.get(), self.reopens.get())
    }
}

/// Writes, syncs and deletes [`STORE_RECOVERY_FREE_BYTES`] in `dir`; the error says why not.
pub(crate) fn probe_free_space(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(PROBE_FILE_NAME);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; STORE_RECOVERY_FREE_BYTES])?;
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    match (written, removed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) | (Ok(()), Err(e)) => Err(StoreError::Failed {
            disk_full: interop_io::state_dir::is_disk_full(&e),
            detail: format!(
                "cannot write {STORE_RECOVERY_FREE_BYTES} bytes in {}: {e}",
                dir.display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept_and_a_later_full_disk_is_remembered() {
        let h = Health::default();
        let ok = h.note(StoreError::Database {
            detail: "other".into(),
        });
        assert!(matches!(ok, StoreError::Database { .. }));
        assert_eq!(h.failure(), None, "only I/O failures fail the store");
        h.note(StoreError::Failed {
            detail: "Previous I/O error occurred".into(),
            disk_full: false,
        });
        let first = h.failure().unwrap();
        h.note(StoreError::Failed {
            detail: "No space left on device".into(),
            disk_full: true,
        });
        let now = h.failure().unwrap();
        assert_eq!(
            (now.since, now.detail.as_str()),
            (first.since, first.detail.as_str())
        );
        assert!(now.disk_full);
        assert_eq!(h.counts(), (1, 0));
        h.clear();
        assert_eq!(h.failure(), None);
        assert_eq!(h.counts(), (1, 1));
    }

    #[test]
    fn the_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        probe_free_space(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let gone = dir.path().join("missing");
        assert!(matches!(
            probe_free_space(&gone),
            Err(StoreError::Failed {
                disk_full: false,
                ..
            })
        ));
    }
}
