//! Fuzzes the media host's `Range` parser with arbitrary headers and lengths.
//!
//! Input layout: the first 8 bytes are the representation length (`u64` BE, missing bytes
//! are zero), the rest is the header as UTF-8 (lossy). Nothing may panic; a range that parses
//! must be non-empty and inside the representation, and an unsatisfiable one must name the
//! length it was given.
#![no_main]

use interopd::media_host::{RangeError, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut len_bytes = [0u8; 8];
    for (dst, src) in len_bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    let len = u64::from_be_bytes(len_bytes);
    let header = String::from_utf8_lossy(data.get(8..).unwrap_or_default());
    match parse_range(&header, len) {
        Ok(Some((first, last))) => assert!(first <= last && last < len, "{header:?} {len}"),
        Ok(None) => {}
        Err(RangeError::Unsatisfiable { len: l }) => assert_eq!(l, len),
    }
});
