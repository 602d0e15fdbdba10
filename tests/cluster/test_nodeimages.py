"""The node's OCI archives are well formed: every descriptor names a blob of that digest and size,
the config lists the layer's digest, the layer holds what the image promises, and a rebuild gives
the same bytes (the tag is the inputs' hash, so the same tag must mean the same image)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import nodeimages
from tests.cluster.nodeimages import Layer, write_oci_archive


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def blob(members: dict[str, bytes], descriptor: dict[str, object]) -> bytes:
    digest = str(descriptor["digest"])
    data = members["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    assert len(data) == descriptor["size"]
    return data


Image = tuple[dict[str, Any], dict[str, Any], dict[str, tarfile.TarInfo], tarfile.TarFile]


def open_image(path: Path) -> Image:
    """The index entry, image config, layer members and layer of a one-layer archive, every
    digest and size checked on the way."""
    members = read_archive(path)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(members["index.json"])["manifests"]
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(blob(members, entry))
    config = json.loads(blob(members, manifest["config"]))
    (layer_descriptor,) = manifest["layers"]
    layer_bytes = blob(members, layer_descriptor)
    assert config["rootfs"]["diff_ids"] == [layer_descriptor["digest"]]  # uncompressed layer
    layer = tarfile.open(fileobj=io.BytesIO(layer_bytes))  # noqa: SIM115 - read by the caller
    return entry, config, {m.name: m for m in layer.getmembers()}, layer


def has_interpreter(elf: bytes) -> bool:
    """True if the ELF64 file names a dynamic loader (a PT_INTERP program header)."""
    (phoff,) = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    return any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def test_archive_round_trip(tmp_path: Path) -> None:
    layer = Layer(
        files={"bin/tool": (b"#!/bin/sh\necho hi\n", 0o755), "etc/conf": (b"x=1\n", 0o600)},
        dirs={"bin": 0o755, "etc": 0o755, "tmp": 0o1777},
        symlinks={"bin/alias": "tool"},
    )
    config = {"Entrypoint": ["/bin/tool"], "User": "1000:1000", "WorkingDir": "/w", "Env": ["A=1"]}
    write_oci_archive(tmp_path / "a.tar", "pfo.local/x:abc", layer, config)
    entry, image_config, files, tar = open_image(tmp_path / "a.tar")
    assert entry["annotations"]["io.containerd.image.name"] == "pfo.local/x:abc"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "abc"
    assert image_config["config"] == config
    assert tar.extractfile(files["bin/tool"]).read() == b"#!/bin/sh\necho hi\n"  # type: ignore[union-attr]
    assert files["bin/tool"].mode == 0o755 and files["etc/conf"].mode == 0o600
    assert files["tmp"].isdir() and files["tmp"].mode == 0o1777
    assert files["bin/alias"].issym() and files["bin/alias"].linkname == "tool"
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in files.values())

    write_oci_archive(tmp_path / "b.tar", "pfo.local/x:abc", layer, config)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


@pytest.mark.skipif(not nodeimages.BUSYBOX.is_file(), reason="busybox-static missing: make node-runtime")
def test_busybox_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFO_CACHE", str(tmp_path))
    archive, ref = nodeimages.busybox_image()
    assert archive.parent == tmp_path / "images"
    assert ref.startswith("pfo.local/busybox:") and ref.split(":")[1] in archive.name
    entry, config, files, tar = open_image(archive)
    assert entry["annotations"]["io.containerd.image.name"] == ref
    assert config["config"]["Env"] == ["PATH=/bin"]
    assert tar.extractfile(files["bin/busybox"]).read() == nodeimages.BUSYBOX.read_bytes()  # type: ignore[union-attr]
    for applet in ("sh", "cat", "nc", "wget", "httpd", "sleep"):
        assert files[f"bin/{applet}"].linkname == "busybox"
    assert nodeimages.busybox_image() == (archive, ref)  # cached


def test_pause_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFO_CACHE", str(tmp_path))
    archive, ref = nodeimages.pause_image()
    _, config, files, tar = open_image(archive)
    assert set(files) == {"pause"}
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"
    binary = tar.extractfile(files["pause"]).read()  # type: ignore[union-attr]
    assert binary[:4] == b"\x7fELF"
    assert not has_interpreter(binary), "the pause binary must be static: the image holds nothing else"
    assert nodeimages.pause_image() == (archive, ref)


def test_cli_prints_archive_then_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PFO_CACHE", str(tmp_path))
    assert nodeimages.main(["pause"]) == 0
    archive, ref = capsys.readouterr().out.splitlines()
    assert Path(archive).is_file() and ref.startswith("pfo.local/pause:")
    assert nodeimages.main(["nothing"]) == 2
