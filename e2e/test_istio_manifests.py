"""The Istio manifests under istio/ and the OCI packaging of `make oci`, without a cluster:

- both WasmPlugins validate against istio/crd/wasmplugin-spec.schema.json (the CRD's spec
  fields, additionalProperties false) and use phase AUTHN + FAIL_CLOSE;
- the schema itself refuses what the API server would (bad sha256, unknown phase, typo'd
  field, selector together with targetRefs);
- every pluginConfig passes `apiguard check` (the CLI validates exactly as the filter does);
  wasmplugin.yaml carries envoy/demo/policy.yaml unchanged;
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
import subprocess
import sys
import tarfile

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="pip install -r e2e/requirements.txt")

REPO = pathlib.Path(__file__).resolve().parents[1]
ISTIO = REPO / "istio"
SCHEMA = json.loads((ISTIO / "crd" / "wasmplugin-spec.schema.json").read_text())
PLUGINS = ["wasmplugin.yaml", "wasmplugin-remote-jwks.yaml"]


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def validator():
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


def errors(doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)]


@pytest.mark.parametrize("name", PLUGINS)
def test_wasmplugin_matches_the_crd_schema(name):
    (doc,) = load(name)
    assert errors(doc) == []
    spec = doc["spec"]
    assert spec["phase"] == "AUTHN"
    assert spec["failStrategy"] == "FAIL_CLOSE"
    assert spec["url"].startswith("oci://")
    assert spec["selector"]["matchLabels"]


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
    (lambda s: s.update(vmConfig={"env": [{"value": "x"}]}), "vmConfig"),
    (lambda s: s.update(targetRefs=[{"kind": "Gateway", "name": "gw"}]), "spec"),  # with selector
    (lambda s: s.pop("url"), "spec"),
    # The CRD's CEL rules (x-kubernetes-validations), as the schema states them:
    (lambda s: s.update(targetRef={"kind": "Service", "name": "api"}), "spec"),  # with selector
    (lambda s: s["selector"]["matchLabels"].update({"": "x"}), "selector"),
    (lambda s: s["selector"]["matchLabels"].update({"app": "api-*"}), "selector"),
    (lambda s: s.update(vmConfig={"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}),
     "vmConfig"),
    (lambda s: (s.pop("selector"), s.update(targetRefs=[{"kind": "Deployment", "name": "api"}])),
     "targetRefs"),
    (lambda s: (s.pop("selector"),
                s.update(targetRefs=[{"kind": "Service", "name": "api", "namespace": "other"}])),
     "targetRefs"),
])
def test_schema_refuses_what_the_api_server_refuses(mutate, where):
    (doc,) = load("wasmplugin.yaml")
    doc = copy.deepcopy(doc)
    mutate(doc["spec"])
    errs = errors(doc)
    assert errs, f"schema accepted a bad spec ({where})"
    assert any(e.startswith(("spec/" + where) if where != "spec" else "spec") for e in errs), errs


def test_gateway_form_with_target_refs_is_valid():
    (doc,) = load("wasmplugin.yaml")
    doc = copy.deepcopy(doc)
    del doc["spec"]["selector"]
    doc["spec"]["targetRefs"] = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"}]
    doc["spec"]["sha256"] = hashlib.sha256(b"x").hexdigest()
    assert errors(doc) == []


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.environ.get("APIGUARD_CLI")
    cmd = [exe] if exe else ["cargo", "run", "--quiet", "--profile", "cli", "--bin", "apiguard", "--"]
    return subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_config_passes_apiguard_check(name, tmp_path):
    (doc,) = load(name)
    f = tmp_path / "policy.yaml"
    f.write_text(yaml.safe_dump(doc["spec"]["pluginConfig"]))
    r = cli("check", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": ok (" in r.stdout, r.stdout
    # What Istio hands the filter: pluginConfig as JSON.
    r = cli("to-json", str(f))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == doc["spec"]["pluginConfig"]


def test_plugin_config_rejection_names_the_field(tmp_path):
    (doc,) = load("wasmplugin.yaml")
    bad = copy.deepcopy(doc["spec"]["pluginConfig"])
    bad["limits"][0]["capacity"] = "lots"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    r = cli("check", str(f))
    assert r.returncode == 1
    assert "limits[0].capacity" in r.stdout + r.stderr


def test_demo_wasmplugin_carries_the_demo_policy():
    (doc,) = load("wasmplugin.yaml")
    demo = yaml.safe_load((REPO / "envoy" / "demo" / "policy.yaml").read_text())
    # A WasmPlugin cannot set Envoy's allow_on_headers_stop_iteration, so the Istio
    # policy does not hold headers for body validation (docs/istio.md).
    demo.pop("hold_headers_for_body", None)
    assert doc["spec"]["pluginConfig"] == demo, "istio/wasmplugin.yaml drifted from envoy/demo/policy.yaml"


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
