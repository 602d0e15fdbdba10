"""A multi-node FineTuneJob end to end on the real node: both ranks of a 2 x 1 job run the trainer
image on the one real node (it advertises two nvidia.com/gpu; the CPU trains), find each other
through rank 0's ConfigMap and pod IP over the node's bridge, and train one model together
(paddle.distributed.launch --nnodes 2). The setup (data, weights over HTTPS, the chart's
operator) is test_e2e.py's."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.operator.cluster_jobs import apply, events, wait_job
from tests.operator.test_e2e import Setup, e2e, weights  # noqa: F401  (fixtures)

PAIR = {"nodes": 2, "gpus": 1}


def _logs(e2e: Setup, pod: str) -> str:  # noqa: F811
    return e2e.cluster.kubectl("logs", pod, namespace=e2e.namespace, check=False).stdout


def _bound(pod: dict[str, Any]) -> bool:
    return bool(pod["spec"].get("nodeName"))


def _finished(status: dict[str, Any]) -> bool:
    return status.get("phase") in ("Succeeded", "Failed")


def test_a_two_node_job_runs_both_ranks_on_the_real_node_to_succeeded(e2e: Setup) -> None:  # noqa: F811
    cluster, namespace = e2e.cluster, e2e.namespace
    t0 = time.monotonic()
    training = {"epochs": 2, "batchSize": 16, "warmupEpochs": 0, "numWorkers": 0}
    apply(cluster, namespace, e2e.job("pair", training=training, resources=PAIR))
    rank0, rank1 = "pair-attempt-1-rank-0", "pair-attempt-1-rank-1"
    # Where the ranks run, read while both exist: once rank 0 succeeds the job has ended, and a
    # rank still running then is deleted (pods of an ended attempt must not run).
    pods = {
        name: cluster.wait_pod(namespace, name, _bound, "bound to a node", 300) for name in (rank0, rank1)
    }
    nodes = {name: pod["spec"]["nodeName"] for name, pod in pods.items()}
    status = wait_job(cluster, e2e.operator, namespace, "pair", _finished, "finished", timeout=480)
    logs = f"rank 0:\n{_logs(e2e, rank0)[-3000:]}\nrank 1:\n{_logs(e2e, rank1)[-3000:]}"
    detail = f"{json.dumps(status, indent=1)}\n{logs}"
    assert status["phase"] == "Succeeded", detail
    assert status["attempts"] == 1 and status.get("failedAttempts", 0) == 0
    assert 0.0 <= status["metrics"]["top1"] <= 1.0 and status["metrics"]["epochsRun"] == 2
    assert status["ranks"]["attempt"] == 1 and status["ranks"]["master"].endswith(":36543")
    assert nodes == {rank0: cluster.real_node, rank1: cluster.real_node}, nodes
    took, top1 = time.monotonic() - t0, status["metrics"]["top1"]
    print(f"\n2 ranks on the real node: Succeeded in {took:.1f}s, top1 {top1:.4f}")


def test_killing_rank_1_restarts_both_ranks_which_resume_and_succeed(e2e: Setup) -> None:  # noqa: F811
    cluster, namespace = e2e.cluster, e2e.namespace
    training = {"epochs": 3, "batchSize": 16, "warmupEpochs": 0, "numWorkers": 0}
    apply(
        cluster, namespace, e2e.job("kill", training=training, resources=PAIR, runPolicy={"backoffLimit": 2})
    )
    wait_job(
        cluster, e2e.operator, namespace, "kill",
        lambda s: (s.get("progress") or {}).get("epoch", 0) >= 1 or _finished(s), "past epoch 1", timeout=420,
    )  # fmt: skip
    cluster.kubectl("delete", "pod", "kill-attempt-1-rank-1", "--grace-period=0", "--force", "--wait=false",
                    namespace=namespace)  # fmt: skip
    status = wait_job(
        cluster,
        e2e.operator,
        namespace,
        "kill",
        lambda s: s.get("attempts") == 2,
        "on attempt 2",
        timeout=180,
    )
    assert status["failedAttempts"] == 1
    status = wait_job(cluster, e2e.operator, namespace, "kill", _finished, "finished", timeout=480)
    log0 = _logs(e2e, "kill-attempt-2-rank-0")
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{log0[-3000:]}"
    assert status["attempts"] == 2 and status["failedAttempts"] == 1, "the failure was counted once"
    assert "resuming from" in log0, log0[-3000:]
    assert cluster.get_pod(namespace, "kill-attempt-1-rank-0") is None, "attempt 1's rank 0 was not deleted"
    reasons = [r for _, r, _ in events(cluster, namespace, "kill")]
    assert reasons.count("Retrying") == 1, reasons
