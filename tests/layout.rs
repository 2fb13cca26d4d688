//! The workspace's shape is part of the design (docs/architecture.md), so it is tested like
//! behaviour: the protocol crate reaches no runtime, database or TLS crate; the hub never
//! depends on the daemon; the appliance build cannot pull the hub in; no module imports one
//! that imports it back; and no source file grows past the size a reader can hold.

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

/// The top-level modules of a crate's `src/`: each file and each directory but the root.
fn top_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("read_dir")
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_stem()?.to_string_lossy().into_owned();
            let module = p.is_dir() || p.extension().is_some_and(|x| x == "rs");
            (module && name != "lib" && name != "main").then_some(name)
        })
        .collect()
}

/// The `crate::…` module names a piece of code refers to: `crate::a::b`, and each first name
/// in `crate::{a, b::c}`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// For each top-level module of `krate`, the other top-level modules its non-test code names.
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("crates").join(krate).join("src");
    let modules = top_modules(&src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let owner = Path::new(first.as_os_str())
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let Some(edges) = graph.get_mut(&owner) else {
            continue; // lib.rs, main.rs
        };
        let text = std::fs::read_to_string(&f).expect("read source");
        let code: String = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for r in crate_refs(&code) {
            if r != owner && modules.contains(&r) {
                edges.insert(r);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_cycles_and_the_reference_reader_reads_groups() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).into()).or_default().insert((*b).into());
            g.entry((*b).into()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let refs = crate_refs("use crate::api::{self, X};\nuse crate::{daemon::Y, store};");
    assert_eq!(
        refs,
        ["api", "daemon", "store"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for krate in ["interop-proto", "interop-io", "interop-hub", "interopd"] {
        let graph = module_graph(krate);
        assert!(graph.len() > 3, "{krate}: modules were found");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: import cycle {}", cycle.join(" -> "));
        }
    }
}
