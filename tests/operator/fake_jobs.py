"""A small FineTuneJob taken through its life on a kwok fake GPU node.

The trainer never runs: the test plays the pod's part with `cluster.drive_pod`, finishing it with
the result a trainer would write to its termination-message file (tests/contract/sample.py).
What is real: the API
server, the scheduler placing the GPU pod, the operator reacting to it and writing status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from finetune_contract import encode_result

from tests.contract.sample import SAMPLE_RESULT

FAKE_VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}


def job_manifest(name: str, *, gpus: int = 1) -> dict[str, Any]:
    """A small valid job. Its volumes are inline CSI volumes: nothing mounts them (the pod is
    fake), unlike claims they need no PersistentVolume binding, which costs up to the binder's 15 s
    resync and would blur the operator's own timings, and unlike hostPath folders the operator runs
    them without --allow-host-path and Pod Security "restricted" accepts them."""
    return {
        "apiVersion": "finetune.paddle.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "ResNet18_vd"},
            "dataset": {"volume": FAKE_VOLUME, "numClasses": 10},
            "training": {"epochs": 2, "warmupEpochs": 1, "batchSize": 8},
            "resources": {"gpus": gpus},
            "output": {"volume": FAKE_VOLUME},
            "runPolicy": {"backoffLimit": 0},
        },
    }


def create_job(cluster: Any, namespace: str, name: str) -> None:
    """Apply the job as a user would (with the admin's credentials, not the operator's)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job_manifest(name)), namespace=namespace)


def wait_for(what: str, check: Callable[[], Any], timeout: float, explain: Callable[[], str] = str) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` with `explain()`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{explain()}")
        time.sleep(0.5)


def get_json(cluster: Any, namespace: str, *what: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", *what, "-o", "json", namespace=namespace, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def job_status(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return (get_json(cluster, namespace, "finetunejob", name) or {}).get("status") or {}


def pod_phase(cluster: Any, namespace: str, pod: str) -> str:
    return ((get_json(cluster, namespace, "pod", pod) or {}).get("status") or {}).get("phase", "")


def run_to_success(
    cluster: Any, namespace: str, name: str, explain: Callable[[], str], timeout: float = 60
) -> dict:
    """Create the job, wait for its first pod to run on a fake GPU node, finish the pod with the
    trainer's result, and return the job's status once it is Succeeded."""
    create_job(cluster, namespace, name)
    pod = f"{name}-attempt-1"
    wait_for(
        f"pod {namespace}/{pod} Running",
        lambda: pod_phase(cluster, namespace, pod) == "Running",
        timeout,
        explain,
    )
    node = (get_json(cluster, namespace, "pod", pod) or {}).get("spec", {}).get("nodeName", "")
    assert node in cluster.gpu_nodes, f"pod {pod} ran on {node!r}, not a fake GPU node"
    cluster.drive_pod(namespace, pod, "Succeeded", message=encode_result(SAMPLE_RESULT))
    return wait_for(
        f"FineTuneJob {namespace}/{name} Succeeded",
        lambda: (s := job_status(cluster, namespace, name)).get("phase") == "Succeeded" and s,
        timeout,
        lambda: f"status: {json.dumps(job_status(cluster, namespace, name))}\n{explain()}",
    )
