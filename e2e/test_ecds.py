"""Policy updates through ECDS (Extension Config Discovery) from a watched file, on the real
Envoy: the HTTP filter is `config_discovery` with a `path_config_source`, the apiguard Wasm
config lives in a separate resource file that the test replaces by atomic rename while
traffic flows.

Checked:
- the committed envoy/ecds/envoy.yaml + apiguard-filter.yaml start and serve the demo policy
  (paths and ports rewritten to a temp dir / port 0), and apiguard-filter.yaml is rendered
  from envoy/demo/policy.yaml;
- a policy swap under ~20 req/s (a keep-alive connection and fresh connections) takes effect
  without a restart and without a single 5xx or connection error;
- rate-limit buckets survive an update that leaves the limit unchanged;
- an invalid policy is rejected by Envoy (`extension_config_discovery.http_filter.apiguard.
  config_fail` / `update_rejected`), the previous policy keeps serving, and the log names
  the offending field's JSON path.

The harness's `Envoy` builds a static Wasm filter; `EcdsEnvoy` below subclasses it and only
swaps that filter for `config_discovery`.
"""

from __future__ import annotations

import copy
import http.client
import importlib.util
import json
import os
import pathlib
import re
import threading
import time

import pytest
import yaml

from harness import tokens
from harness.checks import bearer, echoed, problem, wait_until
from harness.envoy import Envoy

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

REPO = pathlib.Path(__file__).resolve().parents[1]
ECDS = REPO / "envoy" / "ecds"
ISS = "https://issuer.ecds"
AUD = "api"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STAT = "extension_config_discovery.http_filter.apiguard."


def _render_module():
    spec = importlib.util.spec_from_file_location("ecds_render", ECDS / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _render_module()


def write_atomically(path: pathlib.Path, text: str) -> None:
    """The only safe way to update a watched ECDS file: a complete file in the same
    directory, then rename(2) over the old one (Envoy sees IN_MOVED_TO and reads it once)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EcdsEnvoy(Envoy):
    """An Envoy whose apiguard filter comes from ECDS (a watched file in `ecds_dir`)."""

    def __init__(self, policy, **kw):
        super().__init__(policy, **kw)
        self.ecds_dir = self.dir / "ecds"
        self.ecds_dir.mkdir(exist_ok=True)
        self.resource_path = self.ecds_dir / "apiguard-filter.yaml"

    def resource_text(self, policy) -> str:
        if isinstance(policy, dict):
            policy = json.dumps(policy)
        return render.dump(render.resource(policy, wasm=str(self.wasm)))

    def push(self, policy, timeout: float = 15.0) -> str:
        """Replaces the resource file; returns 'accepted' or 'rejected' once Envoy decided."""
        before = self.ecds_stats()
        write_atomically(self.resource_path, self.resource_text(policy))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.ecds_stats()
            if now["update_rejected"] > before["update_rejected"]:
                return "rejected"
            if now["update_success"] > before["update_success"]:
                return "accepted"
            time.sleep(0.05)
        raise AssertionError(f"Envoy did not pick up the ECDS update in {timeout}s: {self.ecds_stats()}\n"
                             f"{self.log_tail()}")

    def ecds_stats(self) -> dict[str, int]:
        """`extension_config_discovery.http_filter.apiguard.*` without the prefix."""
        out = {k: 0 for k in ("update_success", "update_rejected", "config_reload", "config_fail")}
        out.update({k[len(STAT):]: v for k, v in self.stats().items() if k.startswith(STAT)})
        return out

    def launch(self):
        self.resource_path.write_text(self.resource_text(self.policy))
        return super().launch()

    def bootstrap(self):
        b = super().bootstrap()
        b["node"] = {"id": "apiguard-e2e", "cluster": "apiguard-e2e"}
        hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["http_filters"][0]["name"] == "envoy.filters.http.wasm"
        hcm["http_filters"][0] = {
            "name": "apiguard",
            "config_discovery": {
                "config_source": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": str(self.resource_path),
                        "watched_directory": {"path": str(self.ecds_dir)},
                    },
                },
                "type_urls": [WASM_TYPE],
                "apply_default_config_without_warming": False,
            },
        }
        return b


# --- policies ---------------------------------------------------------------------------

HOUR = {"tokens": 1, "period_seconds": 3600}


@pytest.fixture(scope="module")
def v1(keys) -> dict:
    return {
        "unmatched": "deny",
        "providers": [{
            "name": "main", "issuer": ISS, "audiences": [AUD],
            "jwks": {"inline": tokens.jwks(keys["HS256"], keys["ES256"])},
        }],
        "limits": [
            {"name": "five", "capacity": 5, "refill": HOUR, "key": [{"constant": "all"}]},
        ],
        "routes": [
            {"name": "open", "match": {"prefix": "/open"}, "public": True},
            {"name": "items", "match": {"prefix": "/items"}, "providers": ["main"],
             "scopes": {"all_of": ["items:read"]}},
            {"name": "reports", "match": {"prefix": "/reports"}, "providers": ["main"],
             "scopes": {"all_of": ["reports:read"]}},
            {"name": "beta", "match": {"prefix": "/beta"}, "providers": ["main"]},
            {"name": "limited", "match": {"prefix": "/limited"}, "public": True, "limits": ["five"]},
        ],
    }


def with_changes(policy: dict, **routes) -> dict:
    p = copy.deepcopy(policy)
    for r in p["routes"]:
        new = routes.get(r["name"])
        if new is not None:
            r.clear()
            r.update(new)
    return p


@pytest.fixture(scope="module")
def v2(v1) -> dict:
    """/beta becomes public, /reports now wants items:read."""
    return with_changes(
        v1,
        beta={"name": "beta", "match": {"prefix": "/beta"}, "public": True},
        reports={"name": "reports", "match": {"prefix": "/reports"}, "providers": ["main"],
                 "scopes": {"all_of": ["items:read"]}},
    )


@pytest.fixture(scope="module")
def token(keys) -> str:
    return tokens.mint("ES256", keys["ES256"],
                       tokens.claims(ISS, AUD, scope="items:read", ttl=3600))


@pytest.fixture(scope="module")
def ecds_envoy(echo, tmp_path_factory, v1):
    import conftest  # the module pytest loaded: same session snapshot of apiguard.wasm

    conftest._require_envoy()
    e = EcdsEnvoy(v1, upstream_port=echo.port, workdir=tmp_path_factory.mktemp("ecds"),
                  wasm=conftest._wasm_snapshot(tmp_path_factory), concurrency=2)
    e.start()
    yield e
    e.stop()


# --- traffic -----------------------------------------------------------------------------

class Traffic:
    """~20 req/s in two threads: one keep-alive connection (reconnects only if Envoy closes
    it) and fresh connections. Every result is kept with its time."""

    def __init__(self, envoy: Envoy, token: str, rate: float = 20.0):
        self.envoy = envoy
        self.token = token
        self.period = 2.0 / rate  # per thread
        self.results: list[tuple[float, str, object]] = []  # (t, path, status | error repr)
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(keep,), daemon=True)
                        for keep in (True, False)]
        self.reconnects = 0

    PATHS = [("/open/x", False), ("/items/1", True), ("/beta/x", False), ("/reports/1", True)]

    def _run(self, keepalive: bool):
        conn = None
        i = 0
        while not self.stop_ev.is_set():
            path, auth = self.PATHS[i % len(self.PATHS)]
            i += 1
            headers = bearer(self.token) if auth else {}
            t = time.monotonic()
            try:
                if keepalive:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.envoy.port, timeout=5)
                    conn.request("GET", path, headers=headers)
                    r = conn.getresponse()
                    r.read()
                    status: object = r.status
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                        self.reconnects += 1
                else:
                    status = self.envoy.get(path, headers, timeout=5).status
            except Exception as exc:  # connection reset, timeout, ...
                status = f"error: {exc!r}"
                if conn is not None:
                    conn.close()
                    conn = None
            with self.lock:
                self.results.append((t, path, status))
            self.stop_ev.wait(max(0.0, self.period - (time.monotonic() - t)))
        if conn is not None:
            conn.close()

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=10)

    def between(self, t0: float, t1: float):
        with self.lock:
            return [r for r in self.results if t0 <= r[0] <= t1]

    @staticmethod
    def failures(results):
        return [r for r in results if not isinstance(r[2], int) or r[2] >= 500]


# --- tests ---------------------------------------------------------------------------------

def test_committed_ecds_resource_is_rendered_from_the_demo_policy():
    assert (ECDS / "apiguard-filter.yaml").read_text() == render.render(), \
        "envoy/ecds/apiguard-filter.yaml is stale: python3 envoy/ecds/render.py"
    doc = yaml.safe_load((ECDS / "apiguard-filter.yaml").read_text())
    (res,) = doc["resources"]
    assert res["@type"] == "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    assert res["typed_config"]["@type"] == WASM_TYPE
    boot = yaml.safe_load((ECDS / "envoy.yaml").read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    f = hcm["http_filters"][0]
    assert f["name"] == res["name"] == "apiguard"
    assert f["config_discovery"]["type_urls"] == [WASM_TYPE]
    pcs = f["config_discovery"]["config_source"]["path_config_source"]
    assert pathlib.PurePath(pcs["path"]).parent == pathlib.PurePath(pcs["watched_directory"]["path"])


def test_committed_ecds_bootstrap_serves_the_demo_policy(echo, tmp_path_factory):
    """envoy/ecds/envoy.yaml as committed, with only ports (0), the upstream port and file
    paths (temp dir) rewritten."""
    import conftest

    envoy_bin = conftest._require_envoy()
    wasm = conftest._wasm_snapshot(tmp_path_factory)
    d = tmp_path_factory.mktemp("ecds-committed")
    (d / "ecds").mkdir()
    resource = (ECDS / "apiguard-filter.yaml").read_text().replace(render.WASM, wasm)
    (d / "ecds" / "apiguard-filter.yaml").write_text(resource)
    boot = yaml.safe_load((ECDS / "envoy.yaml").read_text())
    boot["admin"]["address"]["socket_address"]["port_value"] = 0
    (listener,) = boot["static_resources"]["listeners"]
    listener["name"] = "main"
    listener["address"]["socket_address"]["port_value"] = 0
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    pcs = hcm["http_filters"][0]["config_discovery"]["config_source"]["path_config_source"]
    pcs["path"] = str(d / "ecds" / "apiguard-filter.yaml")
    pcs["watched_directory"]["path"] = str(d / "ecds")
    ep = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    ep["endpoint"]["address"]["socket_address"]["port_value"] = echo.port

    class Committed(Envoy):
        def bootstrap(self):
            return boot

    e = Committed(None, upstream_port=echo.port, workdir=d, wasm=wasm, envoy_bin=envoy_bin)
    try:
        e.start()
        echoed(e.get("/healthz"))
        problem(e.get("/items/42"), 401, "missing_credentials")
        assert e.stat(STAT + "config_reload") >= 1
        assert e.stat(STAT + "config_fail") == 0
    finally:
        e.stop()


def test_policy_swap_under_traffic_without_errors(ecds_envoy, v2, token):
    e = ecds_envoy
    problem(e.get("/beta/x"), 401, "missing_credentials")
    problem(e.get("/reports/1", bearer(token)), 403, "insufficient_scope")
    with Traffic(e, token) as traffic:
        time.sleep(2.0)
        t_push = time.monotonic()
        assert e.push(v2) == "accepted"
        t_applied = time.monotonic()
        # The new policy answers without restart (same process, same listener).
        assert wait_until(lambda: e.get("/beta/x").status == 200, timeout=5)
        time.sleep(2.0)
    assert e.running
    window = traffic.between(t_push - 1.0, t_applied + 2.0)
    everything = traffic.results
    fails = Traffic.failures(everything)
    print(f"\nECDS swap: {len(everything)} requests in total, {len(window)} within "
          f"[push-1s, applied+2s], push->stat {1000 * (t_applied - t_push):.0f} ms, "
          f"failures {len(fails)}, keep-alive reconnects {traffic.reconnects}")
    assert not fails, fails[:10]
    assert len(window) >= 40, f"traffic too thin to say anything: {len(window)}"
    # Every answer is one of the two policies' answers.
    allowed = {"/open/x": {200}, "/items/1": {200}, "/beta/x": {401, 200}, "/reports/1": {403, 200}}
    odd = [r for r in everything if r[2] not in allowed[r[1]]]
    assert not odd, odd[:10]
    # Old answers before the push, new answers a moment after Envoy reported the update.
    before = [r for r in everything if r[0] < t_push and r[1] in ("/beta/x", "/reports/1")]
    after = [r for r in everything if r[0] > t_applied + 0.5 and r[1] in ("/beta/x", "/reports/1")]
    assert before and all(r[2] in (401, 403) for r in before), before
    assert after and all(r[2] == 200 for r in after), after
    echoed(e.get("/reports/1", bearer(token)))
    assert e.ecds_stats()["config_fail"] == 0


def test_rate_limit_buckets_survive_an_unrelated_update(ecds_envoy, v2):
    e = ecds_envoy
    statuses = [e.get("/limited/a").status for _ in range(5)]
    assert statuses == [200] * 5, statuses
    problem(e.get("/limited/a"), 429, "rate_limited")
    v3 = copy.deepcopy(v2)
    v3["routes"].append({"name": "extra", "match": {"prefix": "/extra"}, "public": True})
    problem(e.get("/extra"), 403, "no_route")
    assert e.push(v3) == "accepted"
    assert wait_until(lambda: e.get("/extra").status == 200, timeout=5)
    # Same limit (name, capacity, refill, key): the same bucket, still empty.
    for _ in range(3):
        problem(e.get("/limited/a"), 429, "rate_limited")
    e.v3 = v3  # for the next test


def test_invalid_policy_is_rejected_and_the_previous_one_keeps_serving(ecds_envoy, token):
    e = ecds_envoy
    v3 = getattr(e, "v3", None)
    assert v3 is not None, "runs after test_rate_limit_buckets_survive_an_unrelated_update"
    bad = copy.deepcopy(v3)
    bad["routes"][1]["scopes"] = {"all_of": "items:read"}  # a string where a list belongs
    before = e.ecds_stats()
    log_len = len(e.log_text())
    with Traffic(e, token) as traffic:
        time.sleep(1.0)
        t_push = time.monotonic()
        assert e.push(bad) == "rejected"
        time.sleep(2.0)
    after = e.ecds_stats()
    fails = Traffic.failures(traffic.results)
    print(f"\nECDS invalid push: {len(traffic.results)} requests, failures {len(fails)}, "
          f"stats {{config_fail: {before['config_fail']}->{after['config_fail']}, "
          f"update_rejected: {before['update_rejected']}->{after['update_rejected']}}}")
    assert not fails, fails[:10]
    assert after["update_rejected"] == before["update_rejected"] + 1, after
    assert after["config_fail"] == before["config_fail"] + 1, after
    assert after["update_success"] == before["update_success"], after
    # The previous policy (v3) still answers: /extra public, /beta public, bucket still empty.
    assert all(r[2] in (200,) for r in traffic.results if r[0] > t_push and r[1] != "/reports/1"), \
        traffic.results
    echoed(e.get("/extra"))
    echoed(e.get("/beta/x"))
    echoed(e.get("/items/1", bearer(token)))
    problem(e.get("/items/1"), 401, "missing_credentials")
    problem(e.get("/limited/a"), 429, "rate_limited")
    # The log names the field by its JSON path.
    log = e.log_text()[log_len:]
    assert re.search(r"apiguard: invalid policy: routes\[1\]\.scopes\.all_of: ", log), log[-3000:]
    assert "config update rejected" in log, log[-3000:]
    assert e.running
