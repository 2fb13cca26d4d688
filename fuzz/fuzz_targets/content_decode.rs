//! Fuzzes the content decoder with arbitrary decrypted plaintext.
//!
//! Whatever `decode_padded` accepts must survive a round trip: re-encoded with a fixed
//! one-byte padding it stays within the size bound (prost's output is canonical, never
//! longer than the input it came from) and decodes to the same message.
#![no_main]

use interop_proto::content::{decode_padded, encode_with_padding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_padded(data) {
        let again = match encode_with_padding(&msg, 1) {
            Ok(bytes) => bytes,
            Err(err) => panic!("accepted content failed to re-encode: {err}"),
        };
        assert_eq!(decode_padded(&again), Ok(msg));
    }
});
