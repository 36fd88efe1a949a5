"""Observability: one JSON log line per denied request at the configured level, never the
token; the version line at VM start; stats visible in Prometheus format."""

from __future__ import annotations

import json
import time

import pytest

from harness import tokens
from harness.checks import problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"


@pytest.fixture(scope="module")
def key():
    return tokens.generate_key("ES256", "obs-es256")


def policy(key, **extra) -> dict:
    p = {
        "providers": [{"name": "demo", "issuer": ISS, "jwks": {"inline": tokens.jwks(key)}}],
        "routes": [{"name": "items", "match": {"prefix": "/items"}, "providers": ["demo"]}],
    }
    p.update(extra)
    return p


def deny_lines(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        start = line.find('{"apiguard":"deny"')
        if start >= 0:
            out.append(json.loads(line[start:]))
    return out


def wait_for(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_deny_line_names_route_reason_request_id_and_never_the_token(envoy_factory, key):
    e = envoy_factory.make(policy(key))
    good = tokens.mint("ES256", key, tokens.claims(ISS, sub="alice"))
    bad = tokens.tamper_signature(good)
    resp = e.get("/items/1", headers={"authorization": f"Bearer {bad}", "x-request-id": "obs-req-1"})
    problem(resp, 401, "bad_signature")
    assert wait_for(lambda: any(d.get("request_id") == "obs-req-1" for d in deny_lines(e.log_text())))
    line = next(d for d in deny_lines(e.log_text()) if d.get("request_id") == "obs-req-1")
    assert line == {
        "apiguard": "deny",
        "status": 401,
        "reason": "bad_signature",
        "route": "items",
        "rule": None,
        "principal": None,
        "request_id": "obs-req-1",
    }
    log = e.log_text()
    for secret in (bad, good, bad.split(".")[2], good.split(".")[1]):
        assert secret not in log


def test_deny_log_can_be_turned_off(envoy_factory, key):
    e = envoy_factory.make(policy(key, deny_log="off"))
    problem(e.get("/items/1", headers={"x-request-id": "obs-off"}), 401, "missing_credentials")
    time.sleep(1.0)
    assert not [d for d in deny_lines(e.log_text()) if d.get("request_id") == "obs-off"]


def test_version_logged_and_prometheus_stats(envoy_factory, key):
    e = envoy_factory.make(policy(key))
    assert "apiguard 0.1.0 (git " in e.log_text()
    problem(e.get("/items/1"), 401, "missing_credentials")
    import urllib.request

    text = urllib.request.urlopen(e.admin_url + "/stats/prometheus", timeout=5).read().decode()
    assert "apiguard_denied_missing_credentials" in text
