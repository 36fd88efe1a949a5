"""gRPC through real Envoy: a grpcio client and server (HTTP/2 upstream cluster), stubs
generated at test time from e2e/grpc/demo.proto.

Every denial is checked by the gRPC client library itself (`RpcError.code()`,
`.details()`, `.trailing_metadata()`), and the server counts the calls that reached it: a
denied call never does. Also: routes by service and method, metadata rules, a rate limit
exact across workers, a client retry policy that retries UNAVAILABLE but is not made to
retry RESOURCE_EXHAUSTED, and gRPC-Web with and without Envoy's grpc_web filter in front.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import grpc
import pytest
import requests
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from harness import tokens
from harness.envoy import static_cluster
from harness.grpc_upstream import GrpcUpstream, stubs

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

ISS = "https://issuer.example"
AUD = "api"
TIMEOUT = 20  # seconds per call: generous, the machine is shared
LIMITED_CAPACITY = 20
ITEMS = {"service": "demo.v1.Items"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_policy(keys) -> dict:
    return {
        "deny_log": "info",
        "request_limits": {"max_header_bytes": 2048},
        "providers": [
            {"name": "main", "issuer": ISS, "audiences": [AUD],
             "jwks": {"inline": tokens.jwks(keys["RS256"])},
             "claims_to_headers": [{"claim": "sub", "header": "x-user"}]},
            {"name": "down", "issuer": "https://down.example",
             "jwks": {"remote": {"cluster": "idp-down", "uri": "http://idp.down/jwks.json"}}},
        ],
        "limits": [
            {"name": "limited", "capacity": LIMITED_CAPACITY, "key": [{"constant": "all"}]},
            {"name": "once", "capacity": 1, "key": [{"constant": "all"}]},
        ],
        "routes": [
            {"name": "get", "match": {"grpc": dict(ITEMS, method="Get")},
             "providers": ["main"], "scopes": {"all_of": ["items:read"]},
             "validate": {"headers": {"x-tenant": {"required": True, "pattern": "^[a-z]+$"}},
                          "body": {"max_bytes": 1024}}},
            {"name": "list", "match": {"grpc": dict(ITEMS, method="List")},
             "providers": ["main"], "scopes": {"all_of": ["items:read"]}},
            {"name": "limited", "match": {"grpc": {"service": "demo.v1.Limited", "method": "Get"}},
             "providers": ["main"], "limits": ["limited"]},
            # Every method of the service.
            {"name": "once", "match": {"grpc": {"service": "demo.v1.Limited"}},
             "providers": ["main"], "limits": ["once"]},
            {"name": "remote", "match": {"grpc": {"service": "demo.v1.Remote"}},
             "providers": ["down"]},
            # demo.v1.Items/Delete: no route -> denied.
        ],
    }


@pytest.fixture(scope="module")
def upstream():
    up = GrpcUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def envoy(module_envoy_factory, upstream, keys):
    return module_envoy_factory.make(
        grpc_policy(keys), upstream_port=upstream.port, upstream_http2=True, concurrency=2,
        clusters=[static_cluster("idp-down", _closed_port())],
    )


@pytest.fixture(scope="module")
def pb():
    return stubs()


def token(keys, scope="items:read", sub="user-1", expired=False) -> str:
    now = int(time.time()) - (7200 if expired else 0)
    c = tokens.claims(ISS, AUD, sub=sub, ttl=300, now=now)
    if scope is not None:
        c["scope"] = scope
    return tokens.mint("RS256", keys["RS256"], c)


def md(tok: str | None = None, tenant: str | None = "acme", **extra) -> list[tuple[str, str]]:
    out = []
    if tok:
        out.append(("authorization", f"Bearer {tok}"))
    if tenant is not None:
        out.append(("x-tenant", tenant))
    out += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return out


def channel(envoy, options=()) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{envoy.port}", options=list(options))


def unary(ch, pb, path: str):
    pb2, _ = pb
    return ch.unary_unary(path, request_serializer=pb2.GetRequest.SerializeToString,
                          response_deserializer=pb2.Item.FromString)


def denied(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def trailers(err: grpc.RpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}


# --- allowed calls --------------------------------------------------------------------------

def test_unary_call_with_a_valid_token_reaches_the_server(envoy, upstream, keys, pb):
    pb2, pb2_grpc = pb
    before = upstream.count("Get")
    with channel(envoy) as ch:
        item = pb2_grpc.ItemsStub(ch).Get(pb2.GetRequest(id="42"), metadata=md(token(keys)),
                                         timeout=TIMEOUT)
    assert (item.id, item.name) == ("42", "item 42")
    # The claim apiguard forwarded, as the server received it; the token itself is not
    # forwarded (providers' `forward` defaults to false).
    assert item.seen_user == "user-1"
    assert upstream.count("Get") == before + 1
    assert "authorization" not in upstream.last_metadata


def test_server_streaming_call_with_a_valid_token(envoy, upstream, keys, pb):
    pb2, pb2_grpc = pb
    with channel(envoy) as ch:
        items = list(pb2_grpc.ItemsStub(ch).List(pb2.ListRequest(count=5),
                                                 metadata=md(token(keys)), timeout=TIMEOUT))
    assert [i.id for i in items] == ["0", "1", "2", "3", "4"]
    assert {i.seen_user for i in items} == {"user-1"}


def test_server_streaming_call_without_a_token_is_denied(envoy, upstream, pb):
    pb2, pb2_grpc = pb
    before = upstream.count("List")
    with channel(envoy) as ch:
        err = denied(lambda: list(pb2_grpc.ItemsStub(ch).List(
            pb2.ListRequest(count=5), metadata=md(None), timeout=TIMEOUT)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "missing_credentials: a bearer token is required"
    assert upstream.count("List") == before


# --- every denial, as the gRPC client reads it ----------------------------------------------

# (case, gRPC code, grpc-message prefix, trailing metadata expected (name -> substring))
DENIALS = [
    ("missing_token", grpc.StatusCode.UNAUTHENTICATED,
     "missing_credentials: a bearer token is required",
     {"www-authenticate": 'Bearer realm="apiguard"'}),
    ("expired_token", grpc.StatusCode.UNAUTHENTICATED, "expired: the token has expired",
     {"www-authenticate": 'error="invalid_token"'}),
    ("insufficient_scope", grpc.StatusCode.PERMISSION_DENIED,
     "insufficient_scope: the token lacks a required scope",
     {"www-authenticate": 'scope="items:read"'}),
    ("no_route", grpc.StatusCode.PERMISSION_DENIED,
     "no_route: no route of the policy allows this request", {}),
    ("invalid_metadata", grpc.StatusCode.INVALID_ARGUMENT,
     "invalid_header: a request header is invalid (header/x-tenant pattern)", {}),
    ("missing_metadata", grpc.StatusCode.INVALID_ARGUMENT,
     "invalid_header: a request header is invalid (header/x-tenant required)", {}),
    ("ambiguous_path", grpc.StatusCode.INVALID_ARGUMENT, "ambiguous_path: ", {}),
    ("metadata_too_large", grpc.StatusCode.INVALID_ARGUMENT, "header_too_large: ", {}),
    ("message_too_large", grpc.StatusCode.RESOURCE_EXHAUSTED, "body_too_large: ", {}),
    ("rate_limited", grpc.StatusCode.RESOURCE_EXHAUSTED,
     "rate_limited: rate limit `once` exceeded",
     {"retry-after": "", "ratelimit": '"once"', "ratelimit-policy": '"once"'}),
    ("jwks_unavailable", grpc.StatusCode.UNAVAILABLE, "jwks_unavailable: ",
     {"retry-after": "5"}),
]

MEASURED: dict[str, tuple[str, str]] = {}


def _deny_call(case, ch, pb, keys):
    pb2, _ = pb
    req = pb2.GetRequest(id="1")
    get = unary(ch, pb, "/demo.v1.Items/Get")
    ok = token(keys)
    calls = {
        "missing_token": lambda: get(req, metadata=md(None), timeout=TIMEOUT),
        "expired_token": lambda: get(req, metadata=md(token(keys, expired=True)), timeout=TIMEOUT),
        "insufficient_scope": lambda: get(req, metadata=md(token(keys, scope="other")),
                                          timeout=TIMEOUT),
        "no_route": lambda: unary(ch, pb, "/demo.v1.Items/Delete")(req, metadata=md(ok),
                                                                   timeout=TIMEOUT),
        "invalid_metadata": lambda: get(req, metadata=md(ok, tenant="ACME!"), timeout=TIMEOUT),
        "missing_metadata": lambda: get(req, metadata=md(ok, tenant=None), timeout=TIMEOUT),
        "ambiguous_path": lambda: unary(ch, pb, "/demo.v1.Items/Get;x=1")(
            req, metadata=md(ok), timeout=TIMEOUT),
        "metadata_too_large": lambda: get(req, metadata=md(ok, x_big="b" * 4000),
                                          timeout=TIMEOUT),
        "message_too_large": lambda: get(pb2.GetRequest(id="1", blob=b"x" * 4096),
                                         metadata=md(ok), timeout=TIMEOUT),
        "rate_limited": lambda: unary(ch, pb, "/demo.v1.Limited/Once")(
            req, metadata=md(ok), timeout=TIMEOUT),
        "jwks_unavailable": lambda: unary(ch, pb, "/demo.v1.Remote/Get")(
            req, metadata=md(ok), timeout=TIMEOUT),
    }
    return calls[case]


@pytest.mark.parametrize("case,code,message,meta", DENIALS, ids=[d[0] for d in DENIALS])
def test_denial_as_the_grpc_client_sees_it(envoy, upstream, keys, pb, case, code, message, meta):
    if case == "rate_limited":
        # Spend the single token of `once` first (that call is allowed and reaches the server).
        with channel(envoy) as ch:
            unary(ch, pb, "/demo.v1.Limited/Once")(pb[0].GetRequest(id="0"),
                                                    metadata=md(token(keys)), timeout=TIMEOUT)
    before = upstream.count()
    with channel(envoy) as ch:
        err = denied(_deny_call(case, ch, pb, keys))
    MEASURED[case] = (err.code().name, err.details())
    assert err.code() == code, (err.code(), err.details())
    assert err.details().startswith(message), err.details()
    assert len(err.details()) <= 200
    got = trailers(err)
    for name, part in meta.items():
        assert part in got.get(name, "\0"), (name, got)
    # Never a problem+json document in grpc-message, never the token.
    assert "{" not in err.details() and "eyJ" not in err.details()
    # The rich error model, read by grpcio-status (which checks that code and message agree
    # with grpc-status / grpc-message): one ErrorInfo with the reason and domain.
    status = rpc_status.from_call(err)
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == err.details().split(":")[0].upper()
    assert info.domain == "apiguard"
    if case == "rate_limited":
        assert info.metadata["limit"] == "once" and "retry_after_seconds" in info.metadata
    if case == "missing_metadata":
        assert dict(info.metadata) == {"pointer": "header/x-tenant", "rule": "required"}
    # The denied call never reached the server.
    assert upstream.count() == before


def test_denials_are_counted_and_logged(envoy):
    assert envoy.stat("apiguard.denied.missing_credentials") >= 1
    assert envoy.stat("apiguard.denied.rate_limited") >= 1
    assert envoy.stat("apiguard.denied.no_route") >= 1
    deadline = time.monotonic() + 10
    while '"reason":"no_route"' not in envoy.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [ln for ln in envoy.log_text().splitlines() if '"apiguard":"deny"' in ln]
    assert any('"reason":"rate_limited"' in ln and '"route":"once"' in ln for ln in lines)
    assert not any("eyJ" in ln for ln in lines)


def test_measured_status_table(envoy):
    """Prints the table the gRPC client measured (run with -s to see it)."""
    if len(MEASURED) != len(DENIALS):
        pytest.skip("the denial cases did not all run")
    print("\ncase | gRPC status (client) | grpc-message")
    for case, (code, details) in MEASURED.items():
        print(f"{case} | {code} | {details}")


# --- rate limiting ---------------------------------------------------------------------------

def test_rate_limit_of_a_method_is_exact_across_workers(envoy, upstream, keys, pb):
    """2 Envoy workers, 8 client connections, 2x the capacity in calls: exactly `capacity`
    calls pass and reach the server, the rest are RESOURCE_EXHAUSTED."""
    before = upstream.count("Limited.Get")
    tok = token(keys)
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def client(n: int):
        with channel(envoy) as ch:
            call = unary(ch, pb, "/demo.v1.Limited/Get")
            for _ in range(n):
                try:
                    call(pb[0].GetRequest(id="x"), metadata=md(tok), timeout=TIMEOUT)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=client, args=(LIMITED_CAPACITY * 2 // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(codes) == LIMITED_CAPACITY * 2
    assert codes.count(grpc.StatusCode.OK) == LIMITED_CAPACITY
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == LIMITED_CAPACITY
    assert upstream.count("Limited.Get") == before + LIMITED_CAPACITY


RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "demo.v1.Limited"}, {"service": "demo.v1.Remote"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "0.2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def test_retry_policy_does_not_retry_resource_exhausted(envoy, upstream, keys, pb):
    """A client whose service config retries UNAVAILABLE (4 attempts) makes exactly one
    attempt at a rate-limited method; the same client does retry UNAVAILABLE
    (jwks_unavailable), which shows the policy is live."""
    opts = [("grpc.service_config", RETRY_CONFIG), ("grpc.enable_retries", 1)]
    tok = token(keys)
    with channel(envoy) as ch:
        once = unary(ch, pb, "/demo.v1.Limited/Once")
        # Make sure `once` is spent (it may already be).
        try:
            once(pb[0].GetRequest(id="0"), metadata=md(tok), timeout=TIMEOUT)
        except grpc.RpcError:
            pass
    with channel(envoy, opts) as ch:
        limited_before = envoy.stat("apiguard.denied.rate_limited")
        err = denied(lambda: unary(ch, pb, "/demo.v1.Limited/Once")(
            pb[0].GetRequest(id="1"), metadata=md(tok), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert envoy.stat("apiguard.denied.rate_limited") - limited_before == 1

        unavailable_before = envoy.stat("apiguard.denied.jwks_unavailable")
        err = denied(lambda: unary(ch, pb, "/demo.v1.Remote/Get")(
            pb[0].GetRequest(id="1"), metadata=md(tok), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert envoy.stat("apiguard.denied.jwks_unavailable") - unavailable_before == 4
    assert upstream.count("Remote.Get") == 0


# --- gRPC-Web --------------------------------------------------------------------------------

GRPC_WEB_FILTER = {
    "name": "envoy.filters.http.grpc_web",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
}


@pytest.fixture(scope="module")
def web_envoys(module_envoy_factory, upstream, keys):
    """{placement: Envoy}: grpc_web filter before apiguard (recommended), after it (the
    order Istio builds for a `grpc-web` port), and apiguard alone."""
    kw = dict(upstream_port=upstream.port, upstream_http2=True,
              clusters=[static_cluster("idp-down", _closed_port())])
    names = ["grpc_web_filter_first", "grpc_web_filter_after", "apiguard_alone"]
    envoys = module_envoy_factory.make_many([
        (grpc_policy(keys), dict(kw, filters_before=[GRPC_WEB_FILTER])),
        (grpc_policy(keys), dict(kw, filters_after=[GRPC_WEB_FILTER])),
        (grpc_policy(keys), kw),
    ])
    return dict(zip(names, envoys))


def grpc_web_post(envoy, path: str, message: bytes, headers: dict) -> requests.Response:
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    h = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "accept": "application/grpc-web+proto"}
    h.update(headers)
    return requests.post(envoy.url(path), data=frame, headers=h, timeout=TIMEOUT)


@pytest.mark.parametrize("placement", ["grpc_web_filter_first", "grpc_web_filter_after",
                                       "apiguard_alone"])
def test_grpc_web_denials_are_trailers_only(web_envoys, upstream, keys, pb, placement):
    """What a browser gRPC-Web client reads: HTTP 200 and `grpc-status`/`grpc-message` in
    the headers (trailers-only), whichever way the filters are ordered. Through the
    grpc_web filter a rate limit stays RESOURCE_EXHAUSTED (that filter would derive
    UNAVAILABLE from an HTTP 429)."""
    envoy = web_envoys[placement]
    converted = placement != "apiguard_alone"  # a grpc_web filter converts the call
    msg = pb[0].GetRequest(id="1").SerializeToString()
    auth = {"authorization": f"Bearer {token(keys)}"}
    if converted:
        # Spend `once` (this call is allowed and reaches the server).
        r = grpc_web_post(envoy, "/demo.v1.Limited/Once", msg, auth)
        assert r.status_code == 200 and r.headers.get("grpc-status") is None, r.headers
    before = upstream.count()
    r = grpc_web_post(envoy, "/demo.v1.Items/Get", msg, {"x-tenant": "acme"})
    assert r.status_code == 200, (r.status_code, r.headers, r.text)
    assert r.headers.get("grpc-status") == "16", r.headers
    assert r.headers.get("grpc-message") == "missing_credentials: a bearer token is required"
    assert r.headers.get("www-authenticate") == 'Bearer realm="apiguard"'
    assert r.content == b""
    if placement == "grpc_web_filter_first":
        # The grpc_web filter encodes the local reply only when it sits before apiguard.
        assert r.headers.get("content-type") == "application/grpc-web+proto"
    r = grpc_web_post(envoy, "/demo.v1.Items/Delete", msg, auth)
    assert (r.status_code, r.headers.get("grpc-status")) == (200, "7"), r.headers
    assert r.headers.get("grpc-message", "").startswith("no_route")
    if converted:
        r = grpc_web_post(envoy, "/demo.v1.Limited/Once", msg, auth)
        assert (r.status_code, r.headers.get("grpc-status")) == (200, "8"), r.headers
        assert r.headers.get("grpc-message") == "rate_limited: rate limit `once` exceeded"
        assert "retry-after" in r.headers
    assert upstream.count() == before


@pytest.mark.parametrize("placement", ["grpc_web_filter_first", "grpc_web_filter_after"])
def test_grpc_web_call_is_allowed_through_the_grpc_web_filter(web_envoys, upstream, keys, pb,
                                                              placement):
    pb2, _ = pb
    envoy = web_envoys[placement]
    before = upstream.count("Get")
    r = grpc_web_post(envoy, "/demo.v1.Items/Get", pb2.GetRequest(id="7").SerializeToString(),
                      {"authorization": f"Bearer {token(keys)}", "x-tenant": "acme"})
    assert r.status_code == 200, (r.headers, r.content)
    body = r.content
    # First frame: the message; then the trailer frame (flag 0x80) with grpc-status 0.
    assert body[0] == 0
    n = struct.unpack(">I", body[1:5])[0]
    assert pb2.Item.FromString(body[5:5 + n]).id == "7"
    trailer = body[5 + n:]
    assert trailer[0] == 0x80 and b"grpc-status:0" in trailer
    assert upstream.count("Get") == before + 1
