"""Helpers for the chart's tests: helm (skipping the test while helm is not built yet), rendering
the chart and picking documents out of the result, and a release name per test namespace."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import localcluster
from localcluster import CHART, HelmNotFound
from localcluster.binaries import pinned_versions

# `helm template` without a cluster assumes Kubernetes v1.20, below the chart's kubeVersion.
KUBE_VERSION = pinned_versions()["K8S_VERSION"]


def helm(
    *args: str, bin_dir: Path | None = None, kubeconfig: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """localcluster.helm, but a test without a built helm is skipped rather than failed."""
    try:
        return localcluster.helm(*args, bin_dir=bin_dir, kubeconfig=kubeconfig, check=check)
    except HelmNotFound as exc:
        pytest.skip(str(exc))


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
