//! Scheduled backups in the running daemon (`[backup]`, docs/backup.md "Scheduled backups"):
//! a task on the daemon's executor that, when [`schedule::Schedule`] says so, writes
//! `<dir>/interopd-backup-<UTC time>.tar.age`, deletes the oldest archives beyond `keep`, and
//! keeps [`ScheduledBackups`] up to date for `/metrics` and `/healthz`.
//!
//! Each run is `interopd backup` in a child process (this same executable), which the task
//! awaits without blocking the thread. The archive writer is synchronous, and its passphrase
//! encryption alone (age's scrypt, tuned to about a second of CPU and many MiB of memory) would
//! stall the API and the link that long, and leave the memory in the daemon; in a child it
//! costs the daemon one fork and exec, and the child opens the store read-only beside the
//! daemon exactly as a `backup` from a shell does. The child writes `<name>.partial`, fsyncs,
//! renames it to `<name>` and removes its partial file on any error; the task removes it too
//! after a child that was killed (over [`MAX_BACKUP_RUN_SECS`]) or died.
//!
//! This file owns the task, the child, the directory listing and deleting; the timing rules
//! are in [`schedule`], and the archive format in `backup::write`.

use std::cell::{Cell, RefCell};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt as _, FutureExt as _};

use super::schedule::{self, Schedule};
use crate::config::BackupConfig;

/// Longest a scheduled backup may run before its child is killed and the run counts as
/// failed, in seconds (a hung network mount must not hold the schedule forever).
pub const MAX_BACKUP_RUN_SECS: u64 = 6 * 60 * 60;
/// Most of a child's log kept to explain a failure (its end), in bytes; the rest is read and
/// dropped.
pub const MAX_CHILD_LOG_BYTES: usize = 16 * 1024;
/// Longest the task sleeps before it looks at the wall clock again, in milliseconds, so that
/// a clock set forward (NTP after boot on a Pi without a battery) is noticed.
pub const SCHEDULE_RECHECK_MS: u64 = 60_000;
/// Most directory entries looked at when finding the newest archive or rotating.
pub const MAX_BACKUP_DIR_ENTRIES: usize = 10_000;

/// The state of scheduled backups, shared with the API for `/metrics` and `/healthz`.
#[derive(Debug)]
pub struct ScheduledBackups {
    config: BackupConfig,
    state_dir: PathBuf,
    schedule: RefCell<Schedule>,
    /// Bytes of the newest archive (0 before the first).
    last_bytes: Cell<u64>,
    /// Failed runs since start.
    failures: Cell<u64>,
    /// The run under way, if any; [`ScheduledBackups::stop`] kills it.
    running: RefCell<Option<Running>>,
}

impl ScheduledBackups {
    /// The schedule of a daemon starting at `now_ms`, taking the last success from the newest
    /// archive in `config.dir` (none if the directory cannot be listed now).
    pub fn new(config: BackupConfig, state_dir: PathBuf, now_ms: u64) -> ScheduledBackups {
        let names = list(&config.dir).unwrap_or_default();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let newest = schedule::newest(&refs);
        let last_bytes = newest
            .and_then(|(n, _)| fs::metadata(config.dir.join(n)).ok())
            .map_or(0, |m| m.len());
        let schedule = Schedule::new(config.every_secs, newest.map(|(_, t)| t), now_ms);
        ScheduledBackups {
            config,
            state_dir,
            schedule: RefCell::new(schedule),
            last_bytes: Cell::new(last_bytes),
            failures: Cell::new(0),
            running: RefCell::new(None),
        }
    }

    /// Kills a run under way and removes its partial files: the daemon calls it as it stops
    /// (its detached tasks are not dropped before the process exits).
    pub fn stop(&self) {
        drop(self.running.borrow_mut().take());
    }

    /// The last success, seconds since the epoch (0: none).
    pub fn last_success_secs(&self) -> u64 {
        self.schedule.borrow().last_success_ms().unwrap_or(0) / 1000
    }

    /// Bytes of the newest archive (0: none).
    pub fn last_bytes(&self) -> u64 {
        self.last_bytes.get()
    }

    /// Failed runs since start.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }

    /// The `/healthz` warning, when the last success (or the start, with none) is older than
    /// twice the interval.
    pub fn overdue_warning(&self, now_ms: u64) -> Option<String> {
        let age_ms = self.schedule.borrow().overdue_ms(now_ms)?;
        let last = match self.schedule.borrow().last_success_ms() {
            Some(_) => format!(
                "the last scheduled backup succeeded {} s ago",
                age_ms / 1000
            ),
            None => format!(
                "no scheduled backup has succeeded in the {} s since start",
                age_ms / 1000
            ),
        };
        Some(format!(
            "{last}, over twice backup.every_secs ({} s); see the daemon's log for why",
            self.config.every_secs
        ))
    }
}

/// The file checks of `[backup]`, for `check-config` and `run` after `Config::check_files`:
/// the passphrase file must read as a passphrase. Warns (and passes) for `encrypt = false`,
/// and for a `dir` that is not there now (a mount may come later; each run checks it again).
pub fn check_files(config: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
    let Some(b) = &config.backup else {
        return Ok(());
    };
    match &b.passphrase_file {
        Some(p) => {
            super::read_passphrase(p).map_err(|e| crate::config::ConfigError {
                line: None,
                message: format!("backup.passphrase_file: {e}"),
            })?;
        }
        None => log::warn!(
            "backup.encrypt = false: the archives in {} will hold the identity's private keys and the API token in the clear",
            b.dir.display()
        ),
    }
    if !b.dir.is_dir() {
        log::warn!(
            "backup.dir {} is not a directory now; each scheduled backup fails until it is",
            b.dir.display()
        );
    }
    Ok(())
}

/// Runs scheduled backups until the executor drops the task.
pub async fn run(backups: Rc<ScheduledBackups>) {
    let every = backups.config.every_secs;
    log::info!(
        "backup: every {every} s into {}, keeping {}; next in {} s",
        backups.config.dir.display(),
        backups.config.keep,
        backups
            .schedule
            .borrow()
            .due_ms()
            .saturating_sub(crate::clock::now_ms())
            / 1000
    );
    loop {
        let now = crate::clock::now_ms();
        let due = backups.schedule.borrow().due_ms();
        if now < due {
            let wait = (due - now).min(SCHEDULE_RECHECK_MS);
            smol::Timer::after(Duration::from_millis(wait)).await;
            continue;
        }
        match run_once(&backups, now).await {
            Ok(done) => {
                backups.schedule.borrow_mut().succeeded(now);
                backups.last_bytes.set(done.bytes);
                log::info!(
                    "backup: wrote {} ({} bytes) in {} ms{}",
                    done.path.display(),
                    done.bytes,
                    done.elapsed_ms,
                    if done.rotated > 0 {
                        format!("; deleted {} older beyond keep", done.rotated)
                    } else {
                        String::new()
                    }
                );
            }
            Err(reason) => {
                backups.schedule.borrow_mut().failed(now);
                backups
                    .failures
                    .set(backups.failures.get().saturating_add(1));
                log::error!("backup: scheduled backup failed: {reason}; next try in {every} s");
            }
        }
    }
}

/// A finished run.
struct Done {
    path: PathBuf,
    bytes: u64,
    elapsed_ms: u128,
    /// Older archives deleted by rotation.
    rotated: usize,
}

/// One run at `now_ms`: the child, then rotation. The error is one sentence for the log.
async fn run_once(backups: &ScheduledBackups, now_ms: u64) -> Result<Done, String> {
    let (config, state_dir) = (&backups.config, backups.state_dir.as_path());
    let start = Instant::now();
    let dir = &config.dir;
    if state_dir.starts_with(dir) || dir.starts_with(state_dir) {
        return Err(format!(
            "backup.dir {} and the state directory {} overlap",
            dir.display(),
            state_dir.display()
        ));
    }
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("backup.dir {} is not a directory", dir.display())),
        Err(e) => return Err(format!("backup.dir {}: {e}", dir.display())),
    }
    let name = schedule::archive_name(now_ms, config.passphrase_file.is_some());
    let out = dir.join(&name);
    let exe = std::env::current_exe().map_err(|e| format!("finding interopd itself: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("backup")
        .arg("--config")
        .arg(&config.config_file)
        .arg("--state")
        .arg(state_dir)
        .arg("--out")
        .arg(&out);
    match &config.passphrase_file {
        Some(p) => cmd.arg("--passphrase-file").arg(p),
        None => cmd.arg("--no-encrypt"),
    };
    // Only the child's warnings and errors matter to us: its info lines would repeat ours.
    // It is no service of its own, so it gets none of systemd's notify variables.
    cmd.env(crate::logger::LOG_ENV, "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let failure = match child_outcome(cmd, &out, &backups.running).await {
        Ok((status, _)) if status.success() && out.is_file() => None,
        Ok((_, log)) if !log.is_empty() => Some(log),
        Ok((status, _)) => Some(format!("interopd backup exited with {status}")),
        Err(e) => Some(e),
    };
    if let Some(reason) = failure {
        // The child removes its partial files itself, unless it was killed or died.
        remove_partials(&out);
        return Err(reason);
    }
    let bytes = fs::metadata(&out).map_or(0, |m| m.len());
    let names = list(dir).unwrap_or_default();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut rotated = 0;
    for old in schedule::rotation(&refs, config.keep) {
        match fs::remove_file(dir.join(old)) {
            Ok(()) => rotated += 1,
            Err(e) => log::warn!("backup: could not delete {old} beyond keep: {e}"),
        }
    }
    Ok(Done {
        path: out,
        bytes,
        elapsed_ms: start.elapsed().as_millis(),
        rotated,
    })
}

/// Starts `cmd` and waits for it without blocking the thread; the exit status and the last
/// error line of its log, or why it could not run. While it runs it sits in `slot`, so that
/// [`ScheduledBackups::stop`] can kill it.
async fn child_outcome(
    mut cmd: Command,
    out: &Path,
    slot: &RefCell<Option<Running>>,
) -> Result<(ExitStatus, String), String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting interopd backup: {e}"))?;
    let stderr = child.stderr.take();
    // Killed and cleaned up when taken out of the slot before it exited.
    *slot.borrow_mut() = Some(Running {
        child,
        out: out.to_path_buf(),
        exited: false,
    });
    let Some(stderr) = stderr else {
        drop(slot.borrow_mut().take());
        return Err("starting interopd backup: no stderr pipe".into());
    };
    let read_log = async {
        let mut log = Vec::new();
        if let Ok(mut pipe) = smol::Async::new(stderr) {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                log.extend_from_slice(buf.get(..n).unwrap_or_default());
                let excess = log.len().saturating_sub(MAX_CHILD_LOG_BYTES);
                log.drain(..excess);
            }
        }
        Some(log)
    };
    let deadline = async {
        smol::Timer::after(Duration::from_secs(MAX_BACKUP_RUN_SECS)).await;
        None
    };
    let Some(log) = read_log.or(deadline).await else {
        drop(slot.borrow_mut().take());
        return Err(format!(
            "interopd backup ran longer than {MAX_BACKUP_RUN_SECS} s and was stopped"
        ));
    };
    // The pipe closed: the child is exiting. Poll rather than block on its last moments.
    loop {
        let polled = match slot.borrow_mut().as_mut() {
            None => Err("the daemon is stopping".to_string()),
            Some(r) => match r.child.try_wait() {
                Ok(Some(status)) => {
                    r.exited = true;
                    Ok(Some(status))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(format!("waiting for interopd backup: {e}")),
            },
        };
        match polled {
            Ok(Some(status)) => {
                slot.borrow_mut().take();
                return Ok((status, last_error(&log)));
            }
            Ok(None) => {
                smol::Timer::after(Duration::from_millis(10)).await;
            }
            Err(e) => {
                drop(slot.borrow_mut().take());
                return Err(e);
            }
        }
    }
}

/// A child backup until it has exited; killed (and its partial files removed) if dropped
/// before.
#[derive(Debug)]
struct Running {
    child: std::process::Child,
    out: PathBuf,
    exited: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            remove_partials(&self.out);
        }
    }
}

/// Removes what `backup::write` leaves beside `out` while it runs.
fn remove_partials(out: &Path) {
    for suffix in [".partial", ".snapshot.redb"] {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

/// The last error (else warning) line of a child's log, without its `<N>target: ` prefix.
fn last_error(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let strip = |l: &str| -> String {
        let Some(rest) = l.strip_prefix('<').and_then(|r| r.split_once('>')) else {
            return l.to_string();
        };
        let rest = rest.1.split_once(": ").map_or(rest.1, |(_, r)| r);
        rest.strip_prefix("backup: ").unwrap_or(rest).to_string()
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("<3>"))
        .or_else(|| lines.last())
        .map(|l| strip(l))
        .unwrap_or_default()
}

/// The names in `dir` (at most [`MAX_BACKUP_DIR_ENTRIES`]).
fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)?.take(MAX_BACKUP_DIR_ENTRIES) {
        if let Some(n) = entry?.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_failure_is_told_by_its_last_error_line_without_prefixes() {
        let log = b"<4>interopd: backup: --no-encrypt: x in the clear\n<3>interopd: backup: write /m/x.partial: No space left on device (os error 28) (the disk is full; free space and try again)\n";
        assert_eq!(
            last_error(log),
            "write /m/x.partial: No space left on device (os error 28) (the disk is full; free space and try again)"
        );
        assert_eq!(
            last_error(b"<4>interopd: only a warning\n"),
            "only a warning"
        );
        assert_eq!(last_error(b""), "");
        assert_eq!(
            last_error(b"/etc/x.conf: line 3: backup.keep must be 1 to 1000\n"),
            "/etc/x.conf: line 3: backup.keep must be 1 to 1000"
        );
    }

    #[test]
    fn the_last_success_is_read_back_from_the_newest_archive() {
        let dir = tempfile::tempdir().unwrap();
        let t = 1_796_688_000_000;
        for (i, size) in [(0u64, 10usize), (1, 20)] {
            let name = schedule::archive_name(t + i * 1000, true);
            fs::write(dir.path().join(name), vec![0u8; size]).unwrap();
        }
        fs::write(dir.path().join("unrelated.tar"), b"x").unwrap();
        let config = BackupConfig {
            dir: dir.path().to_path_buf(),
            every_secs: 3600,
            keep: 3,
            passphrase_file: None,
            config_file: PathBuf::from("/etc/interopd/interopd.conf"),
        };
        let b = ScheduledBackups::new(config, PathBuf::from("/var/lib/interopd"), t + 5000);
        assert_eq!(b.last_success_secs(), t / 1000 + 1);
        assert_eq!(b.last_bytes(), 20);
        assert_eq!(b.schedule.borrow().due_ms(), t + 1000 + 3_600_000);
        assert_eq!(b.overdue_warning(t + 5000), None);
        assert!(b.overdue_warning(t + 1000 + 7_200_001).is_some());
    }
}
