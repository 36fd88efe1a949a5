"""Remote JWKS through an Envoy cluster (`idp`) to the in-process JwksServer: loading,
rotation, failures with last-known-good keys, 503 before the first load, discovery, and one
fetch per refresh for the whole Envoy whatever the number of workers."""

from __future__ import annotations

import time

import pytest

from harness import tokens
from harness.checks import bearer, echoed, problem, wait_until
from harness.envoy import static_cluster
from harness.jwks_server import JwksServer

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy, pytest.mark.slow]

ISS = "https://idp.example"
AUD = "api"
PROVIDER = "idp"


def remote_policy(server: JwksServer, discovery: bool = False, **remote) -> dict:
    spec = {
        "cluster": "idp",
        "uri": server.discovery_url if discovery else server.jwks_url,
        "discovery": discovery,
        "refresh_seconds": 300,
        "retry_seconds": 1,
        "timeout_ms": 1000,
        "min_refetch_seconds": 1,
    }
    spec.update(remote)
    return {
        "providers": [{"name": PROVIDER, "issuer": ISS, "audiences": [AUD], "jwks": {"remote": spec}}],
        "routes": [
            {"name": "health", "match": {"path": "/healthz"}, "public": True},
            {"name": "api", "match": {"prefix": "/api"}, "providers": [PROVIDER]},
        ],
    }


@pytest.fixture(scope="module")
def ka():
    return tokens.generate_key("RS256", "key-a")


@pytest.fixture(scope="module")
def kb():
    return tokens.generate_key("ES256", "key-b")


@pytest.fixture(scope="module")
def kc():
    return tokens.generate_key("ES256", "key-c")


@pytest.fixture
def idp():
    srv = JwksServer(issuer=ISS)
    yield srv
    srv.stop()


@pytest.fixture
def start(envoy_factory, idp):
    def go(concurrency=2, discovery=False, **remote):
        return envoy_factory.make(remote_policy(idp, discovery, **remote),
                                  clusters=[static_cluster("idp", idp.port)],
                                  concurrency=concurrency)
    return go


def token(key: tokens.Key, **kw) -> str:
    return tokens.mint(key.alg, key, tokens.claims(ISS, AUD, **kw))


def status_of(envoy, tok) -> int:
    return envoy.get("/api/x", bearer(tok)).status


def wait_status(envoy, tok, status, timeout=15.0) -> int:
    got = wait_until(lambda: status_of(envoy, tok) == status, timeout=timeout, interval=0.1)
    return status if got else status_of(envoy, tok)


def unavailable(resp):
    problem(resp, 503, "jwks_unavailable")
    ra = resp.header("retry-after")
    assert ra is not None and ra.isdigit() and int(ra) >= 1, resp


# --- loading --------------------------------------------------------------------------------

def test_keys_loaded_after_first_fetch(idp, start, ka):
    idp.serve(tokens.jwks(ka))
    envoy = start()
    tok = token(ka)
    assert wait_status(envoy, tok, 200) == 200
    echoed(envoy.get("/api/x", bearer(tok)))
    assert idp.count() >= 1
    assert envoy.wait_stat(f"apiguard.jwks.{PROVIDER}.fetch_success", 1) >= 1
    assert envoy.stat(f"apiguard.jwks.{PROVIDER}.fetch_failure") == 0
    # once keys are loaded, bad or missing tokens are 401 again, not 503
    problem(envoy.get("/api/x"), 401, "missing_credentials")
    problem(envoy.get("/api/x", bearer(tokens.tamper_signature(tok))), 401, "bad_signature")
    # refresh 300 s: the start-up fetch is the only one, whatever the worker count
    time.sleep(1.0)
    assert idp.count() <= 2, idp.counts()


def test_idp_never_up_gives_503_with_retry_after(idp, start, ka):
    idp.stop()  # the port is known but nothing listens
    envoy = start()
    tok = token(ka)
    unavailable(envoy.get("/api/x", bearer(tok)))
    assert envoy.wait_stat(f"apiguard.jwks.{PROVIDER}.fetch_failure", 1) >= 1
    unavailable(envoy.get("/api/x", bearer(tok)))
    echoed(envoy.get("/healthz"))  # public routes do not need keys
    # the IdP comes up: keys load on the next retry
    idp.serve(tokens.jwks(ka))
    idp.start()
    assert wait_status(envoy, tok, 200, timeout=15) == 200
    assert envoy.stat("apiguard.denied.jwks_unavailable") >= 2


def test_bad_first_documents_give_503(idp, start, ka):
    """500, a body that is not JSON, and {"keys": []} all count as failed fetches; until a
    good document arrives the provider's requests get 503."""
    idp.fail()
    envoy = start(retry_seconds=1)
    tok = token(ka)
    failure = f"apiguard.jwks.{PROVIDER}.fetch_failure"
    for mode in ("fail", "garbage", "empty"):
        getattr(idp, mode)()
        n = envoy.stat(failure)
        assert envoy.wait_stat(failure, n + 1, timeout=15) >= n + 1, f"{mode}: no failure counted"
        unavailable(envoy.get("/api/x", bearer(tok)))
    assert envoy.stat(f"apiguard.jwks.{PROVIDER}.fetch_success") == 0
    idp.serve(tokens.jwks(ka))
    assert wait_status(envoy, tok, 200, timeout=15) == 200


# --- rotation ---------------------------------------------------------------------------------

def test_rotation_new_kid_triggers_early_refetch(idp, start, ka, kb, kc):
    idp.serve(tokens.jwks(ka))
    envoy = start(refresh_seconds=300, min_refetch_seconds=1)
    ta, tb = token(ka), token(kb)
    assert wait_status(envoy, ta, 200) == 200
    fetched = idp.count()

    # The IdP adds key B; a token with kid B is unknown at first and asks for a refetch.
    idp.serve(tokens.jwks(ka, kb))
    first = envoy.get("/api/x", bearer(tb))
    assert first.status in (200, 401), first
    if first.status == 401:
        assert first.json()["reason"] == "unknown_kid", first
    assert wait_status(envoy, tb, 200, timeout=15) == 200
    assert idp.count() > fetched
    # The old key is still published: still valid.
    echoed(envoy.get("/api/x", bearer(ta)))

    # The IdP drops key A. Tokens with kid A stay valid until Envoy learns of it; an
    # unknown kid (C) makes it refetch, after which A is unknown.
    idp.serve(tokens.jwks(kb))
    echoed(envoy.get("/api/x", bearer(ta)))
    time.sleep(1.1)  # min_refetch_seconds since the last early refetch
    tc = token(kc)
    resp = envoy.get("/api/x", bearer(tc))
    problem(resp, 401, "unknown_kid")

    def a_gone():
        r = envoy.get("/api/x", bearer(ta))
        return r.status == 401 and r.json().get("reason") == "unknown_kid"

    assert wait_until(a_gone, timeout=15), "key A still accepted after it was removed and a refetch"
    echoed(envoy.get("/api/x", bearer(tb)))


def test_unknown_kid_refetch_is_rate_limited(idp, start, ka, kc):
    idp.serve(tokens.jwks(ka))
    envoy = start(refresh_seconds=300, min_refetch_seconds=30)
    assert wait_status(envoy, token(ka), 200) == 200
    time.sleep(0.5)
    before = idp.count()
    tc = token(kc)
    for _ in range(30):
        problem(envoy.get("/api/x", bearer(tc)), 401, "unknown_kid")
    time.sleep(1.5)  # ticks are 250 ms: any requested refetch has happened by now
    assert idp.count() - before <= 1, idp.counts()


# --- failures after the keys were loaded -----------------------------------------------------

def test_last_good_keys_kept_through_failures(idp, start, ka):
    idp.serve(tokens.jwks(ka))
    envoy = start(refresh_seconds=1, retry_seconds=1, timeout_ms=500)
    tok = token(ka)
    assert wait_status(envoy, tok, 200) == 200
    failure = f"apiguard.jwks.{PROVIDER}.fetch_failure"
    success = f"apiguard.jwks.{PROVIDER}.fetch_success"

    def through(mode: str, switch):
        n = envoy.stat(failure)
        switch()
        got = envoy.wait_stat(failure, n + 1, timeout=15)
        assert got >= n + 1, f"{mode}: no failed fetch counted"
        resp = envoy.get("/api/x", bearer(tok))
        assert resp.status == 200, f"{mode}: last good keys lost: {resp}"

    through("500", idp.fail)
    through("garbage", idp.garbage)
    through("empty keys", idp.empty)
    through("hang past timeout_ms", lambda: idp.hang(2.0))
    through("server stopped", idp.stop)
    # back to normal
    n = envoy.stat(success)
    idp.serve()
    idp.start()
    assert envoy.wait_stat(success, n + 1, timeout=15) >= n + 1
    echoed(envoy.get("/api/x", bearer(tok)))


# --- discovery ----------------------------------------------------------------------------------

def test_discovery(idp, start, ka):
    idp.serve(tokens.jwks(ka))
    envoy = start(discovery=True)
    tok = token(ka)
    assert wait_status(envoy, tok, 200) == 200
    assert idp.count("/.well-known/openid-configuration") >= 1
    assert idp.count("/jwks.json") >= 1


# --- one fetch per refresh for the whole Envoy ---------------------------------------------------

def test_one_fetch_per_refresh_with_four_workers(idp, start, ka):
    idp.serve(tokens.jwks(ka))
    envoy = start(concurrency=4, refresh_seconds=2, retry_seconds=2)
    tok = token(ka)
    assert wait_status(envoy, tok, 200) == 200
    time.sleep(0.5)
    initial = idp.count()
    assert initial <= 2, f"start-up fetched {initial} times with 4 workers"
    idp.reset_counts()
    window = 7.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < window:
        # traffic on all workers meanwhile
        assert envoy.get("/api/x", bearer(tok)).status == 200
        time.sleep(0.1)
    fetches = idp.count()
    refreshes = int(window // 2)
    assert 2 <= fetches <= refreshes + 1, (
        f"{fetches} JWKS fetches in {window}s with refresh_seconds=2 and 4 workers "
        f"(expected about {refreshes}): {idp.times()}")
