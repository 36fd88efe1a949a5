#!/usr/bin/env python3
"""Renders envoy/ecds/apiguard-filter.yaml (the ECDS resource) from envoy/demo/policy.yaml.

    python3 envoy/ecds/render.py            # write it
    python3 envoy/ecds/render.py --check    # exit 1 when the committed file is stale

`resource(policy, wasm)` is also used by e2e/test_ecds.py to build the files it swaps in.
"""
from __future__ import annotations

import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "apiguard-filter.yaml"
WASM = "target/wasm32-wasip1/release/apiguard.wasm"  # relative to Envoy's working directory

HEADER = """\
# ECDS resource for envoy/ecds/envoy.yaml: the apiguard Wasm filter config, demo policy inline.
#
# GENERATED from envoy/demo/policy.yaml by `python3 envoy/ecds/render.py`.
#
# The file is an xDS DiscoveryResponse: a list of TypedExtensionConfig resources. The
# resource name must equal the HTTP filter's name in envoy.yaml (`apiguard`); the inner
# type must be one of its `type_urls` (envoy.extensions.filters.http.wasm.v3.Wasm).
#
# Replace this file only by an atomic rename from the same directory (see envoy.yaml).
"""


def resource(policy: dict | str, wasm: str = WASM, name: str = "apiguard") -> dict:
    """The DiscoveryResponse holding one TypedExtensionConfig with the Wasm filter."""
    value = policy if isinstance(policy, str) else json.dumps(policy, indent=2)
    return {
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "apiguard",
                    "root_id": "apiguard",
                    # Fail closed; a VM that traps is replaced for the next request
                    # (`failure_policy` replaces the deprecated `fail_open`).
                    "failure_policy": "FAIL_RELOAD",
                    "allow_on_headers_stop_iteration": True,
                    "vm_config": {
                        # Same vm_id and code on every update: Envoy keeps the VM (and its
                        # shared data: rate-limit buckets, fetched JWKS) and only
                        # reconfigures the plugin.
                        "vm_id": "apiguard",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm}},
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": value,
                    },
                },
            },
        }],
    }


class _Literal(str):
    pass


def _literal(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


def dump(doc: dict) -> str:
    """YAML with the policy JSON as a readable block scalar."""
    dumper = type("D", (yaml.SafeDumper,), {})
    dumper.add_representer(_Literal, _literal)
    cfg = doc["resources"][0]["typed_config"]["config"]["configuration"]
    cfg["value"] = _Literal(cfg["value"])
    return yaml.dump(doc, Dumper=dumper, sort_keys=False, width=4096)


def render() -> str:
    policy = yaml.safe_load((HERE.parent / "demo" / "policy.yaml").read_text())
    return HEADER + dump(resource(policy))


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            print("envoy/ecds/apiguard-filter.yaml is stale: run python3 envoy/ecds/render.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
