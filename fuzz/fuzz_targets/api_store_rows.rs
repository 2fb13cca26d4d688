//! Fuzzes the row decoders of the event log: `events::Event` and `events::WebhookJob`.
//!
//! Input layout: byte 0 picks the decoder, the rest is the stored value. Whatever a decoder
//! accepts must encode back to exactly the same bytes (the layouts are canonical).
#![no_main]

use interopd::events::{Event, WebhookJob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, row)) = data.split_first() else {
        return;
    };
    match which % 2 {
        0 => {
            if let Ok(event) = Event::decode(row) {
                match event.encode() {
                    Ok(again) => assert_eq!(again, row),
                    Err(err) => panic!("a decoded event failed to encode: {err}"),
                }
            }
        }
        _ => {
            if let Ok(job) = WebhookJob::decode(row) {
                assert_eq!(job.encode(), row);
            }
        }
    }
});
