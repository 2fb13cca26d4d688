//! `interopd check-config` as a user runs it: the real binary, a real file, exit codes and
//! messages as CONTRACT.md fixes them (0 and "configuration OK", or 78 and the error's line).

use std::process::Command;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interopd.conf");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shipped example with its `gatekeeper.ca_file` pointed at `ca` (a path as TOML text).
fn example_with_ca(ca: &std::path::Path) -> String {
    include_str!("../board/examples/interopd.conf").replace(
        "ca_file = \"/etc/interopd/gatekeeper-ca.pem\"",
        &format!("ca_file = {:?}", ca.display().to_string()),
    )
}

#[test]
fn shipped_example_config_is_ok_once_its_ca_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let hub = interop_io::tls::ensure_hub_ca(dir.path(), &["localhost"]).unwrap();
    drop(hub);
    let ca = dir.path().join(interop_io::tls::CA_CERT_FILE);
    let (code, stdout, stderr) = check(&example_with_ca(&ca));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "configuration OK");
}

#[test]
fn a_missing_or_unreadable_ca_file_exits_78_naming_it() {
    // As shipped, the CA file is the one a configured box has and this machine has not.
    let (code, _, stderr) = check(include_str!("../board/examples/interopd.conf"));
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("gatekeeper.ca_file /etc/interopd/gatekeeper-ca.pem"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let (code, _, stderr) = check(&example_with_ca(&not_pem));
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("gatekeeper.ca_file"), "{stderr}");

    // `run` refuses it the same way, before it starts anything.
    let conf = dir.path().join("interopd.conf");
    std::fs::write(&conf, example_with_ca(&dir.path().join("absent.pem"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["run", "--config"])
        .arg(&conf)
        .arg("--state")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("absent.pem"), "{stderr}");
    assert!(!dir.path().join("state").exists(), "nothing was started");
}

#[test]
fn bad_config_exits_78_and_names_the_line() {
    let text = include_str!("../board/examples/interopd.conf")
        .replace("[state]", "[state]\ncolour = \"blue\"");
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains(&format!("line {line}:")), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
}

#[test]
fn missing_config_file_exits_78() {
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .args(["check-config", "--config", "/nonexistent/interopd.conf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn unknown_command_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_interopd"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn an_mqtt_section_is_checked_with_its_password_file_and_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    drop(interop_io::tls::ensure_hub_ca(dir.path(), &["localhost"]).unwrap());
    let base = example_with_ca(&dir.path().join(interop_io::tls::CA_CERT_FILE));
    let pw = dir.path().join("mqtt-password");
    let section = format!(
        "\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"interopd\"\npassword_file = {:?}\ncontacts = [\"+15550100\"]\n",
        pw.display().to_string()
    );
    let text = format!("{base}{section}");
    // The password file must be there and readable: `run` would never log in otherwise.
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("mqtt.password_file"), "{stderr}");
    std::fs::write(&pw, "secret\n").unwrap();
    let (code, stdout, stderr) = check(&text);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "configuration OK");
    assert!(!stderr.contains("secret"));
    // A bad value names its key and line.
    let bad = text.replace("mqtt://127.0.0.1:1883", "http://127.0.0.1:1883");
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, 78, "{stderr}");
    let line = bad
        .lines()
        .position(|l| l.starts_with("url = \"http"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("line {line}: mqtt.url")),
        "{stderr}"
    );
}
