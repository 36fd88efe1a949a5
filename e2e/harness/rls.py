"""Redis (Debian's redis-server) and apiguard-rls (rls/, Envoy's rate limit service
protocol) as real processes for the global-limit tests.

Both bind 127.0.0.1 on a port picked free by the OS and kept for restarts (the fault tests
stop and start them on the same port, as a redeployed service would come back). Redis runs
without persistence. Both die with the test process (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

from .envoy import REPO, _pdeathsig

DEFAULT_RLS = REPO / "rls" / "target" / "debug" / "apiguard-rls"


def rls_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("APIGUARD_RLS") or DEFAULT_RLS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


class _Process:
    name = "process"

    def __init__(self, workdir: pathlib.Path):
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_Process":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig)
        _wait_port(self.port, self.proc, self.name)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts (kernel backlog) but nothing answers: a service
        slower than any timeout."""
        assert self.proc
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Redis(_Process):
    name = "redis"

    def command(self) -> list[str]:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server missing: `make deps` installs it (apt-get install redis-server)")
        return [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


class Rls(_Process):
    name = "rls"

    def __init__(self, workdir: pathlib.Path, config: str, redis: Redis | None):
        super().__init__(workdir)
        self.config_path = workdir / "rls.yaml"
        self.config_path.write_text(config)
        self.redis = redis

    def command(self) -> list[str]:
        exe = rls_path()
        if not exe.exists():
            raise RuntimeError(f"apiguard-rls missing at {exe}: `make rls` builds it, or set APIGUARD_RLS")
        cmd = [str(exe), "--config", str(self.config_path), "--listen", f"127.0.0.1:{self.port}"]
        if self.redis:
            cmd += ["--redis", self.redis.url]
        return cmd


def grpc_cluster(name: str, port: int) -> dict:
    """A static HTTP/2 cluster (gRPC) for the rate limit service."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def redis_and_rls(workdir: pathlib.Path, config: str):
    """Redis and an apiguard-rls on it with `config`, for a module fixture to yield and
    then stop (the rate limit service first, as a deployment would drain it)."""
    redis = Redis(workdir).start()
    rls = Rls(workdir, config, redis).start()
    try:
        yield redis, rls
    finally:
        rls.stop()
        redis.stop()
