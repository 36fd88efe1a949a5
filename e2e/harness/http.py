"""A tiny HTTP/1.1 client that sends the request target exactly as given.

`requests`/urllib3 normalise paths (dot segments, percent-encoding) before sending, which
would hide exactly what the path tests probe, and cannot send duplicate headers. This client
uses http.client with the raw target and a list of headers.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

Headers = Union[Mapping[str, str], Sequence[tuple[str, str]], None]


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:  # short, for assertion messages
        body = self.text
        if len(body) > 600:
            body = body[:600] + "..."
        return f"<Response {self.status} headers={self.headers!r} body={body!r}>"


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def request(
    base_url: str,
    method: str,
    target: str,
    headers: Headers = None,
    body: bytes | str | None = None,
    timeout: float = 10.0,
) -> Response:
    """Sends one request on a fresh connection; `target` goes on the wire byte for byte."""
    u = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        pairs = _pairs(headers)
        names = {k.lower() for k, _ in pairs}
        conn.putrequest(
            method,
            target,
            skip_host="host" in names,
            skip_accept_encoding=True,
        )
        if isinstance(body, str):
            body = body.encode()
        for k, v in pairs:
            conn.putheader(k, v)
        if body is not None and "content-length" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, list(resp.getheaders()), data)
    finally:
        conn.close()


def raw_request(host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Sends raw bytes and returns everything the server answers until it closes (or times out)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(rest) >= int(v.strip())
    return False


def raw_status(data: bytes) -> int:
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    return int(line.split()[1])


def header_pairs(*items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for it in items:
        out.extend(it)
    return out
