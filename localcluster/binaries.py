"""The pinned Kubernetes binaries: their versions (versions.env) and where build-binaries.sh puts
them, in a cache outside the repository keyed by those versions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localcluster.errors import ClusterError

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build-binaries.sh"


def pinned_versions() -> dict[str, str]:
    """K8S_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION, KUEUE_VERSION from versions.env."""
    pairs = (line.split("=", 1) for line in VERSIONS_FILE.read_text().splitlines())
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


def cached_bin_dir() -> Path:
    """Where build-binaries.sh puts (or has put) the binaries; they may not be built yet."""
    cache = Path(os.environ.get("PFO_CACHE", Path.home() / ".cache" / "paddle-finetune-operator"))
    v = pinned_versions()
    key = f"k8s-{v['K8S_VERSION']}-etcd-{v['ETCD_VERSION']}-kwok-{v['KWOK_VERSION']}-helm-{v['HELM_VERSION']}"
    return cache / "bin" / key


def bin_dir() -> Path:
    """The directory holding the pinned binaries: $PFO_BIN_DIR, or build-binaries.sh's (which
    builds them first when the cache is cold and is a no-op when it is warm)."""
    if os.environ.get("PFO_BIN_DIR"):
        return Path(os.environ["PFO_BIN_DIR"])
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise ClusterError("localcluster/build-binaries.sh failed (see its messages above)")
    return Path(proc.stdout.strip().splitlines()[-1])
