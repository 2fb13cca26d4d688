//! `interopd backup` and `interopd restore` with the real binaries (docs/backup.md): a backup
//! taken while the daemon runs against `interop-hub`, a wiped state directory, a restore, and
//! the same household again: same identity (`enlisted: false`), same inbox and cursors, and
//! the message that was queued and undelivered at backup time delivered after the restore.
//! Then every bad input the issue names: each a clear error, a non-zero exit, nothing written.

mod api_common;
mod daemon_support;
mod hub_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use daemon_support::{Daemon, hub_at, provision_conf, received_texts, wait_log};

const INTEROPD: &str = env!("CARGO_BIN_EXE_interopd");

fn interopd(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(INTEROPD).args(args).output().unwrap()
}

fn backup(conf: &Path, state: &Path, out: &Path, pass: Option<&Path>) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "backup".as_ref(),
        "--config".as_ref(),
        conf.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    match pass {
        Some(p) => args.extend(["--passphrase-file".as_ref(), p.as_os_str()]),
        None => args.push("--no-encrypt".as_ref()),
    }
    interopd(&args)
}

fn restore(input: &Path, state: &Path, pass: Option<&Path>, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "restore".as_ref(),
        "--in".as_ref(),
        input.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ];
    if let Some(p) = pass {
        args.extend(["--passphrase-file".as_ref(), p.as_os_str()]);
    }
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    interopd(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `(cursor, text)` of the whole inbox.
fn inbox(d: &Daemon) -> Vec<(u64, String)> {
    let v = d.get("/v1/inbox?after=0&limit=100").json();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["cursor"].as_u64().unwrap(),
                m["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// What is in `dir` besides the names in `expected`: leftovers of a failed restore.
fn leftovers(dir: &Path, expected: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(&n.as_str()))
        .collect()
}

#[test]
fn a_backup_taken_while_running_restores_the_same_household_and_delivers_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let hub_state = dir.path().join("hub");
    let (listen, control) = (hub_support::free_addr(), hub_support::free_addr());
    let mut hub = hub_at(&hub_state, &listen, &control);
    let conf = provision_conf(dir.path(), &hub_state, &listen, "acme-home");
    let state = dir.path().join("state");
    let log1 = dir.path().join("run1.log");
    let d = Daemon::spawn_logged(&conf, &state, &log1);
    wait_log(&log1, "(enlisted: true)");

    // Messages both ways: each text to the echo contact is read and answered.
    for text in ["one", "two"] {
        let id = d.send("+15550100", text);
        d.wait_status(&id, "read");
    }
    d.wait_inbox(2);
    let inbox_before = inbox(&d);
    assert_eq!(
        inbox_before
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>(),
        ["echo: one", "echo: two"]
    );
    let identity_before = d.get("/v1/identity").json();

    // The gatekeeper goes away; a message is queued and stays undelivered.
    let _ = hub.kill();
    let _ = hub.wait();
    let queued = d.send("+15550100", "three");
    assert_eq!(
        d.get(&format!("/v1/messages/{queued}")).json()["status"],
        "queued"
    );

    // The backup, while the daemon runs and holds its store.
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let archive = dir.path().join("home.backup");
    let out = backup(&conf, &state, &archive, Some(&pass));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&archive), 0o600);
    let head = std::fs::read(&archive).unwrap();
    assert!(head.starts_with(b"age-encryption.org/v1\n"), "not age");
    // The daemon still serves while and after the backup ran.
    assert_eq!(d.get("/healthz").status, 200);
    let token_before = d.token.clone();

    // A restore over the running daemon's directory is refused, even with --force.
    let out = restore(&archive, &state, Some(&pass), &["--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("running interopd"),
        "{}",
        stderr(&out)
    );
    drop(d);

    // A new SD card: nothing of the old state directory is left.
    std::fs::remove_dir_all(&state).unwrap();
    let out = restore(&archive, &state, Some(&pass), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&state), 0o700);
    for f in ["interopd.redb", "api-token", "identity-created"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        leftovers(
            dir.path(),
            &[
                "hub",
                "interopd.conf",
                "state",
                "run1.log",
                "pass",
                "home.backup"
            ]
        ),
        Vec::<String>::new()
    );

    hub = hub_at(&hub_state, &listen, &control);
    let log2 = dir.path().join("run2.log");
    let d = Daemon::spawn_logged(&conf, &state, &log2);
    let text = wait_log(&log2, "link: up as");
    assert!(text.contains("(enlisted: false)"), "{text}");
    assert_eq!(
        d.token, token_before,
        "the API token is the one clients hold"
    );
    assert_eq!(d.get("/v1/identity").json(), identity_before);
    // The message queued at backup time is delivered, and its echo follows the old inbox
    // without a gap in the cursors.
    d.wait_status(&queued, "read");
    d.wait_inbox(3);
    let inbox_after = inbox(&d);
    assert_eq!(inbox_after[..2], inbox_before[..]);
    assert_eq!(inbox_after[2].1, "echo: three");
    assert!(inbox_after[2].0 > inbox_before[1].0);
    assert_eq!(
        received_texts(&control, "+15550100"),
        ["one", "two", "three"]
    );
    drop(d);
    let _ = hub.kill();
    let _ = hub.wait();
}

/// A state directory with a store (no daemon needed for the bad-input cases), a config, a
/// passphrase, and one good encrypted and one good plain archive of it.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    conf: PathBuf,
    pass: PathBuf,
    encrypted: PathBuf,
    plain: PathBuf,
}

fn fixture(schema_version: Option<u32>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let state = root.join("state");
    let store = interopd::store::Store::open(&state).unwrap();
    if let Some(v) = schema_version {
        store.force_schema_version(v).unwrap();
    }
    drop(store);
    std::fs::write(state.join("api-token"), "t0ken\n").unwrap();
    interopd::api::triggers::load_or_create_key(&state, "doorbell").unwrap();
    let conf = root.join("interopd.conf");
    std::fs::write(&conf, api_common::config_text(&state, "127.0.0.1:1", None)).unwrap();
    let pass = root.join("pass");
    std::fs::write(&pass, "hunter22\n").unwrap();
    let encrypted = root.join("enc.backup");
    let out = backup(&conf, &state, &encrypted, Some(&pass));
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = root.join("plain.tar");
    let out = backup(&conf, &state, &plain, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--no-encrypt"),
        "no warning: {}",
        stderr(&out)
    );
    Fixture {
        _dir: dir,
        root,
        conf,
        pass,
        encrypted,
        plain,
    }
}

/// Restores `input` into a fresh target and expects a failure whose message has `needle`,
/// exit 1, and no target or staging left behind.
fn refused(f: &Fixture, input: &Path, pass: Option<&Path>, needle: &str) {
    let target = f.root.join("restored");
    let before = leftovers(&f.root, &[]);
    let out = restore(input, &target, pass, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(needle),
        "{needle:?} not in: {}",
        stderr(&out)
    );
    assert!(
        !target.exists(),
        "a failed restore left {}",
        target.display()
    );
    let mut after = leftovers(&f.root, &[]);
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before, "a failed restore left files");
}

#[test]
fn a_plain_tar_backup_lists_with_tar_and_restores() {
    let f = fixture(None);
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&f.plain)
        .output()
        .unwrap();
    assert!(list.status.success());
    let names = String::from_utf8(list.stdout).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.first(), Some(&"state/interopd.redb"));
    assert_eq!(names.last(), Some(&"manifest.json"));
    assert!(names.contains(&"state/api-token"), "{names:?}");
    assert!(names.contains(&"state/trigger-keys/doorbell"), "{names:?}");
    assert!(names.contains(&"config/interopd.conf"), "{names:?}");
    let target = f.root.join("restored");
    let conf_out = f.root.join("restored.conf");
    let out = restore(
        &f.plain,
        &target,
        None,
        &["--config", conf_out.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("api-token")).unwrap(), b"t0ken\n");
    // Trigger keys come back with their modes, so the restored household's URLs still work.
    let key = std::path::Path::new("trigger-keys").join("doorbell");
    assert_eq!(
        std::fs::read(target.join(&key)).unwrap(),
        std::fs::read(f.root.join("state").join(&key)).unwrap()
    );
    assert_eq!(mode(&target.join(&key)), 0o600);
    assert_eq!(mode(&target.join("trigger-keys")), 0o700);
    assert_eq!(
        std::fs::read(&conf_out).unwrap(),
        std::fs::read(&f.conf).unwrap()
    );
    assert_eq!(mode(&conf_out), 0o600);
}

#[test]
fn a_truncated_archive_is_refused_and_nothing_is_written() {
    let f = fixture(None);
    for (name, src) in [("cut.backup", &f.encrypted), ("cut.tar", &f.plain)] {
        let bytes = std::fs::read(src).unwrap();
        let cut = f.root.join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        refused(&f, &cut, Some(&f.pass), "truncated");
        std::fs::remove_file(&cut).unwrap();
    }
}

#[test]
fn a_wrong_or_missing_passphrase_is_refused_and_nothing_is_written() {
    let f = fixture(None);
    let wrong = f.root.join("wrong");
    std::fs::write(&wrong, "hunter23").unwrap();
    refused(&f, &f.encrypted, Some(&wrong), "passphrase does not open");
    refused(&f, &f.encrypted, None, "--passphrase-file");
}

#[test]
fn a_tampered_part_fails_its_checksum_and_nothing_is_written() {
    let f = fixture(None);
    let mut bytes = std::fs::read(&f.plain).unwrap();
    // The first entry is the store snapshot; its data starts after one 512-byte header.
    bytes[512 + 100] ^= 0x01;
    let tampered = f.root.join("tampered.tar");
    std::fs::write(&tampered, &bytes).unwrap();
    refused(
        &f,
        &tampered,
        None,
        "state/interopd.redb does not match its SHA-256",
    );
    // In an encrypted archive the same flip fails age's authentication first.
    let mut bytes = std::fs::read(&f.encrypted).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&tampered, &bytes).unwrap();
    refused(&f, &tampered, Some(&f.pass), "damaged");
}

#[test]
fn an_archive_from_a_newer_schema_is_refused_and_nothing_is_written() {
    let f = fixture(Some(interopd::store::SCHEMA_VERSION + 1));
    refused(
        &f,
        &f.encrypted,
        Some(&f.pass),
        "written by a newer interopd",
    );
}

#[test]
fn a_state_directory_that_holds_a_store_is_refused_unless_forced() {
    let f = fixture(None);
    let state = f.root.join("state");
    let out = restore(&f.encrypted, &state, Some(&f.pass), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    std::fs::write(state.join("api-token"), "changed").unwrap();
    let out = restore(&f.encrypted, &state, Some(&f.pass), &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(state.join("api-token")).unwrap(), b"t0ken\n");
    let aside: Vec<String> = leftovers(&f.root, &[])
        .into_iter()
        .filter(|n| n.starts_with("state.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "the replaced directory is kept");
    // A damaged store is what --force is for: it is replaced, not refused.
    let db = state.join("interopd.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 400] {
        *b ^= 0xff;
    }
    std::fs::write(&db, &bytes).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a new `.replaced-<seconds>` name
    let out = restore(&f.encrypted, &state, Some(&f.pass), &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(f.root.join(&aside[0]).join("api-token")).unwrap(),
        b"changed"
    );
}

#[test]
fn a_backup_never_overwrites_and_refuses_without_a_passphrase_choice() {
    let f = fixture(None);
    let state = f.root.join("state");
    let before = std::fs::read(&f.encrypted).unwrap();
    let out = backup(&f.conf, &state, &f.encrypted, Some(&f.pass));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&f.encrypted).unwrap(), before);
    let out = interopd(&[
        "backup".as_ref(),
        "--config".as_ref(),
        f.conf.as_os_str(),
        "--out".as_ref(),
        f.root.join("x").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!f.root.join("x").exists());
}

/// Runs `interopd ARGS` inside a user and mount namespace with a tmpfs of `bytes` at `mount`,
/// and lists the tmpfs after it exits; `None` where no tmpfs can be mounted here.
fn on_small_tmpfs(mount: &Path, bytes: u64, args: &[&std::ffi::OsStr]) -> Option<(Output, String)> {
    std::fs::create_dir_all(mount).unwrap();
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size={bytes} tmpfs \"$0\" || exit 99; \"$@\"; rc=$?; ls -A \"$0\"; exit $rc"
        ))
        .arg(mount)
        .arg(INTEROPD)
        .args(args)
        .output()
        .ok()?;
    if out.status.code() == Some(99) {
        eprintln!("skipping: no tmpfs could be mounted in a user namespace here");
        return None;
    }
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    Some((out, listing))
}

#[test]
fn a_disk_that_fills_during_backup_or_restore_fails_clearly_and_leaves_nothing() {
    let f = fixture(None);
    let mount = f.root.join("small");
    let state = f.root.join("state");
    let size = std::fs::metadata(&f.plain).unwrap().len();
    // Room for less than half of the archive.
    let room = (size / 2).max(8192);
    let out_file = mount.join("home.backup");
    let Some((out, listing)) = on_small_tmpfs(
        &mount,
        room,
        &[
            "backup".as_ref(),
            "--config".as_ref(),
            f.conf.as_os_str(),
            "--state".as_ref(),
            state.as_os_str(),
            "--out".as_ref(),
            out_file.as_os_str(),
            "--no-encrypt".as_ref(),
        ],
    ) else {
        return;
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk is full"), "{}", stderr(&out));
    assert_eq!(listing.trim(), "", "a failed backup left files");

    let target = mount.join("state");
    let Some((out, listing)) = on_small_tmpfs(
        &mount,
        room,
        &[
            "restore".as_ref(),
            "--in".as_ref(),
            f.plain.as_os_str(),
            "--state".as_ref(),
            target.as_os_str(),
        ],
    ) else {
        return;
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk is full"), "{}", stderr(&out));
    assert_eq!(listing.trim(), "", "a failed restore left files");
}

/// docs/backup.md, "Restoring an old backup": a restore from a backup taken before 20 more
/// messages were exchanged (10 texts to the echo contact and its 10 answers), then five more
/// texts: every one is delivered and read, and every answer lands in the inbox, through the
/// retry receipts with which the two sides rebuild their sessions.
#[test]
fn a_backup_twenty_messages_old_still_talks_to_the_contact_after_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_support::HubProc::start(&dir.path().join("hub"), true);
    let conf = provision_conf(dir.path(), &hub.state, &hub.listen, "acme-home");
    let state = dir.path().join("state");
    let log1 = dir.path().join("run1.log");
    let d = Daemon::spawn_logged(&conf, &state, &log1);
    let id = d.send("+15550100", "before");
    d.wait_status(&id, "read");
    d.wait_inbox(1);
    let archive = dir.path().join("old.tar");
    let out = backup(&conf, &state, &archive, None);
    assert!(out.status.success(), "{}", stderr(&out));
    for i in 0..10 {
        let id = d.send("+15550100", &format!("later {i}"));
        d.wait_status(&id, "read");
    }
    d.wait_inbox(11);
    drop(d);

    std::fs::remove_dir_all(&state).unwrap();
    let out = restore(&archive, &state, None, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log2 = dir.path().join("run2.log");
    let d = Daemon::spawn_logged(&conf, &state, &log2);
    assert!(wait_log(&log2, "link: up as").contains("(enlisted: false)"));
    assert_eq!(inbox(&d).len(), 1, "the inbox as it was at backup time");
    for i in 0..5 {
        let id = d.send("+15550100", &format!("after {i}"));
        d.wait_status(&id, "read");
    }
    let texts = d.wait_inbox(6);
    for i in 0..5 {
        assert!(texts.contains(&format!("echo: after {i}")), "{texts:?}");
    }
    let received = received_texts(&hub.control, "+15550100");
    for i in 0..5 {
        assert!(received.contains(&format!("after {i}")), "{received:?}");
    }
    // What the measurement in docs/backup.md reads: the daemon's retry lines.
    let log = std::fs::read_to_string(&log2).unwrap();
    for line in log.lines().filter(|l| l.contains("retry")) {
        eprintln!("after the restore: {line}");
    }
}
