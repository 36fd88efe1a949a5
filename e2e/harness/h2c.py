"""A minimal HTTP/2 cleartext (prior knowledge) client on the `h2` package.

HTTP/2 carries the method as the `:method` pseudo-header, byte for byte: a lower-case
`delete` reaches Envoy and the filter as it was sent, which an HTTP/1.1 client cannot do
through every parser."""

from __future__ import annotations

import json
import socket

import h2.config
import h2.connection
import h2.events


class H2Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<H2Response {self.status} {self.body[:300]!r}>"


def request(host: str, port: int, method: str, path: str, headers=(), body: bytes = b"",
            timeout: float = 10.0) -> H2Response:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", f"{host}:{port}"), (":path", path)]
        hdrs += [(k.lower(), v) for k, v in headers]
        conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, resp_headers, data = 0, [], bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the response ended")
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    resp_headers = [(k, v) for k, v in ev.headers]
                    status = int(dict(resp_headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
                    return H2Response(status, resp_headers, bytes(data))
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
