"""Keys, JWKS and tokens for the end-to-end tests, all made with PyJWT and cryptography.

The filter verifies with Rust crates and Envoy's BoringSSL; minting with an independent
implementation means a bug shared by signer and verifier cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

HMAC_ALGS = ("HS256", "HS384", "HS512")
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGS = ("ES256", "ES384")
ALL_ALGS = HMAC_ALGS + RSA_ALGS + EC_ALGS + ("EdDSA",)

_HMAC_LEN = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVE = {"ES256": (ec.SECP256R1(), "P-256", 32), "ES384": (ec.SECP384R1(), "P-384", 48)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def _int_b64(n: int, length: int | None = None) -> str:
    length = length or max(1, (n.bit_length() + 7) // 8)
    return b64url(n.to_bytes(length, "big"))


@dataclass
class Key:
    """One signing key: `private` signs (bytes for HMAC), `jwk` is the public JWK."""

    alg: str
    kid: str
    private: Any
    public: Any
    jwk: dict = field(default_factory=dict)

    @property
    def public_pem(self) -> bytes:
        if isinstance(self.public, bytes):
            raise TypeError("HMAC keys have no PEM")
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk(alg: str, kid: str, public: Any, *, with_alg: bool = True, use: str | None = "sig") -> dict:
    if isinstance(public, bytes):
        jwk: dict[str, Any] = {"kty": "oct", "k": b64url(public)}
    elif isinstance(public, rsa.RSAPublicKey):
        nums = public.public_numbers()
        jwk = {"kty": "RSA", "n": _int_b64(nums.n), "e": _int_b64(nums.e)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        nums = public.public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": _int_b64(nums.x, size), "y": _int_b64(nums.y, size)}
    elif isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    else:
        raise TypeError(type(public))
    jwk["kid"] = kid
    if with_alg:
        jwk["alg"] = alg
    if use:
        jwk["use"] = use
    return jwk


def generate_key(alg: str, kid: str | None = None, *, rsa_bits: int = 2048) -> Key:
    kid = kid or f"{alg.lower()}-{os.urandom(4).hex()}"
    if alg in HMAC_ALGS:
        secret = os.urandom(_HMAC_LEN[alg])
        priv: Any = secret
        pub: Any = secret
    elif alg in RSA_ALGS:
        priv = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        pub = priv.public_key()
    elif alg in EC_ALGS:
        priv = ec.generate_private_key(_EC_CURVE[alg][0])
        pub = priv.public_key()
    elif alg == "EdDSA":
        priv = ed25519.Ed25519PrivateKey.generate()
        pub = priv.public_key()
    else:
        raise ValueError(alg)
    return Key(alg, kid, priv, pub, public_jwk(alg, kid, pub))


def generate_keys(prefix: str = "", algs=ALL_ALGS) -> dict[str, Key]:
    """One fresh key per algorithm, kid `<prefix><alg>-<random>`."""
    return {a: generate_key(a, f"{prefix}{a.lower()}-{os.urandom(3).hex()}") for a in algs}


def jwks(*keys: Key | dict) -> dict:
    return {"keys": [k.jwk if isinstance(k, Key) else k for k in keys]}


# --- minting ------------------------------------------------------------------------------

def claims(iss: str, aud: str | list | None = None, *, sub: str = "user-1", ttl: int = 300,
           now: int | None = None, **extra) -> dict:
    now = int(time.time()) if now is None else now
    c: dict[str, Any] = {"iss": iss, "sub": sub, "iat": now, "exp": now + ttl}
    if aud is not None:
        c["aud"] = aud
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def mint(alg: str, key: Key, claims: dict, headers: dict | None = None, *, kid: bool = True) -> str:
    """A correctly signed JWT via PyJWT (`kid` header from the key unless kid=False)."""
    h = dict(headers or {})
    if kid and "kid" not in h:
        h["kid"] = key.kid
    return jwt.encode(claims, key.private, algorithm=alg, headers=h)


def sign_raw(alg: str, key: Key, header: dict, payload: dict | bytes | str) -> str:
    """Signs an arbitrary header/payload with PyJWT's algorithm objects, no checks at all.

    For headers PyJWT would refuse or rewrite (`crit`, `jwk`, custom `typ`, ...)."""
    h = b64url_json(header)
    if isinstance(payload, dict):
        p = b64url_json(payload)
    elif isinstance(payload, bytes):
        p = b64url(payload)
    else:
        p = payload
    signing_input = f"{h}.{p}".encode()
    algo = jwt.get_algorithm_by_name(alg)
    sig = algo.sign(signing_input, algo.prepare_key(key.private))
    return f"{h}.{p}.{b64url(sig)}"


# --- hostile tokens -----------------------------------------------------------------------

def alg_none(claims: dict, alg: str = "none", kid: str | None = None) -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return f"{b64url_json(header)}.{b64url_json(claims)}."


def tamper_signature(token: str) -> str:
    """Flips one bit in the middle of the signature bytes."""
    h, p, s = token.split(".")
    sig = bytearray(b64url_decode(s))
    sig[len(sig) // 2] ^= 0x01
    return f"{h}.{p}.{b64url(bytes(sig))}"


def tamper_payload(token: str, **changes) -> str:
    """Changes claims (default sub=admin) and keeps the original signature."""
    h, p, s = token.split(".")
    body = json.loads(b64url_decode(p))
    body.update(changes or {"sub": "admin"})
    return f"{h}.{b64url_json(body)}.{s}"


def hs256_with_public_key(rsa_key: Key, claims: dict, kid: str | None = None) -> str:
    """Key confusion: HS256 with the RSA public key PEM as the HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid or rsa_key.kid}
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}".encode()
    mac = hmac.new(rsa_key.public_pem, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(mac)}"


def with_header(alg: str, key: Key, claims: dict, **extra_header) -> str:
    """Correctly signed token with extra header parameters (crit, jwk, jku, x5u, typ...)."""
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    header.update(extra_header)
    header = {k: v for k, v in header.items() if v is not None}
    return sign_raw(alg, key, header, claims)


def padded(alg: str, key: Key, claims: dict) -> str:
    """Correctly signed token whose segments carry base64 '=' padding (not base64url)."""
    c = dict(claims)
    n = 0
    while True:
        tok = mint(alg, key, c)
        h, p, s = tok.split(".")
        if len(p) % 4 or len(s) % 4:
            def pad(x):
                return x + "=" * (-len(x) % 4)
            return f"{pad(h)}.{pad(p)}.{pad(s)}"
        n += 1
        c["pad"] = "x" * n


def jwe_shaped(kid: str | None = None) -> str:
    header = {"alg": "RSA-OAEP", "enc": "A256GCM"}
    if kid:
        header["kid"] = kid
    return ".".join([b64url_json(header)] + [b64url(os.urandom(n)) for n in (256, 12, 64, 16)])


def five_segments_signed(alg: str, key: Key, claims: dict) -> str:
    tok = mint(alg, key, claims)
    return tok + "." + b64url(b"extra") + "." + b64url(b"more")


def oversized(alg: str, key: Key, claims: dict, size: int = 9000) -> str:
    c = dict(claims)
    c["blob"] = "A" * size
    tok = mint(alg, key, c)
    assert len(tok) > 8192
    return tok


MALFORMED = {
    "one_segment": "abcdef",
    "two_segments": "abc.def",
    "four_segments": "a.b.c.d",
    "empty_segments": "..",
    "not_base64": "!!!.@@@.###",
    "header_not_json": f"{b64url(b'not json')}.{b64url_json({'sub': 'x'})}.{b64url(b'sig')}",
    "header_not_object": f"{b64url_json([1, 2])}.{b64url_json({'sub': 'x'})}.{b64url(b'sig')}",
    "payload_not_json": f"{b64url_json({'alg': 'RS256', 'typ': 'JWT'})}.{b64url(b'{nope')}.{b64url(b'sig')}",
}
