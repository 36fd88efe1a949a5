"""JwksServer: a fake IdP serving a JWKS and an OpenID discovery document.

Behaviour switches at runtime (`serve`, `fail`, `garbage`, `empty`, `hang`), requests are
counted per path with timestamps, and the server can stop listening and start again on the
same port. Responses close the connection (HTTP/1.0), so a stopped server really is gone
for Envoy's connection pool.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JWKS_PATH = "/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: "_Server"

    def log_message(self, *args):
        pass

    def do_GET(self):
        owner: JwksServer = self.server.owner
        path = self.path.split("?", 1)[0]
        owner._count(path)
        mode, arg = owner._behaviour()
        if mode == "hang":
            time.sleep(arg)
            mode = "serve"
        if path == DISCOVERY_PATH and owner.discovery_enabled:
            if mode == "fail":
                return self._send(500, b'{"error":"boom"}')
            doc = {
                "issuer": owner.issuer,
                "jwks_uri": owner.url(JWKS_PATH),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
            return self._send(200, json.dumps(doc).encode())
        if path != JWKS_PATH:
            return self._send(404, b'{"error":"not found"}')
        if mode == "fail":
            return self._send(500, b'{"error":"boom"}')
        if mode == "garbage":
            return self._send(200, b"<html>this is not json{{{")
        if mode == "empty":
            return self._send(200, b'{"keys":[]}')
        return self._send(200, json.dumps(owner.jwks).encode())

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away (Envoy timeout, test stopped): not news
        super().handle_error(request, client_address)

    def __init__(self, addr, owner):
        self.owner = owner
        super().__init__(addr, _Handler)


class JwksServer:
    def __init__(self, jwks: dict | None = None, issuer: str = "https://idp.example",
                 host: str = "127.0.0.1", port: int = 0):
        self.jwks = jwks if jwks is not None else {"keys": []}
        self.issuer = issuer
        self.discovery_enabled = True
        self.host = host
        self._lock = threading.Lock()
        self._mode: tuple[str, float] = ("serve", 0.0)
        self._counts: collections.Counter[str] = collections.Counter()
        self._times: list[tuple[float, str]] = []
        self._srv: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "JwksServer":
        """Starts listening (again, on the same port once it was chosen)."""
        if self._srv is not None:
            return self
        deadline = time.monotonic() + 10
        while True:
            try:
                self._srv = _Server((self.host, self.port), self)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.port = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever, name="jwks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening entirely: connections to the port are refused."""
        srv, self._srv = self._srv, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()

    @property
    def running(self) -> bool:
        return self._srv is not None

    def url(self, path: str = JWKS_PATH) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def jwks_url(self) -> str:
        return self.url(JWKS_PATH)

    @property
    def discovery_url(self) -> str:
        return self.url(DISCOVERY_PATH)

    # --- behaviour -------------------------------------------------------------------
    def _behaviour(self) -> tuple[str, float]:
        with self._lock:
            return self._mode

    def serve(self, jwks: dict | None = None) -> None:
        """Serves `jwks` (or the current one) normally; use it to rotate keys."""
        with self._lock:
            if jwks is not None:
                self.jwks = jwks
            self._mode = ("serve", 0.0)

    def fail(self) -> None:
        """Answers 500."""
        with self._lock:
            self._mode = ("fail", 0.0)

    def garbage(self) -> None:
        """Answers 200 with a body that is not JSON."""
        with self._lock:
            self._mode = ("garbage", 0.0)

    def empty(self) -> None:
        """Answers 200 {"keys": []}."""
        with self._lock:
            self._mode = ("empty", 0.0)

    def hang(self, seconds: float) -> None:
        """Holds every request `seconds` before answering normally."""
        with self._lock:
            self._mode = ("hang", float(seconds))

    # --- counters --------------------------------------------------------------------
    def _count(self, path: str) -> None:
        with self._lock:
            self._counts[path] += 1
            self._times.append((time.monotonic(), path))

    def count(self, path: str = JWKS_PATH) -> int:
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def times(self, path: str = JWKS_PATH) -> list[float]:
        with self._lock:
            return [t for t, p in self._times if p == path]

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._times.clear()

    def wait_for(self, n: int, path: str = JWKS_PATH, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(path) >= n:
                return True
            time.sleep(0.05)
        return self.count(path) >= n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
