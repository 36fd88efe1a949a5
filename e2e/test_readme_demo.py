"""README.md's `make run` table, row by row, against the demo policy on a real Envoy.

A new user's first run must show what README.md says. These tests mint tokens with the
demo's private keys (envoy/demo/*.pem, PyJWT), as scripts/run-demo.sh does with the CLI:
the reader `demo-user` (items:read), the writer `demo-writer` (items:read items:write).
So they need their own Envoy with envoy/demo/policy.yaml, not a target somebody else
started (test_target.py, which never uses private keys): they are skipped in target mode.
"""

from __future__ import annotations

import importlib.util
import pathlib
import time

import pytest
import yaml

from harness import tokens
from harness.checks import bearer, problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

REPO = pathlib.Path(__file__).resolve().parents[1]

README = (REPO / "README.md").read_text()
DEMO_ISS, DEMO_AUD = "https://issuer.demo.apiguard", "api.demo"


def readme_row(request: str) -> str:
    """The answer column of README's table row for `request` (asserts the row exists)."""
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == request:
            return cells[1]
    raise AssertionError(f"README.md has no row {request!r}")


def demo_key(alg: str, kid: str, pem: str) -> tokens.Key:
    from cryptography.hazmat.primitives import serialization

    priv = serialization.load_pem_private_key((REPO / "envoy" / "demo" / pem).read_bytes(), password=None)
    return tokens.Key(alg, kid, priv, priv.public_key(), tokens.public_jwk(alg, kid, priv.public_key()))


@pytest.fixture(scope="module")
def demo(module_envoy_factory):
    policy = yaml.safe_load((REPO / "envoy" / "demo" / "policy.yaml").read_text())
    return module_envoy_factory.make(policy), policy


@pytest.fixture(scope="module")
def demo_tokens():
    rs, es = demo_key("RS256", "demo-rs256", "rs256.pem"), demo_key("ES256", "demo-es256", "es256.pem")
    return {
        "read": tokens.mint("RS256", rs, tokens.claims(DEMO_ISS, DEMO_AUD, sub="demo-user", scope="items:read", ttl=3600)),
        "write": tokens.mint("ES256", es, tokens.claims(DEMO_ISS, DEMO_AUD, sub="demo-writer",
                                                       scope="items:read items:write", ttl=3600)),
        "expired": tokens.mint("RS256", rs, tokens.claims(DEMO_ISS, DEMO_AUD, sub="demo-user", scope="items:read",
                                                         ttl=-600)),
    }


def test_readme_401_without_a_token_names_the_demo_realm(demo):
    e, policy = demo
    answer = readme_row("`GET /items/42` without a token")
    resp = e.get("/items/42")
    problem(resp, 401, "missing_credentials")
    www = resp.header("www-authenticate")
    assert www == f'Bearer realm="{policy["realm"]}"', www
    assert f"`WWW-Authenticate: {www}`" in answer, answer


def test_readme_reader_token_and_scopes(demo, demo_tokens):
    e, _ = demo
    assert readme_row("`GET /items/42` with an RS256 token holding `items:read`") == "200"
    resp = e.get("/items/42", bearer(demo_tokens["read"]))
    assert resp.status == 200 and resp.header("x-echo") == "1", resp
    assert resp.json()["headers"]["x-apiguard-sub"] == "demo-user"

    answer = readme_row("`POST /items` with that token")
    resp = e.request("POST", "/items", {**bearer(demo_tokens["read"]), "content-type": "application/json"},
                     b'{"name":"x"}')
    problem(resp, 403, "insufficient_scope")
    assert 'error="insufficient_scope", scope="items:write"' in resp.header("www-authenticate")
    assert 'error="insufficient_scope", scope="items:write"' in answer


def test_readme_expired_token(demo, demo_tokens):
    e, _ = demo
    assert 'error="invalid_token"' in readme_row("expired token")
    resp = e.get("/items/42", bearer(demo_tokens["expired"]))
    problem(resp, 401, "expired")
    assert 'error="invalid_token"' in resp.header("www-authenticate")


def test_readme_mass_assignment_refused(demo, demo_tokens):
    e, _ = demo
    assert "`additionalProperties` at `/admin`" in readme_row('`POST /items` with `{"name":"x","admin":true}`')
    resp = e.request("POST", "/items", {**bearer(demo_tokens["write"]), "content-type": "application/json"},
                     b'{"name":"x","admin":true}')
    body = problem(resp, 400, "invalid_body")
    assert any(err.get("pointer") == "/admin" and "additionalProperties" in err.get("rule", "")
               for err in body["errors"]), body


def test_readme_api_key(demo):
    e, _ = demo
    assert readme_row("`GET /items` with `x-api-key: demo-partner-key`").startswith("200")
    resp = e.get("/items", {"x-api-key": "demo-partner-key"})
    assert resp.status == 200 and resp.header("x-echo") == "1", resp
    assert "x-api-key" not in resp.json()["headers"], "the API key reached the upstream"


def test_readme_429_after_20_quick_requests(demo, demo_tokens):
    """README: 25 quick GET /items with the reader's token give 20 x 200, then 429 (the demo
    bucket holds 20 and refills 20 a minute, so a curl loop sees it; it used to refill 10/s)."""
    e, policy = demo
    answer = readme_row("25 quick `GET /items` with the reader's token")
    assert answer.startswith("20 × 200, then 429"), answer
    limit = next(lim for lim in policy["limits"] if lim["name"] == "per-client")
    assert limit["capacity"] == 20
    # The reader's bucket is fresh: no other test spends `demo-user` on a limited route.
    start = time.monotonic()
    answers = [e.get("/items", bearer(demo_tokens["read"])) for _ in range(25)]
    elapsed = time.monotonic() - start
    statuses = [r.status for r in answers]
    assert statuses[:20] == [200] * 20, statuses
    # A loaded machine may take longer than a curl loop: one token comes back every 3 s.
    refilled = int(elapsed * limit["refill"]["tokens"] / limit["refill"]["period_seconds"])
    assert statuses[20:].count(429) >= 5 - refilled and 429 in statuses, (statuses, elapsed)
    limited = next(r for r in answers if r.status == 429)
    problem(limited, 429, "rate_limited")
    for h in ("retry-after", "ratelimit", "ratelimit-policy"):
        assert limited.header(h), (h, limited)
    assert 1 <= int(limited.header("retry-after")) <= 3, limited
    assert answers[0].header("ratelimit") and answers[0].header("ratelimit-policy"), answers[0]


@pytest.fixture(scope="module")
def demo_global(module_envoy_factory, tmp_path_factory):
    """`make run-global`: the demo policy with envoy/demo/global.yaml, Redis and apiguard-rls
    with envoy/demo/rls.yaml, reached through the `ratelimit` cluster of envoy/envoy.yaml."""
    from harness.rls import Redis, Rls, grpc_cluster

    d = tmp_path_factory.mktemp("demo-rls")
    redis = Redis(d).start()
    rls = Rls(d, (REPO / "envoy" / "demo" / "rls.yaml").read_text(), redis).start()
    # The policy `make run-global` renders: the demo's plus envoy/demo/global.yaml.
    spec = importlib.util.spec_from_file_location("envoy_render", REPO / "envoy" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    policy = render.demo_policy(with_global=True)
    yield module_envoy_factory.make(policy, clusters=[grpc_cluster("ratelimit", rls.port)])
    rls.stop()
    redis.stop()


def test_readme_global_limit_429_after_10(demo_global):
    """README: 12 quick GET /quota under `make run-global` give 10 x 200, then 429."""
    answer = readme_row("12 quick `GET /quota` under `make run-global`")
    assert answer.startswith("10 × 200, then 429"), answer
    # The fixed minute window must not roll over mid-run (the service's windows).
    if time.time() % 60 > 50:
        time.sleep(60 - time.time() % 60 + 0.5)
    answers = [demo_global.get("/quota") for _ in range(12)]
    assert [r.status for r in answers] == [200] * 10 + [429] * 2, answers
    assert answers[0].header("x-echo") == "1", answers[0]
    assert answers[0].header("ratelimit-policy") == '"global-quota";q=10;w=60', answers[0]
    limited = answers[-1]
    problem(limited, 429, "rate_limited")
    assert 1 <= int(limited.header("retry-after")) <= 60, limited
    assert limited.header("ratelimit").startswith('"global-quota";r=0;'), limited

