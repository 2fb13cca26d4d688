//! Fuzzes the `media` row decoder with arbitrary bytes.
//!
//! Input layout: the whole input is one stored row. Nothing may panic, and a row that
//! decodes must encode back to exactly the input (the format has one encoding per row).
#![no_main]

use interopd::media_store::MediaRow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(row) = MediaRow::decode(data) {
        // INVARIANT: decode enforces the same field bounds that encode checks.
        let again = row.encode().expect("a decoded row is within the bounds");
        assert_eq!(again, data);
    }
});
