"""What kwok plays in the local cluster: the fake nodes (GPU and CPU) and the pod annotations its
pod-drive Stage (kwok-stages.yaml) turns into a finished pod."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STAGES_FILE = HERE / "kwok-stages.yaml"
LOGS_CRD_FILE = HERE / "kwok-logs-crd.yaml"  # kwok's Logs and ClusterLogs: `kubectl logs` of fake pods

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_NODES = 4  # kwok-gpu-0 .. kwok-gpu-3; the benchmark asks for many more
CPU_NODES = ("kwok-cpu-0",)
GPUS_PER_NODE = 8
# Annotations the kwok pod-drive Stage reads.
DRIVE_PREFIX = "pfo.dev/drive-"


def gpu_node_names(count: int) -> list[str]:
    return [f"kwok-gpu-{i}" for i in range(count)]


def drive_annotations(
    phase: str = "Succeeded",
    exit_code: int = 0,
    message: str = "",
    reason: str = "",
    pod_reason: str = "",
    pod_message: str = "",
) -> dict[str, str]:
    """The pod annotations Cluster.drive_pod sets (for callers that patch many pods at once)."""
    if phase not in ("Succeeded", "Failed"):
        raise ValueError(f"drive_pod: phase must be Succeeded or Failed, not {phase!r}")
    if phase == "Succeeded" and exit_code != 0:
        raise ValueError("drive_pod: a Succeeded pod's exit code is 0")
    annotations = {
        DRIVE_PREFIX + "phase": phase,
        DRIVE_PREFIX + "exit-code": str(int(exit_code)),
        DRIVE_PREFIX + "reason": reason or ("Completed" if phase == "Succeeded" else "Error"),
        DRIVE_PREFIX + "message": message,
    }
    if pod_reason:
        annotations[DRIVE_PREFIX + "pod-reason"] = pod_reason
    if pod_message:
        annotations[DRIVE_PREFIX + "pod-message"] = pod_message
    return annotations


def fake_nodes_manifest(gpu_nodes: list[str]) -> dict[str, Any]:
    """A List of the fake nodes: `gpu_nodes` with GPUS_PER_NODE GPUs each, and CPU_NODES."""

    def node(name: str, gpus: int) -> dict[str, Any]:
        capacity = {"cpu": "32" if gpus else "16", "memory": "256Gi" if gpus else "64Gi", "pods": "110"}
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok"}  # fmt: skip
        if gpus:
            capacity[GPU_RESOURCE] = str(gpus)
            labels["nvidia.com/gpu.present"] = "true"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    items = [node(n, GPUS_PER_NODE) for n in gpu_nodes] + [node(n, 0) for n in CPU_NODES]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def append_log_lines(path: Path, lines: Iterable[str], at: float | None = None) -> None:
    """Append `lines` to a fake pod's log file in the CRI format kwok reads (time, stream, tag,
    content), stamped `at` (seconds since the epoch; default now) to the nanosecond, as a
    kubelet stamps them: `sinceSeconds` and `timestamps=true` reads then behave as on a node."""
    ns = time.time_ns() if at is None else int(at * 1e9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
    with path.open("a") as f:
        f.writelines(f"{stamp} stdout F {line}\n" for line in lines)
