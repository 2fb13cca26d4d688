//! The workspace's shape is part of the design (docs/architecture.md), so it is tested like
//! behaviour: the protocol crate reaches no runtime, database or TLS crate; the hub never
//! depends on the daemon; the appliance build cannot pull the hub in; and no source file
//! grows past the size a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Package name → names of its dependencies, from Cargo.lock (normal, dev and build alike,
/// so a check on it is stricter than one on normal dependencies).
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock: toml::Table = toml::from_str(&read("Cargo.lock")).expect("Cargo.lock parses");
    let mut graph = BTreeMap::new();
    for p in lock["package"].as_array().expect("[[package]]") {
        let name = p["name"].as_str().expect("name").to_owned();
        let deps: Vec<String> = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    .filter_map(|v| v.as_str())
                    .map(|s| s.split(' ').next().unwrap_or(s).to_owned())
                    .collect()
            })
            .unwrap_or_default();
        graph.entry(name).or_insert_with(Vec::new).extend(deps);
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(p) = todo.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn the_protocol_crate_reaches_no_runtime_database_or_tls_crate() {
    let reach = closure(&lock_graph(), "interop-proto");
    assert!(reach.contains("wacore-libsignal"), "the graph was read");
    for banned in [
        "smol",
        "async-io",
        "async-executor",
        "redb",
        "rustls",
        "futures-rustls",
        "interop-io",
        "interop-hub",
        "interopd",
    ] {
        assert!(
            !reach.contains(banned),
            "interop-proto depends on {banned} (through Cargo.lock)"
        );
    }
}

#[test]
fn the_hub_never_depends_on_the_daemon() {
    let reach = closure(&lock_graph(), "interop-hub");
    assert!(reach.contains("interop-proto") && reach.contains("interop-io"));
    assert!(
        !reach.contains("interopd"),
        "interop-hub depends on interopd"
    );
}

#[test]
fn only_the_demo_feature_links_the_hub_into_the_daemon() {
    let manifest: toml::Table =
        toml::from_str(&read("crates/interopd/Cargo.toml")).expect("manifest parses");
    let hub = &manifest["dependencies"]["interop-hub"];
    assert_eq!(hub.get("optional").and_then(|v| v.as_bool()), Some(true));
    let features = manifest["features"].as_table().expect("[features]");
    for (name, enables) in features {
        let pulls_hub = enables
            .as_array()
            .expect("feature list")
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s.contains("interop-hub")));
        assert_eq!(
            pulls_hub,
            name == "demo",
            "feature {name} and the hub dependency"
        );
    }
    let bins = manifest["bin"].as_array().expect("[[bin]]");
    let hub_bin = bins
        .iter()
        .find(|b| b["name"].as_str() == Some("interop-hub"))
        .expect("the interop-hub binary");
    assert_eq!(
        hub_bin["required-features"].as_array().map(|a| a.len()),
        Some(1)
    );
}

/// The most lines a non-test source file may have.
const MAX_SOURCE_LINES: usize = 800;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs")
            // Whole files of tests (declared `#[cfg(test)] mod …_tests;`) are not code.
            && !p.file_stem().is_some_and(|s| s.to_string_lossy().ends_with("tests"))
        {
            out.push(p);
        }
    }
}

#[test]
fn no_source_file_grows_past_its_bound() {
    let mut files = Vec::new();
    for krate in ["interop-proto", "interop-io", "interop-hub", "interopd"] {
        rust_files(&root().join("crates").join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 30, "the crates were found");
    let mut over = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        let code_lines = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .count();
        let rel = f
            .strip_prefix(root())
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        if code_lines > MAX_SOURCE_LINES {
            over.push(format!(
                "{rel}: {code_lines} lines, bound {MAX_SOURCE_LINES}"
            ));
        }
    }
    assert!(over.is_empty(), "split these files:\n{}", over.join("\n"));
}
