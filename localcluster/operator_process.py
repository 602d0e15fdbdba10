"""Run the real operator (`python -m finetune_operator`) as a subprocess against the local
cluster, and small helpers to create FineTuneJobs and wait for their status."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from localcluster.cluster import Cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
# Short timings so every lifecycle fits in seconds.
FAST_FLAGS = (
    "--backoff-base", "1",
    "--backoff-max", "2",
    "--progress-poll-interval", "1",
    "--pending-timeout", "120",
    "--workers", "2",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """One operator process watching `namespaces`; its output goes to `log_path`."""

    def __init__(
        self,
        cluster: Cluster,
        namespaces: Sequence[str],
        log_path: Path,
        extra: Sequence[str] = (),
        kubeconfig: str | None = None,  # default: the admin's; e.g. a ServiceAccount token's
    ):
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.namespaces = list(namespaces)
        self.log_path = log_path
        self.extra = list(extra)
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        argv = [
            sys.executable, "-m", "finetune_operator",
            "--namespaces", ",".join(self.namespaces),
            "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
            *FAST_FLAGS, *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            log.write(f"==== start {self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as rsp:
                    if rsp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the operator's /healthz did not answer within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as rsp:
            return rsp.read().decode()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# ------------------------------------------------------------------------------------------
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
    operator: OperatorProcess,
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
