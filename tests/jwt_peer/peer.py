"""PyJWT's side of tests/jwt_interop.rs: an independent JWT implementation (PyJWT on the
`cryptography` package) that checks our tokens and signs tokens for us to check.

    peer.py verify JWKS_JSON TOKEN ISSUER AUDIENCE SUBJECT
        Verifies TOKEN with PyJWT against JWKS_JSON (the key named by the token's kid) and
        prints the claims as JSON, or {"error": "..."}.
    peer.py sign ISSUER AUDIENCE SUBJECT
        Generates an ES256, an EdDSA and an RS256 key, and prints as JSON the JWKS of the
        three (built by PyJWT's `to_jwk`), the current time, and tokens: one good token per
        algorithm, and an expired one, one for another audience, and one signed by a key
        outside the set under a kid that is in it.
"""

import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def verify(jwks_json, token, issuer, audience, subject):
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = jwt.PyJWKSet.from_json(jwks_json)[kid]
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[key.algorithm_name],
            audience=audience,
            issuer=issuer,
            subject=subject,
            options={"require": ["exp", "iss", "sub", "aud"]},
        )
    except Exception as e:  # the test prints what PyJWT refused
        return {"error": f"{type(e).__name__}: {e}"}
    return claims


def jwk(algorithm, public_key, kid, alg):
    out = algorithm.to_jwk(public_key, as_dict=True)
    out.update({"kid": kid, "alg": alg, "use": "sig"})
    return out


def sign(issuer, audience, subject):
    now = int(time.time())
    keys = {
        "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
        "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    }
    jwks = {
        "keys": [
            jwk(algorithm, private.public_key(), f"py-{alg}", alg)
            for alg, (private, algorithm) in keys.items()
        ]
    }
    claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 3600}

    def token(alg, body, key=None):
        private = key if key is not None else keys[alg][0]
        return jwt.encode(body, private, algorithm=alg, headers={"kid": f"py-{alg}"})

    tokens = {alg: token(alg, claims) for alg in keys}
    tokens["expired"] = token("ES256", dict(claims, iat=now - 7200, exp=now - 3600))
    tokens["wrong_audience"] = token("EdDSA", dict(claims, aud="other-hub"))
    stranger = ec.generate_private_key(ec.SECP256R1())
    tokens["other_key"] = token("ES256", claims, key=stranger)
    return {"jwks": json.dumps(jwks), "now": now, "claims": claims, "tokens": tokens}


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "verify":
        print(json.dumps(verify(*args)))
    elif command == "sign":
        print(json.dumps(sign(*args)))
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
