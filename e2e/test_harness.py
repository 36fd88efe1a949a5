"""Self-tests of the harness itself (no Wasm module needed): Envoy launcher, echo upstream,
JWKS server and token helpers. If these fail, the other failures are not the filter's."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

import jwt
import pytest

from harness import tokens
from harness.checks import echoed
from harness.envoy import EnvoyStartError
from harness.jwks_server import JwksServer

pytestmark = pytest.mark.own_envoy


def _fetch(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_plain_envoy_proxies_to_echo(envoy_factory, echo):
    e = envoy_factory.make(None, with_wasm=False)
    body = os.urandom(3000)
    r = e.request("POST", "/some/path?q=1", [("X-A", "1"), ("X-Dup", "a"), ("X-Dup", "b")], body)
    seen = echoed(r)
    assert seen["method"] == "POST"
    assert seen["path"] == "/some/path?q=1"
    assert seen["headers"]["x-a"] == "1"
    dup = seen["headers"]["x-dup"]
    assert dup == ["a", "b"] or dup == "a,b"
    assert base64.b64decode(seen["body_b64"]) == body
    assert "x-request-id" in seen["headers"]
    stats = e.stats()
    assert any(k.startswith("http.ingress.") for k in stats)
    assert e.stat("http.ingress.downstream_rq_total") >= 1
    assert e.stat("downstream_rq_total") >= 1  # suffix match
    assert "starting main dispatch loop" in e.log_text()


def test_echo_reports_raw_target(envoy_factory):
    e = envoy_factory.make(None, with_wasm=False, normalize_path=False, merge_slashes=False,
                           escaped_slashes_action="KEEP_UNCHANGED")
    for target in ("//a/../b", "/a%2Fb", "/a\\b", "/%61?x=../y"):
        assert echoed(e.get(target))["path"] == target


def test_envoy_start_failure_is_reported_not_hung(envoy_factory):
    e = envoy_factory.make(None, with_wasm=False, start=False,
                           extra_hcm={"no_such_field_for_the_test": 1})
    with pytest.raises(EnvoyStartError) as ei:
        e.start(timeout=20)
    assert e.returncode not in (None, 0)
    assert "no_such_field_for_the_test" in ei.value.envoy.log_text()


def test_jwks_server_modes():
    k = tokens.generate_key("ES256")
    k2 = tokens.generate_key("ES256")
    with JwksServer(tokens.jwks(k)) as srv:
        st, body = _fetch(srv.jwks_url)
        assert st == 200 and json.loads(body)["keys"][0]["kid"] == k.kid
        st, body = _fetch(srv.discovery_url)
        assert st == 200 and json.loads(body)["jwks_uri"] == srv.jwks_url
        srv.serve(tokens.jwks(k2))
        assert json.loads(_fetch(srv.jwks_url)[1])["keys"][0]["kid"] == k2.kid
        srv.fail()
        assert _fetch(srv.jwks_url)[0] == 500
        srv.garbage()
        st, body = _fetch(srv.jwks_url)
        assert st == 200 and not body.startswith(b"{")
        srv.empty()
        assert json.loads(_fetch(srv.jwks_url)[1]) == {"keys": []}
        srv.hang(2)
        with pytest.raises(OSError):
            _fetch(srv.jwks_url, timeout=0.5)
        srv.serve()
        port = srv.port
        srv.stop()
        with pytest.raises(OSError):
            _fetch(srv.jwks_url, timeout=1)
        srv.start()
        assert srv.port == port
        assert _fetch(srv.jwks_url)[0] == 200
        assert srv.count() >= 7
        assert srv.count("/.well-known/openid-configuration") == 1


@pytest.mark.parametrize("alg", tokens.ALL_ALGS)
def test_tokens_verify_with_pyjwt(alg, keys):
    key = keys[alg]
    c = tokens.claims("https://iss", "api")
    tok = tokens.mint(alg, key, c)
    assert jwt.get_unverified_header(tok)["kid"] == key.kid
    jwk = jwt.PyJWK(key.jwk)
    assert jwt.decode(tok, jwk.key, algorithms=[alg], audience="api")["sub"] == "user-1"
    for bad in (tokens.tamper_signature(tok), tokens.tamper_payload(tok)):
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(bad, jwk.key, algorithms=[alg], audience="api")
    raw = tokens.sign_raw(alg, key, {"alg": alg, "kid": key.kid}, c)
    assert jwt.decode(raw, jwk.key, algorithms=[alg], audience="api")["iss"] == "https://iss"


def test_hostile_token_shapes(keys):
    c = tokens.claims("https://iss", "api")
    assert tokens.alg_none(c).endswith(".")
    assert len(tokens.jwe_shaped().split(".")) == 5
    assert "=" in tokens.padded("RS256", keys["RS256"], c)
    assert len(tokens.oversized("ES256", keys["ES256"], c)) > 8192
    confused = tokens.hs256_with_public_key(keys["RS256"], c)
    assert jwt.get_unverified_header(confused) == {"alg": "HS256", "typ": "JWT", "kid": keys["RS256"].kid}
    crit = tokens.with_header("ES256", keys["ES256"], c, crit=["x-ext"], **{"x-ext": 1})
    assert json.loads(tokens.b64url_decode(crit.split(".")[0]))["crit"] == ["x-ext"]
