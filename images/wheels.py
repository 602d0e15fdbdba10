"""Wheelhouses: the exact wheels a requirement set resolves to for the image's Python.

pip (the one running this build) resolves and downloads binary wheels for the image's
interpreter (CPython 3.11 on x86_64 glibc 2.36, Debian bookworm's), whatever the host's
Python is. A wheelhouse is kept under a key of its requirement strings, so a warm build never
asks PyPI; its lock (wheel file names and sha256) is what the dependency layer is keyed by.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON_VERSION = "3.11"
_ABI = "cp311"
# Every manylinux tag glibc 2.36 (bookworm) can load, newest first, as pip spells them.
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
FORMAT = 1


def wheelhouse_key(requirements: list[str]) -> str:
    data = json.dumps({"format": FORMAT, "python": PYTHON_VERSION, "requirements": sorted(requirements)})
    return hashlib.sha256(data.encode()).hexdigest()


def lock(wheelhouse: Path) -> list[tuple[str, str]]:
    """(file name, sha256) of every wheel in ``wheelhouse``, sorted."""
    return json.loads((wheelhouse / "lock.json").read_text())


def ensure_wheelhouse(requirements: list[str], cache: Path, refresh: bool = False) -> Path:
    """The folder of wheels ``requirements`` resolve to, downloaded once (``refresh``: again,
    picking up new releases)."""
    house = cache / wheelhouse_key(requirements)
    if (house / "lock.json").is_file() and not refresh:
        return house
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
    try:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            str(tmp),
            "--only-binary=:all:",
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            "--abi",
            _ABI,
            *(arg for platform in _PLATFORMS for arg in ("--platform", platform)),
            *requirements,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pip download {' '.join(requirements)} failed:\n{result.stderr[-4000:]}")
        entries = []
        for wheel in sorted(tmp.glob("*.whl")):
            with wheel.open("rb") as f:
                entries.append((wheel.name, hashlib.file_digest(f, "sha256").hexdigest()))
        (tmp / "lock.json").write_text(json.dumps(entries, indent=1))
        shutil.rmtree(house, ignore_errors=True)  # an older resolution (builds hold a lock)
        os.rename(tmp, house)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return house
