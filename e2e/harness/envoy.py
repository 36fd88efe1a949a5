"""Envoy launcher: writes a static bootstrap around the apiguard Wasm filter and runs it.

Listener and admin bind to port 0; the real ports are read back from Envoy (admin address
file, `/listeners?format=json`), so there is no port race. Envoy is started with
PR_SET_PDEATHSIG so it dies with the test process even if pytest is killed.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Iterable

import yaml

from . import http as _http

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "apiguard.wasm"
DEFAULT_ENVOY = REPO / ".venv" / "bin" / "envoy"

_RUNNING: set["Envoy"] = set()


def wasm_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("APIGUARD_WASM") or DEFAULT_WASM)


def envoy_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("APIGUARD_ENVOY") or DEFAULT_ENVOY)


class EnvoyStartError(RuntimeError):
    def __init__(self, msg: str, envoy: "Envoy"):
        super().__init__(f"{msg}\n--- envoy log (tail) ---\n{envoy.log_tail()}")
        self.envoy = envoy


def _pdeathsig():  # runs in the child before exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    os.setsid()


def static_cluster(name: str, port: int, host: str = "127.0.0.1", timeout: str = "1s",
                   http2: bool = False) -> dict:
    """A one-endpoint cluster; `http2=True` makes Envoy speak HTTP/2 (h2c) to it, as a
    gRPC upstream needs."""
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        }
    return c


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class _StatsMixin:
    admin_url: str

    def stats(self) -> dict[str, int]:
        """Every counter/gauge from `/stats?format=json` as {name: value}."""
        status, body = _get(self.admin_url + "/stats?format=json", timeout=5)
        assert status == 200, body
        out: dict[str, int] = {}
        for s in json.loads(body).get("stats", []):
            if "name" in s and "value" in s:
                out[s["name"]] = s["value"]
        return out

    def stat_names(self, suffix: str) -> list[str]:
        return [k for k in self.stats() if k == suffix or k.endswith("." + suffix)]

    def stat(self, name: str, default: int = 0) -> int:
        """A stat by exact name or by suffix (Envoy prefixes Wasm metrics, e.g. `wasmcustom.`).

        Counters are defined on first use, so an absent stat counts as `default` (0)."""
        stats = self.stats()
        if name in stats:
            return stats[name]
        hits = [v for k, v in stats.items() if k.endswith("." + name)]
        if not hits:
            return default
        return sum(hits)

    def wait_stat(self, name: str, at_least: int, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        v = self.stat(name)
        while v < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
            v = self.stat(name)
        return v

    def url(self, path: str = "/") -> str:
        return self.base_url + path  # type: ignore[attr-defined]

    def request(self, method: str, target: str, headers=None, body=None, timeout: float = 10.0):
        return _http.request(self.base_url, method, target, headers, body, timeout)  # type: ignore[attr-defined]

    def get(self, target: str, headers=None, **kw):
        return self.request("GET", target, headers, **kw)


class ExternalEnvoy(_StatsMixin):
    """An Envoy somebody else runs (`APIGUARD_E2E_TARGET`, `APIGUARD_E2E_ADMIN`)."""

    external = True

    def __init__(self, target: str, admin: str | None):
        self.base_url = target.rstrip("/")
        self.admin_url = (admin or "").rstrip("/")
        self.returncode = None

    def log_text(self) -> str:
        return ""

    def log_tail(self, n: int = 60) -> str:
        return ""

    def stop(self) -> None:
        pass


class Envoy(_StatsMixin):
    """One Envoy process with (optionally) the apiguard filter and a given policy."""

    external = False

    def __init__(
        self,
        policy: dict | str | None,
        *,
        upstream_port: int,
        clusters: Iterable[dict] = (),
        concurrency: int = 2,
        wasm: str | os.PathLike | None = None,
        envoy_bin: str | os.PathLike | None = None,
        with_wasm: bool = True,
        normalize_path: bool = True,
        merge_slashes: bool = True,
        escaped_slashes_action: str | None = "REJECT_REQUEST",
        log_level: str = "info",
        workdir: str | os.PathLike | None = None,
        fail_open: bool = False,
        failure_policy: str | None = None,
        extra_hcm: dict | None = None,
        downstream_tls: dict | None = None,
        access_log: str | None = None,
        stats_config: dict | None = None,
        config_yaml: str | None = None,
        upstream_http2: bool = False,
        filters_before: Iterable[dict] = (),
        filters_after: Iterable[dict] = (),
    ):
        self.policy = policy
        self.upstream_port = upstream_port
        self.clusters = list(clusters)
        self.concurrency = concurrency
        self.wasm = pathlib.Path(wasm) if wasm else wasm_path()
        self.envoy_bin = pathlib.Path(envoy_bin) if envoy_bin else envoy_path()
        self.with_wasm = with_wasm
        self.normalize_path = normalize_path
        self.merge_slashes = merge_slashes
        self.escaped_slashes_action = escaped_slashes_action
        self.log_level = log_level
        # The Wasm filter's `failure_policy` (FAIL_CLOSED / FAIL_OPEN / FAIL_RELOAD); the old
        # `fail_open=True` option still works and means FAIL_OPEN. Envoy deprecated the
        # boolean `fail_open` field, so the bootstrap never writes it.
        self.failure_policy = failure_policy or ("FAIL_OPEN" if fail_open else "FAIL_CLOSED")
        self.extra_hcm = extra_hcm or {}
        # {"cert": pem path, "key": pem path, "ca": pem path (validates client certs),
        #  "require_client_cert": bool (default True)}: the listener speaks TLS.
        self.downstream_tls = downstream_tls
        # An Envoy access log format string (text); lines go to `access_log_path`.
        self.access_log = access_log
        # The bootstrap's `stats_config` (e.g. envoy/envoy.yaml's stats_tags), and a bootstrap
        # fragment Envoy merges over the file (`--config-yaml`, as Istio's bootstrapOverride).
        self.stats_config = stats_config
        self.config_yaml = config_yaml
        # The `upstream` cluster speaks HTTP/2 (gRPC upstreams).
        self.upstream_http2 = upstream_http2
        # HTTP filters placed before apiguard (e.g. envoy.filters.http.grpc_web).
        self.filters_before = list(filters_before)
        # HTTP filters between apiguard and the router (Istio puts grpc_web there).
        self.filters_after = list(filters_after)
        self._own_dir = workdir is None
        self.dir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="apiguard-e2e-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "envoy.yaml"
        self.log_path = self.dir / "envoy.log"
        self.admin_path = self.dir / "admin.txt"
        self.access_log_path = self.dir / "access.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.port: int | None = None
        self.admin_port: int | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None

    # --- config ----------------------------------------------------------------------
    def policy_json(self) -> str:
        if isinstance(self.policy, str):
            return self.policy
        return json.dumps(self.policy if self.policy is not None else {})

    def bootstrap(self) -> dict[str, Any]:
        http_filters: list[dict] = list(self.filters_before)
        if self.with_wasm:
            http_filters.append({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "apiguard",
                        "root_id": "apiguard",
                        "failure_policy": self.failure_policy,
                        # Lets apiguard hold headers while it validates a body
                        # (policy `hold_headers_for_body`).
                        "allow_on_headers_stop_iteration": True,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": self.policy_json(),
                        },
                        "vm_config": {
                            "vm_id": "apiguard",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": str(self.wasm)}},
                        },
                    },
                },
            })
        http_filters += self.filters_after
        http_filters.append({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        })
        hcm: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "normalize_path": self.normalize_path,
            "merge_slashes": self.merge_slashes,
            "generate_request_id": True,
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}}],
                }],
            },
            "http_filters": http_filters,
        }
        if self.escaped_slashes_action:
            hcm["path_with_escaped_slashes_action"] = self.escaped_slashes_action
        if self.access_log:
            hcm["access_log"] = [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(self.access_log_path),
                    "log_format": {"text_format_source": {"inline_string": self.access_log}},
                },
            }]
        hcm.update(self.extra_hcm)
        filter_chain: dict[str, Any] = {"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}
        if self.downstream_tls:
            tls = self.downstream_tls
            ctx: dict[str, Any] = {"tls_certificates": [{
                "certificate_chain": {"filename": str(tls["cert"])},
                "private_key": {"filename": str(tls["key"])},
            }]}
            if tls.get("ca"):
                ctx["validation_context"] = {"trusted_ca": {"filename": str(tls["ca"])}}
            filter_chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": bool(tls.get("require_client_cert", True)),
                    "common_tls_context": ctx,
                },
            }
        clusters = [static_cluster("upstream", self.upstream_port, http2=self.upstream_http2)]
        clusters += self.clusters
        extra = {"stats_config": self.stats_config} if self.stats_config is not None else {}
        return {
            **extra,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [filter_chain],
                }],
                "clusters": clusters,
            },
        }

    # --- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Envoy":
        """Starts Envoy and waits until it is LIVE and its listener accepts.

        Raises EnvoyStartError (with the log) when Envoy exits or is not ready in time;
        `returncode` then holds the exit status (None if it was still running)."""
        self.launch()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> "Envoy":
        """Waits for a launched Envoy to be LIVE with an accepting listener (see start)."""
        try:
            self._wait_ready(timeout)
        except Exception:
            rc = self.returncode  # None: it was still running when we gave up
            self.stop()
            self.returncode = rc
            raise
        self.ready_after = time.monotonic() - self.started_at
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll() if self.proc else None
            if rc is not None:
                self.returncode = rc
                raise EnvoyStartError(f"envoy exited during start-up with status {rc}", self)
            if time.monotonic() > deadline:
                raise EnvoyStartError(f"envoy not ready after {timeout}s", self)
            if self.admin_port is None and self.admin_path.exists():
                text = self.admin_path.read_text().strip()
                m = re.search(r":(\d+)$", text)
                if m:
                    self.admin_port = int(m.group(1))
            if self.admin_port is not None:
                try:
                    status, body = _get(self.admin_url + "/ready", timeout=1)
                    if status == 200 and body.strip() == b"LIVE" and self._find_listener():
                        if self._listener_accepts():
                            return
                except (OSError, ValueError):
                    pass
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 20.0) -> int | None:
        """For start-ups expected to fail: waits for the process to exit; None if it did not."""
        try:
            self.returncode = self.proc.wait(timeout=timeout) if self.proc else None
        except subprocess.TimeoutExpired:
            return None
        _RUNNING.discard(self)
        return self.returncode

    def launch(self) -> "Envoy":
        """Starts the process without waiting (then wait_ready() or wait_exit())."""
        if not self.envoy_bin.exists():
            raise FileNotFoundError(
                f"envoy binary not found at {self.envoy_bin} (set APIGUARD_ENVOY or run make deps)")
        if self.with_wasm and not self.wasm.exists():
            raise FileNotFoundError(
                f"apiguard.wasm not found at {self.wasm} (set APIGUARD_WASM or "
                "cargo build --target wasm32-wasip1 --release --lib)")
        for p in (self.admin_path, self.log_path, self.access_log_path):
            if p.exists():
                p.unlink()
        self.admin_port = self.port = None
        self.returncode = None
        self.config_path.write_text(yaml.safe_dump(self.bootstrap(), sort_keys=False))
        cmd = [
            str(self.envoy_bin), "-c", str(self.config_path),
            "--concurrency", str(self.concurrency), "--disable-hot-restart",
            "-l", self.log_level,
            "--admin-address-path", str(self.admin_path),
        ]
        if self.config_yaml:
            cmd += ["--config-yaml", self.config_yaml]
        if self.access_log:
            cmd += ["--file-flush-interval-msec", "100"]  # access log lines within 0.1 s
        self.started_at = time.monotonic()
        # Envoy logs to stderr, unbuffered; --log-path would buffer for seconds.
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                cwd=self.dir, preexec_fn=_pdeathsig,
            )
        _RUNNING.add(self)
        return self

    def _find_listener(self) -> bool:
        status, body = _get(self.admin_url + "/listeners?format=json", timeout=1)
        if status != 200:
            return False
        for ls in json.loads(body).get("listener_statuses", []):
            if ls.get("name") == "main":
                port = ls.get("local_address", {}).get("socket_address", {}).get("port_value")
                if port:
                    self.port = int(port)
                    return True
        return False

    def _listener_accepts(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.downstream_tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def access_log_text(self) -> str:
        return self.access_log_path.read_text(errors="replace") if self.access_log_path.exists() else ""

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        parts = []
        if self.log_path.exists():
            parts.append(self.log_path.read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self.returncode is None:
            self.returncode = self.proc.returncode
        _RUNNING.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@atexit.register
def _kill_all() -> None:
    for e in list(_RUNNING):
        try:
            e.stop(timeout=3)
        except Exception:
            pass
