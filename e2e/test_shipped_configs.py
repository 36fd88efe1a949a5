"""The Envoy configs the repository ships use the Wasm filter's `failure_policy`, not the
deprecated boolean `fail_open` (envoy/extensions/wasm/v3/wasm.proto: `fail_open = 5
[deprecated = true]`, `FailurePolicy failure_policy = 7`), and Envoy 1.40 accepts them:

- envoy/envoy.yaml (also what e2e/docker-compose.yml and `make run` start) and the ECDS
  resource envoy/ecds/apiguard-filter.yaml: `failure_policy: FAIL_RELOAD` (fail closed; a VM
  that traps is replaced for the next request);
- the e2e harness's bootstrap: `FAIL_CLOSED` by default, `fail_open=True` still means
  `FAIL_OPEN`, `failure_policy=` passes any value through;
- no YAML example in the docs sets `fail_open`.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from harness.envoy import Envoy, EnvoyStartError, envoy_path, wasm_path

REPO = pathlib.Path(__file__).resolve().parents[1]
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
SHIPPED = ["envoy/envoy.yaml", "envoy/ecds/apiguard-filter.yaml"]


def wasm_configs(node):
    """Every Wasm HTTP filter's PluginConfig in a bootstrap or xDS document."""
    if isinstance(node, dict):
        if node.get("@type") == WASM_TYPE:
            yield node["config"]
        for v in node.values():
            yield from wasm_configs(v)
    elif isinstance(node, list):
        for v in node:
            yield from wasm_configs(v)


def keys(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from keys(v)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_wasm_filters_use_failure_policy(path):
    doc = yaml.safe_load((REPO / path).read_text())
    configs = list(wasm_configs(doc))
    assert configs, f"no Wasm filter in {path}"
    for cfg in configs:
        assert cfg["failure_policy"] == "FAIL_RELOAD", cfg.keys()
    assert "fail_open" not in set(keys(doc))


def test_rendered_configs_are_current():
    for script in ("envoy/render.py", "envoy/ecds/render.py"):
        r = subprocess.run([sys.executable, script, "--check"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kwargs, expected", [
    ({}, "FAIL_CLOSED"),
    ({"fail_open": True}, "FAIL_OPEN"),
    ({"failure_policy": "FAIL_RELOAD"}, "FAIL_RELOAD"),
])
def test_harness_bootstrap_writes_failure_policy(kwargs, expected, tmp_path):
    e = Envoy({}, upstream_port=1, workdir=tmp_path, **kwargs)
    boot = e.bootstrap()
    (cfg,) = wasm_configs(boot)
    assert cfg["failure_policy"] == expected
    assert "fail_open" not in set(keys(boot))


def test_docs_never_configure_fail_open():
    for md in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:yaml|json)\n(.*?)```", md.read_text(), re.S):
            assert not re.search(r"^\s*\"?fail_open\"?\s*:", block, re.M), f"{md.name}: {block[:200]}"


@pytest.mark.wasm
@pytest.mark.own_envoy
def test_envoy_accepts_every_failure_policy(envoy_factory):
    policy = {"routes": [{"name": "h", "match": {"path": "/healthz"}, "public": True}]}
    values = ["FAIL_RELOAD", "FAIL_CLOSED", "FAIL_OPEN"]
    envoys = envoy_factory.make_many([(policy, {"failure_policy": v, "concurrency": 1}) for v in values])
    for value, e in zip(values, envoys):
        assert e.get("/healthz").status == 200, value
        assert e.get("/other").status == 403, value  # apiguard runs: unmatched -> 403


@pytest.mark.wasm
@pytest.mark.own_envoy
def test_envoy_refuses_an_unknown_failure_policy(envoy_factory):
    """The field is checked, not ignored: Istio's spelling FAIL_CLOSE stops Envoy at start-up."""
    e = envoy_factory.make({}, start=False, failure_policy="FAIL_CLOSE", concurrency=1)
    with pytest.raises(EnvoyStartError):
        e.start(timeout=60)
    assert "unknown enum value" in e.log_text() and "FAIL_CLOSE" in e.log_text()


@pytest.mark.wasm
def test_shipped_envoy_yaml_validates_in_envoy_1_40(tmp_path):
    """`envoy --mode validate` on envoy/envoy.yaml (the module path pointed at this build):
    config, Wasm module and demo policy are all loaded and checked, no listener bound."""
    text = (REPO / "envoy" / "envoy.yaml").read_text()
    text = text.replace("filename: target/wasm32-wasip1/release/apiguard.wasm", f"filename: {wasm_path()}")
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(text)
    r = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "OK" in r.stdout + r.stderr
