"""schemathesis drives Envoy + apiguard + the echo upstream from an OpenAPI description.

For every operation, schemathesis (its Python API, Hypothesis strategies) generates
requests in positive mode (conforming to the description) and in negative mode (violating
it). Each request goes through Envoy; the answer is classified:

- `upstream`: the echo upstream answered (apiguard let it through);
- `validation`: apiguard refused it with a validation reason (400/413/415);
- `path`: refused before validation because of the path (apiguard `ambiguous_path` or
  `no_route` after Envoy normalized a generated path value such as `..`, or Envoy's own 400
  for `%2F`): a proxy-level safety refusal, not a validation verdict;
- `auth`: 401/403 (must not happen: the driver sends valid credentials);
- `envoy`: any other answer not from apiguard or the upstream.

Positive requests must never be `validation` or `auth` (false rejections). Negative requests
should be refused; the ones that reach the upstream are listed by what schemathesis changed.

Credentials: every http bearer / oauth2 / openIdConnect scheme gets a PyJWT-minted HS256
token from the test overlay's provider (all scopes the description declares); apiKey schemes
get the key the overlay stores the digest of (`KEYS`).
"""

from __future__ import annotations

import collections
import json
import time
import warnings
from dataclasses import dataclass, field

import jwt
import requests

# The overlay's inline HS256 secret (base64url "apiguard-unit-tests-hmac-key-32b").
HS256_SECRET = b"apiguard-unit-tests-hmac-key-32b"
ISSUER = "https://idp.test.apiguard"
# API key per apiKey scheme name of e2e/openapi/overlay.yaml: the whole header value.
KEYS = {"apiKey": "test-api-key", "auth_header": "Basic dGVzdC1hcGkta2V5", "Bearer": "Bearer test-api-key"}
VALIDATION_REASONS = {
    "invalid_header",
    "invalid_query",
    "invalid_path_param",
    "invalid_body",
    "too_deep",
    "body_too_large",
    "unsupported_media_type",
}


@dataclass
class Report:
    mode: str
    counts: collections.Counter = field(default_factory=collections.Counter)
    # category -> list of (operation, detail) examples (a few each)
    examples: dict = field(default_factory=lambda: collections.defaultdict(list))
    # for negative cases that reached the upstream: what was negated -> count
    uncaught: collections.Counter = field(default_factory=collections.Counter)
    errors: list = field(default_factory=list)

    def add(self, category: str, op: str, detail: str) -> None:
        self.counts[category] += 1
        if detail and len(self.examples[category]) < 8:
            self.examples[category].append((op, detail))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "total": self.total,
            "counts": dict(self.counts),
            "uncaught": dict(self.uncaught),
            "examples": {k: v for k, v in self.examples.items()},
            "errors": self.errors[:10],
        }


def bearer_token(scopes: list[str]) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "schemathesis", "iat": now, "exp": now + 3600, "scope": " ".join(scopes)}
    return jwt.encode(claims, HS256_SECRET, algorithm="HS256", headers={"kid": "openapi-test"})


def all_scopes(spec: dict) -> list[str]:
    out: set[str] = set()
    for scheme in (spec.get("components", {}).get("securitySchemes") or {}).values():
        for flow in (scheme.get("flows") or {}).values():
            out.update((flow.get("scopes") or {}).keys())
    for path_item in (spec.get("paths") or {}).values():
        for op in path_item.values() if isinstance(path_item, dict) else []:
            for req in (op.get("security") or []) if isinstance(op, dict) else []:
                for scopes in req.values():
                    out.update(scopes)
    for req in spec.get("security") or []:
        for scopes in req.values():
            out.update(scopes)
    return sorted(out)


def credentials(spec: dict, operation: dict) -> dict[str, str]:
    """Headers carrying a valid credential for the first alternative of the operation's
    security requirement (nothing for public operations)."""
    requirement = operation.get("security", spec.get("security")) or []
    schemes = spec.get("components", {}).get("securitySchemes") or {}
    for alternative in requirement:
        for name in alternative:
            s = schemes.get(name) or {}
            kind = s.get("type")
            if kind in ("oauth2", "openIdConnect") or (kind == "http" and str(s.get("scheme", "")).lower() == "bearer"):
                return {"Authorization": "Bearer " + bearer_token(all_scopes(spec))}
            if kind == "apiKey" and s.get("in") == "header" and name in KEYS:
                return {s["name"]: KEYS[name]}
    return {}


def _header(resp, name: str) -> str:
    for k, v in resp.headers.items():
        if k.lower() == name:
            return v[0] if isinstance(v, list) and v else str(v)
    return ""


def _json(resp):
    try:
        return json.loads(resp.content)
    except ValueError:
        return None


def classify(resp) -> tuple[str, str]:
    """`resp` is a schemathesis Response (headers map to lists)."""
    ctype = _header(resp, "content-type")
    text = resp.content[:120].decode("utf-8", "replace")
    if resp.status_code == 200 and ctype.startswith("application/json"):
        body = _json(resp)
        if isinstance(body, dict) and "body_b64" in body:
            return "upstream", ""
    if ctype.startswith("application/problem+json"):
        problem = _json(resp) or {}
        reason = problem.get("reason", "")
        detail = f"{resp.status_code} {reason} {json.dumps(problem.get('errors', []))[:300]}"
        if reason in VALIDATION_REASONS:
            return "validation", detail
        if reason in ("ambiguous_path", "no_route"):
            return "path", detail
        if resp.status_code in (401, 403):
            return "auth", detail
        return "other_denial", detail
    if resp.status_code == 400:
        return "path", f"400 from Envoy: {text}"
    return "envoy", f"{resp.status_code} {text}"


def negated(case) -> str:
    """What schemathesis changed in a negative case: locations and its description."""
    meta = getattr(case, "meta", None)
    if meta is None:
        return "unknown"
    locs = sorted(str(getattr(loc, "value", loc)) for loc, info in meta.components.items() if str(info.mode) == "negative")
    data = getattr(getattr(meta, "phase", None), "data", None)
    desc = getattr(data, "description", None) or ""
    return f"{','.join(locs) or 'none'}: {desc}".strip()


def _negated_parameter(case) -> str | None:
    data = getattr(getattr(getattr(case, "meta", None), "phase", None), "data", None)
    name = getattr(data, "parameter", None)
    return name.lower() if isinstance(name, str) else None


def drive(spec_path: str, base_url: str, mode: str, examples: int, seed: int = 0) -> Report:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    spec = json.load(open(spec_path)) if spec_path.endswith(".json") else _yaml(spec_path)
    schema = schemathesis.openapi.from_path(spec_path)
    gen_mode = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    report = Report(mode)
    session = requests.Session()
    for result in schema.get_all_operations():
        try:
            op = result.ok()
        except Exception as e:  # an operation schemathesis cannot load
            report.errors.append(f"load: {e}")
            continue
        label = f"{op.method.upper()} {op.path}"
        raw_op = (spec.get("paths", {}).get(op.path) or {}).get(op.method.lower(), {})
        creds = credentials(spec, raw_op)

        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=gen_mode))
        def probe(case):
            headers = dict(case.headers or {})
            negated_param = _negated_parameter(case)
            for k, v in creds.items():
                # A negative case that removed or broke the credential keeps it broken.
                if negated_param != k.lower():
                    headers[k] = v
            case.headers = headers
            try:
                resp = case.call(base_url=base_url, session=session, timeout=15)
            except Exception as e:  # the client could not even send it (e.g. bad header)
                report.add("unsendable", label, str(e)[:200])
                return
            category, detail = classify(resp)
            if category == "path":
                detail = f"{detail} {resp.request.method} {resp.request.url}"[:400]
            if mode == "negative" and category == "upstream":
                what = negated(case)
                report.uncaught[what.split(":")[0]] += 1
                detail = what
            report.add(category, label, detail)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe()
        except Exception as e:  # unsatisfiable strategies and the like: reported, not fatal
            report.errors.append(f"{label}: {type(e).__name__}: {str(e)[:200]}")
    return report


def _yaml(path: str) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("base_url")
    ap.add_argument("--mode", choices=["positive", "negative"], default="positive")
    ap.add_argument("--examples", type=int, default=20)
    args = ap.parse_args()
    print(json.dumps(drive(args.spec, args.base_url, args.mode, args.examples).as_dict(), indent=1))
