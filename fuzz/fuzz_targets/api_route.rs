//! Fuzzes the API router and the request checks with arbitrary methods, paths and headers.
//!
//! Input layout: the bytes as UTF-8 (lossy), split at the first two `\n` into method, path
//! and an `Authorization`/`Host` value. Nothing may panic; a path that routes must start with
//! one of the route table's fixed prefixes.
#![no_main]

use interopd::api::{Routed, auth, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let header = parts.next();
    if let Routed::Found(_) = route(method, path) {
        assert!(
            path.starts_with("/v1/") || path == "/healthz" || path == "/metrics",
            "{path}"
        );
    }
    let _ = auth::bearer_matches(header, "0123456789abcdef");
    let allowed = auth::allowed_hosts("127.0.0.1:8787".parse().expect("literal"), &[]);
    let _ = auth::host_allowed(header, &allowed);
});
