"""docs/migration.md stays true:

- every apiguard policy on the page (a ```yaml block after `<!-- apiguard-policy -->`)
  passes `apiguard check`, as the filter would check it;
- the Envoy filter chain it migrates from (after `<!-- envoy-http-filters -->`) is a valid
  Envoy 1.40 configuration: `envoy --mode validate` on a bootstrap holding it, so every
  jwt_authn / RBAC / local_ratelimit field name on the page is one Envoy knows;
- the defaults it quotes for apiguard (`forward`, `require_exp`, `clock_skew_seconds`,
  `token_cache_size`) are those of docs/configuration.md;
- README links it.

The CLI is `APIGUARD_CLI` if set, else `cargo run --profile cli --bin apiguard`.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest
import yaml

from harness.envoy import envoy_path

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "migration.md").read_text()
CONFIG = (REPO / "docs" / "configuration.md").read_text()


def marked_blocks(marker: str) -> list[str]:
    return re.findall(rf"<!-- {marker} -->\n```yaml\n(.*?)```", DOC, re.S)


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.environ.get("APIGUARD_CLI")
    cmd = [exe] if exe else ["cargo", "run", "--quiet", "--profile", "cli", "--bin", "apiguard", "--"]
    return subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("index", range(2))
def test_apiguard_policies_pass_check(index, tmp_path):
    blocks = marked_blocks("apiguard-policy")
    assert len(blocks) == 2, "expected the Istio and the Envoy example"
    f = tmp_path / "policy.yaml"
    f.write_text(blocks[index])
    r = cli("check", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


def test_envoy_filter_chain_is_valid_for_envoy_1_40(tmp_path):
    (block,) = marked_blocks("envoy-http-filters")
    filters = yaml.safe_load(block)
    names = [f["name"] for f in filters]
    assert names == ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac",
                     "envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    cluster = {"name": "idp", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "idp", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "idp"}}]}]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": [cluster],
        },
    }
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    r = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # A misspelt field is refused, so the check above means something.
    cfg.write_text(cfg.read_text().replace("claim_to_headers", "claims_to_headers"))
    r = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0


def config_default(field: str) -> str:
    m = re.search(rf"^\| `{re.escape(field)}` \| [^|]+ \| `([^`]+)` \|", CONFIG, re.M)
    assert m, f"docs/configuration.md has no row for {field}"
    return m.group(1)


@pytest.mark.parametrize("field, quoted", [
    ("forward", "`forward` default `{}`"),
    ("require_exp", "`require_exp` default `{}`"),
    ("clock_skew_seconds", "`clock_skew_seconds: {}`"),
    ("token_cache_size", "`token_cache_size` {} per worker"),
])
def test_quoted_apiguard_defaults_are_the_configuration_docs(field, quoted):
    text = quoted.format(config_default(field))
    assert text in DOC, (f"docs/configuration.md says {field} defaults to {config_default(field)}: "
                         f"update the 'Defaults that differ' table of docs/migration.md ({text!r})")


def test_readme_links_the_guide():
    assert "(docs/migration.md)" in (REPO / "README.md").read_text()
