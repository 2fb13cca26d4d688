//! Fuzzes the stanza parser (`interop_proto::stanza::parse`) with arbitrary frame payloads.
//!
//! Nothing may panic. Whatever parses must pass `Stanza::validate`, and its canonical
//! XML must parse back to an equal stanza; that canonical XML must itself be a fixed
//! point of `to_xml`.
#![no_main]

use interop_proto::stanza::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(stanza) = parse(data) else {
        return;
    };
    assert_eq!(
        stanza.validate(),
        Ok(()),
        "parse returned an invalid stanza"
    );
    let xml = stanza.to_xml();
    let again = parse(&xml);
    assert_eq!(
        again.as_ref(),
        Ok(&stanza),
        "canonical XML did not round-trip"
    );
    if let Ok(again) = again {
        assert_eq!(again.to_xml(), xml, "canonical XML is not a fixed point");
    }
});
