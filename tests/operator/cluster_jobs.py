"""FineTuneJobs run by the real operator on the local cluster: a manifest, applying it, reading
its status, pods and events, and waiting for a phase (the error shows the operator's log)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from localcluster import Cluster


def job_manifest(name: str, volume: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A FineTuneJob using the volume source `volume` for data and output; `spec` keys replace
    whole sections (runPolicy, resources, template, ...)."""
    body: dict[str, Any] = {
        "model": {"architecture": "ResNet18_vd", "pretrained": {"name": "ResNet18_vd"}},
        "dataset": {
            "volume": volume,
            "numClasses": 10,
            "imageSize": 32,
        },
        "training": {"epochs": 4, "batchSize": 8, "warmupEpochs": 1},
        "resources": {"gpus": 1},
        "output": {"volume": volume},
        "runPolicy": {"backoffLimit": 2},
    }
    body.update(spec)
    return {
        "apiVersion": "finetune.paddle.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": body,
    }


def apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), namespace=namespace)


def get_job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "ftj", name, "-o", "json", namespace=namespace, check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def pod_names(cluster: Cluster, namespace: str, job: str) -> list[str]:
    out = cluster.kubectl(
        "get", "pods", "-l", f"finetune.paddle.dev/job-name={job}", "-o", "json", namespace=namespace
    ).stdout
    return sorted(p["metadata"]["name"] for p in json.loads(out)["items"])


def wait_job(
    cluster: Cluster,
    operator: Any,  # an OperatorProcess or a ChartOperator: anything with log_tail()
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll the job until check(status) holds; returns the status. On timeout the error shows
    the status and the operator's log."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = get_job(cluster, namespace, name)
        status = (job or {}).get("status") or {}
        if check(status):
            return status
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout}s waiting for ftj {namespace}/{name} to be {what}; status:\n"
        f"{json.dumps(status, indent=1)[:3000]}\noperator log:\n{operator.log_tail()}"
    )


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") in phases


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about ftj `name`, oldest first."""
    out = cluster.kubectl(
        "get", "events", "--field-selector", f"involvedObject.kind=FineTuneJob,involvedObject.name={name}",
        "-o", "json", namespace=namespace,
    ).stdout  # fmt: skip
    items = sorted(
        json.loads(out)["items"], key=lambda e: (e.get("lastTimestamp") or "", e["metadata"]["name"])
    )
    return [(e["type"], e["reason"], e["message"]) for e in items]


def follow_log(
    cluster: Cluster, namespace: str, pod: str, wanted: Callable[[str], bool], timeout: float
) -> str:
    """Follow the pod's log (`kubectl logs -f`) until a line satisfies `wanted` and return it:
    the moment the trainer prints it, give or take the kubelet's log latency (the status shows
    progress at the operator's own pace, which can be most of an epoch later)."""
    cmd = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, "--namespace", namespace,
           "logs", "--follow", pod]  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), proc.kill)
        timer.start()
        try:
            for line in proc.stdout or ():
                if wanted(line):
                    return line
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()
        time.sleep(0.5)  # the container has not started yet, or the stream ended
    raise AssertionError(f"no wanted line in the log of {namespace}/{pod} within {timeout:.0f}s")
