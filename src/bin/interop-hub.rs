//! `interop-hub`: the reference gatekeeper's command line. Thin.
#![forbid(unsafe_code)]

fn main() {
    eprintln!(
        "interop-hub {}: the gatekeeper arrives with the `hub` issue",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(1);
}
