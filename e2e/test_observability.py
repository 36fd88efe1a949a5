"""Observability: one JSON log line per denied request at the configured level, never the
token; the version line at VM start; stats visible in Prometheus format."""

from __future__ import annotations

import json
import pathlib
import re
import socket
import time
import urllib.request

import pytest
import yaml

from harness import tokens
from harness.checks import problem
from harness.envoy import static_cluster
from harness.jwks_server import JwksServer

prometheus_parser = pytest.importorskip("prometheus_client.parser", reason="pip install -r e2e/requirements.txt")
text_string_to_metric_families = prometheus_parser.text_string_to_metric_families

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


def test_body_phase_denial_is_logged_with_the_principal_the_headers_authenticated(envoy_factory, key):
    """A token that authenticates, then a body that fails validation: the refusal comes
    from the body phase, and its line still names who sent it (never the token)."""
    p = policy(key)
    p["routes"] = [{
        "name": "orders", "match": {"path": "/orders", "methods": ["POST"]}, "providers": ["demo"],
        "validate": {"body": {"max_bytes": 4096, "schema": {
            "type": "object", "properties": {"qty": {"type": "integer"}}, "required": ["qty"]}}},
    }]
    e = envoy_factory.make(p)
    good = tokens.mint("ES256", key, tokens.claims(ISS, sub="bob"))
    headers = {"authorization": f"Bearer {good}", "content-type": "application/json",
               "x-request-id": "obs-body-1"}
    problem(e.request("POST", "/orders", headers, body=b'{"qty": "many"}'), 400, "invalid_body")
    assert wait_for(lambda: any(d.get("request_id") == "obs-body-1" for d in deny_lines(e.log_text())))
    line = next(d for d in deny_lines(e.log_text()) if d.get("request_id") == "obs-body-1")
    assert line == {
        "apiguard": "deny",
        "status": 400,
        "reason": "invalid_body",
        "route": "orders",
        "rule": None,
        "principal": "bob",
        "request_id": "obs-body-1",
    }
    assert good not in e.log_text()
    assert e.request("POST", "/orders", headers, body=b'{"qty": 2}').status == 200
    assert e.wait_stat("apiguard.denied.invalid_body", 1) == 1
    assert e.wait_stat("apiguard.allowed", 1) == 1


def test_deny_log_can_be_turned_off(envoy_factory, key):
    e = envoy_factory.make(policy(key, deny_log="off"))
    problem(e.get("/items/1", headers={"x-request-id": "obs-off"}), 401, "missing_credentials")
    time.sleep(1.0)
    assert not [d for d in deny_lines(e.log_text()) if d.get("request_id") == "obs-off"]


def test_version_logged_and_prometheus_stats(envoy_factory, key):
    e = envoy_factory.make(policy(key))
    assert "apiguard 0.1.0 (git " in e.log_text()
    problem(e.get("/items/1"), 401, "missing_credentials")
    text = urllib.request.urlopen(e.admin_url + "/stats/prometheus", timeout=5).read().decode()
    assert "\napiguard_denied_missing_credentials{} 1\n" in text


# --- Prometheus: exact names, labels from the shipped stats_tags, the docs' queries -----

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED_BOOTSTRAP = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())
SHIPPED_STATS_CONFIG = SHIPPED_BOOTSTRAP["stats_config"]
OPERATIONS = (REPO / "docs" / "operations.md").read_text()


def metrics_policy(key, idp_port_ok: bool = True) -> dict:
    """Every kind of apiguard counter: allowed, denied (three reasons), a limit with a dash in
    its name, a provider whose JWKS loads and one whose JWKS cluster answers nothing."""
    def remote(cluster, port):
        return {"remote": {"cluster": cluster, "uri": f"http://127.0.0.1:{port}/jwks.json",
                           "refresh_seconds": 300, "retry_seconds": 1, "timeout_ms": 1000}}
    return {
        "providers": [
            {"name": "demo", "issuer": ISS, "jwks": {"inline": tokens.jwks(key)}},
            {"name": "idp", "issuer": "https://idp.example", "jwks": remote("idp", 1)},
            {"name": "down", "issuer": "https://down.example", "jwks": remote("down", 1)},
        ],
        "limits": [{"name": "per-client", "capacity": 2, "key": [{"constant": "all"}]}],
        "routes": [
            {"name": "items", "match": {"prefix": "/items"}, "providers": ["demo"], "limits": ["per-client"]},
            {"name": "idp", "match": {"prefix": "/idp"}, "providers": ["idp"]},
            {"name": "down", "match": {"prefix": "/down"}, "providers": ["down"]},
        ],
    }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def exercise(e, key) -> None:
    e.wait_stat("apiguard.jwks.idp.fetch_success", 1)
    e.wait_stat("apiguard.jwks.down.fetch_failure", 1)
    good = tokens.mint("ES256", key, tokens.claims(ISS, sub="alice"))
    statuses = [e.get("/items/1", headers={"authorization": f"Bearer {good}"}).status for _ in range(3)]
    assert statuses == [200, 200, 429], statuses
    problem(e.get("/items/1"), 401, "missing_credentials")
    problem(e.get("/down/1", headers={"authorization": f"Bearer {good}"}), 503, "jwks_unavailable")


def scrape(e) -> dict[str, list[tuple[dict, float]]]:
    """{metric name: [(labels, value)]} as a Prometheus client library parses the scrape."""
    text = urllib.request.urlopen(e.admin_url + "/stats/prometheus?usedonly", timeout=10).read().decode()
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # Prometheus stores a classic-text counter under the name written in the scrape
            # (the family name); the client parser adds OpenMetrics' `_total` to the sample.
            name = family.name if family.type in ("counter", "gauge", "unknown") else sample.name
            out.setdefault(name, []).append((dict(sample.labels), sample.value))
    return out


def apiguard_series(m) -> set[tuple[str, tuple]]:
    return {(name, tuple(sorted(labels.items()))) for name, samples in m.items()
            if "apiguard" in name and "extension_config" not in name
            and not name.startswith("envoy_wasm") for labels, _ in samples}


@pytest.fixture(scope="module")
def idp_server(key):
    srv = JwksServer(tokens.jwks(key), issuer="https://idp.example")
    yield srv
    srv.stop()


def metrics_envoy(module_envoy_factory, key, idp_server, **kw):
    policy = metrics_policy(key)
    policy["providers"][1]["jwks"]["remote"]["uri"] = idp_server.jwks_url
    down = closed_port()
    policy["providers"][2]["jwks"]["remote"]["uri"] = f"http://127.0.0.1:{down}/jwks.json"
    e = module_envoy_factory.make(policy, concurrency=1,
                                  clusters=[static_cluster("idp", idp_server.port), static_cluster("down", down)],
                                  **kw)
    exercise(e, key)
    return e


@pytest.fixture(scope="module")
def tagged_envoy(module_envoy_factory, key, idp_server):
    """The shipped stats_config (envoy/envoy.yaml)."""
    return metrics_envoy(module_envoy_factory, key, idp_server, stats_config=SHIPPED_STATS_CONFIG)


@pytest.fixture(scope="module")
def tagged(tagged_envoy):
    return scrape(tagged_envoy)


@pytest.fixture(scope="module")
def untagged(module_envoy_factory, key, idp_server):
    return scrape(metrics_envoy(module_envoy_factory, key, idp_server))


TAGGED = {
    ("apiguard_allowed", ()),
    ("apiguard_denied", (("reason", "missing_credentials"),)),
    ("apiguard_denied", (("reason", "rate_limited"),)),
    ("apiguard_denied", (("reason", "jwks_unavailable"),)),
    ("apiguard_ratelimit_allowed", (("limit", "per-client"),)),
    ("apiguard_ratelimit_limited", (("limit", "per-client"),)),
    ("apiguard_jwks_fetch_success", (("provider", "idp"),)),
    ("apiguard_jwks_fetch_failure", (("provider", "down"),)),
    ("apiguard_jwt_cache_miss", ()),
    ("apiguard_jwt_cache_hit", ()),
}


def test_prometheus_names_without_stats_tags_are_exact(untagged):
    """Envoy exports Wasm counters under their own name: no envoy_ and no wasmcustom."""
    names = {n for n, _ in apiguard_series(untagged)}
    assert names == {
        "apiguard_allowed",
        "apiguard_denied_missing_credentials", "apiguard_denied_rate_limited",
        "apiguard_denied_jwks_unavailable",
        "apiguard_ratelimit_per_client_allowed", "apiguard_ratelimit_per_client_limited",
        "apiguard_jwks_idp_fetch_success", "apiguard_jwks_down_fetch_failure",
        "apiguard_jwt_cache_miss", "apiguard_jwt_cache_hit",
    }, names
    assert not [n for n in untagged if "wasmcustom" in n]
    assert untagged["apiguard_allowed"] == [({}, 2.0)]
    assert untagged["apiguard_ratelimit_per_client_limited"] == [({}, 1.0)]


def test_prometheus_labels_from_the_shipped_stats_tags(tagged):
    assert apiguard_series(tagged) == TAGGED
    assert ({"reason": "rate_limited"}, 1.0) in tagged["apiguard_denied"]
    assert tagged["apiguard_ratelimit_allowed"] == [({"limit": "per-client"}, 2.0)]
    # Envoy's default tag extractors keep working beside ours.
    assert any(labels.get("envoy_http_conn_manager_prefix") == "ingress"
               for labels, _ in tagged["envoy_http_downstream_rq_xx"])


def test_stats_page_keeps_the_full_names_with_stats_tags(tagged_envoy):
    e = tagged_envoy
    assert e.stat("wasmcustom.apiguard.denied.missing_credentials") == 1
    assert e.stat("wasmcustom.apiguard.ratelimit.per-client.limited") == 1
    assert e.stat("wasmcustom.apiguard.jwks.down.fetch_failure") >= 1


def test_istio_bootstrap_override_gives_the_same_labels(module_envoy_factory, key, idp_server):
    """An Envoy configured like an Istio sidecar (its own explicit tag list with
    use_all_default_tags false, a stats inclusion list as proxyStatsMatcher writes it) plus
    istio/apiguard-stats-bootstrap.yaml's JSON merged with --config-yaml, as istio-agent does
    for `sidecar.istio.io/bootstrapOverride`."""
    (cm,) = [d for d in yaml.safe_load_all((REPO / "istio" / "apiguard-stats-bootstrap.yaml").read_text()) if d]
    override = json.loads(cm["data"]["custom_bootstrap.json"])
    assert override == {"stats_config": SHIPPED_STATS_CONFIG,
                        "memory_allocator_manager": SHIPPED_BOOTSTRAP["memory_allocator_manager"]}, \
        "ConfigMap drifted from envoy/envoy.yaml"
    istio_like = {
        "use_all_default_tags": False,
        "stats_tags": [{"tag_name": "cluster_name", "regex": "^cluster(\\.(.+);)"}],
        "stats_matcher": {"inclusion_list": {"patterns": [
            {"prefix": "wasmcustom.apiguard"}, {"prefix": "extension_config_discovery"}]}},
    }
    e = metrics_envoy(module_envoy_factory, key, idp_server, stats_config=istio_like,
                      config_yaml=cm["data"]["custom_bootstrap.json"])
    assert apiguard_series(scrape(e)) == TAGGED
    # The memory block took effect: tcmalloc hands the module's freed compile memory back
    # to the OS (its unmapped pages grow from 0; without the block they stay at 0).
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(e.admin_url + "/memory", timeout=5) as r:
            body = r.read()
        if int(json.loads(body)["pageheap_unmapped"]) > 0:
            break
        assert time.monotonic() < deadline, f"nothing released to the OS: {body!r}"
        time.sleep(0.5)


def _doc_queries() -> list[str]:
    out = []
    for block in re.findall(r"```promql\n(.*?)```", OPERATIONS, re.S):
        query = []
        for line in block.splitlines() + [""]:
            if line.strip().startswith("#") or not line.strip():
                if query:
                    out.append(" ".join(query))
                    query = []
                continue
            # a line that starts a new expression (not an operator continuation)
            if query and not re.match(r"\s+(unless|and|or|/|\*|\+|-|>|<)", line) and not line.startswith(" "):
                out.append(" ".join(query))
                query = []
            query.append(line.strip())
    return out


def _selectors(node):
    if type(node).__name__ == "VectorSelector":
        yield node
    for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
        child = getattr(node, attr, None)
        for c in child if isinstance(child, list) else [child]:
            if c is not None and not isinstance(c, (str, int, float)):
                yield from _selectors(c)


def test_operations_md_queries_use_names_and_labels_that_exist(tagged):
    promql_parser = pytest.importorskip("promql_parser", reason="pip install -r e2e/requirements.txt")
    queries = _doc_queries()
    assert len(queries) >= 5, queries
    used = set()
    for q in queries:
        expr = promql_parser.parse(q)  # raises on a syntax error
        for sel in _selectors(expr):
            name = sel.name
            assert name, f"selector without a metric name in {q!r}"
            if name.startswith("envoy_"):
                continue  # Envoy's own stats (ECDS): checked in test_ecds / by hand
            assert name in tagged, f"{name} (in {q!r}) is not exported; exported: {sorted(tagged)}"
            labels = {k for labels, _ in tagged[name] for k in labels}
            for m in sel.matchers.matchers:
                assert m.name in labels, f"{name} has no label {m.name!r} (query {q!r})"
            used.add(name)
    assert {"apiguard_denied", "apiguard_allowed", "apiguard_jwks_fetch_failure"} <= used
    assert "envoy_wasmcustom" not in OPERATIONS


def test_operations_md_relabel_rule_keeps_every_apiguard_metric(tagged, untagged):
    (regex,) = re.findall(r'regex: "([^"]+)"\n\s+action: keep', OPERATIONS)
    for m in (tagged, untagged):
        for name in {n for n, _ in apiguard_series(m)} | {"envoy_http_downstream_rq_xx"}:
            assert re.fullmatch(regex, name), name  # Prometheus anchors relabel regexes
        assert "envoy_http_downstream_rq_xx" in m


def test_operations_md_shows_the_shipped_stats_tags():
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", OPERATIONS, re.S) if "stats_tags" in b]
    assert [b["stats_config"] for b in blocks] == [SHIPPED_STATS_CONFIG]
