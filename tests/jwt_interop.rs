//! The `wa` login's provider token against a JWT implementation we did not write: PyJWT (on
//! the `cryptography` package), driven by `tests/jwt_peer/peer.py`, installed on first use,
//! pinned (`python_support`).
//!
//! (a) PyJWT verifies a token the hub's test provider (`interop_hub::provider`) signed, with
//! the provider's `jwks_json`, and reads the same claims; (b) tokens PyJWT signs with ES256,
//! EdDSA and RS256, under a JWKS that PyJWT's `to_jwk` built, verify with our
//! `interop_proto::jwt::verify`; (c) PyJWT tokens that are expired, for another audience, or
//! signed by a key outside the set are refused by us with the matching error.

mod python_support;

use std::time::{SystemTime, UNIX_EPOCH};

use interop_hub::provider::{JWT_AUDIENCE, ProviderKey};
use interop_proto::jwt::{Claims, Expect, Jwks, JwtError, verify};
use serde_json::Value;

const ISSUER: &str = "acme";
const SUBJECT: &str = "acme-home";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Runs `peer.py` with `args` and parses the JSON it prints.
fn peer(args: &[&str]) -> Value {
    let out = python_support::python3_with(python_support::PYJWT)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/jwt_peer/peer.py"
        ))
        .args(args)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peer.py failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("peer.py printed no JSON: {text}"))
}

#[test]
fn pyjwt_verifies_the_hub_providers_token_and_reads_the_same_claims() {
    let key = ProviderKey::generate().expect("generate");
    let now = now();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: SUBJECT.into(),
        aud: JWT_AUDIENCE.into(),
        iat: Some(now),
        nbf: Some(now),
        exp: now + 3600,
    };
    let token = key.sign(&claims).expect("sign");
    let seen = peer(&[
        "verify",
        &key.jwks_json(),
        &token,
        ISSUER,
        JWT_AUDIENCE,
        SUBJECT,
    ]);
    assert!(seen.get("error").is_none(), "PyJWT refused: {seen}");
    assert_eq!(seen["iss"], ISSUER);
    assert_eq!(seen["sub"], SUBJECT);
    assert_eq!(seen["aud"], JWT_AUDIENCE);
    assert_eq!(seen["iat"].as_u64(), claims.iat);
    assert_eq!(seen["nbf"].as_u64(), claims.nbf);
    assert_eq!(seen["exp"].as_u64(), Some(claims.exp));

    // And PyJWT's own checks run: another subject is refused.
    let wrong = peer(&[
        "verify",
        &key.jwks_json(),
        &token,
        ISSUER,
        JWT_AUDIENCE,
        "acme-other",
    ]);
    assert!(wrong.get("error").is_some(), "{wrong}");
}

#[test]
fn pyjwt_tokens_verify_with_ours_and_the_bad_ones_are_refused_for_the_right_reason() {
    let out = peer(&["sign", ISSUER, JWT_AUDIENCE, SUBJECT]);
    let jwks = Jwks::parse(out["jwks"].as_str().expect("jwks").as_bytes()).expect("parse JWKS");
    assert_eq!(jwks.len(), 3);
    let now = out["now"].as_u64().expect("now");
    let expect = Expect {
        issuer: ISSUER,
        audience: JWT_AUDIENCE,
        subject: SUBJECT,
        now_unix_s: now,
    };
    let token = |name: &str| {
        out["tokens"][name]
            .as_str()
            .unwrap_or_else(|| panic!("token {name}"))
            .to_owned()
    };
    let want = Claims {
        iss: ISSUER.into(),
        sub: SUBJECT.into(),
        aud: JWT_AUDIENCE.into(),
        iat: out["claims"]["iat"].as_u64(),
        nbf: None,
        exp: out["claims"]["exp"].as_u64().expect("exp"),
    };
    for alg in ["ES256", "EdDSA", "RS256"] {
        assert_eq!(
            verify(&token(alg), &jwks, &expect),
            Ok(want.clone()),
            "{alg}"
        );
    }
    assert_eq!(
        verify(&token("expired"), &jwks, &expect),
        Err(JwtError::Expired { exp: now - 3600 })
    );
    assert_eq!(
        verify(&token("wrong_audience"), &jwks, &expect),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        verify(&token("other_key"), &jwks, &expect),
        Err(JwtError::BadSignature)
    );
}
