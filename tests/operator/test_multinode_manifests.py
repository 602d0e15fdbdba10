"""A multi-node attempt's manifests against the real API server, scheduler and garbage collector
(no operator: the test creates what ``render_attempt`` and ``render_master_config`` render).

* Every rank is admitted under Pod Security "restricted" (downward-API and ConfigMap env, the
  master's containerPort, no output volume on the other ranks).
* 3 ranks x 8 GPUs land on three fake 8-GPU nodes (kube-scheduler, unmodified).
* The master ConfigMap is accepted, immutable, and removed by the garbage collector with rank 0.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from finetune_operator.config import OperatorConfig
from finetune_operator.pod import render_attempt, render_master_config

from tests.operator import crd

# Fake pods never open their volumes: an inline CSI volume (allowed by Pod Security
# "restricted", and with no claim to bind first) stands for the data and output volumes.
VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}


@pytest.fixture
def suspended_job(cluster: Any, crd_installed: str, namespace: str) -> dict[str, Any]:
    """A real 3-node x 8-GPU FineTuneJob (suspended: no operator runs here anyway), so that the
    rendered pods' owner reference resolves and the garbage collector keeps them."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = crd.minimal_job("gang")
    manifest["spec"]["dataset"]["volume"] = VOLUME
    manifest["spec"]["output"]["volume"] = VOLUME
    manifest["spec"]["resources"] = {"nodes": 3, "gpus": 8}
    manifest["spec"]["runPolicy"] = {"suspend": True}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), namespace=namespace)
    return json.loads(cluster.kubectl("get", "ftj", "gang", "-o", "json", namespace=namespace).stdout)


def _create(cluster: Any, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj), namespace=namespace)


def test_the_ranks_are_admitted_placed_on_three_nodes_and_find_rank_0(
    cluster: Any, namespace: str, suspended_job: dict[str, Any]
) -> None:
    pods = render_attempt(suspended_job, 1, OperatorConfig())
    assert [p["metadata"]["name"] for p in pods] == [f"gang-attempt-1-rank-{r}" for r in range(3)]
    for pod in pods:
        _create(cluster, namespace, pod)  # refused here if it broke Pod Security "restricted"

    placed: dict[str, dict[str, Any]] = {}

    def all_running() -> bool:
        for pod in pods:
            got = cluster.get_pod(namespace, pod["metadata"]["name"])
            if not got or (got.get("status") or {}).get("phase") != "Running":
                return False
            placed[pod["metadata"]["name"]] = got
        return True

    cluster.wait_for("the three ranks Running", all_running, timeout=60)
    nodes = {p["spec"]["nodeName"] for p in placed.values()}
    assert len(nodes) == 3 and all(n.startswith("kwok-gpu-") for n in nodes), nodes  # 8 GPUs each

    rank0 = placed["gang-attempt-1-rank-0"]
    config_map = render_master_config(suspended_job, 1, rank0)
    _create(cluster, namespace, config_map)
    shown = cluster.kubectl("get", "configmap", "gang-attempt-1", "-o", "json", namespace=namespace)
    stored = json.loads(shown.stdout)
    assert stored["data"]["master"] == f"{rank0['status']['podIP']}:36543"
    change = json.dumps({"data": {"master": "10.0.0.1:36543"}})
    refused = cluster.kubectl(
        "patch", "configmap", "gang-attempt-1", "--type=merge", "-p", change, namespace=namespace, check=False
    )
    assert refused.returncode != 0 and "immutable" in refused.stderr  # an attempt's master never moves

    # Rank 0 gone (its attempt ended): the garbage collector removes the ConfigMap with it.
    cluster.kubectl("delete", "pod", "gang-attempt-1-rank-0", "--wait=true", namespace=namespace)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc = cluster.kubectl("get", "configmap", "gang-attempt-1", namespace=namespace, check=False)
        if proc.returncode != 0 and "NotFound" in proc.stderr:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the master ConfigMap outlived rank 0's pod")
