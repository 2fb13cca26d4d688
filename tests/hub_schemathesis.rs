//! `docs/hub-control-openapi.yaml` against the real hub: schemathesis (Python; installed on
//! first use into the target dir, `python_support`) runs every check, the stateful phase
//! included, on `interop-hub --demo-users --media` (started by `hub_support`). Any failure (a
//! schema-valid request refused, a schema-violating one accepted, an undocumented status, a
//! body that does not match its schema, a crash) fails the test. The run is bounded by
//! tests/data/hub-schemathesis.toml (examples per operation, stateful steps) and by
//! [`MAX_RUN_SECS`]. The control API has no token and no rate limit.

mod hub_support;
mod python_support;

use hub_support::HubProc;

/// Longest the schemathesis run may take, in seconds, before the test fails.
const MAX_RUN_SECS: u64 = 180;

#[test]
fn schemathesis_finds_no_disagreement_between_the_hub_control_document_and_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    // With a media store, so that a media send is answered, not refused with 501.
    let hub = HubProc::start_with(&dir.path().join("hub"), true, true);
    python_support::run_schemathesis(
        dir.path(),
        "tests/data/hub-schemathesis.toml",
        "docs/hub-control-openapi.yaml",
        &format!("http://{}", hub.control),
        &[],
        MAX_RUN_SECS,
        "docs/hub-control-openapi.yaml and the hub",
    );
    // The hub is still alive after the run: nothing it was sent crashed it.
    let (code, _) = hub.control("GET", "/stats", None);
    assert_eq!(code, 200, "the hub died during the run");
}
