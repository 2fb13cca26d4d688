//! Fuzzes the retry receipt reader (`interop_proto::retry::parse_retry_receipt`) with arbitrary
//! frame payloads.
//!
//! Nothing may panic, and whatever reads as a retry receipt must survive a write-read round
//! trip through `retry_receipt_stanza` and the stanza codec unchanged.
#![no_main]

use interop_proto::jid::Jid;
use interop_proto::retry::{parse_retry_receipt, retry_receipt_stanza};
use interop_proto::stanza::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = parse(data) else { return };
    let Ok(receipt) = parse_retry_receipt(&s) else {
        return;
    };
    let rebuilt = retry_receipt_stanza(&Jid::interop("acme-home", Some(1)), &receipt);
    let reread = parse(&rebuilt.to_xml()).map(|s| parse_retry_receipt(&s));
    assert_eq!(reread, Ok(Ok(receipt)));
});
