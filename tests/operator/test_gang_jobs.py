"""Multi-node FineTuneJobs run by the real operator process against the local control plane: the
real kube-scheduler places the ranks on kwok's fake 8-GPU nodes (kwok-gpu-0..3), the real
garbage collector removes what the operator owns, and a real Kueue (localcluster/kueue.py)
admits an attempt's pod group whole or not at all. The tests play the trainer's part
(`cluster.drive_pod`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from finetune_contract import encode_result

from localcluster.kueue import Kueue, is_gated
from tests.contract.sample import SAMPLE_RESULT
from tests.operator.cluster_jobs import apply, events, get_job, job_manifest, phase_is, wait_job
from tests.operator.fake_jobs import wait_for
from tests.operator.test_kueue_jobs import QUEUE, _queue

VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}


def rank(job: str, attempt: int, r: int) -> str:
    return f"{job}-attempt-{attempt}-rank-{r}"


def pods(cluster: Any, namespace: str, job: str) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl(
        "get", "pods", "-l", f"finetune.paddle.dev/job-name={job}", "-o", "json", namespace=namespace
    ).stdout
    return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}


def live(cluster: Any, namespace: str, job: str) -> list[str]:
    """The job's pods that run or may still run."""
    return sorted(
        n
        for n, p in pods(cluster, namespace, job).items()
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def gang_job(name: str, nodes: int, gpus: int = 8, **spec: Any) -> dict[str, Any]:
    return job_manifest(name, VOLUME, resources={"nodes": nodes, "gpus": gpus}, **spec)


def queued_gang(name: str, queue: str, nodes: int) -> dict[str, Any]:
    manifest = gang_job(name, nodes)
    manifest["metadata"]["labels"] = {QUEUE: queue}
    return manifest


def test_three_ranks_of_8_gpus_run_on_three_nodes_and_one_failing_rank_restarts_all(
    cluster: Any, namespace: str, operator: Any
) -> None:
    apply(cluster, namespace, gang_job("gang", 3, runPolicy={"backoffLimit": 2}))
    status = wait_job(
        cluster,
        operator,
        namespace,
        "gang",
        lambda s: s.get("phase") == "Running" and (s.get("ranks") or {}).get("master"),
        "Running with rank 0's address",
        timeout=60,
    )
    assert status["ranks"]["running"] == 3 and status["ranks"]["attempt"] == 1
    placed = pods(cluster, namespace, "gang")
    assert sorted(placed) == [rank("gang", 1, r) for r in range(3)]
    nodes = {p["spec"]["nodeName"] for p in placed.values()}
    assert len(nodes) == 3 and all(n.startswith("kwok-gpu-") for n in nodes), nodes
    rank0 = placed[rank("gang", 1, 0)]
    assert status["ranks"]["master"] == f"{rank0['status']['podIP']}:36543"
    config_map = json.loads(
        cluster.kubectl("get", "configmap", "gang-attempt-1", "-o", "json", namespace=namespace).stdout
    )
    assert config_map["data"]["master"] == status["ranks"]["master"]
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == rank0["metadata"]["uid"]

    # Rank 1 is killed: the attempt ends (one failure), ranks 0 and 2 are deleted, and attempt 2
    # starts all three ranks.
    cluster.drive_pod(namespace, rank("gang", 1, 1), "Failed", exit_code=137, wait=0)
    status = wait_job(
        cluster, operator, namespace, "gang", lambda s: s.get("attempts") == 2, "on attempt 2", timeout=60
    )
    assert status["failedAttempts"] == 1
    wait_for(
        "attempt 1's ranks gone, attempt 2's three ranks there",
        lambda: live(cluster, namespace, "gang") == [rank("gang", 2, r) for r in range(3)],
        60,
        lambda: operator.log_tail(40),
    )
    reasons = [r for _, r, _ in events(cluster, namespace, "gang")]
    assert "Retrying" in reasons
    retry = [m for _, r, m in events(cluster, namespace, "gang") if r == "Retrying"][0]
    assert "rank 1" in retry and "Killed" in retry, retry
    wait_job(cluster, operator, namespace, "gang", phase_is("Running"), "Running again", timeout=60)

    # Rank 0 succeeds with the trainer's result: the job succeeds, still one failure counted.
    for r in (1, 2):
        cluster.drive_pod(namespace, rank("gang", 2, r), "Succeeded", wait=0)
    cluster.drive_pod(namespace, rank("gang", 2, 0), "Succeeded", message=encode_result(SAMPLE_RESULT))
    status = wait_job(cluster, operator, namespace, "gang", phase_is("Succeeded"), "Succeeded", timeout=60)
    assert status["failedAttempts"] == 1 and status["attempts"] == 2
    assert status["metrics"]["top1"] == SAMPLE_RESULT.top1
    assert live(cluster, namespace, "gang") == []


def test_a_group_that_cannot_fit_is_failed_whole_with_the_schedulers_reason(
    cluster: Any, namespace: str, operator: Any
) -> None:
    """Five 8-GPU ranks, four 8-GPU nodes: four are placed and hold their GPUs, one is
    unschedulable. However long the scheduling limit, a partly placed group waits no longer than a
    start (here 10 s), then every rank is deleted and the job says why in the scheduler's words."""
    policy = {"backoffLimit": 2, "startTimeoutSeconds": 10, "schedulingTimeoutSeconds": 0}
    apply(cluster, namespace, gang_job("toobig", 5, runPolicy=policy))
    status = wait_job(
        cluster,
        operator,
        namespace,
        "toobig",
        lambda s: s.get("reason") == "Unschedulable" and s.get("phase") == "Pending",
        "waiting for capacity",
        timeout=60,
    )
    assert status["waiting"]["kind"] == "Capacity" and status["waiting"]["deadline"]
    status = wait_job(cluster, operator, namespace, "toobig", phase_is("Failed"), "Failed", timeout=60)
    assert status["reason"] == "Unschedulable"
    assert "could not all be placed" in status["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"], status["message"]
    assert status.get("failedAttempts", 0) == 0
    wait_for(
        "every rank deleted",
        lambda: pods(cluster, namespace, "toobig") == {},
        60,
        lambda: operator.log_tail(40),
    )


@pytest.fixture
def queue24(kueue: Kueue, namespace: str) -> Iterator[str]:
    """A LocalQueue of a ClusterQueue with 24 GPUs of quota: one and a half 2 x 8-GPU jobs."""
    yield from _queue(kueue, namespace, 24)


def test_kueue_admits_a_2_node_job_whole_or_not_at_all(
    cluster: Any, namespace: str, queue24: str, operator: Any
) -> None:
    first = queued_gang("first", queue24, 2)
    apply(cluster, namespace, first)
    wait_job(cluster, operator, namespace, "first", phase_is("Running"), "Running", timeout=60)
    admitted = pods(cluster, namespace, "first")
    assert sorted(admitted) == [rank("first", 1, r) for r in range(2)]
    assert not any(is_gated(p) for p in admitted.values())
    for p in admitted.values():
        assert p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"

    apply(cluster, namespace, queued_gang("second", queue24, 2))
    status = wait_job(
        cluster,
        operator,
        namespace,
        "second",
        lambda s: s.get("phase") == "Queued" and "insufficient unused quota" in s.get("message", ""),
        "Queued with Kueue's words",
        timeout=60,
    )
    assert "startTime" not in status
    held = pods(cluster, namespace, "second")
    assert sorted(held) == [rank("second", 1, r) for r in range(2)]
    assert all(is_gated(p) for p in held.values()), "Kueue let one rank of a group in"
    assert all(not p["spec"].get("nodeName") for p in held.values())

    # The first finishes: its quota goes to the second, whose ranks are admitted together.
    cluster.drive_pod(namespace, rank("first", 1, 1), "Succeeded", wait=0)
    cluster.drive_pod(namespace, rank("first", 1, 0), "Succeeded", message=encode_result(SAMPLE_RESULT))
    wait_job(cluster, operator, namespace, "first", phase_is("Succeeded"), "Succeeded", timeout=60)
    status = wait_job(cluster, operator, namespace, "second", phase_is("Running"), "Running", timeout=60)
    assert status["ranks"]["running"] == 2
    assert not any(is_gated(p) for p in pods(cluster, namespace, "second").values())
    assert get_job(cluster, namespace, "second")["status"].get("failedAttempts", 0) == 0
