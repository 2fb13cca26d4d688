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

#[test]
fn shipped_example_config_is_ok() {
    let text = include_str!("../board/examples/interopd.conf");
    let (code, stdout, _) = check(text);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "configuration OK");
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
