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
import time

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


# --- what FAIL_RELOAD does in Envoy 1.40, with a module that traps ---------------------

def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _name(s: str) -> bytes:
    return _uleb(len(s)) + s.encode()


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _uleb(len(body)) + body


def trapping_module() -> bytes:
    """A minimal proxy-wasm module (ABI 0.2.1), assembled here: its request-headers callback
    lets the first request of each VM through and traps (`unreachable`) on the second, the
    runtime error that `failure_policy` is about. apiguard itself has no input that traps."""
    i32 = b"\x7f"

    def ftype(params: int, results: int) -> bytes:
        return b"\x60" + _vec([i32] * params) + _vec([i32] * results)

    def body(code: bytes) -> bytes:
        b = b"\x00" + code + b"\x0b"  # no locals
        return _uleb(len(b)) + b

    types = [ftype(0, 0), ftype(1, 1), ftype(2, 0), ftype(2, 1), ftype(3, 1)]
    exports = [("proxy_abi_version_0_2_1", 0), ("proxy_on_memory_allocate", 1),
               ("proxy_on_context_create", 2), ("proxy_on_vm_start", 3),
               ("proxy_on_configure", 4), ("proxy_on_request_headers", 5)]
    code = [
        body(b""),
        body(b"\x23\x01\x23\x01\x20\x00\x6a\x24\x01"),  # bump allocator: r = heap; heap += size
        body(b""),
        body(b"\x41\x01"),                              # vm start: true
        body(b"\x41\x01"),                              # configure: true
        # n += 1; if n == 2 { unreachable }; Continue
        body(b"\x23\x00\x41\x01\x6a\x24\x00\x23\x00\x41\x02\x46\x04\x40\x00\x0b\x41\x00"),
    ]
    return (b"\x00asm\x01\x00\x00\x00"
            + _section(1, _vec(types))
            + _section(3, _vec([_uleb(t) for t in (0, 1, 2, 3, 3, 4)]))
            + _section(5, _vec([b"\x00" + _uleb(2)]))
            + _section(6, _vec([b"\x7f\x01\x41\x00\x0b", b"\x7f\x01\x41\x80\x08\x0b"]))  # n = 0, heap = 1024
            + _section(7, _vec([_name("memory") + b"\x02\x00"]
                               + [_name(n) + b"\x00" + _uleb(i) for n, i in exports]))
            + _section(10, _vec(code)))


@pytest.mark.wasm
@pytest.mark.own_envoy
def test_fail_reload_replaces_a_vm_that_trapped_fail_closed_does_not(envoy_factory, echo, tmp_path):
    """The docs' table (istio.md, failStrategy): after a runtime error, FAIL_CLOSED answers 503
    to every later request; FAIL_RELOAD fails that request and a fresh VM serves the next."""
    wasm = tmp_path / "trap.wasm"
    wasm.write_bytes(trapping_module())
    reload_e, closed_e = envoy_factory.make_many([
        ("{}", {"wasm": wasm, "failure_policy": "FAIL_RELOAD", "concurrency": 1}),
        ("{}", {"wasm": wasm, "failure_policy": "FAIL_CLOSED", "concurrency": 1}),
    ])
    for e in (reload_e, closed_e):
        assert e.get("/first").header("x-echo") == "1"  # first request of the VM passes
        trapped = e.get("/second")
        assert trapped.status == 503 and trapped.header("x-echo") is None, trapped
    assert "Uncaught RuntimeError: unreachable" in reload_e.log_text()

    # FAIL_CLOSED: the VM stays failed, nothing reaches the upstream any more.
    later = []
    for _ in range(5):
        later.append(closed_e.get("/later"))
        time.sleep(0.3)
    assert [r.status for r in later] == [503] * 5 and not any(r.header("x-echo") for r in later), later

    # FAIL_RELOAD: a new VM (its counter back to 0) lets the next request through.
    deadline = time.monotonic() + 30
    while True:
        r = reload_e.get("/later")
        if r.header("x-echo") == "1":
            break
        assert r.status == 503, r
        assert time.monotonic() < deadline, "FAIL_RELOAD never replaced the trapped VM"
        time.sleep(0.2)
