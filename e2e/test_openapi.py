"""`apiguard openapi` end to end: real descriptions -> policies -> real Envoy.

- The five APIs.guru descriptions in e2e/openapi/specs/ (3.0 and 3.1, JSON and YAML, bearer,
  apiKey, oauth2) import with e2e/openapi/overlay.yaml and load into Envoy; attacks on one
  of them are refused before the upstream.
- GitHub's whole REST API (npm @octokit/openapi, fetched by `make openapi-github`) imports,
  passes `apiguard check` and loads into Envoy; its figures (policy size, time to ready,
  VmRSS) are printed, never asserted.
- schemathesis drives Envoy + apiguard + the echo upstream from each description
  (e2e/openapi/drive.py), a few examples per operation (OPENAPI_EXAMPLES, default 4):
  positive requests must never be refused by validation or authentication (0 false
  rejections); negative requests are counted by outcome. `make openapi-long` runs more.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from harness.checks import bearer, echoed, problem

sys.path.insert(0, str(pathlib.Path(__file__).parent / "openapi"))
import drive  # noqa: E402

pytestmark = [pytest.mark.wasm, pytest.mark.own_envoy]

REPO = pathlib.Path(__file__).resolve().parent.parent
SPECS = REPO / "e2e" / "openapi" / "specs"
OVERLAY = REPO / "e2e" / "openapi" / "overlay.yaml"
GITHUB = pathlib.Path(
    os.environ.get("APIGUARD_OPENAPI_GITHUB", REPO / ".cache" / "openapi" / "api.github.com.json")
)
REPORT_DIR = REPO / "target" / "openapi"
# spec file -> operations it holds (every one becomes a route)
DESCRIPTIONS = {
    "spacetraders.io.json": 40,
    "codat.io-sync-for-commerce.json": 17,
    "exoapi.dev.json": 4,
    "storecove.com.json": 29,
    "fulfillment.com.yaml": 13,
}
EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "4"))


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.environ.get("APIGUARD_CLI")
    cmd = [exe] if exe else ["cargo", "run", "--quiet", "--profile", "cli", "--bin", "apiguard", "--"]
    return subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=900)


def import_policy(spec: pathlib.Path) -> tuple[dict, str]:
    r = cli("openapi", str(spec), "--overlay", str(OVERLAY), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    policy = json.loads(r.stdout)
    # Bodies are checked before the upstream sees their headers (the attack test asserts it).
    policy["hold_headers_for_body"] = True
    return policy, r.stderr


def base_path(spec: pathlib.Path) -> str:
    doc = json.loads(spec.read_text()) if spec.suffix == ".json" else drive._yaml(str(spec))
    from urllib.parse import urlparse

    url = ((doc.get("servers") or [{}])[0]).get("url", "")
    return urlparse(url).path.rstrip("/")


@pytest.fixture(scope="module")
def described(module_envoy_factory):
    """One Envoy per description, started together."""
    policies = {name: import_policy(SPECS / name) for name in DESCRIPTIONS}
    envoys = module_envoy_factory.make_many([(p, {"concurrency": 1}) for p, _ in policies.values()])
    return {name: (policies[name][0], policies[name][1], e) for name, e in zip(DESCRIPTIONS, envoys)}


def test_every_description_imports_every_operation(described):
    for name, ops in DESCRIPTIONS.items():
        policy, stderr, envoy = described[name]
        assert f"{ops} operation(s) -> {ops} route(s)" in stderr, name
        assert envoy.running, name
        for line in stderr.splitlines()[:-1]:
            # Every note names the operation and a JSON pointer into the description.
            assert line.startswith("not enforced: ") and " at #/" in line, line


def test_attacks_on_an_imported_api_stop_before_the_upstream(described, echo):
    _, _, envoy = described["spacetraders.io.json"]
    token = drive.bearer_token([])
    before = echo.count
    # No credential: 401 (AgentToken is an http bearer scheme -> the overlay's provider).
    problem(envoy.get("/v2/my/agent"), 401, "missing_credentials")
    # A query value outside the description's range (limit: 1..20).
    problem(envoy.get("/v2/my/ships?limit=1000", headers=bearer(token)), 400, "invalid_query")
    # A body the schema refuses: `faction` must be one of the enum, `symbol` 3..14 chars.
    hdrs = {**bearer(token), "content-type": "application/json"}
    body = json.dumps({"symbol": "x", "faction": "NOT-A-FACTION", "role": "admin"}).encode()
    problem(envoy.request("POST", "/v2/register", headers=hdrs, body=body), 400, "invalid_body")
    # A path the description does not have.
    problem(envoy.get("/v2/admin", headers=bearer(token)), 403, "no_route")
    assert echo.count == before, "a refused request reached the upstream"
    # A conforming request goes through unchanged.
    ok = json.dumps({"symbol": "AGENT-1", "faction": "COSMIC"}).encode()
    r = envoy.request("POST", "/v2/register", headers=hdrs, body=ok)
    got = echoed(r)
    assert got["path"] == "/v2/register"
    assert json.loads(__import__("base64").b64decode(got["body_b64"])) == {"symbol": "AGENT-1", "faction": "COSMIC"}


@pytest.mark.parametrize("name", list(DESCRIPTIONS))
def test_schemathesis_finds_no_false_rejection(described, name):
    _, _, envoy = described[name]
    spec = SPECS / name
    base = envoy.base_url + base_path(spec)
    positive = drive.drive(str(spec), base, "positive", EXAMPLES)
    negative = drive.drive(str(spec), base, "negative", EXAMPLES)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"schemathesis-{name}.json").write_text(
        json.dumps({"positive": positive.as_dict(), "negative": negative.as_dict()}, indent=1)
    )
    assert positive.total > 0, positive.errors
    # Zero false rejections: nothing valid is refused by validation or authentication.
    assert positive.counts["validation"] == 0, positive.examples["validation"]
    assert positive.counts["auth"] == 0, positive.examples["auth"]
    assert positive.counts["other_denial"] == 0, positive.examples["other_denial"]
    assert negative.total > 0, negative.errors


def test_github_rest_api_imports_checks_and_loads(envoy_factory, echo, tmp_path):
    if not GITHUB.exists():
        pytest.fail(f"{GITHUB} missing: run `make openapi-github` (npm pack @octokit/openapi)", pytrace=False)
    policy, stderr = import_policy(GITHUB)
    summary = stderr.strip().splitlines()[-1]
    ops = int(summary.split(": ")[1].split(" ")[0])
    assert ops >= 1000 and f"{ops} operation(s) -> {ops} route(s)" in summary, summary
    policy_file = tmp_path / "github.json"
    policy_file.write_text(json.dumps(policy))
    r = cli("check", str(policy_file))
    assert r.returncode == 0, r.stderr[-2000:]

    small = {"routes": [{"name": "all", "match": {"prefix": "/"}, "public": True}]}
    timings = {}
    envoys = {}
    for label, p in (("minimal", small), ("github", policy)):
        e = envoy_factory.make(p, start=False, concurrency=2)
        t0 = time.monotonic()
        e.launch()
        e.wait_ready(timeout=300)
        timings[label] = time.monotonic() - t0
        envoys[label] = e
    gh = envoys["github"]
    rss = {k: _vm_rss_kb(e) for k, e in envoys.items()}
    figures = {
        "operations": ops,
        "policy_json_bytes": len(json.dumps(policy)),
        "routes_with_body_schema": sum(1 for r in policy["routes"] if "schema" in r.get("validate", {}).get("body", {})),
        "seconds_to_ready": timings,
        "vm_rss_kb": rss,
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "github-load.json").write_text(json.dumps(figures, indent=1))
    print("GitHub REST API policy:", json.dumps(figures))

    before = echo.count
    problem(gh.get("/repos/octocat/hello/issues?per_page=many"), 400, "invalid_query")
    problem(gh.get("/repos/octocat/hello/issues?state=bogus"), 400, "invalid_query")
    hdrs = {"content-type": "application/json"}
    problem(gh.request("POST", "/repos/octocat/hello/issues", headers=hdrs, body=b'{"body": "no title"}'), 400, "invalid_body")
    problem(gh.get("/nope/at/all"), 403, "no_route")
    assert echo.count == before
    assert echoed(gh.get("/repos/octocat/hello/issues?per_page=50&state=open"))["path"].startswith("/repos/octocat/hello/issues")
    got = echoed(gh.request("POST", "/repos/octocat/hello/issues", headers=hdrs, body=b'{"title": "t"}'))
    assert got["method"] == "POST"
    # A literal segment wins over the template beside it: /issues/comments is not
    # /issues/{issue_number} (whose integer rule would refuse "comments").
    assert echoed(gh.get("/repos/octocat/hello/issues/comments?sort=created"))["method"] == "GET"
    problem(gh.get("/repos/octocat/hello/issues/first"), 400, "invalid_path_param")


def _vm_rss_kb(envoy) -> int:
    for line in pathlib.Path(f"/proc/{envoy.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1
