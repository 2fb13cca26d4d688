//! Scheduled backups (`[backup]`, docs/backup.md) with the real binaries and `interop-hub`:
//! the running daemon writes an encrypted archive into the directory every interval, keeps
//! only the newest `keep`, reports the last success and size in `/metrics`, and what it wrote
//! restores with `interopd restore`. A run into a missing directory fails with one log line,
//! leaves nothing behind, counts in `/metrics`, and `/healthz` warns once the last success is
//! older than twice the interval. A restarted daemon reads its last success back from the
//! newest archive instead of starting the clock over.

mod api_common;
mod daemon_support;
mod hub_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_support::{Daemon, WAIT, hub_at, provision_conf_with, wait_log};

const PASSPHRASE: &str = "correct horse battery staple\n";

/// The archive names in `dir`, oldest first.
fn archives(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("interopd-backup-") && n.ends_with(".tar.age"))
        .collect();
    names.sort();
    names
}

/// Everything in `dir` that is not a finished archive.
fn other_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with("interopd-backup-") && n.ends_with(".tar.age")))
        .collect()
}

/// The value of the unlabelled metric `name`.
fn metric(d: &Daemon, name: &str) -> u64 {
    let body = d.get("/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// How many times the daemon's log has `needle` so far.
fn count_in_log(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < WAIT, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backup_section(dir: &Path, every_secs: u64, keep: u32, pass: &Path) -> String {
    format!(
        "\n[backup]\ndir = \"{}\"\nevery_secs = {every_secs}\nkeep = {keep}\npassphrase_file = \"{}\"\n",
        dir.display(),
        pass.display()
    )
}

#[test]
fn the_daemon_backs_up_on_schedule_rotates_reports_and_what_it_wrote_restores() {
    let dir = tempfile::tempdir().unwrap();
    let hub_state = dir.path().join("hub");
    let (listen, control) = (hub_support::free_addr(), hub_support::free_addr());
    let _hub = KillOnDrop(hub_at(&hub_state, &listen, &control));
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, PASSPHRASE).unwrap();
    let conf = provision_conf_with(
        dir.path(),
        &hub_state,
        &listen,
        "acme-sched",
        &backup_section(&backups, 2, 2, &pass),
    );
    let check = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let state = dir.path().join("state");
    let log = dir.path().join("run1.log");
    let mut d = Daemon::spawn_logged(&conf, &state, &log);
    d.wait_link_up();
    let id = d.send("+15550100", "before the backups");
    d.wait_status(&id, "read");
    assert_eq!(
        metric(&d, "interopd_backup_last_success_timestamp_seconds"),
        0
    );

    // Three runs, two kept: the oldest went, and nothing partial is left.
    wait_until("three scheduled backups", || {
        count_in_log(&log, "backup: wrote ") >= 3
    });
    wait_until("rotation down to keep = 2", || {
        archives(&backups).len() == 2
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("older beyond keep"), "{text}");
    let kept = archives(&backups);
    let newest = backups.join(kept.last().unwrap());

    // The metrics moved: a recent success, a real size, no failures.
    let last = metric(&d, "interopd_backup_last_success_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(last > now - 60 && last <= now, "{last} vs {now}");
    let size = metric(&d, "interopd_backup_last_size_bytes");
    assert!(size > 1024, "{size}");
    assert_eq!(metric(&d, "interopd_backup_failures_total"), 0);
    assert!(d.get("/healthz").json().get("warnings").is_none());

    // What it wrote is an age archive that `interopd restore` verifies and unpacks.
    let head = std::fs::read(&newest).unwrap();
    assert!(head.starts_with(b"age-encryption.org/v1\n"), "not age");
    let restored = dir.path().join("restored");
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["restore", "--in"])
        .arg(&newest)
        .arg("--state")
        .arg(&restored)
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(restored.join("interopd.redb").is_file());

    // The directory goes away (an unplugged disk): each run fails with one clear line,
    // leaves nothing, counts, and /healthz warns once the last success is 2 intervals old.
    let away = dir.path().join("unplugged");
    std::fs::rename(&backups, &away).unwrap();
    let failed = wait_log(&log, "backup: scheduled backup failed: backup.dir");
    assert!(failed.contains("next try in 2 s"), "{failed}");
    wait_until("a failure in /metrics", || {
        metric(&d, "interopd_backup_failures_total") >= 1
    });
    wait_until("the /healthz warning", || {
        d.get("/healthz").json()["warnings"][0]["code"] == "backup_overdue"
    });
    let health = d.get("/healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
    // A run the rename cut short left its partial files in the moved directory, at paths its
    // cleanup no longer reached (as on a disk that was unplugged); they go with it here.
    for leftover in other_files(&away) {
        std::fs::remove_file(away.join(leftover)).unwrap();
    }
    std::fs::rename(&away, &backups).unwrap();
    wait_until("the warning to clear after a success", || {
        d.get("/healthz").json().get("warnings").is_none()
    });

    // Stopped (SIGTERM), a run under way is stopped with it and leaves no partial file.
    terminate(&mut d);
    assert!(
        other_files(&backups).is_empty(),
        "{:?}\n{}",
        other_files(&backups),
        std::fs::read_to_string(&log).unwrap()
    );
    let before = archives(&backups);
    assert_eq!(before.len(), 2, "{before:?}");

    // Restarted with a long interval: the last success comes back from the newest archive,
    // so no backup is due at once and no warning shows.
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("every_secs = 2\n", "every_secs = 3600\n");
    std::fs::write(&conf, text).unwrap();
    let log2 = dir.path().join("run2.log");
    let d = Daemon::spawn_logged(&conf, &state, &log2);
    wait_log(&log2, "backup: every 3600 s");
    let newest_secs = metric(&d, "interopd_backup_last_success_timestamp_seconds");
    assert!(newest_secs > 0);
    assert!(metric(&d, "interopd_backup_last_size_bytes") > 1024);
    assert!(d.get("/healthz").json().get("warnings").is_none());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_in_log(&log2, "backup: wrote "), 0);
    assert_eq!(archives(&backups), before);
}

/// SIGTERM, then wait for the daemon to exit.
fn terminate(d: &mut Daemon) {
    let ok = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let t0 = Instant::now();
    while d.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < WAIT, "the daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
