"""The Istio manifests under istio/ and the OCI packaging of `make oci`, without a cluster:

- every WasmPlugin validates against istio/crd/wasmplugin-spec.schema.json and the
  TrafficExtension against istio/crd/trafficextension-spec.schema.json (hand-written from
  istio/api's CRD and traffic_extension.proto, additionalProperties false, the CRD's CEL
  rules and list-map keys enforced); phase AUTHN, failStrategy FAIL_RELOAD (never FAIL_OPEN);
- the schemas refuse what the API server would (bad sha256, unknown phase, typo'd field,
  selector together with targetRefs, duplicate env names, wasm and lua together) and accept
  what it accepts (targetRefs to ServiceEntry, GatewayClass);
- every manifest is installed where it points: istiod matches `match.mode` against the
  listener class, and a gateway's listeners are CLIENT (istio/istio
  pilot/pkg/model/extensions.go), so a gateway target with `mode: SERVER` only is refused
  here (the plugin would never be installed and the gateway would run unprotected), in the
  manifests and in the YAML examples of docs/istio.md;
- every pluginConfig passes `apiguard check` (the CLI validates exactly as the filter does)
  and carries envoy/demo/policy.yaml unchanged;
- the remote-JWKS cluster name is the one Istio generates for the ServiceEntry
  (`outbound|443||idp.example.com`), and the DestinationRule originates TLS on that port;
- scripts/oci.py writes a well-formed OCI image layout (index -> manifest -> blobs, digests
  and sizes right, the Wasm artifact media types) and a tarball, reproducibly.

The CLI is `APIGUARD_CLI` if set, else `cargo run --profile cli --bin apiguard`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="pip install -r e2e/requirements.txt")

REPO = pathlib.Path(__file__).resolve().parents[1]
ISTIO = REPO / "istio"
SCHEMAS = {
    "WasmPlugin": json.loads((ISTIO / "crd" / "wasmplugin-spec.schema.json").read_text()),
    "TrafficExtension": json.loads((ISTIO / "crd" / "trafficextension-spec.schema.json").read_text()),
}
PLUGINS = ["wasmplugin.yaml", "wasmplugin-remote-jwks.yaml", "wasmplugin-gateway.yaml"]
EXTENSIONS = ["trafficextension.yaml"]
DEMO_COPIES = ["wasmplugin.yaml", "wasmplugin-gateway.yaml", "trafficextension.yaml"]
GATEWAY_KINDS = {"Gateway", "GatewayClass"}


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def _list_map_keys(validator, keys, instance, schema):
    """`x-kubernetes-list-type: map`: the API server refuses two items with the same key."""
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate entries for list-map key {keys}: {key}")
        seen.add(key)


def validator(kind: str):
    schema = SCHEMAS[kind]
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    cls = jsonschema.validators.extend(base, {"x-kubernetes-list-map-keys": _list_map_keys})
    return cls(schema)


def errors(doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(doc.get("kind", "WasmPlugin")).iter_errors(doc)]


def wasm_fields(spec: dict) -> dict:
    """The Wasm module fields: top-level in a WasmPlugin, under `wasm` in a TrafficExtension."""
    return spec.get("wasm", spec)


# --- where istiod installs a plugin (istio/istio pilot/pkg/model/extensions.go) --------

def _mode_matches(mode: str | None, listener_class: str) -> bool:
    """matchMode: UNDEFINED/CLIENT_AND_SERVER match every class; otherwise the mode must be
    the class's workload mode (gateway -> CLIENT, sidecar inbound -> SERVER, outbound -> CLIENT)."""
    if mode in (None, "UNDEFINED", "CLIENT_AND_SERVER"):
        return True
    return mode == {"gateway": "CLIENT", "inbound": "SERVER", "outbound": "CLIENT"}[listener_class]


def installed_on(spec: dict, listener_class: str) -> bool:
    """matchTrafficExtensionSelectors: no `match` matches everything; else any entry."""
    match = spec.get("match") or []
    return not match or any(_mode_matches(m.get("mode"), listener_class) for m in match)


def targets_gateway(spec: dict) -> bool:
    refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    if any(r.get("kind") in GATEWAY_KINDS for r in refs):
        return True
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return labels.get("istio", "").endswith("gateway") or "gateway.networking.k8s.io/gateway-name" in labels


def placement_errors(spec: dict) -> list[str]:
    if targets_gateway(spec) and not installed_on(spec, "gateway"):
        return ["targets a gateway, but istiod never installs a plugin whose match modes are all "
                "SERVER on a gateway (its listeners are CLIENT): the gateway would run unprotected"]
    if not targets_gateway(spec) and not installed_on(spec, "inbound"):
        return ["targets sidecars but does not match their inbound (SERVER) traffic"]
    return []


# --- the manifests -------------------------------------------------------------------

@pytest.mark.parametrize("name", PLUGINS + EXTENSIONS)
def test_manifest_matches_the_crd_schema(name):
    (doc,) = load(name)
    assert errors(doc) == []
    spec = doc["spec"]
    wasm = wasm_fields(spec)
    assert spec["phase"] == "AUTHN"
    # Fail closed (module fetch failure -> deny-all filter), fresh VM after a runtime error.
    assert wasm["failStrategy"] == "FAIL_RELOAD"
    assert wasm["url"].startswith("oci://")
    assert wasm["pluginName"] == "apiguard" and wasm["type"] == "HTTP"
    assert spec.get("selector", {}).get("matchLabels") or spec.get("targetRefs")


@pytest.mark.parametrize("name", PLUGINS + EXTENSIONS)
def test_manifest_is_installed_where_it_points(name):
    (doc,) = load(name)
    assert placement_errors(doc["spec"]) == []


def test_gateway_manifest_matches_the_gateways_client_traffic():
    (doc,) = load("wasmplugin-gateway.yaml")
    spec = doc["spec"]
    assert "selector" not in spec
    (ref,) = spec["targetRefs"]
    assert (ref["group"], ref["kind"]) == ("gateway.networking.k8s.io", "Gateway")
    assert installed_on(spec, "gateway")
    assert not installed_on(spec, "inbound"), "a gateway plugin that also lands on sidecars"
    # The sidecar manifest does the opposite.
    (sidecar,) = load("wasmplugin.yaml")
    assert installed_on(sidecar["spec"], "inbound") and not installed_on(sidecar["spec"], "outbound")


@pytest.mark.parametrize("target", [
    {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"}]},
    {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio"}]},
    {"selector": {"matchLabels": {"istio": "ingressgateway"}}},
])
def test_gateway_with_server_mode_only_is_refused(target):
    """What docs/istio.md used to suggest: the sidecar manifest with targetRefs to a Gateway.
    The schema accepts it (so does the API server); the placement check must not."""
    (doc,) = load("wasmplugin.yaml")
    spec = copy.deepcopy(doc["spec"])
    spec.pop("selector")
    spec.update(copy.deepcopy(target))
    assert spec["match"] == [{"mode": "SERVER"}]
    assert placement_errors(spec), "gateway + mode SERVER accepted: the plugin would never be installed"
    for ok in ([{"mode": "CLIENT"}], [{"mode": "CLIENT_AND_SERVER"}], [{"mode": "SERVER"}, {"mode": "CLIENT"}], None):
        if ok is None:
            spec.pop("match")
        else:
            spec["match"] = ok
        assert placement_errors(spec) == [], ok


def _doc_yaml_blocks() -> list[dict]:
    text = (REPO / "docs" / "istio.md").read_text()
    out = []
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        try:
            docs = [d for d in yaml.safe_load_all(block) if isinstance(d, dict)]
        except yaml.YAMLError:
            continue
        for d in docs:
            if isinstance(d.get("spec"), dict) and d.get("kind") in SCHEMAS:
                out.append(d)
    return out


def test_istio_doc_examples_are_valid_and_installed_where_they_point():
    docs = _doc_yaml_blocks()
    kinds = {d["kind"] for d in docs}
    assert kinds == {"WasmPlugin", "TrafficExtension"}, kinds
    assert any(targets_gateway(d["spec"]) for d in docs), "docs/istio.md has no gateway example"
    for d in docs:
        assert errors(d) == [], d["metadata"]
        assert placement_errors(d["spec"]) == [], d["metadata"]
        assert wasm_fields(d["spec"]).get("failStrategy") != "FAIL_OPEN"


# --- the schemas refuse what the API server refuses, accept what it accepts -----------

@pytest.mark.parametrize("mutate, where", [
    (lambda s: s.update(sha256="ABC"), "sha256"),
    (lambda s: s.update(sha256="A" * 64), "sha256"),
    (lambda s: s.update(phase="AUTHENTICATION"), "phase"),
    (lambda s: s.update(failStrategy="CLOSE"), "failStrategy"),
    (lambda s: s.update(imagePullPolicy="Never"), "imagePullPolicy"),
    (lambda s: s.update(pluginconfig={}), "spec"),  # typo: the API server would drop it
    (lambda s: s.update(pluginConfig="realm: x"), "pluginConfig"),
    (lambda s: s.update(priority="high"), "priority"),
    (lambda s: s.update(type="TCP"), "type"),
    (lambda s: s.update(match=[{"mode": "INBOUND"}]), "match"),
    (lambda s: s.update(match=[{"ports": [{"number": 80}, {"number": 80}]}]), "match"),  # list-map key
    (lambda s: s.update(vmConfig={"env": [{"value": "x"}]}), "vmConfig"),
    (lambda s: s.update(vmConfig={"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}),
     "vmConfig"),  # x-kubernetes-list-map-keys: [name]
    (lambda s: s.update(targetRefs=[{"kind": "Gateway", "name": "gw"}]), "spec"),  # with selector
    (lambda s: s.pop("url"), "spec"),
    # The CRD's CEL rules (x-kubernetes-validations), as the schema states them:
    (lambda s: s.update(targetRef={"kind": "Service", "name": "api"}), "spec"),  # with selector
    (lambda s: s["selector"]["matchLabels"].update({"": "x"}), "selector"),
    (lambda s: s["selector"]["matchLabels"].update({"app": "api-*"}), "selector"),
    (lambda s: s.update(vmConfig={"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}),
     "vmConfig"),
    (lambda s: (s.pop("selector"), s.update(targetRefs=[{"kind": "Service", "name": "api", "namespace": "other"}])),
     "targetRefs"),
    (lambda s: (s.pop("selector"), s.update(targetRefs=[{"kind": "Service", "name": "api"}] * 17)),
     "targetRefs"),
])
def test_wasmplugin_schema_refuses_what_the_api_server_refuses(mutate, where):
    (doc,) = load("wasmplugin.yaml")
    doc = copy.deepcopy(doc)
    mutate(doc["spec"])
    errs = errors(doc)
    assert errs, f"schema accepted a bad spec ({where})"
    assert any(e.startswith(("spec/" + where) if where != "spec" else "spec") for e in errs), errs


@pytest.mark.parametrize("ref", [
    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"},
    {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio"},
    {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "idp"},
    {"kind": "Service", "name": "orders"},
    {"group": "", "kind": "Service", "name": "orders"},
])
def test_wasmplugin_schema_accepts_every_target_kind_the_crd_accepts(ref):
    (doc,) = load("wasmplugin.yaml")
    doc = copy.deepcopy(doc)
    del doc["spec"]["selector"]
    doc["spec"]["targetRefs"] = [ref]
    doc["spec"]["sha256"] = hashlib.sha256(b"x").hexdigest()
    doc["spec"]["vmConfig"] = {"env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": "HOST"}]}
    assert errors(doc) == []


@pytest.mark.parametrize("mutate, where", [
    (lambda s: s.pop("wasm"), "spec"),  # neither wasm nor lua
    (lambda s: s.update(lua={"inlineCode": "function envoy_on_request(h) end"}), "spec"),  # both
    (lambda s: s.update(lua={"inlineCode": ""}), "spec"),
    (lambda s: s.update(targetRefs=[{"kind": "Gateway", "name": "gw"}]), "spec"),  # with selector
    (lambda s: s.update(targetRef={"kind": "Gateway", "name": "gw"}), "spec"),  # WasmPlugin only
    (lambda s: s.update(phase="UNSPECIFIED_PHASE"), "phase"),  # WasmPlugin's spelling
    (lambda s: s.update(url=s["wasm"]["url"]), "spec"),  # Wasm fields live under `wasm`
    (lambda s: s["wasm"].pop("url"), "wasm"),
    (lambda s: s["wasm"].update(failStrategy="FAIL_CLOSED"), "wasm/failStrategy"),  # Envoy's spelling
    (lambda s: s["wasm"].update(sha256="xyz"), "wasm/sha256"),
    (lambda s: s["wasm"].update(vmConfig={"env": [{"name": "A"}, {"name": "A"}]}), "wasm/vmConfig"),
    (lambda s: s["wasm"].update(type="TCP"), "wasm/type"),
])
def test_trafficextension_schema_refuses_what_the_api_server_refuses(mutate, where):
    (doc,) = load("trafficextension.yaml")
    doc = copy.deepcopy(doc)
    mutate(doc["spec"])
    errs = errors(doc)
    assert errs, f"schema accepted a bad spec ({where})"
    assert any(e.startswith(("spec/" + where) if where != "spec" else "spec") for e in errs), errs


def test_trafficextension_schema_accepts_lua_and_targetrefs():
    (doc,) = load("trafficextension.yaml")
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    del spec["selector"], spec["wasm"]
    spec["lua"] = {"inlineCode": "function envoy_on_request(h) end"}
    spec["targetRefs"] = [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio"}]
    spec["match"] = [{"mode": "CLIENT", "ports": [{"number": 8080}, {"number": 8081}]}]
    spec["phase"] = "UNSPECIFIED"
    assert errors(doc) == []


def test_trafficextension_is_the_sidecar_wasmplugin_in_the_new_shape():
    (te,) = load("trafficextension.yaml")
    (wp,) = load("wasmplugin.yaml")
    spec, old = te["spec"], wp["spec"]
    for key in ("selector", "phase", "priority", "match"):
        assert spec[key] == old[key], key
    for key in ("url", "sha256", "imagePullPolicy", "pluginName", "failStrategy", "type", "pluginConfig"):
        assert spec["wasm"][key] == old[key], key
    assert te["metadata"] == wp["metadata"]


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.environ.get("APIGUARD_CLI")
    cmd = [exe] if exe else ["cargo", "run", "--quiet", "--profile", "cli", "--bin", "apiguard", "--"]
    return subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("name", PLUGINS + EXTENSIONS)
def test_plugin_config_passes_apiguard_check(name, tmp_path):
    (doc,) = load(name)
    config = wasm_fields(doc["spec"])["pluginConfig"]
    f = tmp_path / "policy.yaml"
    f.write_text(yaml.safe_dump(config))
    r = cli("check", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": ok (" in r.stdout, r.stdout
    # What Istio hands the filter: pluginConfig as JSON.
    r = cli("to-json", str(f))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == config


def test_plugin_config_rejection_names_the_field(tmp_path):
    (doc,) = load("wasmplugin.yaml")
    bad = copy.deepcopy(doc["spec"]["pluginConfig"])
    bad["limits"][0]["capacity"] = "lots"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    r = cli("check", str(f))
    assert r.returncode == 1
    assert "limits[0].capacity" in r.stdout + r.stderr


@pytest.mark.parametrize("name", DEMO_COPIES)
def test_demo_manifests_carry_the_demo_policy(name):
    (doc,) = load(name)
    demo = yaml.safe_load((REPO / "envoy" / "demo" / "policy.yaml").read_text())
    # A WasmPlugin cannot set Envoy's allow_on_headers_stop_iteration, so the Istio
    # policy does not hold headers for body validation (docs/istio.md).
    demo.pop("hold_headers_for_body", None)
    # Istio's access-log format does not print apiguard's decision record unless the mesh
    # config adds it, so the manifests leave it off (a host call per request saved).
    demo.pop("decision_record", None)
    assert wasm_fields(doc["spec"])["pluginConfig"] == demo, f"istio/{name} drifted from envoy/demo/policy.yaml"


def test_remote_jwks_cluster_is_istios_name_for_the_service_entry():
    (plugin,) = load("wasmplugin-remote-jwks.yaml")
    docs = load("serviceentry-idp.yaml")
    se = next(d for d in docs if d["kind"] == "ServiceEntry")
    dr = next(d for d in docs if d["kind"] == "DestinationRule")
    remotes = [p["jwks"]["remote"] for p in plugin["spec"]["pluginConfig"]["providers"] if "remote" in p["jwks"]]
    assert remotes
    for remote in remotes:
        direction, port, subset, host = remote["cluster"].split("|")
        assert (direction, subset) == ("outbound", "")
        assert host in se["spec"]["hosts"]
        assert int(port) in [p["number"] for p in se["spec"]["ports"]]
        assert remote["uri"].startswith(f"https://{host}/")
        # TLS is originated by the cluster (the filter speaks HTTP to it).
        assert dr["spec"]["host"] == host
        tls = [s["tls"] for s in dr["spec"]["trafficPolicy"]["portLevelSettings"] if s["port"]["number"] == int(port)]
        assert tls and tls[0]["mode"] == "SIMPLE" and tls[0]["sni"] == host
        assert dr["spec"]["workloadSelector"]["matchLabels"] == plugin["spec"]["selector"]["matchLabels"]
    assert se["spec"]["location"] == "MESH_EXTERNAL"
    assert plugin["metadata"]["namespace"] == se["metadata"]["namespace"] == dr["metadata"]["namespace"]


# --- make oci -------------------------------------------------------------------------

def run_oci(tmp_path, wasm: bytes, *extra: str) -> dict:
    src = tmp_path / "m.wasm"
    src.write_bytes(wasm)
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "oci.py"), "--wasm", str(src),
         "--out", str(tmp_path / "oci"), "--tar", str(tmp_path / "oci.tar"), "--tag", "1.2.3", "--json", *extra],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def blob(root: pathlib.Path, desc: dict) -> bytes:
    algo, hexd = desc["digest"].split(":")
    assert algo == "sha256"
    data = (root / "blobs" / "sha256" / hexd).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexd
    assert len(data) == desc["size"]
    return data


WASM = b"\0asm\x01\0\0\0"  # the smallest valid module


@pytest.mark.parametrize("variant", ["wasm", "compat"])
def test_oci_layout(tmp_path, variant):
    out = run_oci(tmp_path, WASM, "--variant", variant)
    root = tmp_path / "oci"
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2
    (mdesc,) = index["manifests"]
    assert mdesc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert mdesc["annotations"]["org.opencontainers.image.ref.name"] == "1.2.3"
    assert mdesc["digest"] == out["manifest_digest"]
    manifest = json.loads(blob(root, mdesc))
    config = json.loads(blob(root, manifest["config"]))
    (layer_desc,) = manifest["layers"]
    layer = blob(root, layer_desc)
    assert out["wasm_sha256"] == hashlib.sha256(WASM).hexdigest()
    if variant == "wasm":
        assert manifest["config"]["mediaType"] == "application/vnd.wasm.config.v1+json"
        assert layer_desc["mediaType"] == "application/vnd.wasm.content.layer.v1+wasm"
        assert layer == WASM
        assert config["layerDigests"] == [layer_desc["digest"]]
    else:
        import gzip
        import io

        assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as t:
            assert t.getnames() == ["plugin.wasm"]
            assert t.extractfile("plugin.wasm").read() == WASM
    with tarfile.open(tmp_path / "oci.tar") as t:
        names = set(t.getnames())
    assert {"oci-layout", "index.json", "blobs/sha256/" + mdesc["digest"].split(":")[1]} <= names
    # The WasmPlugin sha256 field pattern accepts what the script prints.
    for digest in (out["wasm_sha256"], out["manifest_digest"].split(":")[1]):
        assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def test_oci_default_is_what_istio_pulls(tmp_path):
    """Istio's fetcher (pkg/wasm/imagefetcher.go) takes the image's last layer: Docker or OCI
    tar+gzip holding `plugin.wasm`, or the two-layer `vnd.module.wasm` variant. The default
    image must be the first kind, and `sha256` for an oci:// URL is the manifest digest."""
    import gzip
    import io

    out = run_oci(tmp_path, WASM)
    assert out["variant"] == "compat"
    root = tmp_path / "oci"
    (mdesc,) = json.loads((root / "index.json").read_text())["manifests"]
    manifest_bytes = blob(root, mdesc)
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == out["manifest_digest"]
    last = json.loads(manifest_bytes)["layers"][-1]
    assert last["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(root, last)))) as t:
        member = next(m for m in t.getmembers() if pathlib.PurePath(m.name).name == "plugin.wasm")
        module = t.extractfile(member).read()
    assert module == WASM and module[:4] == b"\0asm"


def test_oci_is_reproducible(tmp_path):
    runs = {}
    for name, wasm in (("a", WASM), ("b", WASM), ("c", WASM + b"\0asm")):
        (tmp_path / name).mkdir()
        runs[name] = run_oci(tmp_path / name, wasm)
    assert runs["a"]["manifest_digest"] == runs["b"]["manifest_digest"]
    assert (tmp_path / "a" / "oci.tar").read_bytes() == (tmp_path / "b" / "oci.tar").read_bytes()
    assert runs["c"]["manifest_digest"] != runs["a"]["manifest_digest"]


def test_oci_refuses_a_non_wasm_file(tmp_path):
    src = tmp_path / "x.wasm"
    src.write_bytes(b"not wasm")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "oci.py"), "--wasm", str(src),
                        "--out", str(tmp_path / "o"), "--tar", str(tmp_path / "o.tar")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a Wasm module" in r.stderr
