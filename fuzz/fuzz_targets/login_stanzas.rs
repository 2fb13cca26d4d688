//! Fuzzes the login stanza readers (`interop_proto::login::{parse_hello, parse_auth,
//! parse_challenge}`) with arbitrary frame payloads.
//!
//! Nothing may panic; whatever reads as a `<login>` or `<auth>` must survive a write-read
//! round trip unchanged, and a proof made of fuzz bytes must not verify against a fixed nonce.
#![no_main]

use interop_proto::login::{
    auth_stanza, hello_stanza, parse_auth, parse_challenge, parse_hello, proof_message,
};
use interop_proto::stanza::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = parse(data) else { return };
    let _ = parse_challenge(&s);
    if let Ok(hello) = parse_hello(&s) {
        assert_eq!(parse_hello(&hello_stanza(&hello)), Ok(hello));
    }
    if let Ok(proof) = parse_auth(&s) {
        assert_eq!(parse_auth(&auth_stanza(&proof)), Ok(proof.clone()));
        let message = proof_message(
            &[0x5a; 32],
            &interop_proto::jid::Jid::interop("acme-home", Some(1)),
        );
        // Fuzz bytes cannot forge XEdDSA; a pass here would mean verification is broken.
        if interop_proto::signal::verify_signature(&proof.identity, &message, &proof.signature) {
            panic!("fuzz bytes produced a valid XEdDSA signature");
        }
    }
});
