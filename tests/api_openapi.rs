//! `docs/openapi.yaml` tells the truth: its paths and methods are exactly the routes the server
//! answers (`interopd::api::ROUTES`, which the router's own unit test checks), and it is valid
//! OpenAPI 3.1 according to `openapi-spec-validator` (Python; installed on first use into the
//! target dir, `python_support`).

mod python_support;

use std::collections::BTreeSet;
use std::path::Path;

fn spec_path() -> std::path::PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("docs/openapi.yaml")
}

/// (METHOD, path) pairs under `paths:`; the file keeps paths at two spaces of indent and
/// methods at four, which this reader relies on and checks.
fn spec_routes(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            let p = p.strip_suffix(':').expect("a path key ends with ':'");
            path = Some(p.trim_matches('"').to_string());
        } else if let Some(m) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
            let m = m.strip_suffix(':').expect("a method key ends with ':'");
            let p = path.clone().expect("a method under a path");
            out.insert((m.to_ascii_uppercase(), p));
        }
    }
    out
}

#[test]
fn spec_paths_match_the_served_routes() {
    let text = std::fs::read_to_string(spec_path()).unwrap();
    let spec = spec_routes(&text);
    let served: BTreeSet<(String, String)> = interopd::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(spec, served);
}

#[test]
fn spec_is_valid_openapi_3_1() {
    let text = std::fs::read_to_string(spec_path()).unwrap();
    assert!(
        text.starts_with("openapi: 3.1."),
        "not an OpenAPI 3.1 document"
    );
    let out = python_support::python3_with(python_support::OPENAPI_SPEC_VALIDATOR)
        .args(["-m", "openapi_spec_validator"])
        .arg(spec_path())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused docs/openapi.yaml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
