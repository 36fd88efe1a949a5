"""Assertions and small helpers shared by the test modules."""

from __future__ import annotations

import time


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(resp, status: int, reason: str) -> dict:
    """Asserts an apiguard problem response and returns its body."""
    assert resp.status == status, resp
    assert resp.header("x-echo") is None, f"request reached the upstream: {resp}"
    ctype = resp.header("content-type") or ""
    assert ctype.split(";")[0].strip() == "application/problem+json", resp
    body = resp.json()
    assert body.get("reason") == reason, resp
    assert body.get("status") == status, resp
    assert body.get("type") == f"urn:apiguard:problem:{reason}", resp
    assert isinstance(body.get("title"), str) and body["title"], resp
    assert isinstance(body.get("detail"), str), resp
    assert "request_id" in body, resp
    return body


def echoed(resp) -> dict:
    """Asserts the request reached the echo upstream and returns what it saw."""
    assert resp.status == 200, resp
    assert resp.header("x-echo") == "1", resp
    return resp.json()


def wait_until(pred, timeout: float = 10.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = pred()
    while not last and time.monotonic() < deadline:
        time.sleep(interval)
        last = pred()
    return last
