#!/usr/bin/env python3
"""Renders envoy/envoy.yaml from envoy/envoy.template.yaml and envoy/demo/policy.yaml.

`--check` exits 1 when the committed envoy/envoy.yaml is stale (used by the tests).
`--global OUT` writes the `make run-global` variant to OUT: the demo policy plus
envoy/demo/global.yaml's limits and routes (a global limit on /quota).
"""
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent


def demo_policy(with_global: bool = False) -> dict:
    policy = yaml.safe_load((HERE / "demo" / "policy.yaml").read_text())
    if with_global:
        extra = yaml.safe_load((HERE / "demo" / "global.yaml").read_text())
        policy["limits"] = policy.get("limits", []) + extra["limits"]
        policy["routes"] = extra["routes"] + policy.get("routes", [])
    return policy


def render(with_global: bool = False) -> str:
    policy = demo_policy(with_global)
    body = json.dumps(policy, indent=2)
    indented = "\n".join(" " * 20 + line for line in body.splitlines())
    return (HERE / "envoy.template.yaml").read_text().replace("{{POLICY_JSON}}", indented)


def demo_keys_in_sync() -> bool:
    """The demo policy must carry exactly the public keys of envoy/demo/jwks.json."""
    policy = yaml.safe_load((HERE / "demo" / "policy.yaml").read_text())
    inline = policy["providers"][0]["jwks"]["inline"]
    return inline == json.loads((HERE / "demo" / "jwks.json").read_text())


def main() -> int:
    args = sys.argv[1:]
    if "--global" in args:
        at = args.index("--global") + 1
        if at >= len(args):
            print("usage: render.py --global OUT", file=sys.stderr)
            return 2
        pathlib.Path(args[at]).write_text(render(with_global=True))
        return 0
    out = HERE / "envoy.yaml"
    text = render()
    if "--check" in sys.argv[1:]:
        if not demo_keys_in_sync():
            print("envoy/demo/policy.yaml keys differ from envoy/demo/jwks.json", file=sys.stderr)
            return 1
        if out.read_text() != text:
            print("envoy/envoy.yaml is stale: run `make envoy-config`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
