//! Python packages for the tests that check our output with Python's own tools (Prometheus'
//! text parser, the OpenAPI validator). They are installed on first use with
//! `python3 -m pip install --target` into the cargo target dir (`target/tmp/pydeps/`), never
//! into the source tree or the system's Python, so `cargo test` works in a fresh clone on a
//! machine that has `python3` and pip, and nothing has to be installed beforehand. Versions are
//! pinned so a new release cannot change what the tests check; bump them deliberately.
//! This module runs no test itself and touches nothing outside that directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Prometheus' own parser for the text exposition format (`/metrics`).
pub const PROMETHEUS_CLIENT: &str = "prometheus_client==0.26.0";
/// The reference validator for `docs/openapi.yaml`.
pub const OPENAPI_SPEC_VALIDATOR: &str = "openapi-spec-validator==0.9.0";
/// The property-based API tester that runs `docs/openapi.yaml` against the server.
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// The independent WhatsApp protocol peer (binary nodes, Noise) for the `wa` profile's interop
/// tests, with the versions of its dependencies pinned too (it pins none itself).
pub const PYAILEYS: &str = "pyaileys==0.1.5 cryptography==51.0.1 cffi==2.1.1 pycparser==3.12 \
                            protobuf==7.36.2 websockets==17.4";

/// An independent JWT implementation (PyJWT, on `cryptography`) for the `wa` login's provider
/// token (`tests/jwt_interop.rs`), with the same pins as PYAILEYS for what they share.
pub const PYJWT: &str = "PyJWT==2.15.1 cryptography==51.0.1 cffi==2.1.1 pycparser==3.12";

/// PYAILEYS and PYJWT in one directory: pyaileys as a client of the real hub, with provider
/// tokens PyJWT signs (`tests/wa_hub_interop.rs`). Their shared pins agree, so they combine.
pub const PYAILEYS_PYJWT: &str = "pyaileys==0.1.5 cryptography==51.0.1 cffi==2.1.1 \
                                  pycparser==3.12 protobuf==7.36.2 websockets==17.4 \
                                  PyJWT==2.15.1";

/// Where `requirement` is installed: one directory per pinned requirement, so a bump gets a
/// fresh install and two test binaries never share a half-written directory.
fn install_dir(requirement: &str) -> PathBuf {
    let name: String = requirement
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("pydeps")
        .join(name)
}

/// A `python3` command that can import `requirement` (one or more pinned requirements,
/// separated by spaces), installing it first if this target dir
/// does not have it yet. The install is made in a scratch directory and renamed into place only
/// when pip succeeded, so the installed directory is the marker: an interrupted install is
/// retried rather than half used. Tests of one binary that ask at once wait for one install.
pub fn python3_with(requirement: &str) -> Command {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let dir = install_dir(requirement);
    {
        // A test that panicked while holding the lock left no marker behind, so going on is safe.
        let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir() {
            return python3_at(&dir);
        }
        let parent = dir.parent().expect("the install dir has a parent");
        std::fs::create_dir_all(parent).expect("create target/tmp/pydeps");
        let scratch = tempfile::tempdir_in(parent).expect("scratch dir for pip");
        // pip's output (including its warnings about the system's own packages) is shown only
        // when the install fails.
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
            ])
            .arg(scratch.path())
            .args(requirement.split_whitespace())
            .output()
            .expect("these tests need python3 on PATH");
        assert!(
            out.status.success(),
            "`python3 -m pip install --target {} {requirement}` failed (needs pip and access to PyPI):\n{}{}",
            scratch.path().display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test process may have won the race; its copy is as good as ours.
        let scratch = scratch.keep();
        if std::fs::rename(&scratch, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
    }
    assert!(
        dir.is_dir(),
        "{requirement} is not installed in {}",
        dir.display()
    );
    python3_at(&dir)
}

fn python3_at(dir: &std::path::Path) -> Command {
    let mut python = Command::new("python3");
    python.env("PYTHONPATH", dir);
    python
}

/// Runs schemathesis with config `config` on OpenAPI document `doc` (both relative to the
/// repository root) against `url`, with all checks and seed 1 plus `extra` arguments, in
/// `dir` (its reports, caches and log stay there), bounded by `max_secs`; asserts it found
/// nothing and returns its output. `what` names the document and the server for failures.
pub fn run_schemathesis(
    dir: &Path,
    config: &str,
    doc: &str,
    url: &str,
    extra: &[&str],
    max_secs: u64,
    what: &str,
) -> String {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let log_path = dir.join("schemathesis.log");
    let log = std::fs::File::create(&log_path).expect("create the log file");
    let mut run = python3_with(SCHEMATHESIS)
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; schemathesis()",
        ])
        .arg("--config-file")
        .arg(root.join(config))
        .arg("run")
        .arg(root.join(doc))
        .args(["--url", url])
        .args(["--checks", "all", "--no-color", "--seed", "1"])
        .args(extra)
        // Reports and caches go to the temporary directory, not the source tree; the output
        // to a file, so that a long report can never fill a pipe and stall the run.
        .current_dir(dir)
        .stdout(std::process::Stdio::from(
            log.try_clone().expect("clone the log file"),
        ))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("run python3");
    finish_schemathesis(&mut run, &log_path, max_secs, what)
}

/// Waits for a schemathesis run writing to `log_path`, killing it after `max_secs`; prints
/// its summary and returns its exit status and whole output. `what` names the document and
/// the server in the failure messages.
pub fn finish_schemathesis(
    run: &mut std::process::Child,
    log_path: &Path,
    max_secs: u64,
    what: &str,
) -> String {
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(max_secs) {
            let _ = run.kill();
            let _ = run.wait();
            let out = std::fs::read_to_string(log_path).unwrap_or_default();
            panic!("schemathesis ran longer than {max_secs} s:\n{out}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(log_path).unwrap_or_default();
    let summary: Vec<&str> = out.lines().rev().take(12).collect();
    eprintln!(
        "schemathesis took {:.0} s; its summary:\n{}",
        t0.elapsed().as_secs_f64(),
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        status.success(),
        "schemathesis found disagreements between {what}:\n{out}"
    );
    out
}
