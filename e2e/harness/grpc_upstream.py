"""A real gRPC server (grpcio) for the end-to-end tests, with stubs generated at test time.

`stubs()` runs `grpc_tools.protoc` on `e2e/grpc/demo.proto` into a temporary directory once
per process (about a second) and imports the generated modules, so no generated code is
committed. `GrpcUpstream` serves `demo.v1.Items` on 127.0.0.1 and a port the OS picks, and
counts every call that reached it per method, with the metadata of the last one: a denied
call must never show up here.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import tempfile
import threading
from collections import Counter
from concurrent import futures

import grpc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[1] / "grpc"
_STUBS: dict[str, object] = {}
_LOCK = threading.Lock()


def stubs():
    """(demo_pb2, demo_pb2_grpc), generated on first use."""
    with _LOCK:
        if "pb2" not in _STUBS:
            from grpc_tools import protoc

            out = tempfile.mkdtemp(prefix="apiguard-grpc-stubs-")
            rc = protoc.main([
                "protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
                str(PROTO_DIR / "demo.proto"),
            ])
            if rc != 0:
                raise RuntimeError(f"protoc failed with status {rc}")
            sys.path.insert(0, out)
            _STUBS["pb2"] = importlib.import_module("demo_pb2")
            _STUBS["pb2_grpc"] = importlib.import_module("demo_pb2_grpc")
    return _STUBS["pb2"], _STUBS["pb2_grpc"]


class GrpcUpstream:
    """`demo.v1.Items`: Get echoes the id, List streams `count` items, Delete answers too
    (no policy route covers it, so it must never be reached through apiguard);
    `demo.v1.Limited` Get/Once and `demo.v1.Remote` Get echo the id. Calls are counted as
    `Get`, `List`, `Delete`, `Limited.Get`, `Limited.Once`, `Remote.Get`."""

    def __init__(self, workers: int = 8):
        self.workers = workers
        self.calls: Counter[str] = Counter()
        self.last_metadata: dict[str, str] = {}
        self._lock = threading.Lock()
        self.server: grpc.Server | None = None
        self.port: int | None = None

    def _seen(self, method: str, context) -> str:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._lock:
            self.calls[method] += 1
            self.last_metadata = md
        return md.get("x-user", "")

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(self.calls.values()) if method is None else self.calls[method]

    def start(self) -> "GrpcUpstream":
        pb2, pb2_grpc = stubs()
        up = self

        class Items(pb2_grpc.ItemsServicer):
            def Get(self, request, context):
                user = up._seen("Get", context)
                return pb2.Item(id=request.id, name=f"item {request.id}", seen_user=user)

            def List(self, request, context):
                user = up._seen("List", context)
                for i in range(request.count):
                    yield pb2.Item(id=str(i), name=f"item {i}", seen_user=user)

            def Delete(self, request, context):
                up._seen("Delete", context)
                return pb2.Item(id=request.id)

        def unary(name):
            def handler(self, request, context):
                user = up._seen(name, context)
                return pb2.Item(id=request.id, seen_user=user)
            return handler

        Limited = type("Limited", (pb2_grpc.LimitedServicer,), {
            "Get": unary("Limited.Get"), "Once": unary("Limited.Once")})
        Remote = type("Remote", (pb2_grpc.RemoteServicer,), {"Get": unary("Remote.Get")})

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers))
        pb2_grpc.add_ItemsServicer_to_server(Items(), self.server)
        pb2_grpc.add_LimitedServicer_to_server(Limited(), self.server)
        pb2_grpc.add_RemoteServicer_to_server(Remote(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)
            self.server = None

