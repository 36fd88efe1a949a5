"""Issue 12, findings 1-4: the attacks of the security review, sent through real Envoy.

Each test is the attack itself and asserts what the echo upstream received (method, path,
headers), not only the status:

1. a `client_ip` limit against a client that writes a new `X-Forwarded-For` per request,
   through an Envoy without `use_remote_address` (which then reports the header's last
   entry as the peer) and with it; trusted hops pick the entry the trusted proxy wrote;
2. a rejected credential beside an accepted one (forged `alg: none` token + valid API key,
   forged or expired header token + valid cookie token) never reaches the upstream, and
   tokens are not forwarded by default;
3. identity headers spelled with underscores (`x_apiguard_sub`) never reach the upstream,
   on an Envoy that lets underscores through (`headers_with_underscores_action: ALLOW`);
   the shipped Envoy config refuses them at the edge;
4. method-override headers are refused (400 `method_override`), or, under
   `method_override: honor`, routed and authorized as the overridden method;
   `X-Original-URL` / `X-Rewrite-URL` never reach the upstream.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import uuid
from collections import Counter

import pytest
import yaml

from harness import tokens
from harness.checks import echoed, problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

REPO = pathlib.Path(__file__).resolve().parents[1]
ISS = "https://idp.review.example"
AUD = "api"
API_KEY = "pk_review_" + "7f" * 16
SUB_HEADER = "x-apiguard-sub"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _claims(**kw) -> dict:
    return tokens.claims(ISS, AUD, **kw)


def _tag() -> dict[str, str]:
    return {"x-test-id": uuid.uuid4().hex}


def _reached(echo, tag: dict[str, str]) -> list[dict]:
    """What the upstream received of the requests carrying this tag."""
    want = tag["x-test-id"]
    return [r for r in echo.requests if r["headers"].get("x-test-id") == want]


def _same_header(name: str, canonical: str) -> bool:
    return name.lower().replace("_", "-") == canonical


def _policy(keys, *, method_override: str | None = None) -> dict:
    jwks = tokens.jwks(keys["ES256"], keys["RS256"])
    p = {
        "providers": [
            # forward: true on purpose: a rejected credential must go whatever it says.
            {"name": "main", "issuer": ISS, "audiences": [AUD], "jwks": {"inline": jwks},
             "forward": True,
             "from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "session"}],
             "claims_to_headers": [{"claim": "sub", "header": SUB_HEADER}],
             "forward_payload_header": "x-jwt-payload"},
            # `forward` left to its default.
            {"name": "dflt", "issuer": ISS + "/dflt", "audiences": [AUD], "jwks": {"inline": jwks}},
        ],
        "api_keys": [{"name": "partners", "forward": True, "from": [{"header": "x-api-key"}],
                      "keys": [{"client_id": "partner-a", "sha256": _sha(API_KEY),
                                "scopes": ["items:read"]}]}],
        "limits": [
            {"name": "peer", "capacity": 5, "refill": {"tokens": 1, "period_seconds": 3600},
             "key": [{"client_ip": {"trusted_hops": 0}}]},
            {"name": "hops1", "capacity": 3, "refill": {"tokens": 1, "period_seconds": 3600},
             "key": [{"client_ip": {"trusted_hops": 1}}]},
            {"name": "hops2", "capacity": 3, "refill": {"tokens": 1, "period_seconds": 3600},
             "key": [{"client_ip": {"trusted_hops": 2}}]},
        ],
        "routes": [
            {"name": "peer", "match": {"prefix": "/f1/peer"}, "public": True, "limits": ["peer"]},
            {"name": "hops1", "match": {"prefix": "/f1/hops1"}, "public": True, "limits": ["hops1"]},
            {"name": "hops2", "match": {"prefix": "/f1/hops2"}, "public": True, "limits": ["hops2"]},
            {"name": "any", "match": {"prefix": "/f2/any"}, "providers": ["main", "partners"]},
            {"name": "dflt", "match": {"prefix": "/f2/dflt"}, "providers": ["dflt"]},
            {"name": "public", "match": {"prefix": "/public"}, "public": True},
            {"name": "items-write", "match": {"path": "/items", "methods": ["POST"]},
             "providers": ["main"], "scopes": {"all_of": ["items:write"]}},
            {"name": "items-read", "match": {"path": "/items/{id}", "methods": ["GET"]},
             "providers": ["main"], "scopes": {"all_of": ["items:read"]}},
            {"name": "items-delete", "match": {"path": "/items/{id}", "methods": ["DELETE"]},
             "providers": ["main"], "scopes": {"all_of": ["items:delete"]}},
        ],
    }
    if method_override:
        p["method_override"] = method_override
    return p


@pytest.fixture(scope="module")
def envoys(module_envoy_factory, keys):
    """[0]: no `use_remote_address`, underscores allowed (Envoy's defaults);
    [1]: `use_remote_address: true`; [2]: `method_override: honor`."""
    pol = _policy(keys)
    return module_envoy_factory.make_many([
        (pol, {"extra_hcm": {"common_http_protocol_options": {
            "headers_with_underscores_action": "ALLOW"}}}),
        (pol, {"extra_hcm": {"use_remote_address": True}}),
        (_policy(keys, method_override="honor"), {}),
    ])


@pytest.fixture(scope="module")
def plain(envoys):
    return envoys[0]


@pytest.fixture(scope="module")
def edge(envoys):
    return envoys[1]


@pytest.fixture(scope="module")
def honoring(envoys):
    return envoys[2]


def _statuses(envoy, path: str, xffs: list[str]) -> list[int]:
    return [envoy.get(path, {"x-forwarded-for": x}).status for x in xffs]


# --- 1. client_ip keys ---------------------------------------------------------------------

def test_f1_new_xff_per_request_without_use_remote_address_meets_the_limit(plain, echo):
    """The attack of the review: 30 requests, each with a new X-Forwarded-For, against a
    limit of 5 keyed on the client IP with trusted_hops 0."""
    tag = _tag()
    statuses = [plain.get("/f1/peer", {"x-forwarded-for": f"203.0.113.{i}", **tag}).status
                for i in range(30)]
    assert Counter(statuses) == {200: 5, 429: 25}, statuses
    assert len(_reached(echo, tag)) == 5
    # Envoy reported the spoofed address as the peer: apiguard noticed and said so
    assert plain.stat("apiguard.client_ip.peer_from_header") >= 30


def test_f1_new_xff_per_request_with_use_remote_address_meets_the_limit(edge, echo):
    tag = _tag()
    statuses = [edge.get("/f1/peer", {"x-forwarded-for": f"198.51.100.{i}", **tag}).status
                for i in range(30)]
    assert Counter(statuses) == {200: 5, 429: 25}, statuses
    assert len(_reached(echo, tag)) == 5


def test_f1_trusted_hops_use_the_entry_the_trusted_proxy_wrote(plain, edge):
    """Without use_remote_address nothing is appended: 1 hop is the right-most entry.
    With it, Envoy appends the peer, which counts as one hop: 2 hops is the entry left of
    it. The client-written part left of the trusted entry changes every time."""
    for envoy, path in ((plain, "/f1/hops1"), (edge, "/f1/hops2")):
        spoofs = [f"10.9.{i}.{i}" for i in range(5)]
        got = _statuses(envoy, path, [f"{s}, 192.0.2.77" for s in spoofs])
        assert got == [200, 200, 200, 429, 429], (path, got)
        # the proxy saw another client: another bucket
        assert _statuses(envoy, path, ["10.9.9.9, 192.0.2.78"]) == [200], path


# --- 2. rejected credentials -------------------------------------------------------------

def test_f2_forged_token_beside_a_valid_api_key_is_not_forwarded(plain, echo):
    forged = tokens.alg_none(_claims(sub="admin"))
    tag = _tag()
    seen = echoed(plain.get("/f2/any", {"Authorization": f"Bearer {forged}",
                                        "x-api-key": API_KEY, **tag}))
    assert "authorization" not in seen["headers"], seen
    assert forged not in json.dumps(seen)
    assert seen["headers"]["x-api-key"] == API_KEY  # the accepted key, forward: true
    assert SUB_HEADER not in seen["headers"]
    assert len(_reached(echo, tag)) == 1


@pytest.mark.parametrize("kind", ["forged", "expired", "other_key"])
def test_f2_rejected_header_token_beside_a_valid_cookie_token_is_not_forwarded(
        plain, keys, other_keys, kind):
    bad = {
        "forged": lambda: tokens.alg_none(_claims(sub="admin")),
        "expired": lambda: tokens.mint("ES256", keys["ES256"], _claims(sub="admin", ttl=-3600)),
        "other_key": lambda: tokens.mint("ES256", other_keys["ES256"], _claims(sub="admin")),
    }[kind]()
    good = tokens.mint("RS256", keys["RS256"], _claims(sub="alice"))
    seen = echoed(plain.get("/f2/any", {"Authorization": f"Bearer {bad}",
                                        "Cookie": f"theme=dark; session={good}"}))
    assert "authorization" not in seen["headers"], seen
    assert bad not in json.dumps(seen)
    assert seen["headers"][SUB_HEADER] == "alice"
    assert f"session={good}" in seen["headers"]["cookie"]  # accepted, forward: true


def test_f2_rejected_cookie_token_beside_a_valid_header_token_is_not_forwarded(plain, keys):
    good = tokens.mint("ES256", keys["ES256"], _claims(sub="alice"))
    forged = tokens.alg_none(_claims(sub="admin"))
    seen = echoed(plain.get("/f2/any", {"Authorization": f"Bearer {good}",
                                        "Cookie": f"theme=dark; session={forged}; lang=en"}))
    assert seen["headers"]["authorization"] == f"Bearer {good}"
    assert forged not in json.dumps(seen)
    cookie = seen["headers"]["cookie"]
    assert "theme=dark" in cookie and "lang=en" in cookie and "session" not in cookie


def test_f2_api_key_beside_a_valid_token_is_not_forwarded(plain, keys):
    good = tokens.mint("ES256", keys["ES256"], _claims(sub="alice"))
    seen = echoed(plain.get("/f2/any", {"Authorization": f"Bearer {good}",
                                        "x-api-key": "wrong-key"}))
    assert "x-api-key" not in seen["headers"], seen
    assert seen["headers"][SUB_HEADER] == "alice"


def test_f2_tokens_are_not_forwarded_by_default(plain, keys):
    good = tokens.mint("ES256", keys["ES256"], tokens.claims(ISS + "/dflt", AUD, sub="bob"))
    seen = echoed(plain.get("/f2/dflt", {"Authorization": f"Bearer {good}"}))
    assert "authorization" not in seen["headers"], seen
    assert good not in json.dumps(seen)


# --- 3. owned headers in other spellings --------------------------------------------------

SMUGGLED = [
    ("x_apiguard_sub", "admin"), ("X_APIGUARD_SUB", "admin"), ("x-apiguard_sub", "admin"),
    ("x_jwt_payload", "eyJzdWIiOiJhZG1pbiJ9"), ("x_api_key", "smuggled-key"),
]


def _assert_no_smuggled(seen: dict, allowed_values: dict[str, str],
                        names=(SUB_HEADER, "x-jwt-payload", "x-api-key")) -> None:
    for name, value in seen["headers"].items():
        for canonical in names:
            if _same_header(name, canonical):
                assert name == canonical and value == allowed_values.get(canonical), (name, value)


def test_f3_underscore_identity_headers_never_reach_the_upstream(plain, keys):
    # public route: apiguard sets nothing, and no spelling of what it sets survives
    # (credentials are not apiguard's business on a public route: docs/configuration.md)
    seen = echoed(plain.request("GET", "/public/x", SMUGGLED))
    _assert_no_smuggled(seen, {}, names=(SUB_HEADER, "x-jwt-payload"))
    # authenticated route: only what apiguard itself set
    good = tokens.mint("ES256", keys["ES256"], _claims(sub="alice"))
    seen = echoed(plain.request("GET", "/f2/any", SMUGGLED + [("Authorization", f"Bearer {good}")]))
    assert seen["headers"][SUB_HEADER] == "alice"
    _assert_no_smuggled(seen, {SUB_HEADER: "alice",
                               "x-jwt-payload": seen["headers"]["x-jwt-payload"]})
    assert seen["headers"]["x-jwt-payload"] != "eyJzdWIiOiJhZG1pbiJ9"


def test_f3_shipped_envoy_config_refuses_underscores_and_uses_the_remote_address():
    config = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())
    hcms = [f["typed_config"] for lst in config["static_resources"]["listeners"]
            for chain in lst["filter_chains"] for f in chain["filters"]
            if f["name"] == "envoy.filters.network.http_connection_manager"]
    assert hcms
    for hcm in hcms:
        assert hcm.get("use_remote_address") is True, hcm
        opts = hcm.get("common_http_protocol_options", {})
        assert opts.get("headers_with_underscores_action") == "REJECT_REQUEST", hcm


def test_f3_an_edge_envoy_refuses_underscore_headers(envoy_factory, keys, echo):
    e = envoy_factory.make(_policy(keys), extra_hcm={
        "use_remote_address": True,
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}})
    tag = _tag()
    r = e.request("GET", "/public/x", [("x_apiguard_sub", "admin"), *tag.items()])
    assert r.status == 400 and r.header("x-echo") is None, r
    assert _reached(echo, tag) == []


# --- 4. method and URL overrides ----------------------------------------------------------

@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method",
                                    "X-Method-Override", "x_http_method_override"])
def test_f4_method_override_is_refused(plain, keys, echo, header):
    """A token with items:write may POST; the override would make the upstream DELETE."""
    tok = tokens.mint("ES256", keys["ES256"], _claims(scope="items:write"))
    tag = _tag()
    r = plain.request("POST", "/items", [("Authorization", f"Bearer {tok}"),
                                         (header, "DELETE"), *tag.items()], body=b"{}")
    problem(r, 400, "method_override")
    assert _reached(echo, tag) == []


@pytest.mark.parametrize("header", ["X-Original-URL", "X-Rewrite-URL", "x_original_url"])
def test_f4_url_override_never_reaches_the_upstream(plain, header):
    seen = echoed(plain.request("GET", "/public/x", [(header, "/admin/delete-all")]))
    assert seen["path"] == "/public/x"
    for name in seen["headers"]:
        assert not _same_header(name, "x-original-url") and not _same_header(name, "x-rewrite-url"), seen


def test_f4_honored_override_is_authorized_as_the_overridden_method(honoring, keys, echo):
    write = tokens.mint("ES256", keys["ES256"], _claims(scope="items:write items:read"))
    auth = ("Authorization", f"Bearer {write}")
    # DELETE needs items:delete: the POST carrying it is refused as the DELETE would be
    tag = _tag()
    r = honoring.request("POST", "/items/42", [auth, ("X-HTTP-Method-Override", "DELETE"),
                                               *tag.items()])
    problem(r, 403, "insufficient_scope")
    assert _reached(echo, tag) == []
    # a method no route allows: 403 no_route, as when sent directly
    tag = _tag()
    r = honoring.request("POST", "/items/42", [auth, ("X-HTTP-Method", "PATCH"), *tag.items()])
    problem(r, 403, "no_route")
    assert _reached(echo, tag) == []
    # GET /items/{id} is allowed with items:read: the upstream gets the POST and its header
    seen = echoed(honoring.request("POST", "/items/42", [auth, ("X-Method-Override", "get")]))
    assert seen["method"] == "POST" and seen["headers"]["x-method-override"] == "get"
    # only a POST may carry an override; conflicting overrides are refused
    problem(honoring.request("PUT", "/items/42", [auth, ("X-HTTP-Method-Override", "GET")]),
            400, "method_override")
    problem(honoring.request("POST", "/items/42", [auth, ("X-HTTP-Method-Override", "GET"),
                                                   ("X-HTTP-Method", "DELETE")]),
            400, "method_override")
    delete = tokens.mint("ES256", keys["ES256"], _claims(scope="items:delete"))
    seen = echoed(honoring.request("POST", "/items/42", [("Authorization", f"Bearer {delete}"),
                                                         ("X-HTTP-Method-Override", "DELETE")]))
    assert seen["headers"]["x-http-method-override"] == "DELETE"
