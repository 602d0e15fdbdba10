"""Layers, images and archives are reproducible and well formed, checked on generated trees."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tarfile
import time
from pathlib import Path

import pytest

from images.oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    EPOCH,
    BlobStore,
    ImageConfig,
    read_archive,
    write_archive,
    write_image,
    write_layer,
)


def _random_tree(rng: random.Random) -> list[tuple[str, str, object]]:
    """Steps that make a tree of folders, files (random modes and contents), symlinks and hard
    links: (kind, name, argument)."""
    steps: list[tuple[str, str, object]] = []
    files: list[str] = []
    folders = [""]
    for i in range(rng.randint(5, 40)):
        parent = rng.choice(folders)
        kind = rng.random()
        name = f"{parent}/{rng.choice(['a', 'B', 'z', '_', 'é', '.x'])}{i}".lstrip("/")
        if kind < 0.25:
            steps.append(("dir", name, rng.choice([0o755, 0o700, 0o1777])))
            folders.append(name)
        elif kind < 0.8 or not files:
            steps.append(
                ("file", name, (rng.randbytes(rng.randint(0, 5000)), rng.choice([0o644, 0o755, 0o600])))
            )
            files.append(name)
        elif kind < 0.9:
            steps.append(("symlink", name, rng.choice([*files, "/etc/passwd", "../nowhere"])))
        else:
            steps.append(("hardlink", name, rng.choice(files)))
            files.append(name)
    return steps


def _make(root: Path, steps: list[tuple[str, str, object]]) -> dict[str, bytes]:
    """Carry out ``steps`` under ``root``; returns each file's contents."""
    root.mkdir()
    contents: dict[str, bytes] = {}
    for kind, name, arg in steps:
        path = root / name
        if kind == "dir":
            path.mkdir()
            os.chmod(path, arg)
        elif kind == "file":
            data, mode = arg
            path.write_bytes(data)
            os.chmod(path, mode)
            contents[name] = data
        elif kind == "symlink":
            os.symlink(arg, path)
        else:
            os.link(root / arg, path)
            contents[name] = contents[arg]
    return contents


def _scramble_metadata(root: Path, rng: random.Random) -> None:
    """What differs between two builds of the same tree: mtimes and owners."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            os.lchown(path, rng.randint(0, 2000), rng.randint(0, 2000))
            if not path.is_symlink():
                t = rng.randint(0, 2**31)
                os.utime(path, (t, t))


def _members(blob: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(blob, "r:gz") as tar:
        return tar.getmembers()


@pytest.mark.parametrize("seed", range(12))
def test_the_same_tree_gives_the_same_layer_whatever_its_mtimes_owners_and_build_order(tmp_path, seed):
    rng = random.Random(seed)
    first, second = tmp_path / "first", tmp_path / "second"
    steps = _random_tree(rng)
    files = _make(first, steps)
    # The same tree made again, then both given other mtimes and owners.
    _make(second, steps)
    for path in (first, second):
        _scramble_metadata(path, random.Random(rng.random()))
    store = BlobStore(tmp_path / "blobs")
    a = write_layer(first, store, "x")
    b = write_layer(second, store, "x")
    assert a == b

    members = _members(store.path(a.digest))
    names = [m.name for m in members]
    # Every entry once; each folder before what it holds; siblings in byte order.
    assert len(names) == len(set(names))
    for i, name in enumerate(names):
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        if parent is not None:
            assert parent in names[:i], f"{name} comes before its folder"
    for m in members:
        assert m.mtime == EPOCH and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == ""
    # Contents and kinds survive; a hard link points at a name listed before it.
    with tarfile.open(store.path(a.digest), "r:gz") as tar:
        for m in tar.getmembers():
            if m.islnk():
                assert m.linkname in names[: names.index(m.name)]
                assert files[m.name] == files[m.linkname]
            elif m.isfile():
                assert tar.extractfile(m).read() == files[m.name]
                assert m.mode == os.stat(first / m.name).st_mode & 0o7777
            elif m.issym():
                assert m.linkname == os.readlink(first / m.name)


def test_layer_digests_match_the_blob_and_the_uncompressed_tar(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("hello")
    store = BlobStore(tmp_path / "blobs")
    layer = write_layer(tmp_path / "t", store, "x", owners={"f": (1000, 1000)})
    blob = store.path(layer.digest).read_bytes()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and layer.size == len(blob)
    raw = gzip.decompress(blob)
    assert layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest() and layer.tar_size == len(raw)
    assert blob[4:8] == b"\0\0\0\0", "the gzip header carries an mtime"
    (member,) = _members(store.path(layer.digest))
    assert (member.uid, member.gid) == (1000, 1000)


def test_keep_owners_and_exclude(tmp_path):
    root = tmp_path / "t"
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "null").write_text("")
    (root / "etc").mkdir()
    (root / "etc" / "shadow").write_text("")
    os.chown(root / "etc" / "shadow", 0, 42)
    store = BlobStore(tmp_path / "blobs")
    layer = write_layer(root, store, "x", exclude=lambda rel: rel.startswith("dev/"), keep_owners=True)
    members = {m.name: m for m in _members(store.path(layer.digest))}
    assert sorted(members) == ["dev", "etc", "etc/shadow"]
    assert members["etc/shadow"].gid == 42


def _image(tmp_path: Path) -> tuple[BlobStore, object]:
    store = BlobStore(tmp_path / "blobs")
    layers = []
    for i in range(2):
        (tmp_path / f"t{i}").mkdir()
        (tmp_path / f"t{i}" / f"f{i}").write_text(str(i))
        layers.append(write_layer(tmp_path / f"t{i}", store, f"layer {i}"))
    config = ImageConfig(
        entrypoint=["prog"],
        cmd=["--flag"],
        env=["PATH=/usr/bin", "A=b"],
        user="1000:1000",
        working_dir="/w",
        exposed_ports=["8080/tcp"],
    )
    return store, write_image(store, layers, config)


def test_archive_round_trip_and_reproducibility(tmp_path):
    store, image = _image(tmp_path)
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    write_archive(store, image, "example.org/x/y:1.2", one)
    write_archive(store, image, "example.org/x/y:1.2", two)
    assert one.read_bytes() == two.read_bytes()

    parsed = read_archive(one)  # verifies every blob it reads against its digest
    (descriptor,) = parsed["index"]["manifests"]
    assert descriptor["annotations"] == {
        ANNOTATION_REF_NAME: "1.2",
        ANNOTATION_CONTAINERD_NAME: "example.org/x/y:1.2",
    }
    config = parsed["config"]
    assert config["config"] == {
        "Entrypoint": ["prog"],
        "Cmd": ["--flag"],
        "Env": ["PATH=/usr/bin", "A=b"],
        "User": "1000:1000",
        "WorkingDir": "/w",
        "ExposedPorts": {"8080/tcp": {}},
    }
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    assert [layer["digest"] for layer in parsed["manifest"]["layers"]] == [
        layer.digest for layer in image.layers
    ]
    with tarfile.open(one) as tar:
        names = tar.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}
        assert all(m.mtime == EPOCH and m.uid == 0 for m in tar.getmembers())
        blobs = sorted(n for n in names if n.startswith("blobs/sha256/"))
        assert len(blobs) == 4  # config, manifest, two layers


def test_garbage_collection_keeps_what_layers_and_this_run_use(tmp_path):
    from images.build import KEEP_LAYER_DAYS, Builder

    builder = Builder(tmp_path / "cache")
    layers = builder.cache / "layers"
    layers.mkdir(parents=True)
    blobs = {}
    for name in ("recent", "old", "config", "orphan"):
        blobs[name], _ = builder.store.put_bytes(name.encode())
    (layers / "deps-recent.json").write_text(json.dumps({"digest": blobs["recent"]}))
    (layers / "deps-old.json").write_text(json.dumps({"digest": blobs["old"]}))
    long_ago = time.time() - (KEEP_LAYER_DAYS + 1) * 86400
    os.utime(layers / "deps-old.json", (long_ago, long_ago))

    builder.collect_garbage(keep={blobs["config"]})
    assert sorted(p.name for p in layers.iterdir()) == ["deps-recent.json"]
    assert {name for name, digest in blobs.items() if builder.store.has(digest)} == {"recent", "config"}
