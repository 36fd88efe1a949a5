"""Fixtures for the apiguard end-to-end tests.

Modes:
- default: every test module starts its own Envoy (real binary, `--concurrency 2`) with its
  own policy in front of an in-process echo upstream, on 127.0.0.1 and ports Envoy picks.
- APIGUARD_E2E_TARGET=http://host:port (+ APIGUARD_E2E_ADMIN=http://host:port): tests run
  against an Envoy somebody else started; tests that need their own policy are skipped.

Tests needing apiguard.wasm carry `@pytest.mark.wasm` and FAIL (never skip) without it.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import tokens  # noqa: E402
from harness.echo import EchoUpstream  # noqa: E402
from harness.envoy import Envoy, ExternalEnvoy, envoy_path, wasm_path  # noqa: E402

TARGET = os.environ.get("APIGUARD_E2E_TARGET")
ADMIN = os.environ.get("APIGUARD_E2E_ADMIN")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TARGET and item.get_closest_marker("own_envoy"):
            item.add_marker(pytest.mark.skip(reason="APIGUARD_E2E_TARGET: needs its own Envoy and policy"))


def _require_wasm() -> str:
    p = wasm_path()
    if not p.exists():
        pytest.fail(
            f"apiguard.wasm missing at {p}: build it with "
            "`cargo build --target wasm32-wasip1 --release --lib` or set APIGUARD_WASM "
            "(end-to-end tests never skip for a missing module)",
            pytrace=False,
        )
    return str(p)


_SNAPSHOT: dict[str, str] = {}


def _wasm_snapshot(tmp_path_factory) -> str:
    """The module as it was when the session first needed it, copied aside: a rebuild
    during the run (cargo replaces the file) cannot break or mix later Envoy starts."""
    if "path" not in _SNAPSHOT:
        import shutil

        src = _require_wasm()
        dst = tmp_path_factory.mktemp("wasm") / "apiguard.wasm"
        shutil.copyfile(src, dst)
        _SNAPSHOT["path"] = str(dst)
    return _SNAPSHOT["path"]


def _require_envoy() -> str:
    p = envoy_path()
    if not p.exists():
        pytest.fail(f"envoy missing at {p}: run `make deps` or set APIGUARD_ENVOY", pytrace=False)
    return str(p)


@pytest.fixture(autouse=True)
def _wasm_marker(request):
    if request.node.get_closest_marker("wasm") and not TARGET:
        _require_wasm()


@pytest.fixture(scope="session")
def target_mode() -> bool:
    return bool(TARGET)


@pytest.fixture(scope="session")
def echo():
    srv = EchoUpstream().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def keys() -> dict[str, tokens.Key]:
    """One fresh key per algorithm for this session (provider `main` and friends)."""
    return tokens.generate_keys("k-")


@pytest.fixture(scope="session")
def other_keys() -> dict[str, tokens.Key]:
    """Keys nobody trusts (attacker keys)."""
    return tokens.generate_keys("evil-", algs=("RS256", "ES256", "HS256", "EdDSA"))


class EnvoyFactory:
    """Starts Envoys and stops every one of them on teardown."""

    def __init__(self, echo: EchoUpstream, tmp_path_factory):
        self.echo = echo
        self.tmp = tmp_path_factory
        self.started: list[Envoy] = []

    def make(self, policy, *, start: bool = True, **kw) -> Envoy:
        if TARGET:
            pytest.skip("APIGUARD_E2E_TARGET: this test needs its own Envoy and policy")
        _require_envoy()
        if kw.get("with_wasm", True):
            kw.setdefault("wasm", _wasm_snapshot(self.tmp))
        kw.setdefault("upstream_port", self.echo.port)
        e = Envoy(policy, workdir=self.tmp.mktemp("envoy"), **kw)
        self.started.append(e)
        if start:
            e.start()
        return e

    def make_many(self, specs: list[tuple[object, dict]]) -> list[Envoy]:
        """Starts several Envoys at once (their Wasm compiles overlap) and waits for all."""
        envoys = [self.make(policy, start=False, **kw) for policy, kw in specs]
        for e in envoys:
            e.launch()
        for e in envoys:
            e.wait_ready()
        return envoys

    def close(self) -> None:
        for e in self.started:
            e.stop()
        self.started.clear()


@pytest.fixture
def envoy_factory(echo, tmp_path_factory):
    f = EnvoyFactory(echo, tmp_path_factory)
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_envoy_factory(echo, tmp_path_factory):
    f = EnvoyFactory(echo, tmp_path_factory)
    yield f
    f.close()


@pytest.fixture(scope="session")
def external_envoy():
    if not TARGET:
        pytest.skip("no APIGUARD_E2E_TARGET")
    return ExternalEnvoy(TARGET, ADMIN)
