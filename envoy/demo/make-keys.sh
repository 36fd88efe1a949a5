#!/usr/bin/env bash
# Regenerates the DEMO signing keys and their public JWKS.
# These keys are for the local demo and tests only: they are committed to the
# repository, so anyone can mint tokens with them. Never trust them in production.
#
# Needs: openssl (1.1.1 or newer) and python3 (standard library only).
set -euo pipefail
cd "$(dirname "$0")"

openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rs256.pem
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve -out es256.pem
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -pkeyopt ec_param_enc:named_curve -out es384.pem
openssl genpkey -quiet -algorithm ED25519 -out ed25519.pem
# HS256 shared secret: 32 random bytes, base64url without padding, one line.
# The JWK "k" below is this same string; tools decode it to get the raw secret.
openssl rand 32 | python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode())' > hs256.key

spki() { openssl pkey -in "$1" -pubout -outform DER | python3 -c 'import base64,sys; print(base64.b64encode(sys.stdin.buffer.read()).decode())'; }

RS=$(spki rs256.pem) ES256=$(spki es256.pem) ES384=$(spki es384.pem) ED=$(spki ed25519.pem) HS=$(cat hs256.key) \
python3 - <<'PY' > jwks.json
import base64, json, os

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def der(buf, pos=0):
    """Returns (tag, content, next_pos) of the DER element at pos."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    return tag, buf[pos:pos + length], pos + length

def spki_key_bits(spki):
    _, seq, _ = der(spki)              # SubjectPublicKeyInfo
    _, _, after_alg = der(seq)          # AlgorithmIdentifier
    tag, bits, _ = der(seq, after_alg)  # BIT STRING
    assert tag == 0x03 and bits[0] == 0
    return bits[1:]

def uint(b):
    return b.lstrip(b"\x00") or b"\x00"

def rsa(spki):
    _, seq, _ = der(spki_key_bits(spki))
    _, n, nxt = der(seq)
    _, e, _ = der(seq, nxt)
    return {"kty": "RSA", "n": b64u(uint(n)), "e": b64u(uint(e))}

def ec(spki, crv, size):
    point = spki_key_bits(spki)
    assert point[0] == 4 and len(point) == 1 + 2 * size
    return {"kty": "EC", "crv": crv, "x": b64u(point[1:1 + size]), "y": b64u(point[1 + size:])}

def spki(name):
    return base64.b64decode(os.environ[name])

keys = [
    dict(rsa(spki("RS")), kid="demo-rs256", alg="RS256", use="sig"),
    dict(ec(spki("ES256"), "P-256", 32), kid="demo-es256", alg="ES256", use="sig"),
    dict(ec(spki("ES384"), "P-384", 48), kid="demo-es384", alg="ES384", use="sig"),
    dict({"kty": "OKP", "crv": "Ed25519", "x": b64u(spki_key_bits(spki("ED")))}, kid="demo-ed25519", alg="EdDSA", use="sig"),
    {"kty": "oct", "k": os.environ["HS"], "kid": "demo-hs256", "alg": "HS256", "use": "sig"},
]
print(json.dumps({"keys": keys}, indent=2))
PY
echo "wrote rs256.pem es256.pem es384.pem ed25519.pem hs256.key jwks.json (DEMO keys only)"
