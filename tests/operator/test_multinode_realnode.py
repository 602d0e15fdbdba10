"""Same training, split differently, as real pods of the trainer image on the local cluster's
real node: a 2-node x 1-process attempt, a 1-node x 2-process attempt and a 1-process attempt
with the same global batch (24) and seed.

No operator runs here (the reconciler that starts an attempt's ranks together is another
change): the test creates what the operator's own rendering gives, ``render_attempt`` for the
rank pods and ``render_master_config`` for the ConfigMap that hands rank 0's pod IP to the other
ranks once rank 0 has one, under Pod Security "restricted". So this proves the rendering, the
image and the collectives: the two rank pods of the 2-node attempt have network namespaces of
their own and find each other only through pod IPs on the node's bridge (rank 0's rendezvous on
port 36543, gloo on ports the launcher picks), with hostNetwork off.

What is equal, and why (the same reasoning as tests/trainer/test_multinode.py, here through the
image): 2 x 1 and 1 x 2 run the same arithmetic in the same binaries on the same CPU (each rank
computes the same gradients on the same 12 images; all-reducing two values is one commutative
addition), asserted **exactly equal** (losses, accuracies, every weight). One process with the
full batch averages the same gradients in another order: asserted within **1e-6 on the
weights** (float32 rounding; the weights are O(0.1)) and **1e-5 on the losses** (the history
keeps 6 decimals), with ``freeze: fc-only`` so that BatchNorm uses its stored statistics.

Only rank 0 mounts the output volume and writes: the checkpoints, the best model, the export and
the result are its alone; rank 1's termination message stays empty on success.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest
from finetune_contract import EXIT_INTERRUPTED, PROGRESS_PREFIX, decode_result
from finetune_operator.config import OperatorConfig
from finetune_operator.pod import render_attempt, render_master_config

from localcluster import Cluster
from tests.operator.cluster_jobs import apply, get_job, job_manifest
from tests.trainer.ranks_kit import calibrated_weights
from tests.trainer.tiny_data import write_list_dataset

EPOCHS = 6
WEIGHT_TOLERANCE = 1e-6
LOSS_TOLERANCE = 1e-5
# name: (nodes, GPUs per node as the job asks, batch per process). The real node advertises
# 2 nvidia.com/gpu that its CPU image trains without: a GPU is one CPU process (gloo).
SPLITS = {"2 nodes x 1": (2, 1, 12), "1 node x 2": (1, 2, 12), "1 process": (1, 1, 24)}


def claim(name: str) -> dict[str, Any]:
    return {"persistentVolumeClaim": {"claimName": name}}


def _create(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj), namespace=namespace)


def _phase(cluster: Cluster, namespace: str, name: str) -> str:
    pod = cluster.get_pod(namespace, name) or {}
    return (pod.get("status") or {}).get("phase", "")


def make_job(
    cluster: Cluster, namespace: str, name: str, nodes: int, gpus: int, batch: int, **dataset: Any
) -> dict[str, Any]:
    """A FineTuneJob, for its attempts' pods to be owned by and their folder (no operator acts
    on it: suspended)."""
    manifest = job_manifest(
        name,
        claim("data"),
        model={"architecture": "ResNet18_vd", "pretrained": {"path": "pretrained.pdparams"}},
        dataset={"volume": claim("data"), "numClasses": 3, "imageSize": 32, **dataset},
        output={"volume": claim("output")},
        finetune={"freeze": "fc-only"},
        training={
            "epochs": EPOCHS,
            "batchSize": batch,
            "warmupEpochs": 1,
            "learningRate": 0.01,
            "seed": 7,
            "numWorkers": 0,
        },
        resources={"nodes": nodes, "gpus": gpus},
        template=cluster.real_node_pod_spec_extras(),
        runPolicy={"suspend": True},
    )
    apply(cluster, namespace, manifest)
    job = get_job(cluster, namespace, name)
    assert job is not None
    return job


def start_attempt(cluster: Cluster, namespace: str, job: dict[str, Any], attempt: int) -> list[str]:
    """Create ``attempt``'s pods as the operator renders them, and once rank 0 has an IP the
    master ConfigMap the other ranks wait for (what the reconciler does); returns the names."""
    pods = render_attempt(job, attempt, OperatorConfig())
    for pod in pods:
        _create(cluster, namespace, pod)  # refused here if it broke Pod Security "restricted"
    names = [p["metadata"]["name"] for p in pods]
    if len(pods) > 1:
        rank0 = cluster.wait_pod(
            namespace, names[0], lambda p: bool((p.get("status") or {}).get("podIP")), "an IP", timeout=120
        )
        _create(cluster, namespace, render_master_config(job, attempt, rank0))
    return names


def wait_attempt(
    cluster: Cluster, namespace: str, names: list[str], timeout: float = 900
) -> list[dict[str, Any]]:
    """Wait until every rank that still exists has ended; returns them (None for a deleted one)."""

    def ended() -> bool:
        phases = [_phase(cluster, namespace, n) for n in names]
        return all(p in ("Succeeded", "Failed", "") for p in phases)

    cluster.wait_for(f"{names} to end", ended, timeout=timeout)
    return [cluster.get_pod(namespace, n) for n in names]  # type: ignore[misc]


def explain(cluster: Cluster, namespace: str, names: list[str]) -> str:
    logs = {n: cluster.kubectl("logs", n, namespace=namespace, check=False).stdout for n in names}
    return "\n".join(f"--- {n}\n{log[-4000:]}" for n, log in logs.items())


def message(pod: dict[str, Any]) -> str:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")


def run_attempt(
    cluster: Cluster,
    namespace: str,
    output: Path,
    name: str,
    nodes: int,
    gpus: int,
    batch: int,
    **dataset: Any,
) -> dict[str, Any]:
    """A job's attempt 1, run to Succeeded; what the test needs to know about it."""
    job = make_job(cluster, namespace, name, nodes, gpus, batch, **dataset)
    started = time.monotonic()
    names = start_attempt(cluster, namespace, job, 1)
    got = wait_attempt(cluster, namespace, names)
    phases = [p["status"]["phase"] for p in got]
    assert phases == ["Succeeded"] * nodes, f"{name}: {phases}\n{explain(cluster, namespace, names)}"
    return {
        "pods": got,
        "folder": output / namespace / name / job["metadata"]["uid"],
        "seconds": time.monotonic() - started,
        "messages": [message(p) for p in got],
    }


def history(run: dict[str, Any]) -> list[tuple[float, float, float]]:
    state = json.loads((run["folder"] / "checkpoints" / f"epoch-{EPOCHS:04d}" / "state.json").read_text())
    return [(h["trainLoss"], h["valLoss"], h["top1"]) for h in state["history"]]


def weights(run: dict[str, Any]) -> dict[str, np.ndarray]:
    path = run["folder"] / "checkpoints" / f"epoch-{EPOCHS:04d}" / "model.pdparams"
    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


def weight_gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


@pytest.mark.slow
def test_same_training_split_differently_as_rank_pods_on_the_real_node(
    cluster: Cluster, namespace: str, crd_installed: str, tmp_path: Path
) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.load_images(["trainer"])
    data = cluster.create_node_pvc(namespace, "data")
    output = cluster.create_node_pvc(namespace, "output")
    write_list_dataset(data, classes=3, train_per_class=8)  # 24 training, 6 validation images
    calibrated_weights(data / "pretrained.pdparams", tmp_path / "pretraining-data", size=32)

    runs = {
        label: run_attempt(cluster, namespace, output, f"split-{nodes}x{gpus}", nodes, gpus, batch)
        for label, (nodes, gpus, batch) in SPLITS.items()
    }
    two_nodes, two_procs, one = (runs[k] for k in SPLITS)

    # The 2-node attempt: two pods, two IPs on the bridge, one world of 2 ranks.
    rank0, rank1 = two_nodes["pods"]
    ips = {rank0["status"]["podIP"], rank1["status"]["podIP"]}
    assert len(ips) == 2 and not rank0["spec"].get("hostNetwork")
    assert {p["spec"]["nodeName"] for p in two_nodes["pods"]} == {cluster.real_node}
    launch_logs = two_nodes["folder"] / "launch-logs" / "attempt-1-rank-0"
    rank_0_log = (launch_logs / "workerlog.0").read_text()
    assert "batch 12 x 2 process(es)" in rank_0_log, rank_0_log[-3000:]
    worker_logs = two_procs["folder"] / "launch-logs"
    assert "batch 12 x 2 process(es)" in (worker_logs / "workerlog.0").read_text()

    reference = history(two_nodes)
    assert len(reference) == EPOCHS
    assert reference[-1][0] < reference[0][0] / 2, f"the finetune did not learn: {reference}"
    assert history(two_procs) == reference  # exactly: the same arithmetic, placed differently
    assert weight_gap(two_nodes, two_procs) == 0.0
    for ours, theirs in zip(history(one), reference, strict=True):
        assert ours[0] == pytest.approx(theirs[0], abs=LOSS_TOLERANCE)
        assert ours[1] == pytest.approx(theirs[1], abs=LOSS_TOLERANCE)
        assert ours[2] == theirs[2]
    one_gap = weight_gap(two_nodes, one)
    assert one_gap <= WEIGHT_TOLERANCE
    loss_gap = max(abs(a[0] - b[0]) for a, b in zip(history(one), reference, strict=True))

    # Rank 0 alone writes: rank 1 has no output volume, says nothing on success, and the job's
    # folder holds one run's files.
    assert "output" not in {v["name"] for v in rank1["spec"]["volumes"]}
    assert rank1["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "") == ""
    done = decode_result(two_nodes["messages"][0])
    assert done.exitCode == 0 and done.epochsRun == EPOCHS and done.trainImages == 24  # the training set
    assert json.loads((two_nodes["folder"] / "result.json").read_text())["top1"] == done.top1
    assert (two_nodes["folder"] / "inference" / "labels.txt").is_file()
    assert (two_nodes["folder"] / "best_model" / "model.pdparams").is_file()
    print(
        f"\nsame training on the real node: 2x1 == 1x2 exactly; 1 process: weights within "
        f"{one_gap:.2g}, train loss within {loss_gap:.2g}; attempts took "
        + ", ".join(f"{k} {r['seconds']:.0f}s" for k, r in runs.items())
    )


def _wait_for_epoch(log: Path, epoch: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file():
            lines = [x for x in log.read_text().splitlines() if x.startswith(PROGRESS_PREFIX)]
            if any(json.loads(x[len(PROGRESS_PREFIX) :])["epoch"] >= epoch for x in lines):
                return
        time.sleep(0.2)
    raise AssertionError(f"rank 0 never finished epoch {epoch} ({log})")


@pytest.mark.slow
def test_rank_1_deleted_mid_run_and_the_next_attempt_resumes_every_rank_from_rank_0s_checkpoint(
    cluster: Cluster, namespace: str, crd_installed: str, tmp_path: Path
) -> None:
    """Rank 1's pod is deleted after epoch 1 (the kubelet SIGTERMs it): both ranks stop at the
    same step, rank 0 checkpoints it and exits 143 (rank 1 never had the output volume). Attempt
    2's two pods resume from that checkpoint, rank 1 through rank 0 over the process group, and
    end with the weights of an attempt of the same job that never stopped."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.load_images(["trainer"])
    data = cluster.create_node_pvc(namespace, "data")
    output = cluster.create_node_pvc(namespace, "output")
    # 180 training images (8 steps an epoch of 2 x 12), 120 validation images.
    write_list_dataset(data / "long", classes=3, train_per_class=60, val_per_class=40)
    calibrated_weights(data / "long" / "pretrained.pdparams", tmp_path / "pretraining-data", size=32)

    reference = run_attempt(cluster, namespace, output, "whole", 2, 1, 12, subPath="long")
    job = make_job(cluster, namespace, "stopped", 2, 1, 12, subPath="long")
    folder = output / namespace / "stopped" / job["metadata"]["uid"]
    first = start_attempt(cluster, namespace, job, 1)
    _wait_for_epoch(folder / "launch-logs" / "attempt-1-rank-0" / "workerlog.0", 1)
    cluster.kubectl("delete", "pod", first[1], "--wait=false", namespace=namespace)
    rank0, _ = wait_attempt(cluster, namespace, first, timeout=300)
    cluster.wait_for(f"{first[1]} gone", lambda: cluster.get_pod(namespace, first[1]) is None, timeout=120)
    terminated = rank0["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0, explain(cluster, namespace, first)
    stopped = decode_result(message(rank0))
    assert (stopped.exitCode, stopped.reason) == (EXIT_INTERRUPTED, "Interrupted"), stopped
    assert 1 <= stopped.epochsRun < EPOCHS, stopped

    second = start_attempt(cluster, namespace, job, 2)
    pods = wait_attempt(cluster, namespace, second)
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"] * 2, explain(cluster, namespace, second)
    done = decode_result(message(pods[0]))
    assert done.exitCode == 0 and done.epochsRun == EPOCHS
    assert done.resumedFromEpoch == stopped.epochsRun
    resumed_log = (folder / "launch-logs" / "attempt-2-rank-0" / "workerlog.0").read_text()
    assert "resuming from /output/" in resumed_log, resumed_log[-3000:]

    run = {"folder": folder}
    gap = weight_gap(run, reference)
    assert gap <= WEIGHT_TOLERANCE
    for epoch, (ours, theirs) in enumerate(zip(history(run), history(reference), strict=True), start=1):
        assert ours[1] == pytest.approx(theirs[1], abs=LOSS_TOLERANCE), f"epoch {epoch}"
        assert ours[2] == theirs[2]
    print(
        f"\nrank 1 deleted after epoch {stopped.epochsRun}: rank 0 exited {terminated['exitCode']} "
        f"({stopped.message}); attempt 2 resumed both ranks, final weights within {gap:.2g} of the "
        "attempt that never stopped"
    )
