"""Summarises the schemathesis reports e2e/test_openapi.py writes (target/openapi/*.json):
per description, positive requests and false rejections, negative requests and the share
refused, and what kinds of negative requests reached the upstream."""

from __future__ import annotations

import collections
import json
import pathlib
import sys

REFUSED = ("validation", "auth", "path", "other_denial", "envoy")


def main(directory: str) -> None:
    total_uncaught: collections.Counter = collections.Counter()
    rows = []
    for f in sorted(pathlib.Path(directory).glob("schemathesis-*.json")):
        r = json.loads(f.read_text())
        pos, neg = r["positive"], r["negative"]
        false_rej = sum(pos["counts"].get(k, 0) for k in ("validation", "auth", "other_denial"))
        # A "negative" case in which schemathesis changed nothing is not negative.
        not_negative = sum(v for k, v in neg["uncaught"].items() if k == "none")
        neg_total = neg["total"] - not_negative
        refused = sum(neg["counts"].get(k, 0) for k in REFUSED)
        rows.append((f.stem.removeprefix("schemathesis-"), pos["total"], false_rej, pos["counts"].get("path", 0),
                     neg_total, refused, 100.0 * refused / neg_total if neg_total else 0.0))
        for k, v in neg["uncaught"].items():
            if k != "none":
                total_uncaught[k] += v
    print(f"{'description':36} {'positive':>8} {'false rej':>9} {'path*':>6} {'negative':>8} {'refused':>8} {'share':>7}")
    for name, p, fr, pp, n, rf, share in rows:
        print(f"{name:36} {p:8} {fr:9} {pp:6} {n:8} {rf:8} {share:6.1f}%")
    print("* positive requests refused for their path (ambiguous_path / Envoy 400), not by validation")
    print("negative requests that reached the upstream, by what schemathesis changed:", dict(total_uncaught))
    gh = pathlib.Path(directory) / "github-load.json"
    if gh.exists():
        print("GitHub REST API:", gh.read_text())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/openapi")
