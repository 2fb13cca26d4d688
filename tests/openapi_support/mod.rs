//! Shared checks of an OpenAPI document in docs/: the (method, path) pairs under `paths:`, and
//! `openapi-spec-validator` (Python; installed on first use into the target dir,
//! `python_support`). Used by tests/api_openapi.rs (the daemon's API) and tests/hub_openapi.rs
//! (the hub's control API).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `docs/{name}` in the repository.
pub fn doc_path(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("docs")
        .join(name)
}

/// (METHOD, path) pairs under `paths:`; the file keeps paths at two spaces of indent and
/// methods at four, which this reader relies on and checks.
pub fn spec_routes(text: &str) -> BTreeSet<(String, String)> {
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

/// The served routes as the set [`spec_routes`] gives.
pub fn route_set(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

/// Asserts that `path` is an OpenAPI 3.1 document that `openapi-spec-validator` accepts.
pub fn assert_valid_openapi_3_1(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with("openapi: 3.1."),
        "{} is not an OpenAPI 3.1 document",
        path.display()
    );
    let out = crate::python_support::python3_with(crate::python_support::OPENAPI_SPEC_VALIDATOR)
        .args(["-m", "openapi_spec_validator"])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
