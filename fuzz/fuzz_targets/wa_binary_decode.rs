//! Fuzzes the `wa` profile's binary node decoder (`interop_proto::stanza::parse_binary`) with
//! arbitrary frame payloads, as either side would read them.
//!
//! Nothing may panic. Whatever decodes must pass `Stanza::validate`, re-encode as the same
//! writer, and decode back to an equal stanza; it must also mean the same in the XML encoding.
#![no_main]

use interop_proto::stanza::{Writer, parse, parse_binary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let writer = if selector & 1 == 0 {
        Writer::Client
    } else {
        Writer::Server
    };
    let Ok(stanza) = parse_binary(payload, writer) else {
        return;
    };
    assert_eq!(stanza.validate(), Ok(()), "decoded an invalid stanza");
    // INVARIANT: the stanza passed validate just above, the only way to_binary fails; a
    // failure here is the bug this target looks for.
    let bytes = stanza.to_binary(writer).expect("a valid stanza encodes");
    assert_eq!(
        parse_binary(&bytes, writer).as_ref(),
        Ok(&stanza),
        "binary did not round-trip"
    );
    assert_eq!(
        parse(&stanza.to_xml()).as_ref(),
        Ok(&stanza),
        "the stanza means something else in XML"
    );
});
