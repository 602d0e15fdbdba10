"""Helpers for the chart's tests: the pinned helm, rendering and parsing the chart, and a kubeconfig
that authenticates as the chart's ServiceAccount."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "paddle-finetune-operator"
CHART_NAME = "paddle-finetune-operator"


def _pinned_versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / "localcluster/versions.env").read_text().splitlines())
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


VERSIONS = _pinned_versions()
# `helm template` without a cluster assumes Kubernetes v1.20, below the chart's kubeVersion.
KUBE_VERSION = VERSIONS["K8S_VERSION"]


def helm_binary(bin_dir: Path | None = None) -> Path:
    """The helm that build-binaries.sh built (the cluster's bin_dir), else skip the test."""
    candidates = []
    if bin_dir is not None:
        candidates.append(Path(bin_dir) / "helm")
    if os.environ.get("PFO_BIN_DIR"):
        candidates.append(Path(os.environ["PFO_BIN_DIR"]) / "helm")
    cache = Path(os.environ.get("PFO_CACHE", Path.home() / ".cache" / "paddle-finetune-operator"))
    v = VERSIONS
    key = f"k8s-{v['K8S_VERSION']}-etcd-{v['ETCD_VERSION']}-kwok-{v['KWOK_VERSION']}-helm-{v['HELM_VERSION']}"
    candidates.append(cache / "bin" / key / "helm")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("helm")
    if found:
        return Path(found)
    pytest.skip("helm is not built yet: run `make binaries` (localcluster/build-binaries.sh)")
    raise AssertionError("unreachable")


def helm(
    *args: str,
    bin_dir: Path | None = None,
    kubeconfig: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run helm; raise with its stderr when check and it fails."""
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
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(
    *set_args: str, namespace: str = "pfo-system", release: str = "pfo", include_crds: bool = False
) -> str:
    """`helm template` of the chart with `--set`-style arguments (e.g. "--set", "a=b")."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if include_crds:
        args.append("--include-crds")
    return helm(*args, *set_args).stdout


def documents(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def release_name(namespace: str) -> str:
    """A release name unique to a test namespace (cluster-scoped RBAC objects carry it)."""
    return "pfo-" + hashlib.sha1(namespace.encode()).hexdigest()[:8]


def fullname(release: str) -> str:
    return release if CHART_NAME in release else f"{release}-{CHART_NAME}"[:63].rstrip("-")


def service_account_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig holding a bound token of `service_account` (`kubectl create token`), so a
    process using it gets exactly the RBAC the chart granted, nothing of the admin's."""
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


def install_for_local_operator(
    cluster: Any, namespace: str, path: Path, *values: str, release: str = "pfo"
) -> Path:
    """`helm install` the chart into `namespace` of the local cluster and return a kubeconfig for
    its ServiceAccount: what the demo (and anyone trying the chart locally) runs the operator with,
    as a local process, since kwok's fake nodes cannot run the operator's Deployment."""
    helm(
        "upgrade", "--install", release, str(CHART), "--namespace", namespace, *values, "--wait=false",
        bin_dir=cluster.bin_dir, kubeconfig=cluster.kubeconfig,
    )  # fmt: skip
    return service_account_kubeconfig(cluster, namespace, fullname(release), path)


def main(argv: list[str] | None = None) -> int:
    """`python -m localcluster.helm install-local`: install the chart into the cluster that
    `make cluster-up` runs and print a kubeconfig path for its ServiceAccount, e.g.

        KUBECONFIG=$(python -m localcluster.helm install-local) finetune-operator
    """
    import argparse
    import sys

    from localcluster.cluster import DEFAULT_STATE_DIR, Cluster

    parser = argparse.ArgumentParser(prog="python -m localcluster.helm", description=main.__doc__)
    parser.add_argument("action", choices=["install-local"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--namespace", default="pfo-system")
    parser.add_argument("--release", default="pfo")
    args = parser.parse_args(argv)
    cluster = Cluster.attach(args.state_dir.resolve())
    if cluster is None or not cluster.healthy():
        print(f"no running cluster in {args.state_dir}: run `make cluster-up` first", file=sys.stderr)
        return 1
    if cluster.kubectl("get", "namespace", args.namespace, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", args.namespace)
    path = cluster.state_dir / f"{args.release}-operator.kubeconfig"
    print(install_for_local_operator(cluster, args.namespace, path, release=args.release))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
