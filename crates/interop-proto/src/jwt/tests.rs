use super::*;
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const EXPECT: Expect<'static> = Expect {
    issuer: "acme",
    audience: "interop-hub",
    subject: "acme-home",
    now_unix_s: NOW,
};

/// A 2048-bit RSA key's modulus (e = 65537) and an RS256 token it signed (with
/// `openssl dgst -sha256 -sign`, kid `rsa-1`, iat NOW, exp NOW + 3600), and a 1024-bit
/// modulus that must be refused.
const RSA_N: &str = "wl6UOsYsQUpGJX3jSYWYO3kITSbB0U9fhR5qDY0Xqp5-Dp3R4DFavgYbIzgtTs8AIYJZ79UBlap1TqdREkgqSlhnLKLhwSLHL9Ia5wUz8ZxXP5A0s_XRsDa_ThSi0qtxDrUOBQmlP5697leRyxmrG34CB4vrPSsRSj410FqioEXtO7EkBDXm6X5hyLVT8IcyoLwSXWKCLOgIdLcAKZTWaSwoDpVsDMONbsLvj_6oVgqhCO_aeaHDFc19UxB-fKnIu2qkMQZ1gmiU1l4DGAd-8GzvwtujejY7eIZxre714ZbXrh2J6t7M0rx_cLGQd3GFdlwa7vqiknDpskXyP3eYPw";
const RSA_1024_N: &str = "1HlIBSTOE56U5zLJycbuepy7vDomChmQrrFk91ONO0pgKwn2Y6AiSa2PbhIQSM9GZmr1f1thAdFBWAa9ekfdWgdgIvLMm3Q2DWHTim5mBmw0zNCYH9y9lVRTf68w0HiQ-JxQW2PRtgsWE5ggiJb6O0j79C_8WE6Goir-rZujQhU";
const RSA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJhY21lIiwic3ViIjoiYWNtZS1ob21lIiwiYXVkIjoiaW50ZXJvcC1odWIiLCJpYXQiOjE4MDAwMDAwMDAsImV4cCI6MTgwMDAwMzYwMH0.PC78nFX4_Hti6eM1y2NJCinKvGnYeyzjGNePDPCLM6qssP7rK_TRmO38rDZEJBviad3E__gjhmfeR9y4ZxovqUtHVN3WV0oFEpA5fjvI9MdRHWP5uehrfuYPgsmo7cJ5UCKN8QCMId1f2OLos4N4M3m33__i_cqV4wS0T2xE39iY_NNiYe02ElL6iyTiC5xmNlfRQD07bSA-vxqUh6WBtqUxdfJXpj4P78PaOT4DhG0NMFUbEze24ZvOOsbl9fZOcTyN9L5U0TsQzyKyGxRPeB0mzxQ3pDpWVRuEcF3ADkXswQljPW1mHo1GHtDoMmLapF4Kl1oWLRVFOW2VA1yq8A";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Signer {
    Es(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct TestKey {
    kid: &'static str,
    signer: Signer,
}

impl TestKey {
    fn es256(kid: &'static str) -> TestKey {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng).unwrap();
        TestKey {
            kid,
            signer: Signer::Es(pair),
        }
    }

    fn eddsa(kid: &'static str) -> TestKey {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        TestKey {
            kid,
            signer: Signer::Ed(pair),
        }
    }

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Es(_) => "ES256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Es(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]),
                       "kid": self.kid, "alg": "ES256", "use": "sig"})
            }
            Signer::Ed(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()),
                       "kid": self.kid, "alg": "EdDSA", "use": "sig"})
            }
        }
    }

    fn sign_raw(&self, signed: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Es(pair) => pair
                .sign(&SystemRandom::new(), signed)
                .unwrap()
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(signed).as_ref().to_vec(),
        }
    }

    /// A token with `header` (to which `alg`, and `kid` unless `kid` is null, are added).
    fn token_with(&self, mut header: Value, claims: &Value) -> String {
        header["alg"] = json!(self.alg());
        if header.get("kid").is_none() {
            header["kid"] = json!(self.kid);
        } else if header["kid"].is_null() {
            header.as_object_mut().unwrap().remove("kid");
        }
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign_raw(signed.as_bytes());
        format!("{signed}.{}", b64(&sig))
    }

    fn token(&self, claims: &Value) -> String {
        self.token_with(json!({"typ": "JWT"}), claims)
    }
}

fn jwks_of(keys: &[&TestKey]) -> Jwks {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    Jwks::parse(doc.to_string().as_bytes()).unwrap()
}

fn good_claims() -> Value {
    json!({"iss": "acme", "sub": "acme-home", "aud": "interop-hub", "iat": NOW, "exp": NOW + 3600})
}

fn rsa_jwks(n: &str) -> Result<Jwks, JwtError> {
    let doc =
        json!({"keys": [{"kty": "RSA", "n": n, "e": "AQAB", "kid": "rsa-1", "alg": "RS256"}]});
    Jwks::parse(doc.to_string().as_bytes())
}

fn with(claims: &Value, name: &str, value: Value) -> Value {
    let mut out = claims.clone();
    out[name] = value;
    out
}

#[test]
fn es256_and_eddsa_tokens_verify_and_give_their_claims() {
    for key in [TestKey::es256("k1"), TestKey::eddsa("k2")] {
        let jwks = jwks_of(&[&key]);
        let claims = verify(&key.token(&good_claims()), &jwks, &EXPECT).unwrap();
        assert_eq!(
            claims,
            Claims {
                iss: "acme".into(),
                sub: "acme-home".into(),
                aud: "interop-hub".into(),
                iat: Some(NOW),
                nbf: None,
                exp: NOW + 3600,
            }
        );
    }
}

#[test]
fn rs256_token_signed_by_openssl_verifies_and_a_flipped_bit_does_not() {
    let jwks = rsa_jwks(RSA_N).unwrap();
    assert_eq!(verify(RSA_TOKEN, &jwks, &EXPECT).unwrap().exp, NOW + 3600);
    let mut tampered = RSA_TOKEN.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'Q' } else { 'A' });
    assert_eq!(
        verify(&tampered, &jwks, &EXPECT),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn rsa_keys_outside_2048_to_4096_bits_are_refused() {
    assert!(matches!(
        rsa_jwks(RSA_1024_N),
        Err(JwtError::BadJwks { .. })
    ));
    let huge = b64(&[0xff; RSA_MAX_BITS / 8 + 1]);
    assert!(matches!(rsa_jwks(&huge), Err(JwtError::BadJwks { .. })));
}

#[test]
fn a_changed_payload_is_a_bad_signature() {
    let key = TestKey::es256("k1");
    let token = key.token(&good_claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let other = b64(with(&good_claims(), "exp", json!(NOW + 99_999))
        .to_string()
        .as_bytes());
    parts[1] = &other;
    assert_eq!(
        verify(&parts.join("."), &jwks_of(&[&key]), &EXPECT),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn oversize_tokens_are_too_long_before_anything_else() {
    let key = TestKey::es256("k1");
    let jwks = jwks_of(&[&key]);
    let pad = "x".repeat(MAX_JWT_BYTES);
    let token = key.token(&with(&good_claims(), "pad", json!(pad)));
    assert_eq!(verify(&token, &jwks, &EXPECT), Err(JwtError::TooLong));
    assert_eq!(peek_claims(&token), Err(JwtError::TooLong));
    assert_eq!(
        verify(&"a".repeat(MAX_JWT_BYTES + 1), &jwks, &EXPECT),
        Err(JwtError::TooLong)
    );
}

#[test]
fn malformed_tokens_say_so() {
    let key = TestKey::es256("k1");
    let jwks = jwks_of(&[&key]);
    let good = key.token(&good_claims());
    let header = b64(br#"{"alg":"ES256","kid":"k1"}"#);
    let payload = b64(good_claims().to_string().as_bytes());
    let cases = [
        "".to_owned(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra"),
        format!("{header}.{payload}.!!!"),
        format!("{header}=.{payload}.AAAA"),
        format!("{}.{payload}.AAAA", b64(b"[1]")),
        format!("{header}.{}.AAAA", b64(b"not json")),
        key.token_with(json!({"typ": "JOSE+JSON"}), &good_claims()),
        key.token_with(json!({"crit": ["exp"]}), &good_claims()),
        key.token_with(json!({"kid": 7}), &good_claims()),
        format!("{}.{payload}.AAAA", b64(br#"{"kid":"k1"}"#)),
    ];
    for token in &cases {
        assert!(
            matches!(
                verify(token, &jwks, &EXPECT),
                Err(JwtError::Malformed { .. })
            ),
            "{token}: {:?}",
            verify(token, &jwks, &EXPECT)
        );
    }
    let claim_cases = [
        {
            let mut c = good_claims();
            c.as_object_mut().unwrap().remove("exp");
            c
        },
        with(&good_claims(), "exp", json!(-1)),
        with(&good_claims(), "exp", json!(1.5)),
        with(&good_claims(), "exp", json!("soon")),
        with(&good_claims(), "aud", json!(7)),
        with(&good_claims(), "aud", json!([])),
        with(&good_claims(), "aud", json!(["interop-hub", 1])),
        with(&good_claims(), "aud", json!(vec!["x"; MAX_AUDIENCES + 1])),
        with(&good_claims(), "iss", json!(null)),
        with(&good_claims(), "nbf", json!(false)),
    ];
    for claims in &claim_cases {
        let token = key.token(claims);
        assert!(
            matches!(
                verify(&token, &jwks, &EXPECT),
                Err(JwtError::Malformed { .. })
            ),
            "{claims}"
        );
        assert!(matches!(
            peek_claims(&token),
            Err(JwtError::Malformed { .. })
        ));
    }
}

#[test]
fn alg_none_is_refused() {
    let key = TestKey::es256("k1");
    let jwks = jwks_of(&[&key]);
    let payload = b64(good_claims().to_string().as_bytes());
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","kid":"k1"}"#] {
        for sig in ["", "AAAA"] {
            let token = format!("{}.{payload}.{sig}", b64(header.as_bytes()));
            assert_eq!(
                verify(&token, &jwks, &EXPECT),
                Err(JwtError::UnsupportedAlg { alg: "none".into() })
            );
        }
    }
}

#[test]
fn hs256_with_the_public_key_as_secret_is_refused() {
    let key = TestKey::es256("k1");
    let jwk = key.jwk();
    let jwks_text = json!({"keys": [jwk.clone()]}).to_string();
    let jwks = Jwks::parse(jwks_text.as_bytes()).unwrap();
    let payload = b64(good_claims().to_string().as_bytes());
    let header = b64(br#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#);
    let signed = format!("{header}.{payload}");
    let secrets: [Vec<u8>; 3] = [
        jwks_text.into_bytes(),
        jwk.to_string().into_bytes(),
        match &key.signer {
            Signer::Es(pair) => pair.public_key().as_ref().to_vec(),
            Signer::Ed(_) => unreachable!(),
        },
    ];
    for secret in secrets {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            signed.as_bytes(),
        );
        let token = format!("{signed}.{}", b64(mac.as_ref()));
        assert_eq!(
            verify(&token, &jwks, &EXPECT),
            Err(JwtError::UnsupportedAlg {
                alg: "HS256".into()
            })
        );
    }
}

#[test]
fn a_token_of_another_alg_than_its_kid_is_refused() {
    let es = TestKey::es256("k1");
    let ed = TestKey::eddsa("k2");
    let jwks = jwks_of(&[&es]);
    // Signed by an Ed25519 key but naming the P-256 key.
    let token = ed.token_with(json!({"kid": "k1"}), &good_claims());
    assert_eq!(
        verify(&token, &jwks, &EXPECT),
        Err(JwtError::UnsupportedAlg {
            alg: "EdDSA".into()
        })
    );
    // Without a kid there is simply no key of that alg.
    let token = ed.token_with(json!({"kid": null}), &good_claims());
    assert_eq!(
        verify(&token, &jwks, &EXPECT),
        Err(JwtError::UnknownKey { kid: None })
    );
}

#[test]
fn an_unknown_kid_is_unknown_key() {
    let key = TestKey::es256("k1");
    let other = TestKey::es256("k9");
    let token = other.token(&good_claims());
    assert_eq!(
        verify(&token, &jwks_of(&[&key]), &EXPECT),
        Err(JwtError::UnknownKey {
            kid: Some("k9".into())
        })
    );
    let long_kid = key.token_with(json!({"kid": "q".repeat(200)}), &good_claims());
    assert_eq!(
        verify(&long_kid, &jwks_of(&[&key]), &EXPECT),
        Err(JwtError::UnknownKey {
            kid: Some("?".into())
        })
    );
}

#[test]
fn two_keys_in_the_set_each_verify_their_own_tokens() {
    let a = TestKey::es256("a");
    let b = TestKey::es256("b");
    let jwks = jwks_of(&[&a, &b]);
    assert_eq!(jwks.len(), 2);
    assert!(verify(&a.token(&good_claims()), &jwks, &EXPECT).is_ok());
    assert!(verify(&b.token(&good_claims()), &jwks, &EXPECT).is_ok());
    // Without a kid, every key of the alg is tried.
    let no_kid = b.token_with(json!({"kid": null}), &good_claims());
    assert!(verify(&no_kid, &jwks, &EXPECT).is_ok());
    // b's signature under a's kid.
    let lying = b.token_with(json!({"kid": "a"}), &good_claims());
    assert_eq!(verify(&lying, &jwks, &EXPECT), Err(JwtError::BadSignature));
    // A key outside the set, without a kid.
    let stranger = TestKey::es256("c").token_with(json!({"kid": null}), &good_claims());
    assert_eq!(
        verify(&stranger, &jwks, &EXPECT),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn exp_nbf_and_iat_have_the_leeway_and_no_more() {
    let key = TestKey::eddsa("k1");
    let jwks = jwks_of(&[&key]);
    let at = |claims: &Value, now: u64| {
        verify(
            &key.token(claims),
            &jwks,
            &Expect {
                now_unix_s: now,
                ..EXPECT
            },
        )
    };
    let exp = NOW + 3600;
    assert!(at(&good_claims(), exp + CLOCK_LEEWAY_S - 1).is_ok());
    assert_eq!(
        at(&good_claims(), exp + CLOCK_LEEWAY_S),
        Err(JwtError::Expired { exp })
    );
    assert_eq!(
        at(&with(&good_claims(), "exp", json!(u64::MAX)), NOW).map(|c| c.exp),
        Ok(u64::MAX)
    );
    let nbf = with(&good_claims(), "nbf", json!(NOW + 100));
    assert!(at(&nbf, NOW + 100 - CLOCK_LEEWAY_S).is_ok());
    assert_eq!(
        at(&nbf, NOW + 100 - CLOCK_LEEWAY_S - 1),
        Err(JwtError::NotYetValid { nbf: NOW + 100 })
    );
    let iat = with(&good_claims(), "iat", json!(NOW + 100));
    assert!(at(&iat, NOW + 100 - CLOCK_LEEWAY_S).is_ok());
    assert_eq!(
        at(&iat, NOW + 100 - CLOCK_LEEWAY_S - 1),
        Err(JwtError::NotYetValid { nbf: NOW + 100 })
    );
}

#[test]
fn issuer_audience_and_subject_must_match() {
    let key = TestKey::es256("k1");
    let jwks = jwks_of(&[&key]);
    let check = |claims: Value| verify(&key.token(&claims), &jwks, &EXPECT);
    assert_eq!(
        check(with(&good_claims(), "iss", json!("evil"))),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        check(with(&good_claims(), "aud", json!("other-hub"))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check(with(&good_claims(), "aud", json!(["a", "b"]))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check(with(&good_claims(), "sub", json!("acme-other"))),
        Err(JwtError::WrongSubject)
    );
    let listed = check(with(&good_claims(), "aud", json!(["a", "interop-hub"]))).unwrap();
    assert_eq!(listed.aud, "interop-hub");
}

#[test]
fn peek_reads_claims_without_any_key() {
    let key = TestKey::es256("k1");
    let token = key.token(&with(&good_claims(), "aud", json!(["first", "second"])));
    let mut forged = token.rsplit_once('.').unwrap().0.to_owned();
    forged.push_str(".AAAA");
    let claims = peek_claims(&forged).unwrap();
    assert_eq!((claims.exp, claims.aud.as_str()), (NOW + 3600, "first"));
}

#[test]
fn reasons_are_distinct_snake_case_and_displays_hold_no_token_bytes() {
    let all = [
        JwtError::TooLong,
        JwtError::Malformed { detail: "d" },
        JwtError::UnsupportedAlg { alg: "none".into() },
        JwtError::UnknownKey { kid: None },
        JwtError::BadSignature,
        JwtError::Expired { exp: 1 },
        JwtError::NotYetValid { nbf: 1 },
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::WrongSubject,
        JwtError::BadJwks { detail: "d" },
    ];
    let mut reasons: Vec<&str> = all.iter().map(JwtError::reason).collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
    assert_eq!(JwtError::WrongSubject.reason(), "wrong_account");
    assert_eq!(JwtError::Expired { exp: 0 }.reason(), "token_expired");
    assert_eq!(JwtError::BadSignature.reason(), "bad_token_signature");
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
    assert!(all[10].to_string().starts_with("configuration:"));
    assert!(
        all[..10]
            .iter()
            .all(|e| e.to_string().starts_with("peer token:"))
    );

    let key = TestKey::es256("k1");
    let jwks = jwks_of(&[&key]);
    let marker = "SECRETMARKER";
    let claims = with(&good_claims(), "sub", json!(marker));
    let token = key.token(&claims);
    let err = verify(&token, &jwks, &EXPECT).unwrap_err();
    assert_eq!(err, JwtError::WrongSubject);
    let odd_alg = format!(
        "{}.e30.",
        b64(format!(r#"{{"alg":"{marker} x"}}"#).as_bytes())
    );
    let err = verify(&odd_alg, &jwks, &EXPECT).unwrap_err();
    assert_eq!(err, JwtError::UnsupportedAlg { alg: "?".into() });
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(
            !text.contains(marker) && !text.contains(&token[..20]),
            "{text}"
        );
    }
}

#[test]
fn jwks_parse_skips_what_it_cannot_use_and_refuses_what_is_broken() {
    let es = TestKey::es256("k1");
    let good = es.jwk();
    let parse = |keys: Value| Jwks::parse(json!({ "keys": keys }).to_string().as_bytes());
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"});
    let enc = with(&good, "use", json!("enc"));
    let no_verify = with(&good, "key_ops", json!(["sign"]));
    let p384 = with(&good, "crv", json!("P-384"));
    let ps256 = json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "alg": "PS256"});
    assert_eq!(
        parse(json!([
            oct.clone(),
            enc,
            no_verify,
            p384,
            ps256,
            good.clone()
        ]))
        .unwrap()
        .len(),
        1
    );
    let broken = [
        json!([with(&good, "alg", json!("EdDSA"))]),
        json!([with(&good, "x", json!("AAAA"))]),
        json!([with(&good, "y", json!("not base64!"))]),
        json!([with(&good, "kid", json!(5))]),
        json!([{"crv": "P-256"}]),
        json!(["key"]),
        json!([oct]),
        json!([]),
        json!(vec![good.clone(); MAX_JWKS_KEYS + 1]),
        json!({"kty": "EC"}),
    ];
    for keys in broken {
        assert!(
            matches!(parse(keys.clone()), Err(JwtError::BadJwks { .. })),
            "{keys}"
        );
    }
    let oversize = format!(
        r#"{{"keys":[{good}],"pad":"{}"}}"#,
        "x".repeat(MAX_JWKS_BYTES)
    );
    assert!(matches!(
        Jwks::parse(oversize.as_bytes()),
        Err(JwtError::BadJwks { .. })
    ));
    assert!(matches!(
        Jwks::parse(b"\xff{"),
        Err(JwtError::BadJwks { .. })
    ));
    let debug = format!("{:?}", parse(json!([good])).unwrap());
    assert!(debug.contains("k1") && !debug.contains(good["x"].as_str().unwrap()));
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let key = TestKey::es256("k1");
        let jwks = jwks_of(&[&key]);
        let _ = verify(&s, &jwks, &EXPECT);
        let _ = peek_claims(&s);
        let _ = Jwks::parse(s.as_bytes());
        let _ = Jwks::parse(&bytes);
    }

    #[test]
    fn dotted_base64_json_never_panics(h in "\\{.{0,60}\\}", p in "\\{.{0,60}\\}", sig in proptest::collection::vec(any::<u8>(), 0..80)) {
        let key = TestKey::eddsa("k1");
        let jwks = jwks_of(&[&key]);
        let token = format!("{}.{}.{}", b64(h.as_bytes()), b64(p.as_bytes()), b64(&sig));
        let _ = verify(&token, &jwks, &EXPECT);
        let _ = peek_claims(&token);
    }
}
