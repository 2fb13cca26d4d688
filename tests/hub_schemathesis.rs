//! `docs/hub-control-openapi.yaml` against the real hub: schemathesis (Python; installed on
//! first use into the target dir, `python_support`) runs every check, the stateful phase
//! included, on `interop-hub --demo-users --media` (started by `hub_support`). Any failure (a
//! schema-valid request refused, a schema-violating one accepted, an undocumented status, a
//! body that does not match its schema, a crash) fails the test. The run is bounded by
//! tests/data/hub-schemathesis.toml (examples per operation, stateful steps) and by
//! [`MAX_RUN_SECS`]. The control API has no token and no rate limit.

mod hub_support;
mod python_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use hub_support::HubProc;

/// Longest the schemathesis run may take, in seconds, before the test fails.
const MAX_RUN_SECS: u64 = 180;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(rel)
}

#[test]
fn schemathesis_finds_no_disagreement_between_the_hub_control_document_and_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    // With a media store, so that a media send is answered, not refused with 501.
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    let log_path = dir.path().join("schemathesis.log");
    let log = std::fs::File::create(&log_path).expect("create the log file");
    let mut run = python_support::python3_with(python_support::SCHEMATHESIS)
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; schemathesis()",
        ])
        .arg("--config-file")
        .arg(repo_file("tests/data/hub-schemathesis.toml"))
        .arg("run")
        .arg(repo_file("docs/hub-control-openapi.yaml"))
        .args(["--url", &format!("http://{}", hub.control)])
        .args(["--checks", "all", "--no-color", "--seed", "1"])
        // Reports and caches go to the temporary directory, not the source tree; the output
        // to a file, so that a long report can never fill a pipe and stall the run.
        .current_dir(dir.path())
        .stdout(Stdio::from(log.try_clone().expect("clone the log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("run python3");
    python_support::finish_schemathesis(
        &mut run,
        &log_path,
        MAX_RUN_SECS,
        "docs/hub-control-openapi.yaml and the hub",
    );
    // The hub is still alive after the run: nothing it was sent crashed it.
    let (code, _) = hub.control("GET", "/stats", None);
    assert_eq!(code, 200, "the hub died during the run");
}
