#!/usr/bin/env python3
"""Generates src/jwt/test_vectors.rs: fixed test keys and tokens for the jwt unit tests.

Tokens are signed here (PyJWT + cryptography, or hmac from the standard library for
hand-built headers), never by the code under test. Run once and commit the output:

    /path/to/python-with-pyjwt-and-cryptography src/jwt/testdata/gen_vectors.py > src/jwt/test_vectors.rs

Keys are fresh on every run, so regenerate the whole file at once.
"""
import base64, hashlib, hmac, json, os

import jwt  # PyJWT
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils

NOW = 1_700_000_000
ISS = "https://issuer.test"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def int_b64(i, length=None):
    length = length or (i.bit_length() + 7) // 8
    return b64u(i.to_bytes(length, "big"))


def spki(pub):
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
# Odd sizes exercise PSS's emLen < k case (modBits = 8k - 7) and a short top limb.
rsa_2049 = rsa.generate_private_key(public_exponent=65537, key_size=2049)
rsa_3072 = rsa.generate_private_key(public_exponent=3, key_size=3072)
p256_key = ec.generate_private_key(ec.SECP256R1())
p384_key = ec.generate_private_key(ec.SECP384R1())
ed_key = ed25519.Ed25519PrivateKey.generate()
hmac_secret = os.urandom(64)

def rsa_jwk(k):
    n = k.public_key().public_numbers()
    return {"kty": "RSA", "n": int_b64(n.n), "e": int_b64(n.e)}

def ec_jwk(k, crv, size):
    n = k.public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "x": int_b64(n.x, size), "y": int_b64(n.y, size)}

ed_raw = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
jwks = {"keys": [
    dict(rsa_jwk(rsa_key), kid="rsa", use="sig"),
    dict(ec_jwk(p256_key, "P-256", 32), kid="p256", alg="ES256"),
    dict(ec_jwk(p384_key, "P-384", 48), kid="p384"),
    {"kty": "OKP", "crv": "Ed25519", "x": b64u(ed_raw), "kid": "ed", "alg": "EdDSA", "use": "sig"},
    {"kty": "oct", "k": b64u(hmac_secret), "kid": "hmac"},
]}

claims = {"iss": ISS, "aud": "api", "sub": "alice", "iat": NOW - 10, "exp": NOW + 300}

signers = {
    "HS256": (hmac_secret, "hmac"), "HS384": (hmac_secret, "hmac"), "HS512": (hmac_secret, "hmac"),
    "RS256": (rsa_key, "rsa"), "RS384": (rsa_key, "rsa"), "RS512": (rsa_key, "rsa"),
    "PS256": (rsa_key, "rsa"), "PS384": (rsa_key, "rsa"), "PS512": (rsa_key, "rsa"),
    "ES256": (p256_key, "p256"), "ES384": (p384_key, "p384"), "EdDSA": (ed_key, "ed"),
}

out = []
def const(name, value):
    out.append(f"pub const {name}: &str = {json.dumps(value)};")

const("JWKS", json.dumps(jwks))
const("HMAC_SECRET_B64", b64u(hmac_secret))
const("RSA_SPKI_B64", b64u(spki(rsa_key.public_key())))
const("P256_SPKI_B64", b64u(spki(p256_key.public_key())))
const("P384_SPKI_B64", b64u(spki(p384_key.public_key())))
const("RSA_1024_N", int_b64(rsa_1024.public_key().public_numbers().n))
const("RSA_PKCS1_PEM", rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode())
const("P256_SEC1_PEM", p256_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode())
# As `openssl ecparam -genkey` writes it: a parameters block first.
const("P384_SEC1_PEM", "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n" + p384_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode())

out.append("")
out.append("/// (alg name, token) for every algorithm: the base claims, signed with the fitting key and its kid.")
out.append("pub const VALID: [(&str, &str); 12] = [")
for alg, (key, kid) in signers.items():
    tok = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    out.append(f"    ({json.dumps(alg)}, {json.dumps(tok)}),")
out.append("];")

other_rsa = {"keys": [dict(rsa_jwk(rsa_2049), kid="rsa2049"), dict(rsa_jwk(rsa_3072), kid="rsa3072")]}
const("OTHER_RSA_JWKS", json.dumps(other_rsa))
out.append("/// (alg, token) signed with the 2049-bit and the 3072-bit (e = 3) keys of OTHER_RSA_JWKS.")
other = [(a, k, kid) for a in ["RS256", "PS256", "PS384", "PS512", "RS512"] for (k, kid) in [(rsa_2049, "rsa2049"), (rsa_3072, "rsa3072")]]
out.append(f"pub const OTHER_RSA: [(&str, &str); {len(other)}] = [")
for alg, key, kid in other:
    out.append(f"    ({json.dumps(alg)}, {json.dumps(jwt.encode(claims, key, algorithm=alg, headers={'kid': kid}))}),")
out.append("];")
const("RS256_NO_KID", jwt.encode(claims, rsa_key, algorithm="RS256"))
const("ES384_NO_KID", jwt.encode(claims, p384_key, algorithm="ES384"))
es_tok = jwt.encode(claims, p256_key, algorithm="ES256", headers={"kid": "p256"})
raw = base64.urlsafe_b64decode(es_tok.split(".")[2] + "==")
const("ES256_FOR_DER", es_tok)
const("ES256_DER_SIG_B64", b64u(utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))))


def hs(header, payload):
    """HS256 with the test secret over a hand-built header and payload (dicts or raw bytes)."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    inp = b64u(h) + "." + b64u(p)
    return inp + "." + b64u(hmac.new(hmac_secret, inp.encode(), hashlib.sha256).digest())

H = {"alg": "HS256", "kid": "hmac"}
out.append("")
out.append("/// Hand-built HS256 tokens (test secret) for the header and claim checks: (name, token).")
cases = {
    # claims
    "expired": (H, dict(claims, iat=NOW - 400, exp=NOW - 100)),
    "exp_in_skew": (H, dict(claims, exp=NOW - 30)),
    "nbf_future": (H, dict(claims, nbf=NOW + 100)),
    "nbf_in_skew": (H, dict(claims, nbf=NOW + 30)),
    "iat_future": (H, dict(claims, iat=NOW + 100)),
    "no_exp": (H, {k: v for k, v in claims.items() if k != "exp"}),
    "wrong_iss": (H, dict(claims, iss="https://evil.test")),
    "iss_prefix": (H, dict(claims, iss=ISS + "/")),
    "no_iss": (H, {k: v for k, v in claims.items() if k != "iss"}),
    "aud_array": (H, dict(claims, aud=["other", "api"])),
    "aud_wrong": (H, dict(claims, aud="other")),
    "aud_wrong_array": (H, dict(claims, aud=["other", "more"])),
    "aud_missing": (H, {k: v for k, v in claims.items() if k != "aud"}),
    "aud_number": (H, dict(claims, aud=5)),
    "long_lifetime": (H, dict(claims, exp=NOW + 86400)),
    "long_lifetime_no_iat": (H, {"iss": ISS, "aud": "api", "exp": NOW + 86400}),
    "float_times": (H, dict(claims, exp=NOW + 300.5, iat=NOW - 10.25, nbf=NOW - 5.5)),
    "string_exp": (H, dict(claims, exp=str(NOW + 300))),
    "bool_nbf": (H, dict(claims, nbf=True)),
    "null_iat": (H, dict(claims, iat=None)),
    "negative_exp": (H, dict(claims, exp=-1)),
    "typ_at_jwt": ({**H, "typ": "at+jwt"}, claims),
    "typ_app_at_jwt": ({**H, "typ": "application/AT+JWT"}, claims),
    "typ_jwt": ({**H, "typ": "JWT"}, claims),
    "typ_number": ({**H, "typ": 1}, claims),
    # header hardening
    "alg_none_upper": ({"alg": "NONE"}, claims),
    "alg_none_mixed": ({"alg": "None", "kid": "hmac"}, claims),
    "alg_unknown": ({"alg": "HS999", "kid": "hmac"}, claims),
    "alg_lowercase": ({"alg": "hs256", "kid": "hmac"}, claims),
    "alg_missing": ({"kid": "hmac"}, claims),
    "alg_number": ({"alg": 256, "kid": "hmac"}, claims),
    "crit_exp": ({**H, "crit": ["exp"], "exp": 1}, claims),
    "crit_empty": ({**H, "crit": []}, claims),
    "crit_string": ({**H, "crit": "b64"}, claims),
    "b64_false_crit": ({**H, "b64": False, "crit": ["b64"]}, claims),
    "b64_false": ({**H, "b64": False}, claims),
    "b64_true": ({**H, "b64": True}, claims),
    "b64_string": ({**H, "b64": "no"}, claims),
    "jku": ({**H, "jku": "https://evil.test/jwks"}, claims),
    "x5u": ({**H, "x5u": "https://evil.test/cert"}, claims),
    "jwk": ({**H, "jwk": {"kty": "oct", "k": "AAAA"}}, claims),
    "x5c": ({**H, "x5c": ["MIIB"]}, claims),
    "kid_number": ({"alg": "HS256", "kid": 7}, claims),
    "kid_unknown": ({"alg": "HS256", "kid": "nope"}, claims),
    "no_kid": ({"alg": "HS256"}, claims),
    "header_not_json": (b"not json", claims),
    "header_array": (b'["alg","HS256"]', claims),
    "header_bad_utf8": (b'{"alg":"HS256","kid":"hmac","x":"\xff"}', claims),
    "payload_not_json": (H, b"hello"),
    "payload_array": (H, b"[1,2]"),
    "payload_bad_utf8": (H, b'{"iss":"\xff"}'),
    "header_duplicate": (b'{"alg":"none","alg":"HS256","kid":"hmac"}', claims),
    "payload_duplicate": (H, b'{"iss":"https://issuer.test","aud":"api","sub":"alice","sub":"admin","exp":1700000300}'),
    "nested_duplicate_ok": (H, b'{"iss":"https://issuer.test","aud":"api","exp":1700000300,"x":{"a":1,"a":2}}'),
}
out.append(f"pub const HS: [(&str, &str); {len(cases)}] = [")
for name, (h, p) in cases.items():
    out.append(f"    ({json.dumps(name)}, {json.dumps(hs(h, p))}),")
out.append("];")

none_inp = b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(claims).encode())
const("ALG_NONE", none_inp + ".")

print("//! Generated by testdata/gen_vectors.py (PyJWT + cryptography); do not edit by hand.")
print(f"//! Test keys only. NOW = {NOW}, issuer {ISS!r}, audience \"api\".")
print("#![allow(dead_code)]")
print("")
print(f"pub const NOW: u64 = {NOW};")
print(f"pub const ISS: &str = {json.dumps(ISS)};")
print("\n".join(out))
