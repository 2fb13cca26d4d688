//! `interopd`: the daemon's command line. Thin: parsing and exit codes only.
#![forbid(unsafe_code)]

fn main() {
    eprintln!(
        "interopd {}: the daemon loop arrives with the `link` issue",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(1);
}
