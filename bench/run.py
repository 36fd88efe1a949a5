#!/usr/bin/env python3
"""Envoy throughput/latency benchmark: baseline vs native Envoy filters vs apiguard.

One Envoy binary (.venv/bin/envoy), started four ways on 127.0.0.1, each `--concurrency 1`
and pinned with `taskset -c 0`; wrk (1 thread, 16 connections) is pinned to core 1:

  baseline        direct_response only (no auth filter)
  native_cache    jwt_authn (local_jwks, jwt_cache_config) + rbac (scope from the JWT
                  payload metadata) + local_ratelimit (huge bucket), then direct_response
  native_nocache  the same without jwt_cache_config
  apiguard        apiguard.wasm (v8) with the equivalent policy, then direct_response

Every route answers with `direct_response`, so no upstream is in the measurement.

Scenarios (each: WARMUP s of wrk, discarded, then SECONDS s measured; rounds interleave the
variants): one RS256 token reused; 10,000 distinct RS256 tokens rotated; 10,000 distinct
ES256 tokens rotated; POST of a 1 KB JSON body validated by a schema (apiguard vs baseline);
a gRPC unary call (`/demo.v1.Items/Get`, HTTP/2, one RS256 token reused) driven by h2load
(nghttp2-client) instead of wrk, routed by `match.grpc` in apiguard.

Writes bench/results/results.json, results.md and results.png. Env knobs: BENCH_ROUNDS (3),
BENCH_SECONDS (6), BENCH_WARMUP (2), BENCH_TOKENS (10000), BENCH_SCENARIOS (comma list),
BENCH_VARIANTS (comma list: run only these, plus the baseline), APIGUARD_WASM_B (a second
module, run as variant `apiguard_b` wherever `apiguard` runs: an interleaved A/B of two
builds in one run, on the same machine load), BENCH_OUT (results folder).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import jwt as pyjwt  # PyJWT
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
ENVOY = pathlib.Path(os.environ.get("APIGUARD_ENVOY") or REPO / ".venv" / "bin" / "envoy")
WASM = pathlib.Path(
    os.environ.get("APIGUARD_WASM") or REPO / "target" / "wasm32-wasip1" / "release" / "apiguard.wasm"
)
NOOP_WASM = pathlib.Path(
    os.environ.get("APIGUARD_NOOP_WASM")
    or REPO / "bench" / "noop-filter" / "target" / "wasm32-wasip1" / "release" / "noop_filter.wasm"
)
DEMO = REPO / "envoy" / "demo"
# A build with `--features hostcall-count` (make bench builds it): host calls per request.
WASM_COUNT = pathlib.Path(
    os.environ.get("APIGUARD_WASM_COUNT")
    or REPO / "target" / "hostcall-count" / "wasm32-wasip1" / "release" / "apiguard.wasm"
)
WASM_B = pathlib.Path(os.environ["APIGUARD_WASM_B"]) if os.environ.get("APIGUARD_WASM_B") else None
OUT = pathlib.Path(os.environ.get("BENCH_OUT") or REPO / "bench" / "results")

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
NTOKENS = int(os.environ.get("BENCH_TOKENS", "10000"))
CONNECTIONS = 16
ENVOY_CPU = "0"
WRK_CPU = "1"

ISSUER = "https://issuer.demo.apiguard"
AUDIENCE = "api.demo"
SCOPE = "items:read items:write"
REQUIRED_SCOPE = "items:read"

VARIANTS = ["baseline", "native_cache", "native_nocache", "apiguard"]
GRPC_PATH = "/demo.v1.Items/Get"
# demo.v1.GetRequest{id: "42"} (e2e/grpc/demo.proto) in a gRPC length-prefixed frame.
GRPC_BODY = b"\x00" + (4).to_bytes(4, "big") + b"\x0a\x0242"
# `noop_wasm` (bench/noop-filter: a proxy-wasm filter that only returns Continue) is the
# floor any Wasm filter pays in Envoy; it runs in the public scenario only.
ALL_VARIANTS = VARIANTS + ["noop_wasm"] + (["apiguard_b"] if WASM_B else [])
SCENARIOS = {
    # name: (method, path, token set, variants)
    "rs256_one_token": ("GET", "/items", "rs256_one", VARIANTS),
    "rs256_10k_tokens": ("GET", "/items", "rs256_many", VARIANTS),
    "es256_10k_tokens": ("GET", "/items", "es256_many", VARIANTS),
    # The same 10k RS256 tokens with one shared bucket, like the native chain's single
    # local_ratelimit bucket (the scenario above keys apiguard's limit by `sub`: each new
    # token is also a new bucket, which the native chain cannot express).
    "rs256_10k_tokens_one_bucket": ("GET", "/items-one-bucket", "rs256_many",
                                    ["baseline", "native_cache", "apiguard"]),
    "post_1k_json_schema": ("POST", "/items", None, ["baseline", "apiguard"]),
    # A public route: no credential, no limit, no validation. What is left is the fixed cost
    # of running the Wasm filter at all (VM call, header map, routing, decision record).
    "public_get_no_auth": ("GET", "/public", None, ["baseline", "noop_wasm", "apiguard"]),
    # Moderate load: one connection, one request at a time. Envoy is mostly idle, so p50 is
    # the latency a request sees, and apiguard's p50 minus the baseline's is what it adds.
    "rs256_one_token_1conn": ("GET", "/items", "rs256_one", VARIANTS),
    # A global limit: one ShouldRateLimit call per request to apiguard-rls (rls/, release
    # build) over Redis, both pinned to the load generator's CPU. Compare with
    # public_get_no_auth: the difference is what the call adds.
    "public_get_global": ("GET", "/global", None, ["baseline", "apiguard"]),
    # A local limit in front of the global one (both admit): the local bucket's cost on
    # top of the call.
    "public_get_local_global": ("GET", "/local-global", None, ["baseline", "apiguard"]),
    # gRPC unary over HTTP/2 (h2load, 16 connections, 1 stream each), token reused.
    "grpc_unary_rs256_one_token": ("POST", GRPC_PATH, "rs256_one", VARIANTS),
}
GLOBAL_SCENARIOS = {"public_get_global", "public_get_local_global"}
# Scenarios driven by h2load (HTTP/2, gRPC headers and a framed protobuf body) instead of wrk.
H2LOAD_SCENARIOS = {"grpc_unary_rs256_one_token"}
RLS_BIN = pathlib.Path(os.environ.get("APIGUARD_RLS")
                       or REPO / "rls" / "target" / "release" / "apiguard-rls")
# Set by main() when a global scenario runs: the RLS port apiguard's `rls` cluster targets.
RLS_PORT: int | None = None
RLS_CONFIG = """domain: bench
descriptors:
  - key: limit
    value: g
    descriptors:
      - key: constant
        rate_limit: {unit: second, requests_per_unit: 4000000000}
"""
if WASM_B:
    SCENARIOS = {k: (m, p, t, vs + ["apiguard_b"] if "apiguard" in vs else vs)
                 for k, (m, p, t, vs) in SCENARIOS.items()}
if os.environ.get("BENCH_VARIANTS"):
    _keep = set(os.environ["BENCH_VARIANTS"].split(",")) | {"baseline"}
    SCENARIOS = {k: (m, p, t, [v for v in vs if v in _keep]) for k, (m, p, t, vs) in SCENARIOS.items()}
# Connections per scenario (default CONNECTIONS).
SCENARIO_CONNECTIONS = {"rs256_one_token_1conn": 1}

BODY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "price", "tags"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "price": {"type": "number", "minimum": 0},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
        "active": {"type": "boolean"},
        "description": {"type": "string", "maxLength": 2048},
        "tags": {"type": "array", "maxItems": 32,
                 "items": {"type": "string", "pattern": "^tag-[0-9]{2}-[a-z]+$"}},
        "attributes": {"type": "array", "maxItems": 32, "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "value"],
            "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}},
    },
}


def body_1k() -> bytes:
    """The same ~1 KB document benches/core.rs validates (compact JSON, exactly 1024 bytes)."""
    body = {
        "name": "widget", "price": 12.5, "quantity": 3, "active": True,
        "tags": [f"tag-{i:02d}-abcdefgh" for i in range(12)],
        "attributes": [{"key": f"attr{i}", "value": f"value-{i}-0123456789"} for i in range(8)],
        "description": "",
    }
    n = len(json.dumps(body, separators=(",", ":")))
    body["description"] = "x" * max(0, 1024 - n)
    return json.dumps(body, separators=(",", ":")).encode()


# --- tokens ---------------------------------------------------------------------------

def bench_jwks() -> dict:
    """The demo JWKS restricted to the RS256 and ES256 keys (what both stacks are given)."""
    jwks = json.loads((DEMO / "jwks.json").read_text())
    return {"keys": [k for k in jwks["keys"] if k.get("kid") in ("demo-rs256", "demo-es256")]}


def mint_tokens(alg: str, n: int) -> list[str]:
    pem = (DEMO / ("rs256.pem" if alg == "RS256" else "es256.pem")).read_bytes()
    kid = "demo-rs256" if alg == "RS256" else "demo-es256"
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    key = load_pem_private_key(pem, password=None)
    now = int(time.time())
    out = []
    for i in range(n):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i}", "scope": SCOPE,
                  "iat": now - 5, "exp": now + 3 * 3600, "jti": f"bench-{alg}-{i}"}
        out.append(pyjwt.encode(claims, key, algorithm=alg, headers={"kid": kid}))
    return out


# --- Envoy configs --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_route_config() -> dict:
    return {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"},
         "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}


def native_filters(cache: bool) -> list[dict]:
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(bench_jwks())},
        "payload_in_metadata": "jwt_payload",
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return [
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"demo": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "demo"}}],
        }},
        # The `scope` claim is a space-delimited string: require the scope as a whole word.
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"scope": {
                "permissions": [{"any": True}],
                "principals": [{"metadata": {
                    "filter": "envoy.filters.http.jwt_authn",
                    "path": [{"key": "jwt_payload"}, {"key": "scope"}],
                    "value": {"string_match": {"safe_regex": {
                        "regex": f"(.* )?{REQUIRED_SCOPE}( .*)?"}}},
                }}],
            }}},
        }},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench_rl",
            "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000,
                             "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": "rl_enabled",
                               "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": "rl_enforced",
                                "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        }},
    ]


def apiguard_policy() -> dict:
    """The bench policy; without a rate limit service running (no global scenario wanted)
    its global limit and the routes using it are left out, so a module from before global
    limits (an A/B against an older build) loads it too."""
    policy = full_apiguard_policy()
    if RLS_PORT is None:
        globals_ = {lim["name"] for lim in policy["limits"] if "global" in lim}
        policy["limits"] = [lim for lim in policy["limits"] if lim["name"] not in globals_]
        policy["routes"] = [r for r in policy["routes"] if not globals_ & set(r.get("limits", []))]
    return policy


def full_apiguard_policy() -> dict:
    return {
        "realm": "bench",
        "unmatched": "deny",
        "providers": [{"name": "demo", "issuer": ISSUER, "audiences": [AUDIENCE],
                       "jwks": {"inline": bench_jwks()}}],
        "limits": [{"name": "huge", "capacity": 1_000_000_000,
                    "refill": {"tokens": 1_000_000_000, "period_seconds": 1},
                    "key": [{"claim": "sub"}], "max_buckets": 20_000},
                   {"name": "huge_local", "capacity": 1_000_000_000,
                    "refill": {"tokens": 1_000_000_000, "period_seconds": 1},
                    "key": [{"constant": "all"}]},
                   {"name": "g", "key": [{"constant": "all"}],
                    "global": {"cluster": "rls", "domain": "bench", "timeout_ms": 1000,
                               "on_error": "deny"}}],
        "routes": [
            {"name": "public", "match": {"path": "/public", "methods": ["GET"]}, "public": True},
            {"name": "global", "match": {"path": "/global", "methods": ["GET"]}, "public": True,
             "limits": ["g"]},
            {"name": "local-global", "match": {"path": "/local-global", "methods": ["GET"]},
             "public": True, "limits": ["huge_local", "g"]},
            {"name": "list-items", "match": {"path": "/items", "methods": ["GET"]},
             "providers": ["demo"], "scopes": {"all_of": [REQUIRED_SCOPE]}, "limits": ["huge"]},
            {"name": "get-item-grpc", "match": {"grpc": {"service": "demo.v1.Items", "method": "Get"}},
             "providers": ["demo"], "scopes": {"all_of": [REQUIRED_SCOPE]}, "limits": ["huge"]},
            {"name": "list-items-one-bucket",
             "match": {"path": "/items-one-bucket", "methods": ["GET"]},
             "providers": ["demo"], "scopes": {"all_of": [REQUIRED_SCOPE]},
             "limits": ["huge_local"]},
            {"name": "create-item", "match": {"path": "/items", "methods": ["POST"]},
             "public": True,
             "validate": {"body": {"content_types": ["application/json"], "max_bytes": 4096,
                                   "schema": BODY_SCHEMA}}},
        ],
    }


def wasm_filter(name: str, module: pathlib.Path, configuration: str) -> list[dict]:
    return [{"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": name, "fail_open": False,
            "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(module)}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": configuration},
        },
    }}]


def apiguard_filters() -> list[dict]:
    return wasm_filter("apiguard", WASM, json.dumps(apiguard_policy()))


# tcmalloc's background release as the shipped configs set it (envoy/envoy.yaml), in every
# variant: memory_per_worker also measures apiguard without it (docs/performance.md, "Memory").
SHIPPED_MEMORY_RELEASE = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())[
    "memory_allocator_manager"]


def bootstrap(variant: str, port: int, admin_port: int, memory_release: bool = True) -> dict:
    filters = {
        "baseline": [],
        "native_cache": native_filters(cache=True),
        "native_nocache": native_filters(cache=False),
        "apiguard": apiguard_filters(),
        "apiguard_count": wasm_filter("apiguard", WASM_COUNT, json.dumps(apiguard_policy())),
        "apiguard_b": wasm_filter("apiguard", WASM_B, json.dumps(apiguard_policy())) if WASM_B else [],
        "noop_wasm": wasm_filter("noop", NOOP_WASM, ""),
    }[variant]
    # The buffer filter (in every variant, so it costs all the same) holds the request until
    # its body is complete: without it the router's direct_response answers at the headers
    # and apiguard's body validation (which runs in the body phase) could not refuse anything.
    # Bodiless GETs pass it at once.
    filters = filters + [{"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 65536}}]
    filters = filters + [{"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    clusters = []
    if variant in ("apiguard", "apiguard_b", "apiguard_count") and RLS_PORT:
        clusters.append({
            "name": "rls", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "rls", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": RLS_PORT}}}}]}]},
        })
    release = {"memory_allocator_manager": SHIPPED_MEMORY_RELEASE} if memory_release else {}
    return {
        **release,
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"clusters": clusters, "listeners": [{
            "name": "bench",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "normalize_path": True, "merge_slashes": True,
                    "route_config": direct_route_config(),
                    "http_filters": filters,
                }}]}],
        }]},
    }


class EnvoyProc:
    def __init__(self, variant: str, workdir: pathlib.Path, concurrency: int = 1,
                 cpus: str = ENVOY_CPU, memory_release: bool = True):
        self.variant = variant
        self.port = free_port()
        self.admin = free_port()
        name = f"{variant}-c{concurrency}"
        cfg = workdir / f"{name}.json"
        cfg.write_text(json.dumps(bootstrap(variant, self.port, self.admin, memory_release)))
        self.log = open(workdir / f"{name}.log", "wb")
        # taskset execs Envoy, so this pid is Envoy's.
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpus, str(ENVOY), "-c", str(cfg), "--concurrency", str(concurrency),
             "--log-level", "warn", "--disable-hot-restart"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.logpath = workdir / f"{name}.log"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant}: Envoy exited\n{self.logpath.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.variant}: not ready\n{self.logpath.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time Envoy has used (all its threads), from /proc/<pid>/stat.
        Per request it is what the filter chain costs Envoy itself, which other load on a
        shared machine disturbs far less than requests per second."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def memory_per_worker(work: pathlib.Path, variants: list[str]) -> dict:
    """VmRSS with 1, 2 and 4 workers (each worker runs its own Wasm VM): (4 - 1) / 3 is
    what one more worker costs. Idle Envoys, after a few requests and 3 s (the shipped
    tcmalloc release gives back 16 MiB a second). `apiguard_no_release` is apiguard with
    Envoy's default allocator settings (nothing released)."""
    out = {}
    for v in variants + (["apiguard_no_release"] if "apiguard" in variants else []):
        rss = {}
        for n in (1, 2, 4):
            e = EnvoyProc(v.removesuffix("_no_release"), work, concurrency=n, cpus="0-1",
                          memory_release=v != "apiguard_no_release")
            try:
                e.wait_ready()
                for _ in range(20):
                    request(e.port, "GET", "/public", {})
                time.sleep(3.0)
                rss[n] = e.rss_kb()
            finally:
                e.stop()
        out[v] = {"workers_1": rss[1], "workers_2": rss[2], "workers_4": rss[4],
                  "per_worker": (rss[4] - rss[1]) // 3}
    return out


def host_calls(work: pathlib.Path, wanted: list[str], token_lists: dict, body: bytes) -> dict:
    """Host calls per request of each scenario, from the `hostcall-count` build's counters
    (`apiguard.debug.hostcalls` / `apiguard.debug.requests`): REQUESTS requests one at a
    time, after one warm-up request (so a reused token is cached as in the load runs, and
    each rotated token is seen once: a cache miss, as in the load runs)."""
    if not WASM_COUNT.exists():
        print(f"{WASM_COUNT} missing: no host-call counts (make bench builds it)", file=sys.stderr)
        return {}
    requests = 200
    e = EnvoyProc("apiguard_count", work)
    out = {}
    consumed = {}  # tokens of a set already sent: a later scenario rotates through new ones
    try:
        e.wait_ready()
        for sc in wanted:
            method, path, tokens, variants = SCENARIOS[sc]
            if "apiguard" not in variants or sc.endswith("_1conn"):
                continue
            toks = token_lists[tokens] if tokens else [None]
            start = consumed.get(tokens, 0)
            consumed[tokens] = start + requests + 1

            def one(i: int) -> None:
                tok = toks[(start + i) % len(toks)]
                headers = {"Authorization": f"Bearer {tok}"} if tok else {}
                if method == "POST":
                    headers["Content-Type"] = "application/json"
                request(e.port, method, path, headers, body if method == "POST" else None)
            one(0)
            before = admin_stats(e.admin, "apiguard.debug")
            for i in range(1, requests + 1):
                one(i)
            after = admin_stats(e.admin, "apiguard.debug")
            calls = after.get("wasmcustom.apiguard.debug.hostcalls", 0) - before.get(
                "wasmcustom.apiguard.debug.hostcalls", 0)
            reqs = after.get("wasmcustom.apiguard.debug.requests", 0) - before.get(
                "wasmcustom.apiguard.debug.requests", 0)
            if reqs:
                out[sc] = round(calls / reqs, 2)
    finally:
        e.stop()
    return out


def request(port: int, method: str, path: str, headers: dict, body: bytes | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def admin_stats(admin_port: int, contains: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?format=json", timeout=5) as r:
            stats = json.load(r)["stats"]
    except (OSError, ValueError, KeyError):
        return {}
    return {s["name"]: s["value"] for s in stats if contains in s.get("name", "") and "value" in s}


# --- wrk ------------------------------------------------------------------------------

LUA = r'''
local reqs = {}
local n = 0
local i = 0

function init(args)
  local method = os.getenv("BENCH_METHOD")
  local path = os.getenv("BENCH_PATH")
  local body = nil
  local bf = os.getenv("BENCH_BODY") or ""
  if bf ~= "" then
    local f = io.open(bf, "rb"); body = f:read("*a"); f:close()
  end
  local tf = os.getenv("BENCH_TOKEN_FILE") or ""
  if tf ~= "" then
    for line in io.lines(tf) do
      if #line > 0 then
        n = n + 1
        reqs[n] = wrk.format(method, path, {["Authorization"] = "Bearer " .. line}, body)
      end
    end
  else
    local h = {}
    if body then h["Content-Type"] = "application/json" end
    n = 1
    reqs[1] = wrk.format(method, path, h, body)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"mean_us\": %.1f, \"max_us\": %d, \"errors_connect\": %d, \"errors_read\": %d, \"errors_write\": %d, \"errors_timeout\": %d, \"errors_status\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status))
end
'''


def run_wrk(port: int, seconds: int, env: dict, lua: pathlib.Path, path: str,
            connections: int = CONNECTIONS) -> dict:
    cmd = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "--timeout", "5s", "-s", str(lua), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            r = json.loads(line.removeprefix("BENCH_RESULT "))
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            return r
    raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")


def run_h2load(port: int, seconds: int, token_file: pathlib.Path, body: pathlib.Path,
               path: str, workdir: pathlib.Path, connections: int = CONNECTIONS) -> dict:
    """One gRPC unary scenario with h2load; the same result keys as `run_wrk` (percentiles
    from h2load's per-request log: start, status, duration in µs)."""
    token = token_file.read_text().split()[0]
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to an existing log file
    cmd = ["taskset", "-c", WRK_CPU, "h2load", "-t1", f"-c{connections}", "-m1",
           "-D", str(seconds), "-d", str(body), "--log-file", str(log),
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           "-H", f"authorization: Bearer {token}", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    durations, non_2xx = [], 0
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            durations.append(int(parts[2]))
            non_2xx += not parts[1].startswith("2")
    if not durations:
        raise RuntimeError(f"h2load failed: {out.stdout}\n{out.stderr}")
    durations.sort()

    def pct(q: float) -> int:
        return durations[min(len(durations) - 1, int(q * len(durations)))]

    m = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out.stdout)
    failed = sum(int(x) for x in m.groups()) if m else 0
    return {"requests": len(durations), "duration_us": seconds * 1_000_000,
            "rps": len(durations) / seconds, "p50_us": pct(0.50), "p90_us": pct(0.90),
            "p99_us": pct(0.99), "mean_us": sum(durations) / len(durations),
            "max_us": durations[-1], "errors_connect": 0, "errors_read": 0,
            "errors_write": 0, "errors_timeout": failed, "errors_status": non_2xx}


def grpc_status(port: int, path: str, token: str | None) -> tuple[int, str | None]:
    """(HTTP status, grpc-status header) of one gRPC-framed POST over HTTP/1.1: a denial is
    HTTP 200 with grpc-status, so the status code alone cannot tell."""
    headers = {"content-type": "application/grpc", "te": "trailers"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=GRPC_BODY,
                                 method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("grpc-status")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("grpc-status")


# --- report ---------------------------------------------------------------------------

def summarize(raw: list[dict]) -> dict:
    """Median over rounds of rps, p50, p99 per (scenario, variant)."""
    out: dict = {}
    for r in raw:
        out.setdefault(r["scenario"], {}).setdefault(r["variant"], []).append(r)
    summary = {}
    for sc, by_v in out.items():
        summary[sc] = {}
        for v, rs in by_v.items():
            summary[sc][v] = {
                "rps": statistics.median(x["rps"] for x in rs),
                "rps_min": min(x["rps"] for x in rs),
                "rps_max": max(x["rps"] for x in rs),
                "p50_ms": statistics.median(x["p50_us"] for x in rs) / 1000,
                "p99_ms": statistics.median(x["p99_us"] for x in rs) / 1000,
                "cpu_us_per_req": (statistics.median(x["cpu_us_per_req"] for x in rs)
                                   if all("cpu_us_per_req" in x for x in rs) else None),
                "rounds": len(rs),
                "non_2xx": sum(x["errors_status"] for x in rs),
                "socket_errors": sum(x["errors_connect"] + x["errors_read"] + x["errors_write"]
                                     + x["errors_timeout"] for x in rs),
            }
        ratios = {}
        for mine in ("apiguard", "apiguard_b"):
            ag = summary[sc].get(mine)
            if not ag:
                continue
            for other in ("baseline", "native_cache", "native_nocache"):
                if other in summary[sc]:
                    ratios[f"{mine}/{other}"] = ag["rps"] / summary[sc][other]["rps"]
            if mine == "apiguard_b" and "apiguard" in summary[sc]:
                ratios["apiguard_b/apiguard"] = ag["rps"] / summary[sc]["apiguard"]["rps"]
        summary[sc]["ratios_rps"] = ratios
    return summary


def write_markdown(meta: dict, summary: dict) -> str:
    lines = [
        "# apiguard benchmark: Envoy baseline vs native filters vs apiguard",
        "",
        f"Generated by `make bench` (bench/run.py) at {meta['timestamp']}, commit `{meta['git']}`.",
        f"Envoy `{meta['envoy_version']}`, `--concurrency 1` pinned to CPU {ENVOY_CPU}; "
        f"wrk 1 thread / {CONNECTIONS} connections (1 in `*_1conn`) pinned to CPU {WRK_CPU}; "
        f"{meta['rounds']} interleaved rounds of {meta['warmup_s']} s warm-up + {meta['seconds']} s "
        "measured; medians over rounds. Every route is a `direct_response` (no upstream), behind "
        "`envoy.filters.http.buffer` in every variant (so a POST body is complete before the "
        "direct response, and apiguard's body validation really runs).",
        "",
        "`µs/req over baseline` is 1/throughput minus the baseline's 1/throughput: the CPU time "
        "one request costs the single Envoy worker beyond routing a bare request.",
        "",
        "| scenario | variant | req/s (median) | req/s min..max | µs/req over baseline | Envoy CPU µs/req (over baseline) | p50 ms | p99 ms | non-2xx |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sc, by_v in summary.items():
        base = by_v.get("baseline")
        for v in ALL_VARIANTS:
            if v in by_v:
                s = by_v[v]
                extra = f"{1e6 / s['rps'] - 1e6 / base['rps']:.1f}" if base and v != "baseline" else "–"
                cpu = s.get("cpu_us_per_req")
                cpu_text = "–" if cpu is None else f"{cpu:.1f}"
                if cpu is not None and base and base.get("cpu_us_per_req") is not None and v != "baseline":
                    cpu_text += f" ({cpu - base['cpu_us_per_req']:+.1f})"
                lines.append(f"| {sc} | {v} | {s['rps']:,.0f} | {s['rps_min']:,.0f}..{s['rps_max']:,.0f} "
                             f"| {extra} | {cpu_text} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['non_2xx']} |")
    lines += ["", "Throughput ratios (apiguard req/s divided by the other's):", "",
              "| scenario | apiguard/baseline | apiguard/native_cache | apiguard/native_nocache |",
              "| --- | ---: | ---: | ---: |"]
    for sc, by_v in summary.items():
        r = by_v["ratios_rps"]
        cell = lambda k: f"{r[k]:.2f}" if k in r else "n/a"  # noqa: E731
        lines.append(f"| {sc} | {cell('apiguard/baseline')} | {cell('apiguard/native_cache')} "
                     f"| {cell('apiguard/native_nocache')} |")
    if WASM_B:
        lines += ["", "A/B (`apiguard_b` req/s divided by `apiguard`'s, same rounds):", "",
                  "| scenario | apiguard_b/apiguard | apiguard_b/native_cache |", "| --- | ---: | ---: |"]
        for sc, by_v in summary.items():
            r = by_v["ratios_rps"]
            cell = lambda k: f"{r[k]:.2f}" if k in r else "n/a"  # noqa: E731
            lines.append(f"| {sc} | {cell('apiguard_b/apiguard')} | {cell('apiguard_b/native_cache')} |")
    one = summary.get("rs256_one_token_1conn")
    if one and "baseline" in one:
        base = one["baseline"]["p50_ms"] * 1000
        lines += ["", "Latency added at moderate load (`rs256_one_token_1conn`: one connection, "
                  f"one request at a time; baseline p50 {base:.0f} µs):", "",
                  "| variant | p50 µs | p50 over baseline µs |", "| --- | ---: | ---: |"]
        for v in ALL_VARIANTS:
            if v in one and v != "baseline":
                p50 = one[v]["p50_ms"] * 1000
                lines.append(f"| {v} | {p50:.0f} | {p50 - base:.0f} |")
    lines += ["", "Memory and size:", "",
              "| variant | VmRSS after start (KiB) | VmRSS after the run (KiB) |",
              "| --- | ---: | ---: |"]
    for v in ALL_VARIANTS:
        if v in meta["rss_kb"]:
            m = meta["rss_kb"][v]
            lines.append(f"| {v} | {m['start']:,} | {m['end']:,} |")
    if meta.get("rss_per_worker_kb"):
        lines += ["", "Memory per worker (idle Envoy, VmRSS with 1, 2 and 4 workers; each worker "
                  "runs its own Wasm VM):", "",
                  "| variant | 1 worker (KiB) | 2 workers (KiB) | 4 workers (KiB) | each added worker (KiB) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for v, m in meta["rss_per_worker_kb"].items():
            lines.append(f"| {v} | {m['workers_1']:,} | {m.get('workers_2', 0):,} | {m['workers_4']:,} "
                         f"| {m['per_worker']:,} |")
    lines += ["", "## footprint", "",
              "Per-sidecar figures against the goals of issue 14 (module size, memory, "
              "speed, host calls; `host calls per request` comes from a `hostcall-count` "
              "build of the same commit, 200 requests per scenario):", ""]
    lines += footprint_lines(meta, summary)
    if WASM_B:
        lines += ["", f"Same figures for `apiguard_b` ({WASM_B}):", ""]
        lines += footprint_lines(meta, summary, "apiguard_b")
    lines += ["", f"apiguard.wasm: {meta['wasm_bytes']:,} bytes.", "",
              "Variants: `baseline` = no filter but the router; `native_*` = jwt_authn (local_jwks, "
              "with / without `jwt_cache_config` size 100) + rbac (scope word from "
              "`payload_in_metadata`, RE2) + local_ratelimit (global bucket of 1e9); `apiguard` = "
              "apiguard.wasm (V8): provider with inline JWKS, route `scopes.all_of`, limit of "
              "capacity 1e9 keyed by `sub` (shared-data CAS). apiguard's token cache holds 1024 "
              "tokens per worker, native's 100: 10,000 rotated tokens miss both caches. `noop_wasm` = "
              "bench/noop-filter (proxy-wasm, returns Continue): what any Wasm filter costs.", ""]
    if meta.get("apiguard_stats"):
        lines += ["apiguard counters after the run: " + ", ".join(
            f"`{k}` {v:,}" for k, v in sorted(meta["apiguard_stats"].items())), ""]
    if meta.get("native_cache_stats"):
        lines += ["native_cache counters after the run: " + ", ".join(
            f"`{k}` {v:,}" for k, v in sorted(meta["native_cache_stats"].items())), ""]
    if meta.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    return "\n".join(lines)


def footprint_lines(meta: dict, summary: dict, variant: str = "apiguard") -> list[str]:
    """The per-sidecar figures of issue 14 against their goals."""
    def over_base(sc: str) -> float | None:
        by_v = summary.get(sc, {})
        if variant in by_v and "baseline" in by_v:
            return 1e6 / by_v[variant]["rps"] - 1e6 / by_v["baseline"]["rps"]
        return None

    def fmt(v, pattern: str) -> str:
        return "n/a" if v is None else pattern.format(v)

    def cpu(sc: str, v: str) -> float | None:
        return summary.get(sc, {}).get(v, {}).get("cpu_us_per_req")

    def cpu_over_base(sc: str) -> str:
        mine, base = cpu(sc, variant), cpu(sc, "baseline")
        return "" if mine is None or base is None else f"; Envoy CPU {mine - base:+.1f}"

    def cpu_ratio(sc: str) -> str:
        mine, native = cpu(sc, variant), cpu(sc, "native_cache")
        return "" if not mine or native is None else f" (CPU {native / mine:.2f})"

    def ok(v, goal_ok) -> str:
        return "–" if v is None else ("met" if goal_ok(v) else "**not met**")

    mem = meta.get("rss_per_worker_kb", {})
    rows = []
    size = meta["wasm_bytes"] if variant == "apiguard" else meta.get("wasm_b_bytes")
    rows.append(("module size (bytes)", fmt(size, "{:,}"), "≤ 1,000,000", ok(size, lambda v: v <= 1_000_000)))
    for n in (1, 2):
        ag, noop = mem.get(variant, {}).get(f"workers_{n}"), mem.get("noop_wasm", {}).get(f"workers_{n}")
        extra = None if ag is None or noop is None else (ag - noop) / 1024
        rows.append((f"Envoy VmRSS, `--concurrency {n}` (MB; over no-op Wasm)",
                     "n/a" if ag is None else f"{ag / 1024:.0f} ({fmt(extra, '{:+.0f}')})",
                     "≤ no-op + 20", ok(extra, lambda v: v <= 20)))
    unreleased = mem.get("apiguard_no_release", {}).get("workers_1")
    if variant == "apiguard" and unreleased:
        rows.append(("same, `--concurrency 1`, without the shipped tcmalloc release (MB)",
                     f"{unreleased / 1024:.0f}", "–", "–"))
    if variant in mem:
        rows.append(("each added worker (MB)", f"{mem[variant]['per_worker'] / 1024:.1f}", "–", "–"))
    for sc, label in (("rs256_one_token", "reused RS256 token"),
                      ("rs256_10k_tokens", "10k rotated RS256 tokens"),
                      ("rs256_10k_tokens_one_bucket", "10k rotated RS256 tokens, one bucket"),
                      ("es256_10k_tokens", "10k rotated ES256 tokens")):
        by_v = summary.get(sc, {})
        r = by_v[variant]["rps"] / by_v["native_cache"]["rps"] if variant in by_v and "native_cache" in by_v else None
        rows.append((f"{label}: req/s vs native chain with cache (Envoy CPU per request, native / apiguard)",
                     fmt(r, "{:.2f}") + cpu_ratio(sc), "≥ 1.0", ok(r, lambda v: v >= 1.0)))
    noop = over_base("public_get_no_auth")
    by_v = summary.get("public_get_no_auth", {})
    noop_us = (1e6 / by_v["noop_wasm"]["rps"] - 1e6 / by_v["baseline"]["rps"]
               if "noop_wasm" in by_v and "baseline" in by_v else None)
    noop_cpu, base_cpu = cpu("public_get_no_auth", "noop_wasm"), cpu("public_get_no_auth", "baseline")
    noop_cpu_text = "" if noop_cpu is None or base_cpu is None else f"; Envoy CPU {noop_cpu - base_cpu:+.1f}"
    rows.append(("public GET, µs/req over baseline (no-op Wasm)",
                 f"{fmt(noop, '{:.1f}')}{cpu_over_base('public_get_no_auth')} "
                 f"({fmt(noop_us, '{:.1f}')}{noop_cpu_text})", "≤ 8", ok(noop, lambda v: v <= 8)))
    one = summary.get("rs256_one_token_1conn", {})
    p50 = (one[variant]["p50_ms"] - one["baseline"]["p50_ms"]) * 1000 if variant in one and "baseline" in one else None
    p50n = (one["native_cache"]["p50_ms"] - one["baseline"]["p50_ms"]) * 1000 if "native_cache" in one and "baseline" in one else None
    rows.append(("one connection, p50 µs over baseline (native chain)",
                 f"{fmt(p50, '{:.0f}')} ({fmt(p50n, '{:.0f}')})", "≤ 20", ok(p50, lambda v: v <= 20)))
    post = over_base("post_1k_json_schema")
    rows.append(("POST 1 KB JSON + schema, µs/req over baseline",
                 fmt(post, "{:.1f}") + cpu_over_base("post_1k_json_schema"), "≤ 20", ok(post, lambda v: v <= 20)))
    calls = meta.get("host_calls") or {}
    if calls:
        rows.append(("host calls per request (" + ", ".join(calls) + ")",
                     " / ".join(f"{v:g}" for v in calls.values()), "fewer", "–"))
    lines = ["| figure | measured | goal | |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def write_chart(summary: dict, path: pathlib.Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install -r bench/requirements.txt)", file=sys.stderr)
        return
    scenarios = list(summary)
    colors = {"baseline": "#9e9e9e", "native_cache": "#1f77b4", "native_nocache": "#aec7e8",
              "apiguard": "#d62728", "noop_wasm": "#ff9896", "apiguard_b": "#8c564b"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.16
    for ax, key, title in ((axes[0], "rps", "requests/s (median, higher is better)"),
                           (axes[1], "p99_ms", "p99 latency ms (lower is better)")):
        for j, v in enumerate(ALL_VARIANTS):
            xs, ys = [], []
            for i, sc in enumerate(scenarios):
                if v in summary[sc]:
                    xs.append(i + (j - 2) * width)
                    ys.append(summary[sc][v][key])
            ax.bar(xs, ys, width, label=v, color=colors[v])
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios, rotation=15, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Envoy 1 worker: baseline vs native jwt_authn+rbac+local_ratelimit vs apiguard")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main -----------------------------------------------------------------------------

def start_rls(work: pathlib.Path) -> tuple[list[subprocess.Popen], int]:
    """redis-server and apiguard-rls on free ports, on the load generator's CPU."""
    if not RLS_BIN.exists():
        sys.exit(f"{RLS_BIN} missing: make bench builds it")
    redis_port, rls_port = free_port(), free_port()
    (work / "rls.yaml").write_text(RLS_CONFIG)
    out = open(work / "services.log", "wb")
    procs = [subprocess.Popen(
        ["taskset", "-c", WRK_CPU, "redis-server", "--bind", "127.0.0.1", "--port",
         str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)]
    time.sleep(0.5)
    procs.append(subprocess.Popen(
        ["taskset", "-c", WRK_CPU, str(RLS_BIN), "--config", str(work / "rls.yaml"),
         "--listen", f"127.0.0.1:{rls_port}", "--redis", f"redis://127.0.0.1:{redis_port}"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", rls_port), timeout=0.5).close()
            return procs, rls_port
        except OSError:
            time.sleep(0.1)
    sys.exit(f"apiguard-rls did not start: {(work / 'services.log').read_text()[-2000:]}")


def main() -> int:
    if not ENVOY.exists():
        sys.exit(f"{ENVOY} missing: make deps")
    if not WASM.exists():
        sys.exit(f"{WASM} missing: make wasm")
    if not NOOP_WASM.exists():
        sys.exit(f"{NOOP_WASM} missing: make bench builds it")
    if shutil.which("wrk") is None:
        sys.exit("wrk missing: apt-get install -y wrk")
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; Envoy and wrk share a core", file=sys.stderr)

    wanted = [s for s in os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(",") if s]
    OUT.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="apiguard-bench-"))
    print(f"minting tokens ({NTOKENS} RS256, {NTOKENS} ES256) ...", flush=True)
    t0 = time.time()
    rs_many = mint_tokens("RS256", NTOKENS)
    es_many = mint_tokens("ES256", NTOKENS)
    token_files = {}
    for name, toks in (("rs256_one", rs_many[:1]), ("rs256_many", rs_many), ("es256_many", es_many)):
        p = work / f"{name}.txt"
        p.write_text("\n".join(toks) + "\n")
        token_files[name] = p
    print(f"  {time.time() - t0:.1f} s", flush=True)
    body_path = work / "body.json"
    body_path.write_bytes(body_1k())
    grpc_body_path = work / "grpc_body.bin"
    grpc_body_path.write_bytes(GRPC_BODY)
    if any(s in H2LOAD_SCENARIOS for s in wanted) and shutil.which("h2load") is None:
        sys.exit("h2load missing: apt-get install -y nghttp2-client")
    lua = work / "bench.lua"
    lua.write_text(LUA)

    envoy_version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True
                                   ).stdout.strip().split("version:")[-1].strip()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    meta = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": git,
            "envoy_version": envoy_version, "rounds": ROUNDS, "seconds": SECONDS,
            "warmup_s": WARMUP, "connections": CONNECTIONS, "tokens": NTOKENS,
            "wasm_bytes": WASM.stat().st_size, "rss_kb": {}, "notes": []}
    if WASM_B:
        meta["wasm_b_bytes"] = WASM_B.stat().st_size

    global RLS_PORT
    services: list[subprocess.Popen] = []
    if GLOBAL_SCENARIOS & set(wanted):
        services, RLS_PORT = start_rls(work)
        meta["notes"].append("global scenarios: apiguard-rls (release) and redis-server pinned "
                             f"to CPU {WRK_CPU} with wrk")

    envoys: dict[str, EnvoyProc] = {}
    raw: list[dict] = []
    needed = [v for v in ALL_VARIANTS if any(v in SCENARIOS[s][3] for s in wanted)
              or v in ("baseline", "apiguard")]
    try:
        for v in needed:
            envoys[v] = EnvoyProc(v, work)
        for v, e in envoys.items():
            e.wait_ready()
        time.sleep(1.0)
        for v, e in envoys.items():
            meta["rss_kb"][v] = {"start": e.rss_kb()}

        # Sanity: every variant answers 200 to a good request and the guarded ones refuse
        # a request without a token (so the filters really run).
        good = {"Authorization": f"Bearer {rs_many[0]}"}
        for v, e in envoys.items():
            st = request(e.port, "GET", "/items", good)
            no = request(e.port, "GET", "/items", {})
            print(f"  {v}: GET with token -> {st}, without -> {no}", flush=True)
            if st != 200 or (v not in ("baseline", "noop_wasm") and no not in (401, 403)):
                raise RuntimeError(f"{v}: sanity check failed ({st}, {no})\n"
                                   f"{e.logpath.read_text()[-3000:]}")
        for v in [x for x in ("baseline", "apiguard", "apiguard_b") if x in envoys]:
            st = request(envoys[v].port, "POST", "/items", {"Content-Type": "application/json"},
                         body_1k())
            bad = request(envoys[v].port, "POST", "/items", {"Content-Type": "application/json"},
                          b'{"name": 1}')
            print(f"  {v}: POST valid -> {st}, invalid -> {bad}", flush=True)
            if st != 200 or (v != "baseline" and bad != 400):
                raise RuntimeError(f"{v}: POST sanity check failed ({st}, {bad})")

        if RLS_PORT:
            for path in ("/global", "/local-global"):
                st = request(envoys["apiguard"].port, "GET", path, {})
                print(f"  apiguard: GET {path} -> {st}", flush=True)
                if st != 200:
                    raise RuntimeError(f"global limit sanity check failed ({st})")
        if any(s in H2LOAD_SCENARIOS for s in wanted):
            # gRPC: a denial is HTTP 200 + grpc-status 16; an allowed call reaches the
            # router's direct_response, which Envoy answers to gRPC as grpc-status 2 (its
            # mapping of HTTP 200 in a local reply).
            for v, e in envoys.items():
                ok = grpc_status(e.port, GRPC_PATH, rs_many[0])
                no = grpc_status(e.port, GRPC_PATH, None)
                print(f"  {v}: gRPC with token -> {ok}, without -> {no}", flush=True)
                if ok != (200, "2") or (v not in ("baseline", "noop_wasm") and no[1] != "16"):
                    raise RuntimeError(f"{v}: gRPC sanity check failed ({ok}, {no})")

        total = sum(len(SCENARIOS[s][3]) for s in wanted) * ROUNDS * (SECONDS + WARMUP)
        print(f"running {ROUNDS} rounds, ~{total} s of load ...", flush=True)
        for rnd in range(ROUNDS):
            for sc in wanted:
                method, path, tokens, variants = SCENARIOS[sc]
                env = {"BENCH_METHOD": method, "BENCH_PATH": path,
                       "BENCH_TOKEN_FILE": str(token_files[tokens]) if tokens else "",
                       "BENCH_BODY": str(body_path) if method == "POST" else ""}
                # Rotate the order each round so no variant always runs first.
                order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
                for v in order:
                    port = envoys[v].port
                    conns = SCENARIO_CONNECTIONS.get(sc, CONNECTIONS)
                    if sc in H2LOAD_SCENARIOS:
                        for secs in (WARMUP, SECONDS):
                            r = run_h2load(port, secs, token_files[tokens], grpc_body_path,
                                           path, work, conns)
                    else:
                        run_wrk(port, WARMUP, env, lua, path, conns)
                        cpu_before = envoys[v].cpu_seconds()
                        r = run_wrk(port, SECONDS, env, lua, path, conns)
                        r["cpu_us_per_req"] = ((envoys[v].cpu_seconds() - cpu_before) * 1e6
                                               / max(r["requests"], 1))
                    r.update({"scenario": sc, "variant": v, "round": rnd})
                    raw.append(r)
                    print(f"  round {rnd} {sc:22s} {v:15s} {r['rps']:>9,.0f} req/s  "
                          f"p50 {r['p50_us'] / 1000:.3f} ms  p99 {r['p99_us'] / 1000:.3f} ms  "
                          f"CPU {r.get('cpu_us_per_req', 0):.1f} µs/req  "
                          f"non-2xx {r['errors_status']}", flush=True)
        for v, e in envoys.items():
            meta["rss_kb"][v]["end"] = e.rss_kb()
        meta["apiguard_stats"] = admin_stats(envoys["apiguard"].admin, "apiguard.jwt")
        if "native_cache" in envoys:
            meta["native_cache_stats"] = admin_stats(envoys["native_cache"].admin, "jwt_authn")
        print("host calls per request ...", flush=True)
        meta["host_calls"] = host_calls(
            work, wanted, {"rs256_one": rs_many[:1], "rs256_many": rs_many, "es256_many": es_many},
            body_1k())
    finally:
        for e in envoys.values():
            e.stop()
        for p in services:
            p.terminate()
            p.wait(10)
    print("memory per worker ...", flush=True)
    meta["rss_per_worker_kb"] = memory_per_worker(
        work, [v for v in ("baseline", "native_cache", "noop_wasm", "apiguard", "apiguard_b")
               if v in needed])

    summary = summarize(raw)
    if any(s.get("non_2xx") for by_v in summary.values() for k, s in by_v.items()
           if k != "ratios_rps"):
        meta["notes"].append("some runs saw non-2xx responses: see results.json")
    (OUT / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": raw}, indent=2) + "\n")
    (OUT / "results.md").write_text(write_markdown(meta, summary))
    write_chart(summary, OUT / "results.png")
    print((OUT / "results.md").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
