"""Smoke tests that also run against an Envoy somebody else started.

With APIGUARD_E2E_TARGET (and APIGUARD_E2E_ADMIN) set, they probe that Envoy, which is
expected to run the demo policy (envoy/demo/policy.yaml) or one with the same shape: a
public GET route (APIGUARD_E2E_PUBLIC_PATH, default /healthz) and a protected one
(APIGUARD_E2E_PROTECTED_PATH, default /items/42). Otherwise a local Envoy runs the demo
policy. Only tokens that no key of the target can verify are used: the suite never needs
the target's private keys.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from harness import tokens
from harness.checks import bearer, problem

pytestmark = pytest.mark.wasm

REPO = pathlib.Path(__file__).resolve().parents[1]
PUBLIC = os.environ.get("APIGUARD_E2E_PUBLIC_PATH", "/healthz")
PROTECTED = os.environ.get("APIGUARD_E2E_PROTECTED_PATH", "/items/42")


@pytest.fixture(scope="module")
def target(module_envoy_factory, request):
    if os.environ.get("APIGUARD_E2E_TARGET"):
        return request.getfixturevalue("external_envoy")
    import yaml

    policy = yaml.safe_load((REPO / "envoy" / "demo" / "policy.yaml").read_text())
    return module_envoy_factory.make(policy)


def challenge_ok(resp, error=None):
    www = resp.header("www-authenticate") or ""
    assert www.startswith('Bearer realm="'), resp
    if error:
        assert f'error="{error}"' in www, resp
    else:
        assert "error=" not in www, resp


def test_public_route(target):
    resp = target.get(PUBLIC)
    assert resp.status == 200, resp


def test_protected_route_needs_a_token(target):
    resp = target.get(PROTECTED)
    problem(resp, 401, "missing_credentials")
    challenge_ok(resp)


def test_alg_none_refused(target):
    tok = tokens.alg_none(tokens.claims("https://issuer.demo.apiguard", "api.demo", scope="items:read"))
    resp = target.get(PROTECTED, bearer(tok))
    problem(resp, 401, "alg_none")
    challenge_ok(resp, "invalid_token")
    assert tok not in resp.text


def test_untrusted_key_refused(target, other_keys):
    tok = tokens.mint("ES256", other_keys["ES256"],
                      tokens.claims("https://issuer.demo.apiguard", "api.demo", scope="items:read"))
    resp = target.get(PROTECTED, bearer(tok))
    assert resp.status in (401, 503), resp
    assert resp.header("x-echo") is None
    if resp.status == 401:
        challenge_ok(resp, "invalid_token")


def test_malformed_refused(target):
    problem(target.get(PROTECTED, bearer("a.b")), 401, "malformed")


def test_traversal_to_protected_route(target):
    first = PUBLIC.strip("/").split("/")[0]
    resp = target.get(f"/{first}/..{PROTECTED}")
    assert resp.header("x-echo") is None, resp
    assert resp.status in (400, 401), resp


def test_stats_exposed(target):
    if not target.admin_url:
        pytest.skip("no APIGUARD_E2E_ADMIN")
    target.get(PROTECTED)
    assert target.stat("apiguard.denied.missing_credentials") >= 1
    assert target.stat_names("apiguard.denied.missing_credentials")
