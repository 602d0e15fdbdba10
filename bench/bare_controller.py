"""The physical limit for the operator benchmark: the least any controller of FineTuneJobs has to
send, sent as fast as the API server takes it.

* **Bare controller** (`BareController`): fed by the benchmark's own watch of the same N
  FineTuneJobs (created the same way as for the operator, 16 client threads), it POSTs each
  job's pod the moment the job's ADDED event arrives, and PATCHes the job's status to Succeeded
  (the operator's own merge patch for that moment, built by the operator's own `job_status`
  functions) the moment the pod's Succeeded event arrives: 16 threads, no reads, no Events, no
  intermediate statuses, no decisions. Same input, same watch delay, same API server as the
  operator: what is left between the two is the operator's own cost.
* **Bare create** (`bare_create`): N pods of the same template POSTed from 16 threads with no
  jobs at all, timed until the last pod's watch event: the API server's pod-create throughput
  alone (no job creations competing), shown for context. The round waits until the scheduler
  has bound these pods before it deletes them: deleted while the scheduler still worked through
  them, they held its queue (and the nodes' GPUs in its cache) into the next side's creation
  window, and that side's pods waited ~30 s for the unschedulable queue's flush, so its window
  had no binding traffic while the operator's had (2026-12-04).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune_operator.api import FINISHED, GROUP, LABEL_JOB, PLURAL, VERSION, Phase, Reason
from finetune_operator.config import OperatorConfig
from finetune_operator.job_status import (
    StatusUpdate,
    finetune_from_result,
    metrics_from_result,
    now_iso,
    progress_at_success,
    success_message,
)
from finetune_operator.pod import render_pod
from finetune_operator.pod_state import observe_pod

from bench.kube_watch import Watcher, parallel
from localcluster import KubeError, KubeRest

FTJ = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
PODS = "/api/v1/namespaces/{ns}/pods"


def running_status(job: dict[str, Any], pod: str, stamp: str) -> dict[str, Any]:
    """The status the operator shows while the pod runs (what its Succeeded patch is a diff to)."""
    update = StatusUpdate()
    update.fields.update(attempts=1, podName=pod, startTime=stamp)
    update.transition({}, Phase.RUNNING, Reason.RUNNING, f"attempt 1: pod {pod} is running", stamp, 1)
    return {k: v for k, v in update.fields.items() if v is not None}


def success_patch(job: dict[str, Any], pod: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The merge patch the operator sends when the pod succeeded (as `Reconciler._succeed` builds
    it), as a diff to the Running status the job would show by then."""
    stamp = now_iso(now or datetime.now(timezone.utc))
    old = (job.get("status") or {}) or running_status(job, pod["metadata"]["name"], stamp)
    outcome = observe_pod(pod)
    result = outcome.result
    update = StatusUpdate()
    if result is not None:
        update.fields["metrics"] = metrics_from_result(result)
        finetune = finetune_from_result(result)
        if finetune:
            update.fields["finetune"] = finetune
        progress = progress_at_success(result, old.get("progress"), stamp)
        if progress is not None:
            update.fields["progress"] = progress
    update.fields["completionTime"] = stamp
    update.fields["nextAttemptTime"] = None
    message = success_message(result, outcome.message) if result else outcome.message
    update.transition(
        old, Phase.SUCCEEDED, Reason.COMPLETED, message, stamp, job["metadata"].get("generation")
    )
    return update.changes(old)


def bare_pod(job: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The pod the operator renders for the job's first attempt."""
    return render_pod(job, 1, config)


class BareController:
    """Creates each job's pod on its first watch event and patches its status on its pod's
    Succeeded event, from `threads` threads. Call `on_job` / `on_pod` from watch callbacks."""

    def __init__(self, kubeconfig: Path, namespace: str, config: OperatorConfig, threads: int = 16) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.config = config
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="bare")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._created: set[str] = set()
        self._finished: set[str] = set()
        self._futures: list[Future[None]] = []
        self.errors: list[str] = []
        self.requests = {"create pod": 0, "patch job status": 0}

    def _rest(self) -> KubeRest:
        if not hasattr(self._local, "rest"):
            self._local.rest = KubeRest(self.kubeconfig)
        return self._local.rest

    def _submit(self, fn: Any, *args: Any) -> None:
        self._futures.append(self._pool.submit(self._guard, fn, *args))

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # reported with the phase's results
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def on_job(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        name = obj["metadata"]["name"]
        with self._lock:
            self._jobs[name] = obj
            if name in self._created or (obj.get("status") or {}).get("phase") in FINISHED:
                return
            self._created.add(name)
        self._submit(self._create, obj)

    def on_pod(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED" or (obj.get("status") or {}).get("phase") != "Succeeded":
            return
        job = (obj["metadata"].get("labels") or {}).get(LABEL_JOB)
        with self._lock:
            if not job or job in self._finished or job not in self._jobs:
                return
            self._finished.add(job)
            seen = self._jobs[job]
        self._submit(self._succeed, seen, obj)

    def _create(self, job: dict[str, Any]) -> None:
        try:
            self._rest().create(PODS.format(ns=self.namespace), bare_pod(job, self.config))
        except KubeError as exc:
            if exc.status != 409:
                raise
        with self._lock:
            self.requests["create pod"] += 1

    def _succeed(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        patch = {"status": success_patch(job, pod)}
        self._rest().patch(f"{FTJ.format(ns=self.namespace)}/{name}/status", patch, kind="merge-patch")
        with self._lock:
            self.requests["patch job status"] += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def bare_create(
    kubeconfig: Path, namespace: str, pods: list[dict[str, Any]], scheduled_timeout: float = 0.0
) -> dict[str, Any]:
    """POST `pods` (the operator's template) from 16 threads; seconds from the first POST until
    the last pod's watch event, and the mean rate. `scheduled_timeout` > 0: then wait (that long
    at most) until the scheduler has bound every pod, so that the next side starts with a
    scheduler that has nothing left to do (see `allPodsScheduledSeconds`)."""
    n = len(pods)
    arrivals: dict[str, float] = {}
    bound: dict[str, float] = {}
    lock = threading.Lock()

    def seen(at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            with lock:
                arrivals.setdefault(obj["metadata"]["name"], at)
                if (obj.get("spec") or {}).get("nodeName"):
                    bound.setdefault(obj["metadata"]["name"], at)

    watcher = Watcher(kubeconfig, PODS.format(ns=namespace), seen).start()
    try:
        t0 = time.monotonic()
        parallel(lambda r, body: r.create(PODS.format(ns=namespace), body), pods, kubeconfig)
        t_posted = time.monotonic()
        deadline = t_posted + 60
        while len(arrivals) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        seconds = max(arrivals.values(), default=t_posted) - t0
        out: dict[str, Any] = {
            "n": n,
            "postSeconds": round(t_posted - t0, 3),
            "allPodsExistSeconds": round(seconds, 3),
            "podsPerSecond": round(n / seconds, 1) if seconds > 0 else None,
            "seen": len(arrivals),
        }
        if scheduled_timeout > 0:
            deadline = time.monotonic() + scheduled_timeout
            while len(bound) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            out["scheduled"] = len(bound)
            out["allPodsScheduledSeconds"] = round(max(bound.values(), default=t0) - t0, 3)
        return out
    finally:
        watcher.stop()


def orphan_pod(job: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The operator's pod for `job` without its owner reference (no job exists for it, and the
    garbage collector removes pods whose owner is gone)."""
    body = bare_pod(job, config)
    del body["metadata"]["ownerReferences"]
    return body
