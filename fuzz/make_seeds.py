#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/: starting corpora (valid demo tokens minted at the fuzz clock
apiguard_fuzz::NOW_SECS, requests, policies, bodies, bucket steps). Run from the repo root with
the e2e venv (PyJWT, PyYAML): .venv/bin/python fuzz/make_seeds.py"""
import json, os, struct, base64, yaml, jwt
NOW = 1_800_000_000
ISS = "https://issuer.demo.apiguard"
D = "envoy/demo"
S = "fuzz/seeds"
for t in ["token","policy","path","body","bucket","engine"]:
    os.makedirs(f"{S}/{t}", exist_ok=True)
def w(t, name, data):
    if isinstance(data, str): data = data.encode()
    open(f"{S}/{t}/{name}", "wb").write(data)
hs = base64.urlsafe_b64decode(open(f"{D}/hs256.key").read().strip() + "==")
keys = {
  "RS256": (open(f"{D}/rs256.pem").read(), "demo-rs256"),
  "ES256": (open(f"{D}/es256.pem").read(), "demo-es256"),
  "ES384": (open(f"{D}/es384.pem").read(), "demo-es384"),
  "EdDSA": (open(f"{D}/ed25519.pem").read(), "demo-ed25519"),
  "HS256": (hs, "demo-hs256"),
}
claims = {"iss": ISS, "aud": "api.demo", "sub": "fuzz-user", "iat": NOW - 10, "exp": NOW + 3600,
          "scope": "items:read items:write items:admin"}
toks = {}
for alg, (k, kid) in keys.items():
    tok = jwt.encode(claims, k, algorithm=alg, headers={"kid": kid})
    toks[alg] = tok
    w("token", f"valid-{alg}", tok)
w("token", "nokid-ES256", jwt.encode(dict(claims, aud=["x", "api.demo"]), keys["ES256"][0], algorithm="ES256"))
w("token", "alg-none", jwt.encode(claims, None, algorithm="none"))
w("token", "crit", jwt.encode(claims, hs, algorithm="HS256", headers={"kid": "demo-hs256", "crit": ["b64"], "b64": False}))
w("token", "dup-keys", base64.urlsafe_b64encode(b'{"alg":"HS256","alg":"none"}').rstrip(b"=").decode() + "." +
  base64.urlsafe_b64encode(b'{"iss":"a","iss":"' + ISS.encode() + b'"}').rstrip(b"=").decode() + ".AAAA")
# engine: method\npath\nheaders...\n\nbody
r = toks["RS256"]; e = toks["ES256"]
w("engine", "get-items", f"GET\n/items?limit=5\nauthorization: Bearer {r}\nx-request-id: abc")
w("engine", "get-item", f"GET\n/items/42\nauthorization: Bearer {e}")
w("engine", "delete-item", f"DELETE\n/items/42\nauthorization: bearer {toks['EdDSA']}")
w("engine", "post-item", f"POST\n/items\nauthorization: Bearer {toks['HS256']}\ncontent-type: application/json\ncontent-length: 24\n\n{{\"name\":\"x\",\"price\":1.5}}")
w("engine", "post-bad", f"POST\n/items\nauthorization: Bearer {r}\ncontent-type: application/json\n\n{{\"name\":\"x\",\"admin\":true}}")
w("engine", "apikey", "GET\n/items\nx-api-key: demo-partner-key")
w("engine", "health", "GET\n/healthz")
w("engine", "traversal", f"GET\n/healthz/../items\nauthorization: Bearer {r}")
w("engine", "dup-auth", f"GET\n/items\nauthorization: Bearer {r}\nauthorization: Bearer {e}")
# policy: the demo policy as JSON, plus a remote-JWKS one
pol = yaml.safe_load(open(f"{D}/policy.yaml"))
w("policy", "demo.json", json.dumps(pol))
w("policy", "remote.json", json.dumps({"providers": [{"name": "r", "issuer": "https://i", "jwks": {"remote": {"cluster": "idp", "uri": "https://i/jwks", "discovery": True}}}],
   "api_keys": [{"name": "k", "keys": [{"client_id": "c", "sha256": "00"*32}]}],
   "request_limits": {"max_url_bytes": 100, "max_headers": 10, "max_header_bytes": 100},
   "routes": [{"name": "a", "match": {"prefix": "/"}, "providers": ["r", "k"], "rules": [{"claim": "sub", "equals": "x"}]}]}))
w("policy", "empty.json", "{}")
# path
for i, p in enumerate(["/items/42", "/items/42/tags/x?y=1", "/public/../admin", "/public/%2e%2e/admin", "//admin", "/ADMIN",
          "/admin;x=1", "/admin%2F", "/t1/admin", "/public/", "/healthz", "/%61dmin", "/items/{id}\n/items/7"]):
    w("path", f"p{i}", p)
# body
w("body", "ok", '{"name":"widget","price":3.5}')
w("body", "nested", '{"a":[1,2,{"b":[null,true,"x",1e308]}],"c":{"d":{"e":[]}}}')
w("body", "dup", '{"name":"a","name":"b"}')
w("body", "deep", "[" * 70 + "]" * 70)
w("body", "bad-utf8", b'{"name":"\xff\xfe"}')
# bucket: capacity, refill, period, start, then (now, cost)*
def q(*xs): return b"".join(struct.pack("<Q", x) for x in xs)
w("bucket", "simple", q(10, 5, 1000, 1000, 1000, 1, 1500, 10, 2000, 3, 900, 1, 5000, 11))
w("bucket", "huge", q(2**64-1, 2**64-1, 1, 0, 2**64-1, 2**64-1, 0, 1))
w("bucket", "zero", q(0, 0, 0, 5, 5, 0, 6, 1))
