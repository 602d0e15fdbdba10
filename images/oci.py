"""Reproducible OCI layers, images and archives, written with the standard library.

A layer is a tar of a directory tree whose entries are sorted by name, with one fixed mtime, no
user or group names and the numeric owners of the files (0 for everything our own build
writes), gzipped with a zero header timestamp: the same tree always gives the same digest. An
image is a config, a manifest and its layers in a content-addressed blob store; an archive is
an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) in one tar, the form
``ctr images import`` and ``skopeo copy oci-archive:...`` read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every entry of every layer and archive carries this mtime (2024-01-01T00:00:00Z).
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# containerd's import takes the image's full name from this annotation.
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

# zlib level 6 (gzip's default): on the trainer's 880 MB dependency layer 36 CPU s and 240 MB,
# against level 1's 14 CPU s and 277 MB. The layer is built once; its size is paid at every push.
GZIP_LEVEL = 6
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256:<hex> of the gzipped blob (the manifest's descriptor)
    size: int  # bytes of the gzipped blob
    diff_id: str  # sha256:<hex> of the uncompressed tar (the config's rootfs.diff_ids)
    tar_size: int  # bytes of the uncompressed tar
    created_by: str  # what the config's history says about it

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        return cls(**data)


class BlobStore:
    """Content-addressed blobs: ``<root>/sha256/<hex>``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        algo, hexdigest = digest.split(":", 1)
        return self.root / algo / hexdigest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            self._install(digest, lambda f: f.write(data))
        return digest, len(data)

    def put_file(self, src: Path) -> tuple[str, int]:
        """Move ``src`` into the store (it is consumed)."""
        digest = "sha256:" + _sha256_file(src)
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)
        return digest, target.stat().st_size

    def read_json(self, digest: str) -> Any:
        return json.loads(self.path(digest).read_bytes())

    def _install(self, digest: str, write: Callable[[Any], Any]) -> None:
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.hash, self.count = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.hash.update(b)
        self.count += len(b)
        return self.sink.write(b) or len(b)


# ---------------------------------------------------------------------------------------------
# Layers


Owner = tuple[int, int]


def _tarinfo(name: str, st: os.stat_result, owner: Owner | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = owner if owner is not None else (st.st_uid, st.st_gid)
    info.uname = info.gname = ""
    return info


def write_layer(
    root: Path,
    store: BlobStore,
    created_by: str,
    *,
    exclude: Callable[[str], bool] = lambda rel: False,
    owners: dict[str, Owner] | None = None,
    keep_owners: bool = False,
) -> Layer:
    """Tar the tree under ``root`` into a gzipped layer blob in ``store``.

    ``exclude(rel)`` drops a path (and, for a folder, what is under it); ``owners`` sets the
    owner of single paths; every other entry is owned by 0:0 unless ``keep_owners`` (the Debian
    base, whose packages own a few files by system groups, keeps its numeric owners). Hard
    links stay hard links: the first name in sorted order carries the data.
    """
    owners = owners or {}
    tmp_dir = store.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="layer-", suffix=".tar.gz")
    tmp = Path(tmp_name)
    try:
        # mtime=0 and no file name: the gzip header holds nothing that varies between builds.
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz,
        ):
            counter = _HashingWriter(gz)
            with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                seen: dict[tuple[int, int], str] = {}
                for rel in _walk_sorted(root, exclude):
                    path = root / rel
                    st = path.lstat()
                    owner = owners.get(rel, None if keep_owners else (0, 0))
                    info = _tarinfo(rel, st, owner)
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = os.readlink(path)
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        if st.st_nlink > 1 and key in seen:
                            info.type = tarfile.LNKTYPE
                            info.linkname = seen[key]
                            tar.addfile(info)
                            continue
                        seen[key] = rel
                        info.size = st.st_size
                        with path.open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        raise ValueError(f"{path}: a layer holds only folders, files and links")
        tar_digest, tar_size = "sha256:" + counter.hash.hexdigest(), counter.count
        digest, size = store.put_file(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return Layer(digest=digest, size=size, diff_id=tar_digest, tar_size=tar_size, created_by=created_by)


def _walk_sorted(root: Path, exclude: Callable[[str], bool], rel_dir: str = "") -> Iterable[str]:
    """Relative paths under ``root`` in pre-order (a folder, then its contents), names in byte order."""
    for name in sorted(os.listdir(root / rel_dir), key=os.fsencode):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        if exclude(rel):
            continue
        yield rel
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            yield from _walk_sorted(root, exclude, rel)


# ---------------------------------------------------------------------------------------------
# Images and archives


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the fields a Dockerfile sets)."""

    entrypoint: list[str]
    cmd: list[str] | None
    env: list[str]  # KEY=value, in order
    user: str
    working_dir: str
    exposed_ports: list[str]  # "8080/tcp"

    def to_oci(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Entrypoint": self.entrypoint,
            "Env": self.env,
            "User": self.user,
            "WorkingDir": self.working_dir,
        }
        if self.cmd is not None:
            config["Cmd"] = self.cmd
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        return config


@dataclass(frozen=True)
class Image:
    manifest_digest: str
    manifest_size: int
    config_digest: str
    layers: tuple[Layer, ...]

    @property
    def size(self) -> int:
        """Bytes a registry stores (the gzipped layers)."""
        return sum(layer.size for layer in self.layers)

    @property
    def unpacked_size(self) -> int:
        """Bytes of the layers' tars: about what the root file system takes on a node."""
        return sum(layer.tar_size for layer in self.layers)


def write_image(store: BlobStore, layers: list[Layer], config: ImageConfig) -> Image:
    """Write the config and manifest blobs for ``layers`` and return the image."""
    config_json = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": config.to_oci(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": layer.created_by} for layer in layers],
    }
    config_digest, config_size = store.put_bytes(_canonical(config_json))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    manifest_digest, manifest_size = store.put_bytes(_canonical(manifest))
    return Image(manifest_digest, manifest_size, config_digest, tuple(layers))


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_archive(store: BlobStore, image: Image, reference: str, dest: Path) -> None:
    """Write ``image`` as an OCI archive (an image layout in a tar) to ``dest``, atomically.

    ``reference`` (``registry/repo:tag``) goes into index.json twice: the tag as the OCI
    ``ref.name`` (what skopeo's ``oci-archive:file:tag`` selects) and the full reference as
    containerd's image name (what ``ctr images import`` tags it as).
    """
    tag = reference.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "annotations": {ANNOTATION_REF_NAME: tag, ANNOTATION_CONTAINERD_NAME: reference},
            }
        ],
    }
    blobs = [image.config_digest, image.manifest_digest, *(layer.digest for layer in image.layers)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".tar")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", _canonical(index))
            for name in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                tar.addfile(info)
            for digest in sorted(set(blobs)):
                path = store.path(digest)
                info = tarfile.TarInfo("blobs/" + digest.replace(":", "/"))
                info.size, info.mode, info.mtime = path.stat().st_size, 0o644, EPOCH
                with path.open("rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
    tar.addfile(info, io.BytesIO(data))


def read_archive(path: Path) -> dict[str, Any]:
    """index.json, the manifest and the config of the one image in an OCI archive (for checks)."""
    with tarfile.open(path) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile("blobs/" + digest.replace(":", "/"))
            assert member is not None
            data = member.read()
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"{path}: blob {digest} does not match its digest")
            return json.loads(data)

        index_member = tar.extractfile("index.json")
        assert index_member is not None
        index = json.loads(index_member.read())
        (descriptor,) = index["manifests"]
        manifest = blob(descriptor["digest"])
        config = blob(manifest["config"]["digest"])
    return {"index": index, "manifest": manifest, "config": config}


def unpack_layers(store_or_archive: Path, dest: Path) -> None:
    """Apply an OCI archive's layers in order under ``dest`` (whiteouts are not supported: our
    layers never delete). For tests; nodes use containerd."""
    with tarfile.open(store_or_archive) as tar:
        index_member = tar.extractfile("index.json")
        assert index_member is not None
        (descriptor,) = json.loads(index_member.read())["manifests"]
        manifest_member = tar.extractfile("blobs/" + descriptor["digest"].replace(":", "/"))
        assert manifest_member is not None
        manifest = json.loads(manifest_member.read())
        for layer in manifest["layers"]:
            member = tar.extractfile("blobs/" + layer["digest"].replace(":", "/"))
            assert member is not None
            with tarfile.open(fileobj=member, mode="r|gz") as layer_tar:
                layer_tar.extractall(dest, numeric_owner=True, filter="tar")


def copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
