"""The docker-compose harness, without Docker.

CI machines have no Docker engine, so this runs what e2e/docker-compose.yml would: each
service's `command`, from the repo root (the services' `working_dir` is the repo, mounted
at /repo), on the host network, with the native Envoy binary in place of the image's.
Then the target-mode suite (test_target.py with APIGUARD_E2E_TARGET) runs against that
Envoy in a separate pytest, as a user with Docker would run it. What this cannot check is
Docker itself: the image tag, the volume mount and the healthchecks' shell.

The compose file binds the fixed demo ports (10000, 9901, 18080, 18443, as `make run`
does); the test skips when one is taken (e.g. `make run` is up).
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from harness.envoy import envoy_path, wasm_path

pytestmark = pytest.mark.wasm

REPO = pathlib.Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "e2e" / "docker-compose.yml").read_text())
PORTS = (10000, 9901, 18080, 18443)


def command(service: str) -> list[str]:
    """The service's command with `${VAR:-default}` resolved as compose would (unset vars)."""
    argv = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(a)) for a in COMPOSE["services"][service]["command"]]
    if service == "envoy":
        argv[0] = str(envoy_path())
    return argv


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ok(url: str, procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s")


def test_compose_file_shape():
    services = COMPOSE["services"]
    assert set(services) == {"upstream", "jwks", "envoy", "redis", "ratelimit", "limitador"}
    # The rate limit services are opt-in (profile `global`), with their official images.
    for name in ("redis", "ratelimit", "limitador"):
        assert services[name]["profiles"] == ["global"]
    assert services["ratelimit"]["image"].startswith("envoyproxy/ratelimit:")
    assert services["limitador"]["image"].startswith("quay.io/kuadrant/limitador:")
    assert all(s.get("network_mode") == "host" for s in services.values())
    # The official Envoy image of the release the suite tests.
    assert services["envoy"]["image"].startswith("envoyproxy/envoy:v1.40")
    assert set(services["envoy"]["depends_on"]) == {"upstream", "jwks"}
    for name in ("upstream", "jwks"):
        script = next(a for a in services[name]["command"] if str(a).endswith(".py"))
        assert (REPO / script).is_file(), script
    assert (REPO / command("envoy")[command("envoy").index("-c") + 1]).is_file()


def test_target_suite_passes_against_the_compose_services(tmp_path):
    busy = [p for p in PORTS if not port_free(p)]
    if busy:
        pytest.skip(f"ports {busy} in use (is `make run` up?)")
    assert wasm_path().is_file(), "make wasm"
    procs: list[subprocess.Popen] = []
    logs = {}
    try:
        for name in ("upstream", "jwks", "envoy"):
            logs[name] = open(tmp_path / f"{name}.log", "wb")
            argv = command(name)
            if argv[0] == "python3":
                argv[0] = sys.executable
            procs.append(subprocess.Popen(argv, cwd=REPO, stdout=logs[name],
                                          stderr=subprocess.STDOUT, start_new_session=True))
            if name == "upstream":
                wait_ok("http://127.0.0.1:18080/", procs)
            elif name == "jwks":
                wait_ok("http://127.0.0.1:18443/jwks.json", procs)
        wait_ok("http://127.0.0.1:9901/ready", procs)
        env = {**os.environ,
               "APIGUARD_E2E_TARGET": "http://127.0.0.1:10000",
               "APIGUARD_E2E_ADMIN": "http://127.0.0.1:9901"}
        r = subprocess.run([sys.executable, "-m", "pytest", "e2e/test_target.py", "-q",
                            "-p", "no:cacheprovider"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "passed" in summary and "skipped" not in summary, summary
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs.values():
            f.close()
