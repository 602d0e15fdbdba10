"""Small OCI images for the real node, built without Docker: the pod sandbox's pause image and a
static busybox image for the tests.

Each image is one uncompressed layer written as an OCI image archive (oci-layout, index.json and
content-addressed blobs in one tar), the format `ctr images import` loads. Archives are cached in
$PFO_CACHE/images/, named by a hash of their inputs (this file, the sources, the compiler or the
busybox binary), and the image tag is that hash, so a changed input is a new image.

    python -m tests.cluster.nodeimages pause|busybox    # prints the archive path, then the reference

`python -m images.build pause` (the project's image tooling) answers in the same two lines, so the
real node can take its pause image from either (realnode.PAUSE_IMAGE_COMMAND).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAUSE_SOURCE = HERE / "pause.c"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (make node-runtime)
REGISTRY = "pfo.local"  # never pulled from: every image the node runs is imported

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


class ImageError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = Path(os.environ.get("PFO_CACHE", Path.home() / ".cache" / "paddle-finetune-operator"))
    return root / "images"


@dataclass
class Layer:
    """The files of one layer: path (no leading slash) -> content, mode; directories; symlinks."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    def tar(self) -> bytes:
        """A reproducible tar: sorted entries, owner root, time 0."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entries = [(p, "d") for p in self.dirs] + [(p, "f") for p in self.files]
            entries += [(p, "l") for p in self.symlinks]
            for path, kind in sorted(entries):
                info = tarfile.TarInfo(path)
                info.mtime = 0
                if kind == "d":
                    info.type, info.mode = tarfile.DIRTYPE, self.dirs[path]
                    tar.addfile(info)
                elif kind == "l":
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, self.symlinks[path], 0o777
                    tar.addfile(info)
                else:
                    data, info.mode = self.files[path]
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def write_oci_archive(dest: Path, ref: str, layer: Layer, config: dict[str, object]) -> None:
    """Write `layer` as a one-layer image named `ref` (registry/name:tag) with `config` (the OCI
    config's `config` object: Entrypoint, Cmd, Env, User, WorkingDir) to the archive `dest`."""
    layer_digest, layer_data = _blob(layer.tar())
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": f"tests/cluster/nodeimages.py ({ref})"}],
    }
    config_digest, config_data = _blob(json.dumps(image_config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config_data)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": len(layer_data)}],
    }
    manifest_digest, manifest_data = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_data),
                "platform": {"architecture": "amd64", "os": "linux"},
                # containerd names the imported image after this annotation
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                },
            }
        ],
    }
    members = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for digest, data in ((layer_digest, layer_data), (config_digest, config_data)):
        members["blobs/sha256/" + digest.removeprefix("sha256:")] = data
    members["blobs/sha256/" + manifest_digest.removeprefix("sha256:")] = manifest_data
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.NamedTemporaryFile(dir=dest.parent, prefix=dest.name, delete=False) as tmp,
        tarfile.open(fileobj=tmp, mode="w") as tar,
    ):
        tar.addfile(_dir_info("blobs"))
        tar.addfile(_dir_info("blobs/sha256"))
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, dest)


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    return info


def _key(*parts: bytes) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def pause_image() -> tuple[Path, str]:
    """The pod sandbox image: pause.c compiled static with gcc, alone in its image, uid 65535."""
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False)
    if gcc.returncode != 0:
        raise ImageError("building the pause image needs gcc and libc6-dev (make node-runtime)")
    key = _key(PAUSE_SOURCE.read_bytes(), gcc.stdout.encode())
    ref = f"{REGISTRY}/pause:{key}"
    dest = cache_dir() / f"pause-{key}.tar"
    if dest.exists():
        return dest, ref
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            ["gcc", "-static", "-O2", "-s", "-o", str(binary), str(PAUSE_SOURCE)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ImageError(f"gcc -static {PAUSE_SOURCE} failed (libc6-dev missing?): {proc.stderr.strip()}")
        layer = Layer(files={"pause": (binary.read_bytes(), 0o755)})
    write_oci_archive(dest, ref, layer, {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"})
    return dest, ref


def busybox_image() -> tuple[Path, str]:
    """A test image: Debian's static busybox as /bin/busybox with every applet linked in /bin."""
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: install Debian's busybox-static (make node-runtime)")
    data = BUSYBOX.read_bytes()
    key = _key(data)
    ref = f"{REGISTRY}/busybox:{key}"
    dest = cache_dir() / f"busybox-{key}.tar"
    if dest.exists():
        return dest, ref
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    applets = listing.stdout.split()
    layer = Layer(
        files={
            "bin/busybox": (data, 0o755),
            "etc/passwd": (b"root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n", 0o644),
            "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        },
        dirs={"bin": 0o755, "etc": 0o755, "root": 0o700, "tmp": 0o1777},
        symlinks={f"bin/{a}": "busybox" for a in applets if a != "busybox"},
    )
    write_oci_archive(dest, ref, layer, {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"})
    return dest, ref


BUILDERS = {"pause": pause_image, "busybox": busybox_image}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in BUILDERS:
        print(f"usage: python -m tests.cluster.nodeimages {'|'.join(BUILDERS)}", file=sys.stderr)
        return 2
    try:
        archive, ref = BUILDERS[args[0]]()
    except ImageError as e:
        print(f"nodeimages: {e}", file=sys.stderr)
        return 1
    print(archive)
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
