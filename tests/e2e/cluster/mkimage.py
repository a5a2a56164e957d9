"""Pack folders into a one-layer OCI image archive that `ctr images import` takes: no container engine, no registry.

    python3 mkimage.py OUT.tar NAME:TAG --add SRC=DEST [--add ...] [--exclude GLOB ...] [--env K=V ...]
                       [--user UID:GID] [--workdir DIR] [--cmd JSON] [--entrypoint JSON]

Each --add puts SRC's contents at DEST in the image (owned by root; a later --add may not repeat a path). The
layer is streamed through a temporary file (the image may be gigabytes). Prints the manifest digest, which
OUT.digest also holds (up.sh imports an image into a node only when this changed).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

LAYER = "application/vnd.oci.image.layer.v1.tar"


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_layer(layer: tarfile.TarFile, sources: list[tuple[str, str]], excludes: list[str]) -> None:
    seen: set[str] = set()
    for src, dest in sources:
        if not os.path.isdir(src):
            sys.exit(f"mkimage.py: --add {src}={dest}: {src} is not a folder")
        dest = dest.strip("/")
        for root, dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, g) for g in excludes))
            arc_root = os.path.normpath(os.path.join(dest, rel)) if rel != "." else dest
            if arc_root and arc_root not in seen:
                seen.add(arc_root)
                layer.add(root, arcname=arc_root, recursive=False, filter=_owned_by_root)
            # symlinks to folders come as dirs from os.walk (not followed): add them as links
            for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                if any(fnmatch.fnmatch(name, g) for g in excludes):
                    continue
                arc = os.path.join(arc_root, name) if arc_root else name
                if arc in seen:
                    sys.exit(f"mkimage.py: {arc} comes from two --add folders")
                seen.add(arc)
                layer.add(os.path.join(root, name), arcname=arc, recursive=False, filter=_owned_by_root)
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


class _Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `target`."""

    def __init__(self, target) -> None:  # noqa: ANN001 (a binary file)
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 (bytes-like)
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--add", action="append", required=True, metavar="SRC=DEST")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--user", default="")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--cmd", default="null")
    parser.add_argument("--entrypoint", default="null")
    args = parser.parse_args()
    sources = [tuple(a.split("=", 1)) for a in args.add]
    blobs: dict[str, bytes | str] = {}  # digest -> content, or the path of the layer's temporary file

    def describe(digest: str, size: int, media_type: str) -> dict:
        return {"mediaType": media_type, "digest": digest, "size": size}

    def put(data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return describe(digest, len(data), media_type)

    with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(args.out)), delete=False) as tmp:
        hashing = _Hashing(tmp)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as layer:
            write_layer(layer, sources, args.exclude)
    try:
        layer_digest = "sha256:" + hashing.sha.hexdigest()
        blobs[layer_digest] = tmp.name
        layer_desc = describe(layer_digest, hashing.size, LAYER)
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *args.env],
                             "Entrypoint": json.loads(args.entrypoint), "Cmd": json.loads(args.cmd),
                             "WorkingDir": args.workdir, "User": args.user},
                  "rootfs": {"type": "layers", "diff_ids": [layer_digest]}, "history": [{"created_by": "mkimage.py"}]}
        config_desc = put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = put(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
        manifest_desc["annotations"] = {"io.containerd.image.name": args.name, "org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [manifest_desc]}
        with tarfile.open(args.out + ".new", "w") as out:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add("index.json", json.dumps(index).encode())
            for digest, data in blobs.items():
                name = "blobs/sha256/" + digest.split(":")[1]
                if isinstance(data, str):
                    out.add(data, arcname=name)
                else:
                    add(name, data)
        os.replace(args.out + ".new", args.out)
        with open(args.out + ".digest" if not args.out.endswith(".tar") else args.out[:-4] + ".digest", "w") as f:
            f.write(manifest_desc["digest"] + "\n")
        print(args.out, manifest_desc["digest"], hashing.size, "bytes layer")
    finally:
        os.unlink(tmp.name)


if __name__ == "__main__":
    main()
