#!/usr/bin/env python3
"""Packs apiguard.wasm as an OCI image layout (no Docker, no registry, stdlib only).

    python3 scripts/oci.py [--wasm PATH] [--out dist/oci] [--tar dist/apiguard-oci.tar]
                           [--tag 0.1.0] [--variant wasm|compat]

Writes
  dist/oci/                 OCI image layout: oci-layout, index.json, blobs/sha256/<digest>
  dist/apiguard-oci.tar     the same layout as one tarball (`oci-archive:` for skopeo/podman)
and prints the digests the Istio WasmPlugin needs.

Variants
  compat  (default) the "compat" variant of the Wasm image spec: an ordinary OCI image whose
          single tar+gzip layer holds /plugin.wasm (annotation module.wasm.image/variant=compat).
          This is what Istio pulls: its fetcher (istio/istio pkg/wasm/imagefetcher.go) accepts
          a Docker or OCI tar+gzip last layer holding plugin.wasm, or the two-layer
          application/vnd.module.wasm.content.layer.v1+wasm variant, and nothing else.
  wasm    the CNCF Wasm OCI artifact: one layer, the raw module, media type
          application/vnd.wasm.content.layer.v1+wasm; config application/vnd.wasm.config.v1+json.
          For runtimes that pull that format; Istio's fetcher refuses it.

Push the layout with any OCI tool, e.g.
  oras cp --from-oci-layout dist/oci:<tag> ghcr.io/<org>/apiguard:<tag>
  skopeo copy oci:dist/oci:<tag> docker://ghcr.io/<org>/apiguard:<tag>
  crane push dist/oci ghcr.io/<org>/apiguard:<tag>
The output is byte-for-byte reproducible (fixed timestamps, sorted tar members), so the
manifest digest only changes when the module does.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import sys
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "apiguard.wasm"

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
WASM_CONFIG = "application/vnd.wasm.config.v1+json"
WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = "1970-01-01T00:00:00Z"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"

    def put(self, data: bytes) -> str:
        d = sha256(data)
        self.blobs.mkdir(parents=True, exist_ok=True)
        (self.blobs / d).write_bytes(data)
        return d


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    d = {"mediaType": media_type, "digest": "sha256:" + sha256(data), "size": len(data)}
    d.update(extra)
    return d


def tar_single(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(wasm: bytes, tag: str, variant: str, git_rev: str | None) -> tuple[list[tuple[str, bytes]], dict]:
    """Blobs (media type, bytes) in write order and the manifest."""
    annotations = {
        "org.opencontainers.image.title": "apiguard.wasm",
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.created": EPOCH,
        "org.opencontainers.image.source": "https://github.com/apiguard/apiguard",
    }
    if git_rev:
        annotations["org.opencontainers.image.revision"] = git_rev
    if variant == "wasm":
        layer = wasm
        layer_desc = descriptor(WASM_LAYER, layer, annotations={"org.opencontainers.image.title": "apiguard.wasm"})
        config = canonical({
            "created": EPOCH,
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [layer_desc["digest"]],
        })
        config_desc = descriptor(WASM_CONFIG, config)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": WASM_CONFIG,
                    "config": config_desc, "layers": [layer_desc], "annotations": annotations}
    else:
        raw = tar_single("plugin.wasm", wasm)
        layer = gzip.compress(raw, mtime=0)
        layer_desc = descriptor(OCI_LAYER_GZIP, layer)
        config = canonical({
            "created": EPOCH,
            "architecture": "amd64",  # ignored by Wasm pullers; registries want a value
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(raw)]},
        })
        config_desc = descriptor(OCI_CONFIG, config)
        annotations["module.wasm.image/variant"] = "compat"
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                    "config": config_desc, "layers": [layer_desc], "annotations": annotations}
    return [(config_desc["mediaType"], config), (layer_desc["mediaType"], layer)], manifest


def write_tar(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as t:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                data = p.read_bytes()
                info.size, info.mode = len(data), 0o644
                t.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wasm", type=pathlib.Path, default=DEFAULT_WASM)
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "dist" / "oci")
    ap.add_argument("--tar", type=pathlib.Path, default=REPO / "dist" / "apiguard-oci.tar")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--variant", choices=("wasm", "compat"), default="compat")
    ap.add_argument("--git-revision", default=None)
    ap.add_argument("--json", action="store_true", help="print the digests as JSON only")
    args = ap.parse_args(argv)

    if not args.wasm.exists():
        print(f"{args.wasm} missing: make wasm", file=sys.stderr)
        return 1
    wasm = args.wasm.read_bytes()
    if wasm[:4] != b"\0asm":
        print(f"{args.wasm} is not a Wasm module", file=sys.stderr)
        return 1

    if args.out.exists():
        shutil.rmtree(args.out)
    layout = Layout(args.out)
    blobs, manifest = build(wasm, args.tag, args.variant, args.git_revision)
    for _, data in blobs:
        layout.put(data)
    manifest_bytes = canonical(manifest)
    manifest_digest = layout.put(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [descriptor(MANIFEST, manifest_bytes,
                                 annotations={"org.opencontainers.image.ref.name": args.tag})],
    }
    (args.out / "index.json").write_bytes(canonical(index))
    (args.out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    write_tar(args.out, args.tar)

    out = {
        "variant": args.variant,
        "tag": args.tag,
        "layout": str(args.out),
        "tarball": str(args.tar),
        "wasm_sha256": sha256(wasm),
        "manifest_digest": "sha256:" + manifest_digest,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"OCI layout   {args.out}  (tag {args.tag}, variant {args.variant})")
    print(f"tarball      {args.tar}")
    print(f"module       {args.wasm}  {len(wasm)} bytes")
    print(f"wasm sha256  {out['wasm_sha256']}")
    print(f"manifest     {out['manifest_digest']}")
    print()
    print("WasmPlugin (istio/wasmplugin.yaml, docs/istio.md):")
    print(f"  url: oci://<registry>/apiguard:{args.tag}   # after pushing dist/oci")
    print(f"  sha256: {manifest_digest}   # oci:// URL: Istio compares the image (manifest) digest")
    print(f"  sha256: {out['wasm_sha256']}   # http(s):// URL to the bare .wasm: the module's sha256")
    return 0


if __name__ == "__main__":
    sys.exit(main())
