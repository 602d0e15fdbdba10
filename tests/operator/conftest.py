"""Fixtures for the operator's tests against the local control plane."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.operator import crd


@pytest.fixture(scope="session")
def crd_installed(cluster: Any) -> str:
    """The FineTuneJob CRD from crds/, applied to the cluster and served; returns the CRD's name.

    Server-side apply, so the API server itself checks the schema (structural, CEL rules compile
    and fit the cost budget) and any later change to crds/ simply updates the installed CRD.
    """
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd.CRD_DIR))
    # Poll rather than `kubectl wait`: right after the apply the CRD may have no conditions yet,
    # which `kubectl wait` reports as an error instead of waiting.
    deadline = time.monotonic() + 60
    while True:
        # Right after the apply, status.conditions may be there but null.
        conditions = (
            json.loads(cluster.kubectl("get", f"crd/{crd.CRD_NAME}", "-o", "json").stdout).get("status") or {}
        ).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{crd.CRD_NAME} not Established after 60 s: {conditions}")
        time.sleep(0.2)
    broken = [c for c in conditions if c["type"] == "NonStructuralSchema" and c["status"] == "True"]
    assert not broken, (
        f"{crd.CRD_FILE}: the API server calls the schema non-structural: {broken[0]['message']}"
    )
    # Established means the API server serves the resource; wait until discovery lists it too,
    # so that `kubectl ... ftj` resolves the short name in the very next test.
    deadline = time.monotonic() + 30
    while True:
        proc = cluster.kubectl("get", "ftj", "--all-namespaces", check=False)
        if proc.returncode == 0:
            return crd.CRD_NAME
        if time.monotonic() > deadline:
            raise AssertionError(f"`kubectl get ftj` still fails after the CRD is Established: {proc.stderr}")
        time.sleep(0.5)


# --- The operator under test (localcluster/operator_process.py) ---------
@pytest.fixture
def operator(cluster: Any, namespace: str, crd_installed: str, tmp_path: Any) -> Any:
    """The real operator as a subprocess watching this test's namespace (Pod Security
    "restricted" enforced there, so every pod it renders is checked by the API server)."""
    from localcluster import OperatorProcess

    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    proc = OperatorProcess(cluster, [namespace], tmp_path / "operator.log")
    proc.start()
    yield proc
    proc.stop()
