"""Request validation through the real Envoy: header, query and path parameter rules, the
body rule (media type, size with and without Content-Length, UTF-8, nesting, duplicate keys,
JSON Schema), the policy-wide request limits, and that bodies reach the upstream unchanged.
One Envoy (concurrency 2) for the whole module; after every test it must still serve."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time

import pytest

from harness.checks import echoed, problem
from harness.http import Response

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

TENANT = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
REQ_ID = "123e4567-e89b-12d3-a456-426614174000"
# Distinctive values: a denial must never echo them back.
CANARY = "zqxCANARYzqx"

ITEM_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": {"type": "string", "maxLength": 64}, "price": {"type": "number"}},
}

POLICY = {
    "hold_headers_for_body": True,
    "request_limits": {"max_url_bytes": 2048, "max_headers": 64, "max_header_bytes": 8192},
    "routes": [
        {"name": "health", "match": {"path": "/healthz", "methods": ["GET"]}, "public": True},
        {
            "name": "params",
            "match": {"path": "/params/{id}", "methods": ["GET"]},
            "public": True,
            "validate": {
                "headers": {
                    "x-request-id": {"type": "uuid"},
                    "x-tenant": {"type": "uuid", "required": True},
                    "x-debug": {"forbidden": True},
                    "x-count": {"type": "integer", "minimum": 1, "maximum": 5},
                    "x-ratio": {"type": "number", "minimum": 0, "maximum": 1},
                    "x-flag": {"type": "boolean"},
                    "x-mode": {"type": "enum", "enum": ["fast", "slow"]},
                    "x-tag": {"type": "string", "pattern": "^[a-z]+$", "min_length": 2, "max_length": 8},
                    "x-multi": {"type": "string", "max_length": 3, "allow_repeated": True},
                },
                "query": {
                    "api": {"type": "enum", "enum": ["1", "2"], "required": True},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                    "sort": {"type": "enum", "enum": ["asc", "desc"]},
                    "q": {"type": "string", "pattern": "^[a-z]+$", "min_length": 2, "max_length": 10},
                    "price": {"type": "number", "minimum": 0, "maximum": 9.5},
                    "on": {"type": "boolean"},
                    "uid": {"type": "uuid"},
                    "tag": {"type": "string", "max_length": 3, "allow_repeated": True},
                    "debug": {"forbidden": True},
                },
                "reject_unknown_query": True,
                "path": {"id": {"type": "integer", "minimum": 1, "maximum": 1000}},
            },
        },
        {
            "name": "files",
            "match": {"path": "/files/{name}", "methods": ["GET"]},
            "public": True,
            "validate": {"path": {"name": {"type": "string", "pattern": "^[a-z0-9-]+$", "max_length": 12}}},
        },
        {
            "name": "create-item",
            "match": {"path": "/items/{id}", "methods": ["POST", "PUT"]},
            "public": True,
            "validate": {
                "headers": {"x-debug": {"forbidden": True}},
                "path": {"id": {"type": "integer", "minimum": 1}},
                "body": {
                    "content_types": ["application/json"],
                    "max_bytes": 1024,
                    "max_depth": 32,
                    "schema": ITEM_SCHEMA,
                },
                "max_errors": 10,
            },
        },
        {
            "name": "deep",
            "match": {"path": "/deep", "methods": ["POST"]},
            "public": True,
            "validate": {"body": {"max_bytes": 65536, "max_depth": 32, "schema": {}}},
        },
        {
            "name": "numbers",
            "match": {"path": "/numbers", "methods": ["POST"]},
            "public": True,
            "validate": {"body": {"max_bytes": 65536, "schema": {
                "type": "object",
                "properties": {
                    "n": {"type": "number", "maximum": 1000},
                    "i": {"type": "integer", "maximum": 1000},
                },
            }}},
        },
        {
            # A size limit without JSON: the body streams, counted (BodyPlan::Limit).
            "name": "upload",
            "match": {"path": "/upload", "methods": ["POST"]},
            "public": True,
            "validate": {"body": {"max_bytes": 4096}},
        },
        {"name": "stream", "match": {"prefix": "/stream"}, "public": True},
    ],
}


@pytest.fixture(scope="module")
def envoy(module_envoy_factory):
    return module_envoy_factory.make(POLICY, concurrency=2)


@pytest.fixture(autouse=True)
def still_serving(envoy):
    yield
    assert envoy.running, f"envoy died:\n{envoy.log_tail()}"
    echoed(envoy.get("/healthz"))


# --- helpers --------------------------------------------------------------------------------

def errors_of(body: dict) -> list[tuple[str, str]]:
    errs = body.get("errors")
    assert isinstance(errs, list) and errs, body
    for e in errs:
        assert set(e) == {"pointer", "rule", "message"}, e
    return [(e["pointer"], e["rule"]) for e in errs]


def refused(resp, status, reason, pointer=None, rule=None, secret=None) -> dict:
    body = problem(resp, status, reason)
    if pointer is not None:
        assert (pointer, rule) in errors_of(body), body
    if secret is not None:
        rest = {k: v for k, v in body.items() if k != "request_id"}
        blob = json.dumps(rest) + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers)
        assert secret not in blob, resp
    return body


def counting(envoy, reason):
    """Context: asserts `apiguard.denied.<reason>` grew by one inside."""
    class _C:
        def __enter__(self):
            self.before = envoy.stat(f"apiguard.denied.{reason}")
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                got = envoy.wait_stat(f"apiguard.denied.{reason}", self.before + 1, timeout=5)
                assert got == self.before + 1, (reason, self.before, got)
    return _C()


def params_get(envoy, target="/params/5?api=1", headers=None):
    h = [("x-tenant", TENANT)]
    if headers is not None:
        h = list(headers)
    return envoy.get(target, h)


def _parse_response(data: bytes) -> Response:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    return Response(status, lines[0], headers, rest)


def send_chunked(envoy, target, chunks, content_type="application/json", method="POST",
                 delay=0.05, extra_headers=()) -> Response:
    """HTTP/1.1 with Transfer-Encoding: chunked (no Content-Length), each chunk sent apart."""
    hdr = [f"{method} {target} HTTP/1.1", "Host: apiguard.test", "Transfer-Encoding: chunked",
           "Connection: close"]
    if content_type:
        hdr.append(f"Content-Type: {content_type}")
    hdr += [f"{k}: {v}" for k, v in extra_headers]
    s = socket.create_connection(("127.0.0.1", envoy.port), timeout=15)
    try:
        s.sendall(("\r\n".join(hdr) + "\r\n\r\n").encode())
        try:
            for c in chunks:
                time.sleep(delay)
                s.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload: the answer is already there
        data = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
                if _complete_response(data):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
    finally:
        s.close()
    assert data, "no response"
    return _parse_response(data)


def _complete_response(data: bytes) -> bool:
    if b"\r\n\r\n" not in data:
        return False
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(rest) >= int(v.strip())
    return False


def body_seen(resp) -> bytes:
    return base64.b64decode(echoed(resp)["body_b64"])


def post_json(envoy, target, body: bytes, ctype="application/json", method="POST", headers=()):
    return envoy.request(method, target, [("content-type", ctype), *headers], body)


# --- headers --------------------------------------------------------------------------------

HEADER_OK = [
    ("x-request-id", REQ_ID),
    ("x-request-id", REQ_ID.upper()),
    ("x-count", "1"),
    ("x-count", "5"),
    ("x-ratio", "0"),
    ("x-ratio", "1"),
    ("x-ratio", "0.25"),
    ("x-ratio", "1e-1"),
    ("x-flag", "true"),
    ("x-flag", "false"),
    ("x-mode", "fast"),
    ("x-mode", "slow"),
    ("x-tag", "ab"),
    ("x-tag", "abcdefgh"),
    ("x-multi", "abc"),
]


@pytest.mark.parametrize("name,value", HEADER_OK)
def test_header_rule_passes(envoy, name, value):
    seen = echoed(params_get(envoy, headers=[("x-tenant", TENANT), (name, value)]))
    assert seen["headers"][name] == value


HEADER_BAD = [
    ("x-request-id", "zqxCANARYzqx-not-a-uuid", "type"),
    ("x-request-id", REQ_ID + "0", "type"),
    ("x-tenant", "zqxCANARYzqx", "type"),
    ("x-debug", "zqxCANARYzqx", "forbidden"),
    ("x-debug", "", "forbidden"),
    ("x-count", "0", "minimum"),
    ("x-count", "6", "maximum"),
    ("x-count", "1.5", "type"),
    ("x-count", "+3", "type"),
    ("x-count", "03", "type"),
    ("x-count", "99999999999999999999", "maximum"),  # an integer beyond 64 bits is still one
    ("x-ratio", "1.5", "maximum"),
    ("x-ratio", "-0.1", "minimum"),
    ("x-ratio", "NaN", "type"),
    ("x-ratio", "inf", "type"),
    ("x-ratio", ".5", "type"),
    ("x-flag", "yes", "type"),
    ("x-flag", "TRUE", "type"),
    ("x-mode", "zqxCANARYzqx", "enum"),
    ("x-mode", "FAST", "enum"),
    ("x-tag", "ab1", "pattern"),
    ("x-tag", "a", "minLength"),
    ("x-tag", "abcdefghi", "maxLength"),
    ("x-multi", "abcd", "maxLength"),
]


@pytest.mark.parametrize("name,value,rule", HEADER_BAD)
def test_header_rule_fails(envoy, echo, name, value, rule):
    before = echo.count
    hdrs = [(name, value)] if name == "x-tenant" else [("x-tenant", TENANT), (name, value)]
    with counting(envoy, "invalid_header"):
        resp = params_get(envoy, headers=hdrs)
        refused(resp, 400, "invalid_header", f"header/{name}", rule,
                secret=value if len(value) >= 6 else None)
    assert echo.count == before


def test_header_required_missing(envoy):
    refused(params_get(envoy, headers=[]), 400, "invalid_header", "header/x-tenant", "required")


def test_header_repeated_refused_unless_allowed(envoy):
    resp = params_get(envoy, headers=[("x-tenant", TENANT), ("x-count", "1"), ("x-count", "2")])
    refused(resp, 400, "invalid_header", "header/x-count", "repeated")
    resp = params_get(envoy, headers=[("x-tenant", TENANT), ("x-tenant", TENANT)])
    refused(resp, 400, "invalid_header", "header/x-tenant", "repeated")
    # allow_repeated: every copy is checked
    echoed(params_get(envoy, headers=[("x-tenant", TENANT), ("x-multi", "a"), ("x-multi", "b")]))
    resp = params_get(envoy, headers=[("x-tenant", TENANT), ("x-multi", "a"), ("x-multi", "bcde")])
    refused(resp, 400, "invalid_header", "header/x-multi", "maxLength")


def test_header_names_case_insensitive(envoy):
    resp = params_get(envoy, headers=[("X-Tenant", TENANT), ("X-DEBUG", "1")])
    refused(resp, 400, "invalid_header", "header/x-debug", "forbidden")


def test_several_errors_reported_together(envoy):
    resp = params_get(envoy, "/params/0?api=1&limit=0",
                      headers=[("x-count", "9"), ("x-debug", "1")])
    body = refused(resp, 400, "invalid_header")
    errs = errors_of(body)
    for e in [("header/x-tenant", "required"), ("header/x-debug", "forbidden"),
              ("header/x-count", "maximum"), ("path/id", "minimum"), ("query/limit", "minimum")]:
        assert e in errs, errs


# --- query ----------------------------------------------------------------------------------

QUERY_OK = [
    "api=2",
    "api=1&limit=1",
    "api=1&limit=100",
    "api=1&sort=asc",
    "api=1&sort=desc",
    "api=1&q=ab",
    "api=1&q=abcdefghij",
    "api=1&q=%61%62",
    "api=1&price=0",
    "api=1&price=9.5",
    "api=1&price=1e0",
    "api=1&on=true",
    "api=1&on=false",
    f"api=1&uid={REQ_ID}",
    "api=1&tag=a&tag=bc&tag=def",
    "api=1&limit=5&sort=asc&q=abc&price=1.25&on=true",
    "api=1&",
]


@pytest.mark.parametrize("query", QUERY_OK)
def test_query_rule_passes(envoy, query):
    seen = echoed(params_get(envoy, f"/params/5?{query}"))
    assert seen["path"] == f"/params/5?{query}"


QUERY_BAD = [
    ("", "query/api", "required"),
    ("limit=5", "query/api", "required"),
    ("api=3", "query/api", "enum"),
    ("api=1&limit=0", "query/limit", "minimum"),
    ("api=1&limit=101", "query/limit", "maximum"),
    ("api=1&limit=-1", "query/limit", "minimum"),
    ("api=1&limit=abc", "query/limit", "type"),
    ("api=1&limit=", "query/limit", "type"),
    ("api=1&limit", "query/limit", "type"),
    ("api=1&limit=1.0", "query/limit", "type"),
    ("api=1&limit=%31%30%31", "query/limit", "maximum"),
    ("api=1&sort=zqxCANARYzqx", "query/sort", "enum"),
    ("api=1&sort=ASC", "query/sort", "enum"),
    ("api=1&q=ABC", "query/q", "pattern"),
    ("api=1&q=a+b", "query/q", "pattern"),
    ("api=1&q=ab%0A", "query/q", "pattern"),
    ("api=1&q=a", "query/q", "minLength"),
    ("api=1&q=abcdefghijk", "query/q", "maxLength"),
    ("api=1&price=9.51", "query/price", "maximum"),
    ("api=1&price=-0.5", "query/price", "minimum"),
    ("api=1&price=1e999", "query/price", "type"),
    ("api=1&on=1", "query/on", "type"),
    ("api=1&uid=zqxCANARYzqx", "query/uid", "type"),
    ("api=1&tag=abcd", "query/tag", "maxLength"),
    ("api=1&tag=a&tag=abcd", "query/tag", "maxLength"),
    ("api=1&limit=1&limit=2", "query/limit", "repeated"),
    ("api=1&api=1", "query/api", "repeated"),
    ("api=1&debug=1", "query/debug", "forbidden"),
    ("api=1&zqxCANARYzqx=1", "query/zqxCANARYzqx", "unknown"),
    ("api=1&%6cimit=500", "query/limit", "maximum"),
    ("api=1&q=%FF", "query", "encoding"),
]


@pytest.mark.parametrize("query,pointer,rule", QUERY_BAD)
def test_query_rule_fails(envoy, echo, query, pointer, rule):
    before = echo.count
    with counting(envoy, "invalid_query"):
        resp = params_get(envoy, f"/params/5?{query}")
        body = refused(resp, 400, "invalid_query", pointer, rule)
    if "CANARY" in query and rule != "unknown":
        assert CANARY not in resp.text, resp
    if rule == "unknown":
        assert len(errors_of(body)) == 1
    assert echo.count == before


# --- path parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/params/1", "/params/1000", "/params/42", "/params/%31%30"])
def test_path_param_passes(envoy, target):
    echoed(params_get(envoy, target + "?api=1"))


@pytest.mark.parametrize("target,rule", [
    ("/params/0", "minimum"),
    ("/params/1001", "maximum"),
    ("/params/-1", "minimum"),
    ("/params/abc", "type"),
    ("/params/1.0", "type"),
    ("/params/01", "type"),
    ("/params/%2B1", "type"),
    ("/params/99999999999999999999", "maximum"),
])
def test_path_param_fails(envoy, echo, target, rule):
    before = echo.count
    with counting(envoy, "invalid_path_param"):
        refused(params_get(envoy, target + "?api=1"), 400, "invalid_path_param", "path/id", rule)
    assert echo.count == before


@pytest.mark.parametrize("target", ["/files/abc", "/files/a-1", "/files/abcdefghijkl"])
def test_string_path_param_passes(envoy, target):
    echoed(envoy.get(target))


@pytest.mark.parametrize("target,rule", [
    ("/files/ABC", "pattern"),
    ("/files/a%20b", "pattern"),
    ("/files/a.b", "pattern"),
    ("/files/abcdefghijklm", "maxLength"),
])
def test_string_path_param_fails(envoy, target, rule):
    refused(envoy.get(target), 400, "invalid_path_param", "path/name", rule)


@pytest.mark.parametrize("target", ["/files/%FF", "/files/%C0%AF"])
def test_path_whose_escapes_are_not_utf8_is_refused_before_routing(envoy, target):
    """Escapes that do not decode to UTF-8 (a stray byte, an overlong `/`) are refused for
    the whole path, on every route, before a parameter rule could see them."""
    body = refused(envoy.get(target), 400, "ambiguous_path")
    assert "not UTF-8" in body["detail"], body


# --- body: media type, presence, size -------------------------------------------------------

GOOD_ITEM = b'{"name":"widget","price":9.99}'


@pytest.mark.parametrize("ctype", [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
])
def test_body_content_type_accepted(envoy, ctype):
    assert body_seen(post_json(envoy, "/items/1", GOOD_ITEM, ctype)) == GOOD_ITEM


@pytest.mark.parametrize("ctype", [
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/problem+json",  # the list names application/json only
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "",
])
def test_body_wrong_content_type_415(envoy, echo, ctype):
    before = echo.count
    with counting(envoy, "unsupported_media_type"):
        refused(post_json(envoy, "/items/1", GOOD_ITEM, ctype), 415, "unsupported_media_type",
                "header/content-type", "contentType")
    assert echo.count == before


def test_body_missing_content_type_415(envoy):
    resp = envoy.request("POST", "/items/1", [], GOOD_ITEM)
    refused(resp, 415, "unsupported_media_type", "header/content-type", "contentType")


def test_body_required(envoy):
    refused(post_json(envoy, "/items/1", b""), 400, "invalid_body", "", "required")
    refused(envoy.request("POST", "/items/1", [("content-type", "application/json")]),
            400, "invalid_body", "", "required")


def test_body_over_limit_with_content_length_413(envoy, echo):
    big = json.dumps({"name": "x", "price": 1, "pad": "y" * 2000}).encode()
    before = echo.count
    with counting(envoy, "body_too_large"):
        refused(post_json(envoy, "/items/1", big), 413, "body_too_large",
                "header/content-length", "maxBytes")
    time.sleep(0.3)
    assert echo.count == before, "the upstream saw a request refused for its Content-Length"


def test_body_over_limit_announced_but_not_sent_413(envoy, echo):
    """The length alone decides: the body never has to arrive."""
    before = echo.count
    raw = (b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000000\r\n\r\n{")
    s = socket.create_connection(("127.0.0.1", envoy.port), timeout=10)
    try:
        s.sendall(raw)
        data = b""
        while not _complete_response(data):
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    resp = _parse_response(data)
    refused(resp, 413, "body_too_large", "header/content-length", "maxBytes")
    assert echo.count == before


def test_body_at_limit_accepted(envoy):
    pad = 1024 - len(b'{"name":""}')
    body = b'{"name":"' + b"a" * 0 + b'"' + b" " * pad + b"}"
    assert len(body) == 1024
    assert body_seen(post_json(envoy, "/items/1", body)) == body
    body2 = body[:-1] + b" }"
    refused(post_json(envoy, "/items/1", body2), 413, "body_too_large")


def test_body_over_limit_chunked_413(envoy, echo):
    chunks = [b'{"name":"x","pad":"' + b"y" * 500, b"y" * 500, b"y" * 500, b'"}']
    before_bodies = [r["body_b64"] for r in echo.requests]
    with counting(envoy, "body_too_large"):
        resp = send_chunked(envoy, "/items/1", chunks)
        refused(resp, 413, "body_too_large", "", "maxBytes")
    time.sleep(0.3)
    joined = base64.b64encode(b"".join(chunks)).decode()
    assert joined not in [r["body_b64"] for r in echo.requests[len(before_bodies):]]


def test_body_over_limit_chunked_not_seen_by_upstream(envoy, echo):
    """Nothing of a refused chunked body, not even its request line, reaches the upstream."""
    before = echo.count
    chunks = [b'{"name":"x","pad":"' + b"y" * 600, b"y" * 600, b'"}']
    refused(send_chunked(envoy, "/items/7", chunks), 413, "body_too_large")
    time.sleep(0.5)
    new = echo.requests[before:]
    assert not [r for r in new if r["path"].startswith("/items/7")], new


def test_valid_chunked_upload_reaches_upstream_byte_for_byte(envoy):
    chunks = [b'{"na', b'me":"chu', b'nked \xc3\xa9\\u00e9",', b'\n "price" : 1.50', b"}"]
    resp = send_chunked(envoy, "/items/3", chunks)
    seen = echoed(resp)
    assert base64.b64decode(seen["body_b64"]) == b"".join(chunks)
    assert seen["path"] == "/items/3"


def test_streamed_limit_route_chunked(envoy):
    """A size limit without JSON: the body streams; over the limit it is cut off with 413."""
    ok = [b"a" * 1000] * 4
    assert body_seen(send_chunked(envoy, "/upload", ok, content_type="application/octet-stream")) == b"".join(ok)
    with counting(envoy, "body_too_large"):
        resp = send_chunked(envoy, "/upload", [b"a" * 1500] * 4, content_type="application/octet-stream")
        refused(resp, 413, "body_too_large", "", "maxBytes")
    refused(envoy.request("POST", "/upload", [], b"b" * 5000), 413, "body_too_large",
            "header/content-length", "maxBytes")
    assert body_seen(envoy.request("POST", "/upload", [], b"b" * 4096)) == b"b" * 4096


def test_route_without_body_rule_streams_large_body(envoy):
    big = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    assert body_seen(envoy.request("POST", "/stream/big", [("content-type", "application/octet-stream")], big)) == big
    chunks = [big[i:i + 256 * 1024] for i in range(0, len(big), 256 * 1024)]
    assert body_seen(send_chunked(envoy, "/stream/big", chunks, content_type="text/plain", delay=0.01)) == big


# --- body: JSON -----------------------------------------------------------------------------

def test_valid_body_reaches_upstream_byte_for_byte(envoy):
    for body in [
        GOOD_ITEM,
        b'{ "name" : "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00" ,\n\t"price": 1.50 }\n',
        b'{"price":1e2,"name":"\\"quoted\\""}',
        b'  {"name":"a"}  ',
    ]:
        for method in ("POST", "PUT"):
            assert body_seen(post_json(envoy, "/items/9", body, method=method)) == body


def test_deep_json_too_deep(envoy, echo):
    for body in [b"[" * 10000 + b"]" * 10000,
                 b'{"a":' * 10000 + b"1" + b"}" * 10000,
                 b"[" * 10000]:  # unterminated: depth is refused before syntax
        with counting(envoy, "too_deep"):
            refused(post_json(envoy, "/deep", body), 400, "too_deep", "", "maxDepth")


def test_depth_boundary(envoy):
    ok = b"[" * 32 + b"]" * 32
    assert body_seen(post_json(envoy, "/deep", ok)) == ok
    refused(post_json(envoy, "/deep", b"[" * 33 + b"]" * 33), 400, "too_deep", "", "maxDepth")
    # brackets inside strings do not count
    s = b'["' + b"[" * 5000 + b'"]'
    assert body_seen(post_json(envoy, "/deep", s)) == s
    # nor does an escaped quote end a string
    s = b'["\\"' + b"[" * 100 + b'"]'
    assert body_seen(post_json(envoy, "/deep", s)) == s


def test_items_depth_limit(envoy):
    body = b'{"name":"a","price":' + b"[" * 40 + b"]" * 40 + b"}"
    refused(post_json(envoy, "/items/1", body), 400, "too_deep", "", "maxDepth")


@pytest.mark.parametrize("body", [
    b'{"n":1e400}',
    b'{"n":-1e400}',
    b'{"i":1' + b"0" * 400 + b"}",
    b'{"n":' + b"9" * 5000 + b"}",
])
def test_huge_numbers_refused(envoy, echo, body):
    resp = post_json(envoy, "/numbers", body)
    b = problem(resp, 400, "invalid_body")
    assert errors_of(b)
    assert "9" * 50 not in resp.text and "0" * 50 not in resp.text


@pytest.mark.parametrize("body,pointer,rule", [
    (b'{"i":100000000000000000000000000000}', "/i", "maximum"),
    (b'{"i":18446744073709551616}', "/i", "maximum"),
    (b'{"i":-99999999999999999999999}', None, None),
    (b'{"n":1e308}', "/n", "maximum"),
    (b'{"n":1000.5}', "/n", "maximum"),
    (b'{"i":1001}', "/i", "maximum"),
    (b'{"i":1.5}', "/i", "type"),
])
def test_large_numbers_validated(envoy, body, pointer, rule):
    resp = post_json(envoy, "/numbers", body)
    if pointer is None:
        assert body_seen(resp) == body
    else:
        refused(resp, 400, "invalid_body", pointer, rule)


@pytest.mark.parametrize("body", [
    b'{"n":1000}',
    b'{"i":1000}',
    b'{"i":-9223372036854775809}',
    b'{"n":0.' + b"0" * 3000 + b"1}",
    b'{"n":1e-400}',
    b'{"i":1e3}',
    b'{"i":1.0}',
])
def test_number_edge_values_pass_unchanged(envoy, body):
    assert body_seen(post_json(envoy, "/numbers", body)) == body


@pytest.mark.parametrize("body,rule", [
    (b'{"name":"\xff"}', "encoding"),
    (b'{"name":"\xc3"}', "encoding"),
    (b'{"name":"\xed\xa0\x80"}', "encoding"),  # UTF-8-encoded surrogate
    (b'{"name":"\xc0\xaf"}', "encoding"),  # overlong
    (b'\xef\xbb\xbf{"name":"a"}', "syntax"),  # BOM
    (b'{"name":"\\ud800"}', "syntax"),  # lone surrogate escape
    (b'{"name":"a"', "syntax"),
    (b'{"name":"a"} x', "syntax"),
    (b'{"name":"a"}{"name":"b"}', "syntax"),
    (b"{'name':'a'}", "syntax"),
    (b'{"name":"a",}', "syntax"),
    (b'{"name":NaN}', "syntax"),
])
def test_malformed_body_400(envoy, echo, body, rule):
    with counting(envoy, "invalid_body"):
        refused(post_json(envoy, "/items/1", body), 400, "invalid_body", "", rule)


@pytest.mark.parametrize("body", [
    b'{"name":"a","name":"b"}',
    b'{"name":"a","n\\u0061me":"b"}',
    b'{"name":"a","price":1,"price":2}',
])
def test_duplicate_keys_400(envoy, echo, body):
    with counting(envoy, "invalid_body"):
        refused(post_json(envoy, "/items/1", body), 400, "invalid_body", "", "duplicateKey")


def test_duplicate_keys_nested_400(envoy):
    body = b'[{"a":1},{"b":{"c":1,"c":2}}]'
    refused(post_json(envoy, "/deep", body), 400, "invalid_body", "", "duplicateKey")


def test_mass_assignment_refused(envoy, echo):
    body = b'{"name":"a","price":1,"is_admin":true,"role":"zqxCANARYzqx"}'
    with counting(envoy, "invalid_body"):
        resp = post_json(envoy, "/items/1", body)
        b = refused(resp, 400, "invalid_body", "/is_admin", "additionalProperties", secret=CANARY)
    assert ("/role", "additionalProperties") in errors_of(b)


@pytest.mark.parametrize("body,pointer,rule", [
    (b'{"price":1}', "/name", "required"),
    (b'{"name":"' + b"a" * 65 + b'"}', "/name", "maxLength"),
    (b'{"name":"a","price":"zqxCANARYzqx"}', "/price", "type"),
    (b'{"name":5}', "/name", "type"),
    (b'["name"]', "", "type"),
    (b"null", "", "type"),
])
def test_schema_violations(envoy, body, pointer, rule):
    resp = post_json(envoy, "/items/1", body)
    refused(resp, 400, "invalid_body", pointer, rule, secret=CANARY)


def test_max_length_counts_characters(envoy):
    body = ('{"name":"' + "é" * 64 + '"}').encode()
    assert body_seen(post_json(envoy, "/items/1", body)) == body


def test_item_route_header_and_path_rules(envoy, echo):
    before = echo.count
    refused(post_json(envoy, "/items/0", GOOD_ITEM), 400, "invalid_path_param", "path/id", "minimum")
    refused(post_json(envoy, "/items/1", GOOD_ITEM, headers=[("x-debug", "1")]), 400,
            "invalid_header", "header/x-debug", "forbidden")
    assert echo.count == before


def test_allowed_stat(envoy):
    before = envoy.stat("apiguard.allowed")
    echoed(post_json(envoy, "/items/1", GOOD_ITEM))
    assert envoy.wait_stat("apiguard.allowed", before + 1, timeout=5) >= before + 1


# --- request limits -------------------------------------------------------------------------

def test_url_too_long_414(envoy, echo):
    before = echo.count
    ok = "/stream/" + "a" * (2048 - len("/stream/"))
    assert len(ok) == 2048
    echoed(envoy.get(ok))
    with counting(envoy, "url_too_long"):
        refused(envoy.get(ok + "b"), 414, "url_too_long", "url", "maxUrlBytes")
        pass
    refused(envoy.get("/stream/x?" + "q=" + "a" * 3000), 414, "url_too_long", "url", "maxUrlBytes")
    assert echo.count == before + 1


def test_too_many_headers_431(envoy, echo):
    echoed(envoy.get("/stream/h", [(f"x-h{i}", "v") for i in range(40)]))
    before = echo.count
    with counting(envoy, "too_many_headers"):
        refused(envoy.get("/stream/h", [(f"x-h{i}", "v") for i in range(80)]), 431,
                "too_many_headers", "headers", "maxHeaders")
    assert echo.count == before


def test_header_too_large_431(envoy, echo):
    echoed(envoy.get("/stream/h", [("x-big", "a" * 8000)]))
    before = echo.count
    with counting(envoy, "header_too_large"):
        refused(envoy.get("/stream/h", [("x-big", "a" * 8200)]), 431, "header_too_large",
                "header/x-big", "maxHeaderBytes", secret="a" * 100)
    assert echo.count == before


# --- a refused request never reaches the upstream -------------------------------------------

REFUSED_BODIES = [
    ("schema", b'{"name":"a","is_admin":true}', "invalid_body"),
    ("duplicate", b'{"name":"a","name":"b"}', "invalid_body"),
    ("utf8", b'{"name":"\xff"}', "invalid_body"),
    ("syntax", b'{"name":"a"', "invalid_body"),
    ("deep", b'{"name":' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
    ("number", b'{"name":"a","price":1e400}', "invalid_body"),
]


@pytest.mark.parametrize("case,body,reason", REFUSED_BODIES, ids=[c[0] for c in REFUSED_BODIES])
def test_body_refused_request_never_reaches_upstream(envoy, echo, case, body, reason):
    """A body the filter refuses must not be sent on: not the body, not even the request
    head. (Envoy forwards the head as soon as the headers callback continues, so a filter
    that buffers for validation has to hold the headers too.)"""
    target = f"/items/{900 + REFUSED_BODIES.index((case, body, reason))}"
    before = echo.count
    refused(post_json(envoy, target, body), 400, reason)
    time.sleep(0.3)
    seen = [r for r in echo.requests[before:] if r["path"] == target]
    assert not seen, f"upstream received the refused request: {seen}"


def test_chunked_refused_body_never_reaches_upstream(envoy, echo):
    before = echo.count
    refused(send_chunked(envoy, "/items/950", [b'{"name":"a",', b'"is_admin":true}']), 400, "invalid_body")
    time.sleep(0.3)
    seen = [r for r in echo.requests[before:] if r["path"] == "/items/950"]
    assert not seen, f"upstream received the refused request: {seen}"


def test_rejected_request_id_not_reflected(envoy):
    """x-request-id failing its own rule is a request value like any other: the denial
    should not send it back (as `request_id`), least of all at any length."""
    bad = "zqx" + "A" * 4000
    resp = params_get(envoy, headers=[("x-tenant", TENANT), ("x-request-id", bad)])
    body = refused(resp, 400, "invalid_header", "header/x-request-id", "type")
    assert bad not in resp.text, f"request_id reflects the rejected header ({len(body.get('request_id', ''))} chars)"


# --- HTTP/2: trailers must not skip the body check ------------------------------------------

def _h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def h2_post(envoy, path: str, body: bytes, trailers: list[tuple[str, str]] | None,
            ctype: str = "application/json") -> dict:
    """One h2c (prior knowledge) POST; returns the response body parsed as JSON."""
    s = socket.create_connection(("127.0.0.1", envoy.port), timeout=10)
    try:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b""))
        head = b"".join(_hpack_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "apiguard.test"), ("content-type", ctype)])
        s.sendall(_h2_frame(1, 0x4, 1, head))
        s.sendall(_h2_frame(0, 0 if trailers else 0x1, 1, body))
        if trailers:
            s.sendall(_h2_frame(1, 0x5, 1, b"".join(_hpack_literal(k, v) for k, v in trailers)))
        buf, data, done = b"", b"", False
        while not done:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9:9 + length], buf[9 + length:]
                if ftype == 4 and not flags & 1:
                    s.sendall(_h2_frame(4, 1, 0, b""))
                elif stream == 1 and ftype == 0:
                    data += payload
                    if flags & 1:
                        done = True
                elif stream == 1 and ftype == 1 and flags & 1:
                    done = True
                elif ftype in (3, 7):
                    done = True
    finally:
        s.close()
    assert data, "no response body over HTTP/2"
    return json.loads(data)


def test_h2_body_validated(envoy):
    ok = h2_post(envoy, "/items/1", GOOD_ITEM, None)
    assert base64.b64decode(ok["body_b64"]) == GOOD_ITEM
    bad = h2_post(envoy, "/items/1", b'{"name":"a","is_admin":true}', None)
    assert bad.get("reason") == "invalid_body", bad


def test_h2_trailers_do_not_bypass_body_validation(envoy, echo):
    """With request trailers the body callbacks never see end_of_stream: the stream ends in
    the trailers callback. The buffered body must still be checked there."""
    before = echo.count
    evil = b'{"name":"a","is_admin":true}'
    resp = h2_post(envoy, "/items/951", evil, [("x-trailer", "1")])
    seen = [r for r in echo.requests[before:] if r["path"] == "/items/951"]
    assert resp.get("reason") == "invalid_body" and not seen, (
        f"body validation bypassed with trailers: response {resp}, upstream saw "
        f"{[base64.b64decode(r['body_b64']) for r in seen]}")


def test_h2_trailers_do_not_bypass_size_limit(envoy, echo):
    before = echo.count
    big = json.dumps({"name": "x", "pad": "y" * 5000}).encode()
    # no content-length over h2: only the streamed count can catch it
    resp = h2_post(envoy, "/items/952", big[:16000], [("x-trailer", "1")])
    seen = [r for r in echo.requests[before:] if r["path"] == "/items/952"]
    assert resp.get("reason") == "body_too_large" and not seen, (resp, len(seen))
