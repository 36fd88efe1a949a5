"""Route matching and path safety through the real Envoy.

Three Envoys share one policy: `envoy` with the recommended HCM settings (normalize_path,
merge_slashes, REJECT_REQUEST on escaped slashes), `envoy_raw` with all of them off (the
filter must refuse ambiguous paths by itself), and `envoy_allow` (raw, `unmatched: allow`)."""

from __future__ import annotations

import pytest

from harness import tokens
from harness.checks import bearer, echoed, problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"
AUD = "api"
REALM = "shop"


def routes_policy(keys, unmatched="deny"):
    return {
        "realm": REALM,
        "unmatched": unmatched,
        "providers": [{
            "name": "main", "issuer": ISS, "audiences": [AUD],
            "jwks": {"inline": tokens.jwks(*keys.values())},
            "claims_to_headers": [{"claim": "sub", "header": "x-user"}],
        }],
        "routes": [
            {"name": "health", "match": {"path": "/healthz", "methods": ["GET"]}, "public": True},
            {"name": "public", "match": {"prefix": "/public"}, "public": True},
            {"name": "items-list", "match": {"path": "/items", "methods": ["GET"]},
             "providers": ["main"], "scopes": {"all_of": ["items:read"]}},
            {"name": "items-create", "match": {"path": "/items", "methods": ["POST"]},
             "providers": ["main"], "scopes": {"all_of": ["items:write"]}},
            {"name": "item-read", "match": {"path": "/items/{id}", "methods": ["GET", "HEAD"]},
             "providers": ["main"], "scopes": {"all_of": ["items:read"]}},
            {"name": "item-delete", "match": {"path": "/items/{id}", "methods": ["DELETE"]},
             "providers": ["main"], "scopes": {"all_of": ["items:read", "items:admin"]}},
            {"name": "org-user", "match": {"path": "/orgs/{org}/users/{id}"}, "providers": ["main"]},
            {"name": "admin", "match": {"prefix": "/admin"}, "providers": ["main"],
             "scopes": {"any_of": ["admin", "ops"]}},
            # first match wins, in both directions
            {"name": "docs-private", "match": {"path": "/docs/private"}, "providers": ["main"]},
            {"name": "docs", "match": {"prefix": "/docs"}, "public": True},
            {"name": "open", "match": {"prefix": "/open"}, "public": True},
            {"name": "open-secret", "match": {"path": "/open/secret"}, "providers": ["main"]},
        ],
    }


RAW = dict(normalize_path=False, merge_slashes=False, escaped_slashes_action="KEEP_UNCHANGED")


@pytest.fixture(scope="module")
def envoys(module_envoy_factory, keys):
    normal, raw, allow = module_envoy_factory.make_many([
        (routes_policy(keys), {}),
        (routes_policy(keys), RAW),
        (routes_policy(keys, unmatched="allow"), RAW),
    ])
    return {"normal": normal, "raw": raw, "allow": allow}


@pytest.fixture(scope="module")
def envoy(envoys):
    return envoys["normal"]


@pytest.fixture(scope="module")
def envoy_raw(envoys):
    return envoys["raw"]


@pytest.fixture(scope="module")
def envoy_allow(envoys):
    return envoys["allow"]


@pytest.fixture(scope="module")
def tok(keys):
    def make(scope=None, scp=None, sub="user-1"):
        extra = {}
        if scope is not None:
            extra["scope"] = scope
        if scp is not None:
            extra["scp"] = scp
        return tokens.mint("ES256", keys["ES256"], tokens.claims(ISS, AUD, sub=sub, **extra))
    return make


def no_route(resp):
    return problem(resp, 403, "no_route")


def missing(resp):
    problem(resp, 401, "missing_credentials")
    assert resp.header("www-authenticate") == f'Bearer realm="{REALM}"'


# --- matching -------------------------------------------------------------------------------

def test_exact_path(envoy):
    echoed(envoy.get("/healthz"))
    echoed(envoy.get("/healthz?verbose=1"))  # the query is not part of the match
    no_route(envoy.get("/healthz/"))
    no_route(envoy.get("/healthzx"))
    no_route(envoy.get("/health"))


def test_exact_path_methods(envoy):
    no_route(envoy.request("POST", "/healthz", body=b"x"))
    no_route(envoy.request("DELETE", "/healthz"))


def test_prefix_is_segment_aware(envoy):
    for p in ("/public", "/public/", "/public/a", "/public/a/b/c?x=1"):
        assert echoed(envoy.get(p))["path"] == p
    for p in ("/publicx", "/public-x", "/publi", "/xpublic"):
        no_route(envoy.get(p))


def test_template(envoy, tok):
    t = tok(scope="items:read")
    assert echoed(envoy.get("/items/42", bearer(t)))["path"] == "/items/42"
    assert echoed(envoy.get("/items/abc-def_1?x=y", bearer(t)))["path"] == "/items/abc-def_1?x=y"
    no_route(envoy.get("/items/42/extra", bearer(t)))
    no_route(envoy.get("/items/", bearer(t)))
    missing(envoy.get("/items/42"))


def test_template_two_params(envoy, tok):
    echoed(envoy.get("/orgs/o1/users/u2", bearer(tok())))
    missing(envoy.get("/orgs/o1/users/u2"))
    no_route(envoy.get("/orgs/o1/users", bearer(tok())))
    no_route(envoy.get("/orgs//users/u2", bearer(tok())))


def test_methods_pick_the_route(envoy, tok):
    read = tok(scope="items:read")
    echoed(envoy.get("/items", bearer(read)))
    resp = envoy.request("POST", "/items", bearer(read), b"{}")
    problem(resp, 403, "insufficient_scope")
    assert resp.header("www-authenticate") == (
        f'Bearer realm="{REALM}", error="insufficient_scope", scope="items:write"')
    echoed(envoy.request("POST", "/items", bearer(tok(scope="items:write")), b"{}"))
    no_route(envoy.request("PUT", "/items", bearer(read), b"{}"))
    resp = envoy.request("HEAD", "/items/1", bearer(read))
    assert resp.status == 200 and resp.header("x-echo") == "1"


def test_first_match_wins(envoy, tok):
    missing(envoy.get("/docs/private"))              # protected route listed before /docs
    echoed(envoy.get("/docs/private", bearer(tok())))
    echoed(envoy.get("/docs/public"))
    echoed(envoy.get("/docs"))
    echoed(envoy.get("/open/secret"))                # /open prefix is listed first: public


def test_unmatched_deny(envoy, tok):
    for p in ("/", "/nothing", "/nothing/here?x=1"):
        body = no_route(envoy.get(p))
        assert body["status"] == 403
    no_route(envoy.get("/nothing", bearer(tok(scope="admin"))))


def test_unmatched_allow(envoy_allow, tok):
    assert echoed(envoy_allow.get("/nothing/here?x=1"))["path"] == "/nothing/here?x=1"
    echoed(envoy_allow.request("POST", "/healthz", body=b"x"))  # method mismatch = unmatched
    # matched routes stay protected
    problem(envoy_allow.get("/admin"), 401, "missing_credentials")
    problem(envoy_allow.get("/items/1"), 401, "missing_credentials")
    problem(envoy_allow.get("/admin/x", bearer(tok(scope="items:read"))), 403, "insufficient_scope")


# --- scopes ---------------------------------------------------------------------------------

def test_scope_missing(envoy, tok):
    t = tok()
    resp = envoy.get("/items/1", bearer(t))
    body = problem(resp, 403, "insufficient_scope")
    assert resp.header("www-authenticate") == (
        f'Bearer realm="{REALM}", error="insufficient_scope", scope="items:read"')
    assert t not in resp.text


@pytest.mark.parametrize("scope,ok", [
    ("items:read", True),
    ("profile items:read email", True),
    ("items:readx", False),
    ("items:rea", False),
    ("ITEMS:READ", False),
    ("items:read,items:write", False),
])
def test_scope_string(envoy, tok, scope, ok):
    resp = envoy.get("/items/1", bearer(tok(scope=scope)))
    if ok:
        echoed(resp)
    else:
        problem(resp, 403, "insufficient_scope")


def test_scp_array(envoy, tok):
    echoed(envoy.get("/items/1", bearer(tok(scp=["profile", "items:read"]))))
    problem(envoy.get("/items/1", bearer(tok(scp=["profile"]))), 403, "insufficient_scope")


def test_all_of(envoy, tok):
    problem(envoy.request("DELETE", "/items/1", bearer(tok(scope="items:admin"))), 403, "insufficient_scope")
    echoed(envoy.request("DELETE", "/items/1", bearer(tok(scope="items:read items:admin"))))


def test_any_of(envoy, tok):
    echoed(envoy.get("/admin/x", bearer(tok(scope="ops"))))
    echoed(envoy.get("/admin", bearer(tok(scope="admin other"))))
    resp = envoy.get("/admin/x", bearer(tok(scope="items:read")))
    problem(resp, 403, "insufficient_scope")
    www = resp.header("www-authenticate")
    assert www.startswith(f'Bearer realm="{REALM}", error="insufficient_scope", scope="'), www


# --- path safety ----------------------------------------------------------------------------

def never_upstream(resp, path):
    assert resp.header("x-echo") is None, f"{path!r} reached the upstream without credentials: {resp}"
    assert resp.status in (400, 401, 403, 404), (path, resp)


# With Envoy's normalization on, these become /admin (or are refused by Envoy itself).
NORMALIZED_TO_ADMIN = [
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/..;/admin",
    "//admin",
    "/./admin",
    "/%61dmin",
    "/public\\..\\admin",
]


@pytest.mark.parametrize("path", NORMALIZED_TO_ADMIN)
def test_normalized_paths_still_protected(envoy, path):
    resp = envoy.get(path)
    never_upstream(resp, path)
    missing(resp)


@pytest.mark.parametrize("path", ["/admin%2F", "/admin%2fx", "/public%2F..%2Fadmin", "/admin%5c",
                                  "/public%5C..%5Cadmin"])
def test_escaped_slashes_rejected_by_envoy(envoy, path):
    resp = envoy.get(path)
    never_upstream(resp, path)
    assert resp.status == 400  # Envoy's own REJECT_REQUEST, before the filter


@pytest.mark.parametrize("path", ["/ADMIN", "/Admin/x", "/admin;x=1", "/admin.json", "/adminx"])
def test_lookalikes_are_not_routes(envoy, path):
    resp = envoy.get(path)
    never_upstream(resp, path)
    assert resp.status in (400, 403), resp


def test_normalized_public_path_still_public(envoy):
    assert echoed(envoy.get("/public/a/../b"))["path"] == "/public/b"
    assert echoed(envoy.get("/public/%61"))["path"] == "/public/a"


# With normalization off, the filter sees the raw path and must refuse what is ambiguous.
AMBIGUOUS_RAW = [
    "/public/../admin",
    "/public/..",
    "/public/./x",
    "/./admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/%2e/admin",
    "/public/..%2fadmin",
    "/public%2F..%2Fadmin",
    "/public%2fadmin",
    "/admin%2F",
    "/public%5c..%5cadmin",
    "/admin%5C",
    "/public\\..\\admin",
    "/public\\admin",
    "/public/%252e%252e/admin",
    "/public/%00/admin",
]


@pytest.mark.parametrize("path", AMBIGUOUS_RAW)
def test_ambiguous_paths_refused_without_normalization(envoy_raw, path):
    resp = envoy_raw.get(path)
    never_upstream(resp, path)
    problem(resp, 400, "ambiguous_path")


@pytest.mark.parametrize("path", ["//admin", "/ADMIN", "/admin;x=1", "/%61dmin", "/public/..;/admin"])
def test_raw_lookalikes_never_reach_upstream(envoy_raw, path):
    never_upstream(envoy_raw.get(path), path)


@pytest.mark.parametrize("path", AMBIGUOUS_RAW)
def test_ambiguous_paths_refused_even_when_unmatched_allowed(envoy_allow, path):
    """unmatched: allow must not turn an ambiguous path into a pass-through."""
    resp = envoy_allow.get(path)
    never_upstream(resp, path)
    problem(resp, 400, "ambiguous_path")


@pytest.mark.parametrize("path", ["/%61dmin", "/public/..;/admin", "//admin", "/admin;x=1"])
def test_unmatched_allow_equivalent_spellings_of_protected_routes(envoy_allow, path):
    """Upstreams decode %61 to 'a' (RFC 3986 §6.2.2.2), merge slashes, and (Tomcat, Spring)
    drop ;params: each of these is /admin to some upstream, so it must not pass unauthenticated."""
    never_upstream(envoy_allow.get(path), path)


def test_raw_clean_paths_still_work(envoy_raw, tok):
    echoed(envoy_raw.get("/healthz"))
    assert echoed(envoy_raw.get("/public/a-b_c~d.txt"))["path"] == "/public/a-b_c~d.txt"
    problem(envoy_raw.get("/admin"), 401, "missing_credentials")
    echoed(envoy_raw.get("/admin/x", bearer(tok(scope="admin"))))


def test_stats_for_routes(envoy):
    before = envoy.stat("apiguard.denied.no_route")
    no_route(envoy.get("/nowhere"))
    assert envoy.stat("apiguard.denied.no_route") == before + 1


def test_stats_ambiguous(envoy_raw):
    before = envoy_raw.stat("apiguard.denied.ambiguous_path")
    problem(envoy_raw.get("/public/../admin"), 400, "ambiguous_path")
    assert envoy_raw.stat("apiguard.denied.ambiguous_path") == before + 1
