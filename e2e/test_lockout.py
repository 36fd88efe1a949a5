"""Lockout after authentication failures (`count: auth_failures`), through the real Envoy
(two workers): bad tokens from one client address lock that address out (429
`locked_out`, Retry-After) even for a valid token; a missing token does not count; another
client, and the same user's valid token from another address, are unaffected; the lock
lifts once the bucket refills. Tokens are minted with PyJWT (harness/tokens.py); the
attacker's are signed with a key the policy does not trust, or tampered."""

from __future__ import annotations

import time

import pytest

from harness import tokens
from harness.checks import bearer, echoed, problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"
AUD = "api"
# 20 failures allowed; one more try every 2 s after that.
REFILL_MS = 2000


@pytest.fixture(scope="module")
def envoy(module_envoy_factory, keys):
    policy = {
        "providers": [{"name": "main", "issuer": ISS, "audiences": [AUD],
                       "jwks": {"inline": tokens.jwks(keys["HS256"])}}],
        "limits": [{"name": "stuffing", "count": "auth_failures", "capacity": 20,
                    "refill": {"tokens": 1, "period_ms": REFILL_MS},
                    "key": [{"client_ip": {"trusted_hops": 1}}]}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "providers": ["main"],
                    "limits": ["stuffing"]}],
    }
    return module_envoy_factory.make(policy)


def _from(ip: str, token: str | None = None) -> dict:
    h = {"x-forwarded-for": ip}
    if token:
        h.update(bearer(token))
    return h


def test_bad_tokens_lock_the_client_out_until_refill(envoy, keys, other_keys):
    good = tokens.mint("HS256", keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    forged = tokens.mint("HS256", other_keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    attacker, victim_elsewhere, other_client = "198.51.100.66", "198.51.100.10", "198.51.100.20"
    # Missing credentials are not failures: they never lock anyone out.
    for _ in range(25):
        problem(envoy.get("/items", _from(attacker)), 401, "missing_credentials")
    for _ in range(20):
        r = envoy.get("/items", _from(attacker, forged))
        assert r.status == 401, r
        assert r.header("x-echo") is None
    # Locked: the attacker's address is refused before any credential is looked at,
    # even with alice's valid token.
    for token in (forged, good, None):
        r = envoy.get("/items", _from(attacker, token))
        problem(r, 429, "locked_out")
        assert 1 <= int(r.header("retry-after")) <= 2, r
    # Another client, and alice's valid token from another address: unaffected.
    echoed(envoy.get("/items", _from(victim_elsewhere, good)))
    r = envoy.get("/items", _from(other_client, forged))
    assert r.status == 401 and r.json()["reason"] != "locked_out", r
    # The lock lifts after one refill step.
    time.sleep(REFILL_MS / 1000 + 0.5)
    echoed(envoy.get("/items", _from(attacker, good)))
    # The valid request did not spend the regained token: one more failure is allowed,
    # then the address is locked again.
    assert envoy.get("/items", _from(attacker, forged)).status == 401
    problem(envoy.get("/items", _from(attacker, good)), 429, "locked_out")
