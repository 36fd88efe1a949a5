"""EchoUpstream: answers every request with 200 JSON describing what reached it."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real upstream behind Envoy
    server: "_Server"

    def log_message(self, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        te = (self.headers.get("transfer-encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _raw_target(self) -> str:
        parts = self.raw_requestline.decode("latin-1").rstrip("\r\n").split(" ")
        return parts[1] if len(parts) >= 2 else self.path

    def _handle(self):
        body = self._read_body()
        headers: dict[str, object] = {}
        for k, v in self.headers.items():
            k = k.lower()
            if k in headers:
                prev = headers[k]
                headers[k] = (prev if isinstance(prev, list) else [prev]) + [v]
            else:
                headers[k] = v
        record = {
            "method": self.command,
            # self.path is not the wire target: Python 3.11+ collapses a leading "//".
            "path": self._raw_target(),
            "headers": headers,
            "body_b64": base64.b64encode(body).decode(),
        }
        self.server.record(record)
        out = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.send_header("x-echo", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def __getattr__(self, name):
        # do_GET, do_POST, do_PUT, do_DELETE, do_PATCH, do_OPTIONS, do_HEAD, any method
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away (Envoy timeout, test stopped): not news
        super().handle_error(request, client_address)

    def __init__(self, addr):
        super().__init__(addr, _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []

    def record(self, rec: dict) -> None:
        with self.lock:
            self.requests.append(rec)


class EchoUpstream:
    """Threaded echo server on 127.0.0.1 and a free port; `requests` lists what it received."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._srv = _Server((host, port))
        self.host, self.port = self._srv.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> "EchoUpstream":
        self._thread = threading.Thread(target=self._srv.serve_forever, name="echo", daemon=True)
        self._thread.start()
        return self

    @property
    def requests(self) -> list[dict]:
        with self._srv.lock:
            return list(self._srv.requests)

    @property
    def count(self) -> int:
        with self._srv.lock:
            return len(self._srv.requests)

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
