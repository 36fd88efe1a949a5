"""Rate limiting through the real Envoy: exactness across 4 workers, refill, key isolation
(JWT `sub`, client address behind trusted hops, route), per-method cost, the draft
`RateLimit` / `RateLimit-Policy` / `Retry-After` headers, and bounded memory under a key
spray. One Envoy (`--concurrency 4`) for the module; the spray gets its own Envoy so its
RSS is measured alone."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import pytest

from harness import tokens
from harness.envoy import static_cluster
from harness.checks import bearer, echoed, problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"
AUD = "api"
HOUR = {"tokens": 1, "period_seconds": 3600}


def _limit(name, capacity, key, **kw):
    d = {"name": name, "capacity": capacity, "key": key}
    d.update(kw)
    return d


CONST = [{"constant": "all"}]


@pytest.fixture(scope="module")
def policy(keys):
    return {
        "ratelimit_headers_on_allow": True,
        "providers": [{
            "name": "main", "issuer": ISS, "audiences": [AUD],
            "jwks": {"inline": tokens.jwks(keys["HS256"])},
        }],
        "limits": [
            _limit("burst50", 50, CONST),                                    # no refill
            _limit("refill", 10, CONST, refill={"tokens": 5, "period_ms": 5000}),
            _limit("per_sub", 3, [{"claim": "sub"}], refill=HOUR),
            _limit("route_a", 2, CONST),
            _limit("route_b", 4, CONST),
            _limit("per_route", 2, [{"route": True}]),
            _limit("hops", 3, [{"client_ip": {"trusted_hops": 1}}], refill=HOUR),
            _limit("hdr", 3, CONST, refill=HOUR),
            _limit("quota", 2, CONST),                                       # no refill
            _limit("cost", 10, CONST, cost={"default": 1, "methods": {"POST": 5}}),
            _limit("tight", 2, [{"header": "x-tenant"}], refill=HOUR),
            _limit("loose", 100, [{"header": "x-tenant"}], refill=HOUR),
            # far from empty for its first 172 takes: workers lease tokens (ratelimit::lease)
            _limit("leased", 300, CONST, refill=HOUR),
        ],
        "routes": [
            {"name": "exact", "match": {"prefix": "/exact"}, "public": True, "limits": ["burst50"]},
            {"name": "refill", "match": {"prefix": "/refill"}, "public": True, "limits": ["refill"]},
            {"name": "jwt", "match": {"prefix": "/jwt"}, "providers": ["main"], "limits": ["per_sub"]},
            {"name": "ra", "match": {"prefix": "/ra"}, "public": True, "limits": ["route_a"]},
            {"name": "rb", "match": {"prefix": "/rb"}, "public": True, "limits": ["route_b"]},
            {"name": "rc", "match": {"prefix": "/rc"}, "public": True, "limits": ["per_route"]},
            {"name": "rd", "match": {"prefix": "/rd"}, "public": True, "limits": ["per_route"]},
            {"name": "hops", "match": {"prefix": "/hops"}, "public": True, "limits": ["hops"]},
            {"name": "hdr", "match": {"prefix": "/hdr"}, "public": True, "limits": ["hdr"]},
            {"name": "quota", "match": {"prefix": "/quota"}, "public": True, "limits": ["quota"]},
            {"name": "cost", "match": {"prefix": "/cost"}, "public": True, "limits": ["cost"]},
            {"name": "two", "match": {"prefix": "/two"}, "public": True, "limits": ["loose", "tight"]},
            {"name": "open", "match": {"prefix": "/open"}, "public": True},
            {"name": "leased", "match": {"prefix": "/leased"}, "public": True, "limits": ["leased"]},
        ],
    }


def pooled_upstream(echo, max_connections: int = 8) -> dict:
    """Extra Envoy kwargs routing everything to the echo upstream through at most
    `max_connections` connections (requests beyond that queue in Envoy). The echo server
    listens with a backlog of 5: 50 simultaneous new upstream connections overflow it and
    Envoy answers 503 after its 1 s connect timeout, which is not what these tests probe."""
    cluster = static_cluster("pooled", echo.port, timeout="5s")
    cluster["circuit_breakers"] = {"thresholds": [{
        "max_connections": max_connections, "max_pending_requests": 10_000,
        "max_requests": 10_000}]}
    return {
        "clusters": [cluster],
        "extra_hcm": {"route_config": {
            "name": "local",
            "virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"},
                            "route": {"cluster": "pooled", "timeout": "30s"}}],
            }],
        }},
    }


@pytest.fixture(scope="module")
def envoy(module_envoy_factory, policy, echo):
    return module_envoy_factory.make(policy, concurrency=4, **pooled_upstream(echo))


# --- helpers ----------------------------------------------------------------------------

class Conn:
    """A keep-alive HTTP/1.1 connection; reconnects if Envoy closed it."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.port = port
        self.timeout = timeout
        self.c: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.c.connect()

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            if self.c is None:
                self.connect()
            try:
                self.c.request(method, path, headers=headers or {})
                r = self.c.getresponse()
                body = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if r.will_close:
                    self.close()
                return r.status, hdrs, body
            except (ConnectionError, http.client.HTTPException):
                # only a connection that was reused may have been closed under us
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None


def concurrent_statuses(port: int, method: str, path: str, n: int, workers: int,
                        headers_for=lambda i: None) -> list[int]:
    """Sends n requests from `workers` threads, each on its own keep-alive connection
    opened before a barrier, so the requests race. Returns every status."""
    conns = [Conn(port) for _ in range(workers)]
    for c in conns:
        c.connect()
    barrier = threading.Barrier(workers)
    out: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(w: int) -> None:
        mine = []
        try:
            barrier.wait()
            for i in range(w, n, workers):
                mine.append(conns[w].request(method, path, headers_for(i))[0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            conns[w].close()
            with lock:
                out.extend(mine)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(out) == n
    return out


def limited(resp, name: str) -> dict:
    body = problem(resp, 429, "rate_limited")
    assert body.get("limit") == name, resp
    ra = resp.header("retry-after")
    assert ra is not None and ra.isdigit() and int(ra) >= 1, resp
    return body


# --- 1. exactness -----------------------------------------------------------------------

def test_exactly_capacity_admitted_under_concurrency(envoy, echo):
    before = echo.count
    statuses = concurrent_statuses(envoy.port, "GET", "/exact/x", n=200, workers=50)
    c = Counter(statuses)
    assert c == {200: 50, 429: 150}, c
    assert echo.count - before == 50
    assert envoy.stat("apiguard.ratelimit.burst50.allowed") == 50
    assert envoy.stat("apiguard.ratelimit.burst50.limited") == 150
    # no refill: it stays exhausted
    limited(envoy.get("/exact/x"), "burst50")


def test_leased_tokens_never_admit_more_than_capacity(envoy, echo):
    """capacity 300: while more than 128 are left, each of the 4 workers takes small
    leases (2-4 tokens) and spends them without touching shared data. The attack is a
    concurrent burst hoping leases over-admit across workers: the upstream sees at most
    300, and at most 4 records x 4 tokens fewer (leases still unspent at the end)."""
    before = echo.count
    statuses = concurrent_statuses(envoy.port, "GET", "/leased/x", n=400, workers=40)
    c = Counter(statuses)
    assert set(c) <= {200, 429}, c
    assert 300 - 16 <= c[200] <= 300, c
    assert echo.count - before == c[200]
    assert envoy.stat("apiguard.ratelimit.leased.allowed") == c[200]


def test_refill_admits_exactly_what_time_earned(envoy):
    """capacity 10, 5 tokens per 5000 ms (one per second). A burst of 20 gets exactly 10;
    5.5 s later 5.5 tokens were earned, so exactly 5 of 10 sequential requests pass (the
    half token is the timing margin: +-500 ms).

    The bucket counts from its last admitted take, somewhere inside the burst, so what
    time earned lies between (end of burst -> start of the sequence) and (start of burst
    -> end of the sequence), both measured here: on a machine slow enough to stretch the
    burst past the margin, the admitted count must still lie within those bounds."""
    start = time.monotonic()
    statuses = concurrent_statuses(envoy.port, "GET", "/refill", n=20, workers=20)
    burst_end = time.monotonic()
    assert Counter(statuses) == {200: 10, 429: 10}, Counter(statuses)
    time.sleep(5.5)
    conn = Conn(envoy.port)
    try:
        seq_start = time.monotonic()
        seq = [conn.request("GET", "/refill")[0] for _ in range(10)]
        seq_end = time.monotonic()
    finally:
        conn.close()
    earned_at_least = int(seq_start - burst_end)  # one token per second
    earned_at_most = int(seq_end - start)
    admitted = seq.count(200)
    if earned_at_least == earned_at_most:  # the usual case: 5, exactly
        assert seq == [200] * admitted + [429] * (10 - admitted), seq
    assert earned_at_least <= admitted <= earned_at_most, (seq, earned_at_least, earned_at_most)
    assert earned_at_least >= 5, (seq, earned_at_least)
    r = envoy.get("/refill")
    limited(r, "refill")
    # one token per second: the next one is at most a second away
    assert r.header("retry-after") == "1", r
    assert r.header("ratelimit-policy") == '"refill";q=10;w=10', r


# --- 2. key isolation: JWT sub ----------------------------------------------------------

def test_jwt_sub_buckets_are_isolated(envoy, keys):
    tok_a = tokens.mint("HS256", keys["HS256"], tokens.claims(ISS, AUD, sub="alice"))
    tok_b = tokens.mint("HS256", keys["HS256"], tokens.claims(ISS, AUD, sub="bob"))
    for _ in range(3):
        echoed(envoy.get("/jwt/x", bearer(tok_a)))
    limited(envoy.get("/jwt/x", bearer(tok_a)), "per_sub")
    # a fresh token for alice is still alice
    tok_a2 = tokens.mint("HS256", keys["HS256"], tokens.claims(ISS, AUD, sub="alice", ttl=200))
    limited(envoy.get("/jwt/x", bearer(tok_a2)), "per_sub")
    r = envoy.get("/jwt/x", bearer(tok_b))
    echoed(r)
    assert r.header("ratelimit") == '"per_sub";r=2;t=3600', r
    # the limit runs after authentication: no token is a 401, not a take from a bucket
    assert envoy.get("/jwt/x").status == 401


# --- 3. per-route limits ----------------------------------------------------------------

def test_routes_have_their_own_limits(envoy):
    a = [envoy.get("/ra/x").status for _ in range(4)]
    b = [envoy.get("/rb/x").status for _ in range(6)]
    assert a == [200, 200, 429, 429], a
    assert b == [200] * 4 + [429] * 2, b
    limited(envoy.get("/ra"), "route_a")
    limited(envoy.get("/rb"), "route_b")
    echoed(envoy.get("/open/x"))  # a route without limits


def test_route_key_part_separates_routes_sharing_a_limit(envoy):
    c = [envoy.get("/rc").status for _ in range(3)]
    d = [envoy.get("/rd").status for _ in range(3)]
    assert c == [200, 200, 429], c
    assert d == [200, 200, 429], d


def test_tightest_of_two_limits_decides(envoy):
    h = {"x-tenant": "t1"}
    r = envoy.get("/two", h)
    echoed(r)
    # headers on allow describe the tightest limit (fewest remaining)
    assert r.header("ratelimit") == '"tight";r=1;t=3600', r
    assert r.header("ratelimit-policy") == '"tight";q=2;w=7200', r
    echoed(envoy.get("/two", h))
    limited(envoy.get("/two", h), "tight")
    echoed(envoy.get("/two", {"x-tenant": "t2"}))


# --- 4. trusted hops --------------------------------------------------------------------

def test_trusted_hops_keys_on_the_address_the_proxy_saw(envoy):
    def get(xff):
        return envoy.get("/hops", {"x-forwarded-for": xff})

    # the spoofable left part differs every time: all one bucket (1.1.1.1)
    spoofs = ["9.9.9.9", "8.8.8.8, 7.7.7.7", "garbage", "1.1.1.1"]
    st = [get(f"{s}, 1.1.1.1").status for s in spoofs]
    assert st == [200, 200, 200, 429], st
    limited(get("6.6.6.6, 1.1.1.1"), "hops")
    limited(get("1.1.1.1"), "hops")
    # the address the trusted proxy appended is what counts
    echoed(get("1.1.1.1, 2.2.2.2"))
    echoed(get("5.5.5.5, 2.2.2.2"))
    # no header: the peer (127.0.0.1), its own bucket
    echoed(envoy.get("/hops"))
    # a right-most entry that is not an address falls back to the peer, never to a
    # client-written entry
    for _ in range(2):
        echoed(get("3.3.3.3, not-an-ip"))
    limited(get("4.4.4.4, not-an-ip"), "hops")
    limited(envoy.get("/hops"), "hops")


# --- 5. headers and body ----------------------------------------------------------------

def test_headers_and_problem_body(envoy):
    """capacity 3, one token per hour: w = 3 h; every take and denial happens within a
    second, so the rounded-up seconds are exact."""
    seen = []
    for expect_r, expect_t in ((2, 3600), (1, 7200), (0, 10800)):
        r = envoy.get("/hdr/x")
        echoed(r)
        seen.append(r)
        assert r.header("ratelimit-policy") == '"hdr";q=3;w=10800', r
        assert r.header("ratelimit") == f'"hdr";r={expect_r};t={expect_t}', r
        assert r.header("retry-after") is None, r
    r = envoy.get("/hdr/x")
    body = limited(r, "hdr")
    assert r.header("retry-after") == "3600", r
    assert r.header("ratelimit-policy") == '"hdr";q=3;w=10800', r
    assert r.header("ratelimit") == '"hdr";r=0;t=10800', r
    assert body["status"] == 429
    assert body["type"] == "urn:apiguard:problem:rate_limited"
    assert "hdr" in body["detail"]
    assert len(r.header_all("ratelimit")) == 1 and len(r.header_all("retry-after")) == 1


def test_headers_of_a_quota_that_never_refills(envoy):
    r = envoy.get("/quota")
    echoed(r)
    # no refill: no window
    assert r.header("ratelimit-policy") == '"quota";q=2', r
    echoed(envoy.get("/quota"))
    r = envoy.get("/quota")
    limited(r, "quota")
    # never refills: the hint is the capped full window of a day
    assert r.header("retry-after") == "86400", r
    assert r.header("ratelimit") == '"quota";r=0;t=86400', r


# --- 7. cost per method -----------------------------------------------------------------

def test_post_costs_five(envoy):
    post = [envoy.request("POST", "/cost", body=b"{}").status for _ in range(3)]
    assert post == [200, 200, 429], post
    limited(envoy.get("/cost"), "cost")  # 0 left: even a GET (cost 1) is refused


# --- 6. bounded memory ------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


SPRAY = 10_000
BUCKETS = 1000


def _xff(i: int) -> dict:
    return {"x-forwarded-for": f"203.0.113.7, 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"}


def test_key_spray_stays_bounded(envoy_factory, echo):
    """capacity 1, no refill, max_buckets 1000, share on a full table: a slot once spent
    never frees, so across 10,000 distinct addresses at most 1000 requests can ever be
    admitted (one per slot). An unbounded table would admit all 10,000. A second limit
    with `on_table_full: deny` must report table_full."""
    pol = {
        "limits": [
            _limit("spray", 1, [{"client_ip": {"trusted_hops": 1}}], max_buckets=BUCKETS),
            _limit("spray_deny", 1, [{"client_ip": {"trusted_hops": 1}}], max_buckets=100,
                   on_table_full="deny"),
        ],
        "routes": [
            {"name": "s", "match": {"prefix": "/s"}, "public": True, "limits": ["spray"]},
            {"name": "d", "match": {"prefix": "/d"}, "public": True, "limits": ["spray_deny"]},
        ],
    }
    e = envoy_factory.make(pol, concurrency=4, **pooled_upstream(echo))
    pid = e.proc.pid
    # warm-up: the same amount of traffic on ONE key (127.0.0.1), so connection buffers,
    # allocator arenas and the VMs settle; what the spray adds on top is per-key state.
    warm = concurrent_statuses(e.port, "GET", "/s", n=SPRAY, workers=8)
    assert set(warm) <= {200, 429}, Counter(warm)
    rss0 = _rss_kb(pid)
    t0 = time.monotonic()
    statuses = concurrent_statuses(e.port, "GET", "/s", n=SPRAY, workers=8,
                                   headers_for=lambda i: _xff(i + 1))
    took = time.monotonic() - t0
    rss1 = _rss_kb(pid)
    c = Counter(statuses)
    assert set(c) <= {200, 429}, c
    admitted = c[200]
    # warm-up's single key (the peer) took one slot too
    assert 900 <= admitted <= BUCKETS, (admitted, c)
    shared = e.stat("apiguard.ratelimit.spray.shared_slot")
    assert shared > 0
    assert e.stat("apiguard.ratelimit.spray.allowed") == admitted + 1
    assert e.stat("apiguard.ratelimit.spray.limited") == SPRAY - admitted + (SPRAY - 1)
    assert e.stat("apiguard.ratelimit.spray.store_failure") == 0

    # deny mode: 1000 distinct addresses on a 100-slot table
    deny = concurrent_statuses(e.port, "GET", "/d", n=1000, workers=8,
                               headers_for=lambda i: _xff(100_000 + i))
    cd = Counter(deny)
    assert set(cd) <= {200, 429} and cd[200] <= 100, cd
    assert e.stat("apiguard.ratelimit.spray_deny.table_full") > 0

    # Envoy still serves, and answers a new key correctly
    assert e.running
    r = e.get("/d", {"x-forwarded-for": "192.0.2.1, 10.200.0.1"})
    limited(r, "spray_deny")
    delta_kb = rss1 - rss0
    print(f"\nspray: {SPRAY} keys in {took:.1f}s, admitted {admitted}, shared_slot {shared}, "
          f"RSS {rss0} kB -> {rss1} kB (delta {delta_kb} kB), deny-mode {dict(cd)}")
    # 1000 slots of ~33-byte values under ~40-byte keys are ~0.2 MB of shared data even
    # with map overhead; 30 MB leaves room for allocator noise on 4 workers.
    assert delta_kb < 30 * 1024, (rss0, rss1)
