"""The pinned helm against the local cluster: installing the chart, and a kubeconfig that
authenticates as the chart's ServiceAccount, so a local operator process gets exactly the RBAC the
chart grants (kwok's fake nodes cannot run the operator's Deployment)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localcluster.binaries import cached_bin_dir
from localcluster.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "paddle-finetune-operator"
CHART_NAME = "paddle-finetune-operator"


class HelmNotFound(ClusterError):
    """No helm binary: build-binaries.sh has not built it yet and none is on PATH."""


def helm_binary(bin_dir: Path | None = None) -> Path:
    """The helm that build-binaries.sh built (in `bin_dir`, $PFO_BIN_DIR or the cache), else one on
    PATH. Never builds: raises HelmNotFound instead."""
    candidates = [Path(d) / "helm" for d in (bin_dir, os.environ.get("PFO_BIN_DIR")) if d]
    candidates.append(cached_bin_dir() / "helm")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("helm")
    if found:
        return Path(found)
    raise HelmNotFound("helm is not built yet: run `make binaries` (localcluster/build-binaries.sh)")


def helm(
    *args: str,
    bin_dir: Path | None = None,
    kubeconfig: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run helm (without the caller's HELM_* settings); raise ClusterError with its stderr when
    `check` and it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    proc = subprocess.run(
        [str(helm_binary(bin_dir)), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def fullname(release: str) -> str:
    """The name the chart gives its objects (ServiceAccount, Deployment, ...) in `release`."""
    return release if CHART_NAME in release else f"{release}-{CHART_NAME}"[:63].rstrip("-")


def service_account_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig holding a bound token of `service_account` (`kubectl create token`, one hour),
    so a process using it gets exactly the RBAC the chart granted, nothing of the admin's."""
    token = cluster.kubectl("create", "token", service_account, "--duration=1h", namespace=namespace).stdout
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pfo-local",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token.strip()}}],
        "contexts": [{"name": "pfo-local", "context": {"cluster": "pfo-local", "user": user}}],
        "current-context": "pfo-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def install_chart(cluster: Any, namespace: str, path: Path, *values: str, release: str = "pfo") -> Path:
    """`helm upgrade --install` the chart into `namespace` of the local cluster (idempotent) and
    write to `path` a kubeconfig for its ServiceAccount: what the demo (and anyone trying the chart
    locally) runs the operator with, as a local process."""
    helm(
        "upgrade", "--install", release, str(CHART), "--namespace", namespace, *values, "--wait=false",
        bin_dir=cluster.bin_dir, kubeconfig=cluster.kubeconfig,
    )  # fmt: skip
    return service_account_kubeconfig(cluster, namespace, fullname(release), path)
