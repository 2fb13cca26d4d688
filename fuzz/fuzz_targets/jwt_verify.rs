//! Fuzzes the `wa` login's provider token check (`interop_proto::jwt`): the input is split at
//! its first NUL byte into a token and a JWKS document, both of which a peer or a provider
//! controls. The token is verified against the fuzzed JWKS (when it parses) and against a
//! fixed one, and peeked at.
//!
//! Nothing may panic, and a fuzzed token must never verify under the fixed key set: that would
//! need a signature by a key the fuzzer has never seen.
#![no_main]

use interop_proto::jwt::{Expect, Jwks, peek_claims, verify};
use libfuzzer_sys::fuzz_target;

/// The P-256 example key of RFC 7515, appendix A.3 (its private half is printed there, not
/// here: the fuzzer cannot sign with it).
const FIXED_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

const EXPECT: Expect<'static> = Expect {
    issuer: "acme",
    audience: "interop-hub",
    subject: "acme-home",
    now_unix_s: 1_800_000_000,
};

fuzz_target!(|data: &[u8]| {
    let (token, jwks) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let token = String::from_utf8_lossy(token);
    if let Ok(jwks) = Jwks::parse(jwks) {
        let _ = verify(&token, &jwks, &EXPECT);
    }
    // INVARIANT: FIXED_JWKS is a valid key set; a failure here is a bug in Jwks::parse.
    let fixed = Jwks::parse(FIXED_JWKS.as_bytes()).expect("the fixed JWKS parses");
    assert!(verify(&token, &fixed, &EXPECT).is_err());
    let _ = peek_claims(&token);
});
