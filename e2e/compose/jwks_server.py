#!/usr/bin/env python3
"""A static IdP for docker-compose: serves a JWKS file at /jwks.json and an OpenID discovery
document at /.well-known/openid-configuration, on 127.0.0.1 only. Stdlib only."""
import argparse
import json
import pathlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18443)
    ap.add_argument("--jwks", type=pathlib.Path, required=True)
    ap.add_argument("--issuer", default="https://issuer.demo.apiguard")
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/jwks.json":
                body, status = args.jwks.read_bytes(), 200  # re-read: edit the file to rotate
            elif path == "/.well-known/openid-configuration":
                doc = {"issuer": args.issuer, "jwks_uri": f"http://127.0.0.1:{args.port}/jwks.json"}
                body, status = json.dumps(doc).encode(), 200
            else:
                body, status = b'{"error":"not found"}', 404
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
