//! Fuzzes the HTTP/1.1 request-head parser and the chunked-body decoder (`interop_io::http`).
//!
//! Input layout: byte 0 is the largest data run the decoder may return per call (plus one);
//! byte 1 is the size of the pieces the input is fed in (plus one); the rest is the stream
//! a client sends. Checks:
//! - nothing panics;
//! - a head is found at the same place whether the stream comes whole or grows piece by
//!   piece, and it never claims more bytes than exist or more than `MAX_HEAD_BYTES`;
//! - an incomplete stream of `MAX_HEAD_BYTES` or more is always refused, never waited on;
//! - for a chunked body, the decoder never claims more bytes than it was given, its data
//!   lies inside what it claimed, and it never returns more data than asked for or than
//!   its cap.
#![no_main]

use interop_io::http::{BodyFraming, ChunkedDecoder, HttpError, MAX_HEAD_BYTES, parse_head};
use libfuzzer_sys::fuzz_target;

/// Cap on the decoded body, in bytes.
const BODY_CAP_BYTES: u64 = 4096;

fuzz_target!(|input: &[u8]| {
    let [max_data, piece, stream @ ..] = input else {
        return;
    };
    let max_data = usize::from(*max_data) + 1;
    let piece = usize::from(*piece) + 1;

    let whole = parse_head(stream);
    // Growing the buffer piece by piece, as the shell does, finds the same head.
    let mut grown = None;
    let mut end = 0;
    while end < stream.len() {
        end = (end + piece).min(stream.len());
        match parse_head(&stream[..end]) {
            Ok(None) => continue,
            other => {
                grown = Some(other);
                break;
            }
        }
    }
    match (&whole, grown) {
        (Ok(None), None) => assert!(stream.len() < MAX_HEAD_BYTES),
        (Ok(Some((head, used))), Some(Ok(Some((grown_head, grown_used))))) => {
            assert_eq!(*used, grown_used);
            assert_eq!(head, &grown_head);
        }
        // An error may show up earlier in a shorter prefix (for example the head-size
        // limit counts buffered bytes); it must still be an error.
        (Err(_), Some(Err(_))) => {}
        (Err(HttpError::HeadTooLarge), _) | (_, Some(Err(HttpError::HeadTooLarge))) => {}
        (whole, grown) => panic!("whole {whole:?} but grown {grown:?}"),
    }

    let Ok(Some((head, used))) = whole else {
        return;
    };
    assert!(used <= stream.len() && used <= MAX_HEAD_BYTES);
    if head.body != BodyFraming::Chunked {
        return;
    }
    let mut decoder = ChunkedDecoder::new(BODY_CAP_BYTES);
    let mut rest = &stream[used..];
    while let Ok(step) = decoder.decode(rest, max_data) {
        assert!(step.consumed <= rest.len());
        assert!(step.data.start <= step.data.end && step.data.end <= step.consumed);
        assert!(step.data.len() <= max_data);
        assert!(decoder.total_bytes() <= BODY_CAP_BYTES);
        if step.consumed == 0 || decoder.is_done() {
            break;
        }
        rest = &rest[step.consumed..];
    }
});
