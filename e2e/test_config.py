r"""Policy validation as Envoy 1.40 applies it: a policy the filter refuses makes Envoy
refuse to start (static config), and the log names the JSON path of every bad field.

What Envoy 1.40 does (observed): on_configure returning false with `fail_open: false` logs
`Wasm VM failed Failed to configure base Wasm plugin`, `Plugin apiguard failed to load`,
`Plugin configured to fail closed failed to load`, then
`error \`Unable to create Wasm plugin apiguard\` initializing config '...'` and the process
exits with status 1 before any listener is bound.
"""

from __future__ import annotations

import pytest

from harness import tokens
from harness.checks import bearer, echoed, problem

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"


@pytest.fixture(scope="module")
def k():
    return tokens.generate_key("ES256", "good-es256")


@pytest.fixture(scope="module")
def weak():
    return tokens.generate_key("RS256", "weak-rsa1024", rsa_bits=1024)


SHORT_HS512 = b"s" * 32


def base(k) -> dict:
    return {
        "providers": [{"name": "demo", "issuer": ISS, "jwks": {"inline": tokens.jwks(k)}}],
        "routes": [{"name": "r", "match": {"prefix": "/r"}, "providers": ["demo"]}],
    }


def broken_policies(k, weak) -> dict[str, tuple[object, list[str]]]:
    """name -> (policy, JSON paths the log must name)."""
    out: dict[str, tuple[object, list[str]]] = {}

    p = base(k)
    p["realmz"] = "x"
    out["unknown_top_level_field"] = (p, ["realmz"])

    p = base(k)
    p["providers"][0]["isuer"] = ISS
    out["unknown_provider_field"] = (p, ["providers[0].isuer"])

    p = base(k)
    p["providers"][0]["issuer"] = 5
    out["bad_issuer_type"] = (p, ["providers[0].issuer"])

    p = base(k)
    p["routes"][0]["providers"] = ["nope"]
    out["route_names_unknown_provider"] = (p, ["routes[0].providers[0]"])

    p = base(k)
    p["providers"][0]["jwks"]["inline"] = tokens.jwks(weak)
    out["rsa_1024_inline_key"] = (p, ["providers[0].jwks.inline"])

    p = base(k)
    p["providers"][0]["jwks"]["inline"] = {"keys": [{
        "kty": "oct", "k": tokens.b64url(SHORT_HS512), "kid": "short", "alg": "HS512", "use": "sig"}]}
    out["hmac_key_shorter_than_hash"] = (p, ["providers[0].jwks.inline"])

    out["not_json"] = ("{not json", [])

    # several independent errors: every one is reported
    p = base(k)
    p["providers"].append({"name": "second", "issuer": ISS, "jwks": {"inline": tokens.jwks(weak)}})
    p["providers"].append({"name": "third", "issuer": ISS, "jwks": {"remote": {
        "cluster": "idp", "uri": "http://127.0.0.1:1/jwks.json", "timeout_ms": 5}}})
    p["routes"].append({"name": "r2", "match": {"prefix": "/r2"}, "providers": ["ghost"]})
    p["routes"].append({"name": "r3", "match": {"prefix": "/r3", "path": "/r3"}, "public": True})
    out["several_errors"] = (p, ["providers[1].jwks.inline", "providers[2].jwks.remote.timeout_ms",
                                 "routes[1].providers[0]", "routes[2].match"])
    # fail_open only covers a VM that fails at run time: in Envoy 1.40 a static config whose
    # plugin refuses its configuration is fatal either way (exit 1), never an open door.
    p = base(k)
    p["routes"][0]["providers"] = ["nope"]
    out["fail_open_true"] = (p, ["routes[0].providers[0]"])
    return out


@pytest.fixture(scope="module")
def rejected(module_envoy_factory, k, weak):
    """Starts every broken policy at once (they only compile the module and exit)."""
    cases = broken_policies(k, weak)
    envoys = {}
    for name, (policy, _) in cases.items():
        envoys[name] = module_envoy_factory.make(
            policy, start=False, fail_open=(name == "fail_open_true")).launch()
    for e in envoys.values():
        e.wait_exit(timeout=60)
    return {name: (envoys[name], cases[name][1]) for name in cases}


CASES = ["unknown_top_level_field", "unknown_provider_field", "bad_issuer_type",
         "route_names_unknown_provider", "rsa_1024_inline_key", "hmac_key_shorter_than_hash",
         "not_json", "several_errors", "fail_open_true"]


@pytest.mark.parametrize("case", CASES)
def test_broken_policy_refused_at_start(rejected, case):
    envoy, paths = rejected[case]
    log = envoy.log_text()
    assert envoy.returncode == 1, f"envoy still running or exited {envoy.returncode}:\n{envoy.log_tail()}"
    assert envoy.port is None  # no listener was ever reported
    assert "Unable to create Wasm plugin apiguard" in log, envoy.log_tail()
    assert "apiguard: invalid policy: " in log, envoy.log_tail()
    assert "policy rejected with" in log
    for path in paths:
        assert f"apiguard: invalid policy: {path}" in log, f"log does not name {path}:\n{envoy.log_tail()}"


def test_error_log_has_no_key_material(rejected, weak):
    envoy, _ = rejected["hmac_key_shorter_than_hash"]
    log = envoy.log_text()
    assert tokens.b64url(SHORT_HS512) not in log
    envoy, _ = rejected["rsa_1024_inline_key"]
    assert weak.jwk["n"][:40] not in envoy.log_text()


def test_several_errors_counted(rejected):
    envoy, paths = rejected["several_errors"]
    import re

    m = re.search(r"policy rejected with (\d+) error", envoy.log_text())
    assert m and int(m.group(1)) >= len(paths), envoy.log_tail()


# --- accepted edge cases ------------------------------------------------------------------------

def test_empty_policy_denies_everything(envoy_factory):
    e = envoy_factory.make({})
    problem(e.get("/"), 403, "no_route")
    problem(e.get("/anything"), 403, "no_route")


def test_settings_realm_max_token_bytes_no_cache_jwks_string(envoy_factory, k):
    import json

    p = base(k)
    p.update(realm="my realm", max_token_bytes=1024, token_cache_size=0)
    p["providers"][0]["jwks"]["inline"] = json.dumps(tokens.jwks(k))  # a JSON string works too
    e = envoy_factory.make(p)
    assert "policy loaded" in e.log_text()
    resp = e.get("/r")
    problem(resp, 401, "missing_credentials")
    assert resp.header("www-authenticate") == 'Bearer realm="my realm"'
    small = tokens.mint("ES256", k, tokens.claims(ISS))
    big = tokens.mint("ES256", k, tokens.claims(ISS, blob="x" * 1200))
    for _ in range(3):
        echoed(e.get("/r", bearer(small)))
    resp = e.get("/r", bearer(big))
    problem(resp, 401, "too_large")
    assert e.stat("apiguard.jwt.cache_hit") == 0
