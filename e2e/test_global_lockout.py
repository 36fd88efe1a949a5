"""Global lockout (`count: auth_failures` with a `global` block) through real processes: two
Envoys (two workers each) with apiguard, one apiguard-rls, one Redis.

Bad tokens from one client address, spread over both Envoys, lock that address out on
both (429 `locked_out`, Retry-After from the service's window) even for a valid token;
another client, and the same user's valid token from another address, are unaffected; the
lock lifts when the service's window resets. The upstream (echo) is asked what reached it:
nothing from the locked address, every request of the others. Tokens are minted with
PyJWT (harness/tokens.py); the attacker's are signed with a key the policy does not trust.
Faults: the service stopped -> `on_error: deny` (the default for lockouts) answers 503
to every request of the route, valid or not, and recovers once it is back."""

from __future__ import annotations

import time
import uuid

import pytest

from harness import tokens
from harness.checks import bearer, echoed, problem
from harness.rls import grpc_cluster, redis_and_rls

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"
AUD = "api"
FAILURES = 20

RLS_CONFIG = f"""\
domain: apiguard
descriptors:
  - key: limit
    value: stuffing
    descriptors:
      - key: client_ip
        rate_limit: {{unit: minute, requests_per_unit: {FAILURES}}}
"""


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    yield from redis_and_rls(tmp_path_factory.mktemp("rls-lockout"), RLS_CONFIG)


@pytest.fixture(scope="module")
def envoys(services, echo, keys, tmp_path_factory):
    from conftest import EnvoyFactory

    _, rls = services
    policy = {
        "providers": [{"name": "main", "issuer": ISS, "audiences": [AUD],
                       "jwks": {"inline": tokens.jwks(keys["HS256"])}}],
        "limits": [{"name": "stuffing", "count": "auth_failures",
                    "key": [{"client_ip": {"trusted_hops": 1}}],
                    "global": {"cluster": "rls", "domain": "apiguard", "timeout_ms": 5000}}],
        "routes": [{"name": "api", "match": {"prefix": "/"}, "providers": ["main"],
                    "limits": ["stuffing"]}],
    }
    f = EnvoyFactory(echo, tmp_path_factory)
    spec = {"clusters": [grpc_cluster("rls", rls.port)], "concurrency": 2}
    pair = f.make_many([(policy, dict(spec)), (policy, dict(spec))])
    yield pair
    f.close()


def _from(ip: str, probe: str, token: str | None = None) -> dict:
    h = {"x-forwarded-for": ip, "x-probe": probe}
    if token:
        h.update(bearer(token))
    return h


def _refused_credential(r) -> None:
    assert r.status == 401 and r.header("x-echo") is None, r
    assert r.json()["reason"] not in ("missing_credentials", "locked_out"), r


def _xff(record: dict) -> str:
    """The client address the request came with (Envoy may append its peer)."""
    return str(record["headers"].get("x-forwarded-for", "")).split(",")[0].strip()


def _reached(echo, probe: str) -> list[dict]:
    return [r for r in echo.requests if r["headers"].get("x-probe") == probe]


def test_bad_tokens_lock_the_address_on_every_envoy_until_the_window_resets(
        envoys, echo, keys, other_keys):
    # The minute window must not roll over between the failures and the lock checks.
    if time.time() % 60 > 35:
        time.sleep(60 - time.time() % 60 + 0.5)
    good = tokens.mint("HS256", keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    forged = tokens.mint("HS256", other_keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    run = uuid.uuid4().hex[:8]
    # Addresses unique to this run: the service's counters outlive a test run.
    attacker, elsewhere, other = (f"198.51.{n}.{int(run[:2], 16)}" for n in (100, 101, 102))
    probe = f"lock-{run}"
    # Missing credentials are not failures (they are only checked against the lock).
    for i in range(5):
        problem(envoys[i % 2].get("/items", _from(attacker, probe)), 401, "missing_credentials")
    for i in range(FAILURES):
        _refused_credential(envoys[i % 2].get("/items", _from(attacker, probe, forged)))
    # Locked on both Envoys: refused before the credential counts, even alice's valid one.
    for e in envoys:
        for token in (forged, good, None):
            r = e.get("/items", _from(attacker, probe, token))
            problem(r, 429, "locked_out")
            assert 1 <= int(r.header("retry-after")) <= 60, r
    # Another client, and alice's valid token from another address: unaffected.
    for e in envoys:
        seen = echoed(e.get("/items", _from(elsewhere, probe, good)))
        assert seen["path"] == "/items" and _xff(seen) == elsewhere
        _refused_credential(e.get("/items", _from(other, probe, forged)))
    # The upstream saw only the requests from the other address, none from the attacker.
    reached = _reached(echo, probe)
    assert [_xff(r) for r in reached] == [elsewhere, elsewhere], reached
    for e in envoys:
        assert e.running, e.log_tail()
    # The lock lifts when the service's window resets (Retry-After says when).
    wait = int(envoys[0].get("/items", _from(attacker, probe, good)).header("retry-after"))
    time.sleep(wait + 1)
    seen = echoed(envoys[1].get("/items", _from(attacker, probe, good)))
    assert _xff(seen) == attacker
    assert envoys[0].stat("wasmcustom.apiguard.denied.locked_out") > 0


def test_service_stopped_fails_closed_for_valid_and_invalid_alike(envoys, services, keys,
                                                                  other_keys):
    _, rls = services
    good = tokens.mint("HS256", keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    forged = tokens.mint("HS256", other_keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    probe = f"down-{uuid.uuid4().hex[:8]}"
    rls.stop()
    try:
        for e in envoys:
            for token in (good, forged):
                t0 = time.monotonic()
                r = e.get("/items", _from("203.0.113.7", probe, token), timeout=30)
                problem(r, 503, "ratelimit_unavailable")
                assert r.header("retry-after") == "1", r
                assert time.monotonic() - t0 < 20
            assert e.running, e.log_tail()
    finally:
        rls.start()
    deadline = time.monotonic() + 30
    while True:
        statuses = [e.get("/items", _from("203.0.113.7", probe, good)).status for e in envoys]
        if statuses == [200, 200]:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.3)
