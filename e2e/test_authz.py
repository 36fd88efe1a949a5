"""Authorization through the real Envoy: scopes (all_of / any_of / custom scope claims),
method-specific routes, claim rules (every condition kind, tenant binding, deny before
allow, audit mode), API keys (good / bad / revoked / stripped / query), JWT-or-API-key
routes, client certificates over mTLS (openssl-made CA and certs, `requests` as client),
and the decision record in Envoy's access log (`%FILTER_STATE(wasm.apiguard_decision:PLAIN)%`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import pytest

from harness import tokens
from harness.checks import bearer, echoed, problem, wait_until
from harness.http import Response

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://corp.example"
ISS_ALT = "https://alt.example"
AUD = "api"

# The decision record as Envoy's access log prints it; `%REQ(X-TEST-ID)%` correlates lines.
DECISION_FORMAT = "%FILTER_STATE(wasm.apiguard_decision:PLAIN)%"
ACCESS_LOG = f"id=%REQ(X-TEST-ID)% status=%RESPONSE_CODE% {DECISION_FORMAT}\n"

KEY_A = "pk_live_partner_a_" + "a1" * 12
KEY_B = "pk_live_partner_b_" + "b2" * 12
KEY_C = "pk_live_partner_c_" + "c3" * 12  # revoked in the second policy
KEY_Q = "qk_" + "d4" * 16
KEY_F = "fk_" + "e5" * 16


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONDITIONS = {
    # kind: (condition, claims that satisfy it, claims that do not)
    "equals": ({"claim": "tier", "equals": "gold"}, {"tier": "gold"}, {"tier": "silver"}),
    "equals_bool": ({"claim": "verified", "equals": True}, {"verified": True}, {"verified": "true"}),
    "equals_number": ({"claim": "level", "equals": 3}, {"level": 3}, {"level": 4}),
    "one_of": ({"claim": "tier", "one_of": ["gold", "silver"]}, {"tier": "silver"}, {"tier": "bronze"}),
    "matches": ({"claim": "email", "matches": "^[^@]+@corp\\.example$"},
                {"email": "ann@corp.example"}, {"email": "ann@corp.example.evil"}),
    "present": ({"claim": "mfa", "present": True}, {"mfa": "otp"}, {}),
    "absent": ({"claim": "act", "present": False}, {}, {"act": {"sub": "admin"}}),
    "contains_array": ({"claim": "roles", "contains": "editor"},
                       {"roles": ["viewer", "editor"]}, {"roles": ["viewer", "editors"]}),
    "contains_string": ({"claim": "groups", "contains": "eng"}, {"groups": "ops eng"}, {"groups": "engineering"}),
    "nested": ({"claim": "org.id", "equals": "o-1"}, {"org": {"id": "o-1"}}, {"org": {"id": "o-2"}}),
    "all": ({"all": [{"claim": "tier", "equals": "gold"}, {"claim": "mfa", "present": True}]},
            {"tier": "gold", "mfa": "otp"}, {"tier": "gold"}),
    "any": ({"any": [{"claim": "tier", "equals": "gold"}, {"claim": "roles", "contains": "staff"}]},
            {"roles": ["staff"]}, {"tier": "silver", "roles": ["guest"]}),
    "not": ({"not": {"claim": "suspended", "equals": True}}, {"suspended": False}, {"suspended": True}),
}


def _provider(name, iss, keys, **kw):
    p = {"name": name, "issuer": iss, "audiences": [AUD], "jwks": {"inline": tokens.jwks(*keys)}}
    p.update(kw)
    return p


def _partners(revoke_c: bool = False) -> dict:
    keys = [
        {"client_id": "partner-a", "sha256": sha(KEY_A), "scopes": ["items:read", "orders:read"]},
        {"client_id": "partner-b", "sha256": sha(KEY_B)},
    ]
    if not revoke_c:
        keys.append({"client_id": "partner-c", "sha256": sha(KEY_C), "scopes": ["items:read"]})
    return {"name": "partners", "keys": keys}


def make_policy(keys, revoke_c: bool = False) -> dict:
    routes = [
        # method-specific requirements on one path
        {"name": "items-read", "match": {"path": "/items/{id}", "methods": ["GET"]},
         "providers": ["corp", "partners"], "scopes": {"all_of": ["items:read"]}},
        {"name": "items-delete", "match": {"path": "/items/{id}", "methods": ["DELETE"]},
         "providers": ["corp"], "scopes": {"all_of": ["items:admin"]}},
        {"name": "reports", "match": {"prefix": "/reports"}, "providers": ["corp"],
         "scopes": {"any_of": ["reports:read", "reports:all"]}},
        {"name": "both", "match": {"prefix": "/both"}, "providers": ["corp"],
         "scopes": {"all_of": ["a", "b"], "any_of": ["x", "y"]}},
        {"name": "alt", "match": {"prefix": "/alt"}, "providers": ["alt"],
         "scopes": {"all_of": ["perm:read"]}},
        {"name": "orders", "match": {"path": "/tenants/{tenant}/orders/{id}", "methods": ["GET"]},
         "providers": ["corp", "partners"], "scopes": {"all_of": ["orders:read"]},
         "rules": [
             {"name": "not-blocked", "effect": "deny", "when": {"claim": "blocked", "equals": True}},
             {"name": "own-tenant", "when": {"claim": "tenant_id", "equals_param": "tenant"}},
         ]},
        {"name": "accounts", "match": {"path": "/accounts/{acct}"}, "providers": ["corp"],
         "rules": [{"name": "own-account", "when": {"claim": "acct", "equals_param": "acct"}}]},
        # deny before allow: the allow rule is listed first on purpose
        {"name": "dba", "match": {"prefix": "/dba"}, "providers": ["corp"],
         "rules": [
             {"name": "tenant-acme", "when": {"claim": "tenant_id", "equals": "acme"}},
             {"name": "blocked", "effect": "deny", "when": {"claim": "blocked", "equals": True}},
         ]},
        {"name": "audit", "match": {"prefix": "/audit"}, "providers": ["corp"],
         "rules": [
             {"name": "shadow-admin", "mode": "audit", "when": {"claim": "roles", "contains": "admin"}},
             {"name": "shadow-risky", "effect": "deny", "mode": "audit",
              "when": {"claim": "risky", "equals": True}},
             {"name": "enforced-tier", "when": {"claim": "tier", "present": True}},
         ]},
        {"name": "partner-only", "match": {"prefix": "/partner"}, "providers": ["partners"]},
        {"name": "query-key", "match": {"prefix": "/qk"}, "providers": ["qkeys"]},
        {"name": "fwd-key", "match": {"prefix": "/fwd"}, "providers": ["fwdkeys"]},
        {"name": "health", "match": {"path": "/healthz"}, "public": True},
    ]
    for kind, (cond, _, _) in CONDITIONS.items():
        routes.append({"name": f"cond-{kind}", "match": {"path": f"/cond/{kind}"},
                       "providers": ["corp"], "rules": [{"name": kind, "when": cond}]})
    return {
        "providers": [
            _provider("corp", ISS, [keys["ES256"], keys["RS256"]]),
            _provider("alt", ISS_ALT, [keys["ES256"]], scope_claims=["permissions"]),
        ],
        "api_keys": [
            _partners(revoke_c),
            {"name": "qkeys", "from": [{"query": "api_key"}],
             "keys": [{"client_id": "q-client", "sha256": sha(KEY_Q)}]},
            {"name": "fwdkeys", "forward": True,
             "keys": [{"client_id": "f-client", "sha256": sha(KEY_F)}]},
        ],
        "routes": routes,
        # The access log of these tests prints the record; it is opt-in.
        "decision_record": True,
    }


@pytest.fixture(scope="module")
def envoy(module_envoy_factory, keys):
    return module_envoy_factory.make(make_policy(keys), concurrency=2, access_log=ACCESS_LOG)


def tok(keys, alg="ES256", iss=ISS, **claims) -> str:
    claims.setdefault("sub", "user-1")
    return tokens.mint(alg, keys[alg], tokens.claims(iss, AUD, **claims))


def tid() -> str:
    return uuid.uuid4().hex


def decision_line(envoy, test_id: str) -> str:
    """The access log line of the request tagged `x-test-id: test_id`."""
    def find():
        for line in envoy.access_log_text().splitlines():
            if line.startswith(f"id={test_id} "):
                return line
        return None
    line = wait_until(find, timeout=10)
    assert line, f"no access log line for {test_id}:\n{envoy.access_log_text()[-3000:]}"
    return line


def record(line: str) -> dict[str, str]:
    """`decision=.. route=.. rule=.. reason=.. principal=..` as a dict."""
    out = {}
    for part in line.split():
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def insufficient(resp, needed: str):
    body = problem(resp, 403, "insufficient_scope")
    assert resp.header("www-authenticate") == (
        f'Bearer realm="apiguard", error="insufficient_scope", scope="{needed}"'), resp
    return body


def assert_no_claims(resp, *secrets):
    blob = resp.text + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers)
    for s in secrets:
        assert s not in blob, f"{s!r} leaked into the response: {resp}"


# --- scopes ----------------------------------------------------------------------------------

SCOPE_CASES = [
    # (name, path, method, claims, expected: None = allowed, else the scope named in the 403)
    ("get-read", "/items/1", "GET", {"scope": "items:read"}, None),
    ("get-read-among-others", "/items/1", "GET", {"scope": "a items:read b"}, None),
    ("get-scp-array", "/items/1", "GET", {"scp": ["items:read"]}, None),
    ("get-no-scope", "/items/1", "GET", {}, "items:read"),
    ("get-admin-only", "/items/1", "GET", {"scope": "items:admin"}, "items:read"),
    ("get-prefix-not-enough", "/items/1", "GET", {"scope": "items:rea items:read:x"}, "items:read"),
    ("delete-admin", "/items/1", "DELETE", {"scope": "items:admin"}, None),
    ("delete-read-only", "/items/1", "DELETE", {"scope": "items:read"}, "items:admin"),
    ("any-of-first", "/reports/q1", "GET", {"scope": "reports:read"}, None),
    ("any-of-second", "/reports/q1", "GET", {"scp": ["reports:all"]}, None),
    ("any-of-none", "/reports/q1", "GET", {"scope": "reports:write"}, "reports:read reports:all"),
    ("all-and-any", "/both", "GET", {"scope": "a b y"}, None),
    ("all-missing-one", "/both", "GET", {"scope": "a x"}, "b"),
    ("all-missing-two", "/both", "GET", {"scope": "x"}, "a b"),
    ("all-but-no-any", "/both", "GET", {"scope": "a b"}, "x y"),
    # `scope` is present, so `scp` is not consulted (first present scope claim wins)
    ("scope-shadows-scp", "/items/1", "GET", {"scope": "profile", "scp": ["items:read"]}, "items:read"),
    # a scope claim that is neither a string nor an array grants nothing
    ("scope-not-string", "/items/1", "GET", {"scope": {"items:read": True}}, "items:read"),
]


@pytest.mark.parametrize("name,path,method,claims,needed", SCOPE_CASES, ids=[c[0] for c in SCOPE_CASES])
def test_scopes(envoy, keys, name, path, method, claims, needed):
    resp = envoy.request(method, path, bearer(tok(keys, **claims)))
    if needed is None:
        assert echoed(resp)["method"] == method
    else:
        body = insufficient(resp, needed)
        assert body["required_scope"] == needed


def test_method_without_route_is_no_route(envoy, keys):
    resp = envoy.request("POST", "/items/1", bearer(tok(keys, scope="items:read items:admin")))
    problem(resp, 403, "no_route")


@pytest.mark.parametrize("claims,allowed", [
    ({"permissions": ["perm:read"]}, True),
    ({"permissions": "perm:read other"}, True),
    ({"scope": "perm:read"}, False),  # not a scope claim of provider `alt`
    ({"scp": ["perm:read"]}, False),
])
def test_custom_scope_claims(envoy, keys, claims, allowed):
    resp = envoy.get("/alt/x", bearer(tok(keys, iss=ISS_ALT, **claims)))
    if allowed:
        echoed(resp)
    else:
        insufficient(resp, "perm:read")


def test_insufficient_scope_stat(envoy, keys):
    before = envoy.stat("apiguard.denied.insufficient_scope")
    allowed = envoy.stat("apiguard.allowed")
    insufficient(envoy.request("DELETE", "/items/9", bearer(tok(keys, scope="items:read"))), "items:admin")
    echoed(envoy.request("DELETE", "/items/9", bearer(tok(keys, scope="items:admin"))))
    assert envoy.stat("apiguard.denied.insufficient_scope") == before + 1
    assert envoy.stat("apiguard.allowed") == allowed + 1


# --- claim rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CONDITIONS))
def test_condition_kinds(envoy, keys, kind):
    _, good, bad = CONDITIONS[kind]
    echoed(envoy.get(f"/cond/{kind}", bearer(tok(keys, **good))))
    resp = envoy.get(f"/cond/{kind}", bearer(tok(keys, **bad)))
    problem(resp, 403, "rule_denied")


TENANT_CASES = [
    # (name, path, claims, expected reason or None)
    ("own-tenant", "/tenants/acme/orders/7", {"tenant_id": "acme", "scope": "orders:read"}, None),
    ("foreign-tenant", "/tenants/globex/orders/7", {"tenant_id": "acme", "scope": "orders:read"}, "rule_denied"),
    ("no-tenant-claim", "/tenants/acme/orders/7", {"scope": "orders:read"}, "rule_denied"),
    ("tenant-case-differs", "/tenants/ACME/orders/7", {"tenant_id": "acme", "scope": "orders:read"}, "rule_denied"),
    ("tenant-array-claim", "/tenants/acme/orders/7", {"tenant_id": ["acme"], "scope": "orders:read"}, "rule_denied"),
    ("blocked-own-tenant", "/tenants/acme/orders/7",
     {"tenant_id": "acme", "blocked": True, "scope": "orders:read"}, "rule_denied"),
    ("blocked-false", "/tenants/acme/orders/7",
     {"tenant_id": "acme", "blocked": False, "scope": "orders:read"}, None),
    ("own-tenant-no-scope", "/tenants/acme/orders/7", {"tenant_id": "acme"}, "insufficient_scope"),
    # Envoy's normalize_path decodes the unreserved %6D before the filter binds the parameter
    ("unreserved-escape", "/tenants/ac%6De/orders/7", {"tenant_id": "acme", "scope": "orders:read"}, None),
]


@pytest.mark.parametrize("name,path,claims,reason", TENANT_CASES, ids=[c[0] for c in TENANT_CASES])
def test_tenant_binding(envoy, keys, name, path, claims, reason):
    secret_sub = f"sub-{uuid.uuid4().hex[:10]}"
    resp = envoy.get(path, bearer(tok(keys, sub=secret_sub, **claims)))
    if reason is None:
        echoed(resp)
        return
    problem(resp, 403, reason)
    # Problem bodies never carry the caller's claims.
    assert_no_claims(resp, secret_sub, '"tenant_id"', "blocked")


def test_tenant_binding_numeric_claim(envoy, keys):
    echoed(envoy.get("/accounts/42", bearer(tok(keys, acct=42))))
    problem(envoy.get("/accounts/43", bearer(tok(keys, acct=42))), 403, "rule_denied")
    echoed(envoy.get("/accounts/a-7", bearer(tok(keys, acct="a-7"))))


def test_rule_denied_names_the_rule_in_log_not_in_body(envoy, keys):
    t = tid()
    resp = envoy.get("/tenants/globex/orders/1",
                     {**bearer(tok(keys, sub="alice-x", tenant_id="acme", scope="orders:read")), "X-Test-Id": t})
    body = problem(resp, 403, "rule_denied")
    assert_no_claims(resp, "alice-x", "acme", "own-tenant")
    assert "required_scope" not in body
    rec = record(decision_line(envoy, t))
    assert rec["decision"] == "deny" and rec["rule"] == "own-tenant", rec
    assert rec["reason"] == "rule_denied" and rec["route"] == "orders" and rec["principal"] == "alice-x", rec


@pytest.mark.parametrize("claims,rule", [
    ({"tenant_id": "other", "blocked": True}, "blocked"),  # both fail: the deny rule decides
    ({"tenant_id": "acme", "blocked": True}, "blocked"),
    ({"tenant_id": "other"}, "tenant-acme"),
    ({"tenant_id": "acme", "blocked": False}, None),
])
def test_deny_before_allow(envoy, keys, claims, rule):
    t = tid()
    resp = envoy.get("/dba/x", {**bearer(tok(keys, **claims)), "X-Test-Id": t})
    if rule is None:
        echoed(resp)
    else:
        problem(resp, 403, "rule_denied")
    rec = record(decision_line(envoy, t))
    assert rec["rule"] == (rule or "-"), rec


def test_rules_before_scopes(envoy, keys):
    """A token failing a rule and lacking the scope is answered rule_denied (rules first)."""
    resp = envoy.get("/tenants/globex/orders/1", bearer(tok(keys, tenant_id="acme")))
    problem(resp, 403, "rule_denied")


def test_rule_denied_stat(envoy, keys):
    before = envoy.stat("apiguard.denied.rule_denied")
    problem(envoy.get("/dba/x", bearer(tok(keys, blocked=True))), 403, "rule_denied")
    assert envoy.stat("apiguard.denied.rule_denied") == before + 1


# --- audit mode ------------------------------------------------------------------------------

@pytest.mark.parametrize("claims,decision,rules,audits", [
    ({"tier": "t", "roles": ["admin"]}, "allow", "-", 0),
    ({"tier": "t", "roles": ["user"]}, "audit-deny", "shadow-admin", 1),
    ({"tier": "t", "roles": ["admin"], "risky": True}, "audit-deny", "shadow-risky", 1),
    ({"tier": "t", "roles": [], "risky": True}, "audit-deny", "shadow-risky,shadow-admin", 2),
])
def test_audit_mode(envoy, keys, claims, decision, rules, audits):
    before = envoy.stat("apiguard.audit_denied")
    allowed = envoy.stat("apiguard.allowed")
    t = tid()
    echoed(envoy.get("/audit/x", {**bearer(tok(keys, sub="aud-user", **claims)), "X-Test-Id": t}))
    assert envoy.stat("apiguard.audit_denied") == before + audits
    assert envoy.stat("apiguard.allowed") == allowed + 1
    line = decision_line(envoy, t)
    rec = record(line)
    assert rec["status"] == "200", line
    assert rec["decision"] == decision and rec["rule"] == rules, line
    assert rec["route"] == "audit" and rec["reason"] == "-" and rec["principal"] == "aud-user", line


def test_audit_rule_does_not_mask_enforced_denial(envoy, keys):
    before = envoy.stat("apiguard.audit_denied")
    t = tid()
    resp = envoy.get("/audit/x", {**bearer(tok(keys, roles=["user"])), "X-Test-Id": t})  # no tier
    problem(resp, 403, "rule_denied")
    assert envoy.stat("apiguard.audit_denied") == before + 1
    rec = record(decision_line(envoy, t))
    assert rec["decision"] == "deny" and rec["rule"] == "enforced-tier", rec


# --- API keys --------------------------------------------------------------------------------

def test_api_key_good_and_stripped(envoy):
    seen = echoed(envoy.get("/items/5", {"X-Api-Key": KEY_A, "X-Other": "kept"}))
    assert "x-api-key" not in seen["headers"], seen
    assert KEY_A not in json.dumps(seen)
    assert seen["headers"]["x-other"] == "kept"


def test_api_key_bad(envoy):
    before = envoy.stat("apiguard.denied.invalid_api_key")
    for path in ("/items/5", "/partner/x"):
        resp = envoy.get(path, {"X-Api-Key": "pk_live_wrong_" + "0" * 20})
        problem(resp, 401, "invalid_api_key")
        assert resp.header("www-authenticate") == 'APIKey realm="apiguard"', resp
        assert "pk_live_wrong_" not in resp.text
    assert envoy.stat("apiguard.denied.invalid_api_key") == before + 2


@pytest.mark.parametrize("value", [KEY_A.upper(), KEY_A + " x", KEY_A[:-1], " " + KEY_A[1:]])
def test_api_key_near_misses(envoy, value):
    problem(envoy.get("/partner/x", {"X-Api-Key": value}), 401, "invalid_api_key")


def test_api_key_missing(envoy):
    resp = envoy.get("/partner/x")
    problem(resp, 401, "missing_credentials")
    assert resp.header("www-authenticate") == 'APIKey realm="apiguard"', resp


def test_api_key_scopes(envoy):
    echoed(envoy.get("/items/5", {"X-Api-Key": KEY_A}))
    insufficient(envoy.get("/items/5", {"X-Api-Key": KEY_B}), "items:read")
    # DELETE accepts JWTs only
    resp = envoy.request("DELETE", "/items/5", {"X-Api-Key": KEY_A})
    problem(resp, 401, "missing_credentials")


def test_api_key_principal_in_rules(envoy):
    """partner-a has orders:read but no tenant_id claim: the tenant binding denies it."""
    t = tid()
    problem(envoy.get("/tenants/acme/orders/1", {"X-Api-Key": KEY_A, "X-Test-Id": t}), 403, "rule_denied")
    rec = record(decision_line(envoy, t))
    assert rec["principal"] == "partner-a" and rec["rule"] == "own-tenant", rec


def test_api_key_duplicate_header(envoy):
    resp = envoy.get("/partner/x", [("X-Api-Key", KEY_A), ("X-Api-Key", KEY_A)])
    problem(resp, 400, "invalid_request")


def test_api_key_query_source_stripped(envoy):
    seen = echoed(envoy.get(f"/qk/x?a=1&api_key={KEY_Q}&b=2"))
    assert KEY_Q not in json.dumps(seen)
    assert seen["path"] == "/qk/x?a=1&b=2", seen
    problem(envoy.get("/qk/x?api_key=nope"), 401, "invalid_api_key")
    problem(envoy.get("/qk/x", {"X-Api-Key": KEY_Q}), 401, "missing_credentials")


def test_api_key_forward_true_kept(envoy):
    seen = echoed(envoy.get("/fwd/x", {"X-Api-Key": KEY_F}))
    assert seen["headers"]["x-api-key"] == KEY_F


def test_api_key_of_another_set_is_invalid(envoy):
    problem(envoy.get("/fwd/x", {"X-Api-Key": KEY_A}), 401, "invalid_api_key")


@pytest.mark.parametrize("creds,expect", [
    ("jwt", 200),
    ("key", 200),
    ("none", "missing_credentials"),
    ("bad-key", "invalid_api_key"),
    ("bad-jwt", "bad_signature"),
    ("jwt-no-scope", "insufficient_scope"),
])
def test_jwt_or_api_key(envoy, keys, creds, expect):
    good = tok(keys, scope="items:read")
    headers = {
        "jwt": bearer(good),
        "key": {"X-Api-Key": KEY_A},
        "none": {},
        "bad-key": {"X-Api-Key": "nope-" + "9" * 20},
        "bad-jwt": bearer(tokens.tamper_signature(good)),
        "jwt-no-scope": bearer(tok(keys)),
    }[creds]
    resp = envoy.get("/items/3", headers)
    if expect == 200:
        seen = echoed(resp)
        assert "x-api-key" not in seen["headers"]
    elif expect == "missing_credentials":
        problem(resp, 401, expect)
        assert resp.header("www-authenticate") == 'Bearer realm="apiguard"', resp
    elif expect == "insufficient_scope":
        insufficient(resp, "items:read")
    else:
        problem(resp, 401, expect)


def test_api_key_stripped_when_jwt_authenticates(envoy, keys):
    seen = echoed(envoy.get("/items/5", {"X-Api-Key": KEY_A, **bearer(tok(keys, scope="items:read"))}))
    assert "x-api-key" not in seen["headers"], seen


def test_revoked_key(envoy_factory, keys):
    """Revocation = the key's entry removed from the policy; Envoy restarted with it."""
    first = envoy_factory.make(make_policy(keys), concurrency=1)
    echoed(first.get("/items/1", {"X-Api-Key": KEY_C}))
    first.stop()
    second = envoy_factory.make(make_policy(keys, revoke_c=True), concurrency=1)
    resp = second.get("/items/1", {"X-Api-Key": KEY_C})
    problem(resp, 401, "invalid_api_key")
    assert resp.header("www-authenticate") == 'APIKey realm="apiguard"'
    echoed(second.get("/items/1", {"X-Api-Key": KEY_A}))  # the others still work


# --- decision record in the access log --------------------------------------------------------

def test_access_log_decision_record(envoy, keys):
    cases = [
        ("allow", {**bearer(tok(keys, sub="log-allow", scope="items:read"))}, "/items/1",
         {"decision": "allow", "route": "items-read", "rule": "-", "reason": "-", "principal": "log-allow", "status": "200"}),
        ("scope", {**bearer(tok(keys, sub="log-scope"))}, "/items/1",
         {"decision": "deny", "route": "items-read", "rule": "-", "reason": "insufficient_scope",
          "principal": "log-scope", "status": "403"}),
        ("missing", {}, "/items/1",
         {"decision": "deny", "route": "items-read", "rule": "-", "reason": "missing_credentials",
          "principal": "-", "status": "401"}),
        ("key", {"X-Api-Key": KEY_A}, "/items/1",
         {"decision": "allow", "route": "items-read", "principal": "partner-a", "status": "200"}),
        ("public", {}, "/healthz",
         {"decision": "allow", "route": "health", "principal": "-", "status": "200"}),
        ("no-route", {}, "/nowhere",
         {"decision": "deny", "route": "-", "reason": "no_route", "status": "403"}),
    ]
    for name, headers, path, want in cases:
        t = tid()
        envoy.get(path, {**headers, "X-Test-Id": t})
        line = decision_line(envoy, t)
        rec = record(line)
        for k, v in want.items():
            assert rec.get(k) == v, f"{name}: {k}={rec.get(k)!r}, want {v!r}: {line}"
        assert line.endswith(f"principal={want.get('principal', rec.get('principal'))}"), line


@pytest.mark.parametrize("setting", ["default", "false"])
def test_decision_record_off_writes_nothing(module_envoy_factory, keys, setting):
    """Without `decision_record` (the default is off: the write is a host call on every
    request) or with `decision_record: false`, no filter state is written: the access log
    shows `-` where the record was, and the verdict is the same."""
    policy = make_policy(keys)
    if setting == "default":
        del policy["decision_record"]
    else:
        policy["decision_record"] = False
    envoy = module_envoy_factory.make(policy, concurrency=1, access_log=ACCESS_LOG)
    good = bearer(tok(keys, sub="log-off", scope="items:read"))
    for path, headers, status in (("/healthz", {}, "200"), ("/items/1", {}, "401"),
                                  ("/items/1", good, "200")):
        t = tid()
        assert envoy.get(path, {**headers, "X-Test-Id": t}).status == int(status)
        line = decision_line(envoy, t)
        assert line == f"id={t} status={status} -", line


# --- mTLS ------------------------------------------------------------------------------------

SPIFFE = "spiffe://cluster.local/ns/shop/sa/"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    """A CA, a server cert for 127.0.0.1 and client certs with URI SANs, via openssl."""

    def __init__(self, d):
        self.d = d
        self._ca("ca")
        self._ca("rogue-ca")
        self.server = self.issue("server", "/CN=127.0.0.1", "IP:127.0.0.1,DNS:localhost", server=True)

    def _ca(self, name):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
                 "-subj", f"/CN=apiguard test {name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.d)

    def path(self, name):
        return str(self.d / name)

    def issue(self, name, subj, san, *, server=False, ca="ca"):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=self.d)
        eku = "serverAuth" if server else "clientAuth"
        (self.d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage={eku}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
                 cwd=self.d)
        return (self.path(f"{name}.crt"), self.path(f"{name}.key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.checkout = p.issue("checkout", "/CN=checkout", f"URI:{SPIFFE}checkout")
    p.cart = p.issue("cart", "/CN=cart", f"URI:{SPIFFE}cart")
    p.billing = p.issue("billing", "/CN=billing", "URI:spiffe://cluster.local/ns/billing/sa/api")
    p.legacy = p.issue("legacy", "/CN=legacy-client/O=Corp", "DNS:legacy.example")
    p.rogue = p.issue("rogue", "/CN=checkout", f"URI:{SPIFFE}checkout", ca="rogue-ca")
    p.two = p.issue("two", "/CN=two", f"URI:{SPIFFE}cart,URI:{SPIFFE}checkout")
    return p


@pytest.fixture(scope="module")
def legacy_subject(pki):
    """The subject of the legacy cert in the RFC 2253 form Envoy reports."""
    out = subprocess.run(["openssl", "x509", "-in", pki.legacy[0], "-noout", "-subject",
                          "-nameopt", "RFC2253"], check=True, capture_output=True, text=True).stdout
    return out.strip().removeprefix("subject=")


@pytest.fixture(scope="module")
def tls_envoy(module_envoy_factory, pki, keys, legacy_subject):
    policy = {
        "providers": [_provider("corp", ISS, [keys["ES256"]])],
        "client_certs": [
            {"name": "mesh", "uri_sans": [f"{SPIFFE}checkout"]},
            {"name": "shop", "uri_san_prefixes": [SPIFFE]},
            {"name": "legacy", "subjects": [legacy_subject]},
        ],
        "routes": [
            {"name": "mesh", "match": {"prefix": "/mesh"}, "providers": ["mesh"]},
            {"name": "shop", "match": {"prefix": "/shop"}, "providers": ["shop"],
             "rules": [{"name": "not-cart", "effect": "deny",
                        "when": {"claim": "uri_san", "equals": f"{SPIFFE}cart"}}]},
            {"name": "legacy", "match": {"prefix": "/legacy"}, "providers": ["legacy"]},
            {"name": "mesh-or-jwt", "match": {"prefix": "/either"}, "providers": ["mesh", "corp"]},
            {"name": "health", "match": {"path": "/healthz"}, "public": True},
        ],
        "decision_record": True,  # test_mtls_decision_record reads it
    }
    tls = {"cert": pki.server[0], "key": pki.server[1], "ca": pki.path("ca.crt"),
           "require_client_cert": False}  # verified when sent; routes decide when missing
    return module_envoy_factory.make(policy, concurrency=2, downstream_tls=tls, access_log=ACCESS_LOG)


def tls_get(envoy, pki, path, cert=None, headers=None) -> Response:
    import requests

    r = requests.get(envoy.base_url + path, cert=cert, verify=pki.path("ca.crt"),
                     headers=headers or {}, timeout=10)
    return Response(r.status_code, r.reason, list(r.headers.items()), r.content)


@pytest.mark.parametrize("who,path,expect", [
    ("checkout", "/mesh/x", 200),
    ("cart", "/mesh/x", "identity_not_allowed"),
    ("billing", "/mesh/x", "identity_not_allowed"),
    ("legacy", "/mesh/x", "identity_not_allowed"),
    (None, "/mesh/x", "client_certificate_required"),
    ("checkout", "/shop/x", 200),
    ("cart", "/shop/x", "rule_denied"),
    ("billing", "/shop/x", "identity_not_allowed"),
    ("legacy", "/legacy/x", 200),
    ("checkout", "/legacy/x", "identity_not_allowed"),
    (None, "/healthz", 200),
    ("cart", "/healthz", 200),
])
def test_mtls_identities(tls_envoy, pki, who, path, expect):
    cert = getattr(pki, who) if who else None
    resp = tls_get(tls_envoy, pki, path, cert)
    if expect == 200:
        echoed(resp)
    else:
        status = 403
        problem(resp, status, expect)
        assert SPIFFE not in resp.text  # the identity is not echoed back


def test_mtls_decision_record(tls_envoy, pki):
    t = tid()
    echoed(tls_get(tls_envoy, pki, "/mesh/x", pki.checkout, {"X-Test-Id": t}))
    rec = record(decision_line(tls_envoy, t))
    assert rec["decision"] == "allow" and rec["principal"] == f"{SPIFFE}checkout", rec
    t = tid()
    tls_get(tls_envoy, pki, "/mesh/x", pki.cart, {"X-Test-Id": t})
    rec = record(decision_line(tls_envoy, t))
    assert rec["decision"] == "deny" and rec["reason"] == "identity_not_allowed", rec


def test_mtls_stats(tls_envoy, pki):
    before = tls_envoy.stat("apiguard.denied.identity_not_allowed")
    tls_get(tls_envoy, pki, "/mesh/x", pki.cart)
    assert tls_envoy.stat("apiguard.denied.identity_not_allowed") == before + 1


def test_mtls_or_jwt(tls_envoy, pki, keys):
    echoed(tls_get(tls_envoy, pki, "/either/x", pki.checkout))
    echoed(tls_get(tls_envoy, pki, "/either/x", None, bearer(tok(keys))))
    problem(tls_get(tls_envoy, pki, "/either/x", None), 401, "missing_credentials")
    # a cert the route does not admit, and no token
    problem(tls_get(tls_envoy, pki, "/either/x", pki.cart), 403, "identity_not_allowed")


def test_mtls_untrusted_ca_refused_by_envoy(tls_envoy, pki):
    import requests

    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        tls_get(tls_envoy, pki, "/mesh/x", pki.rogue)


def test_mtls_second_uri_san(tls_envoy, pki):
    """A cert with URI SANs [cart, checkout]: only the first URI SAN reaches the filter
    (`connection.uri_san_peer_certificate`), so the allowed second one does not count
    (fails closed; Envoy's RBAC `authenticated` principal would match any SAN)."""
    problem(tls_get(tls_envoy, pki, "/mesh/x", pki.two), 403, "identity_not_allowed")


@pytest.fixture(scope="module")
def strict_tls_envoy(module_envoy_factory, pki):
    """`require_client_certificate: true`: Envoy itself refuses a handshake without a cert."""
    policy = {
        "client_certs": [{"name": "mesh", "uri_sans": [f"{SPIFFE}checkout"]}],
        "routes": [{"name": "mesh", "match": {"prefix": "/"}, "providers": ["mesh"]}],
    }
    tls = {"cert": pki.server[0], "key": pki.server[1], "ca": pki.path("ca.crt"),
           "require_client_cert": True}
    return module_envoy_factory.make(policy, concurrency=1, downstream_tls=tls)


def test_mtls_required_by_listener(strict_tls_envoy, pki):
    import requests

    echoed(tls_get(strict_tls_envoy, pki, "/x", pki.checkout))
    problem(tls_get(strict_tls_envoy, pki, "/x", pki.cart), 403, "identity_not_allowed")
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        tls_get(strict_tls_envoy, pki, "/x", None)
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        tls_get(strict_tls_envoy, pki, "/x", pki.rogue)
