"""Benchmark: the operator at scale against the physical limit and Kubernetes' own Job
controller, on one local control plane with many fake (kwok) GPU nodes.

For each N (--jobs), in the same cluster and run, one side after the other:
* limit: the same N FineTuneJobs, handled by a bare controller (bench/bare_controller.py): on
  each job's first watch event it POSTs the pod the operator would render, on the pod's
  Succeeded event it PATCHes the operator's own Succeeded status patch; 16 threads, nothing
  else. Beside it, `bareCreate`: the N pods alone POSTed from 16 threads (no jobs competing).
* ours: N FineTuneJobs created at once (16 client threads), watched by the real operator
  (`python -m finetune_operator`, production defaults: --workers 16, --progress-poll-interval 30).
* before (with --baseline-ref): the same with the operator of that git commit (today's, for a
  before/after in one run).
* native / nativeFast: N batch/v1 Jobs with the same pod template, handled by
  kube-controller-manager's Job controller with its default client limits (--kube-api-qps 20,
  --kube-api-burst 30) and with production ones (200 / 300; the controller manager is
  restarted between the two, bench/controller_manager.py).
Per job: creation -> pod created, creation -> pod scheduled; the time until all pods exist.
Then every pod is finished at once (localcluster's kwok drive annotations, with the trainer's
result as termination message) and we time until each job shows Succeeded with its metrics
(native: the Job's Complete condition).

With --running-jobs R (the steady state): R jobs run and finish, R more run (2R jobs present)
and print a trainer's progress line every --epoch-seconds (bench/progress_feed.py: kwok serves
the lines as their logs); a window with nothing else going on measures the operator's requests
per running job per minute, its RSS and CPU, and which epochs reached the jobs' statuses, how
late; then --burst-jobs B new jobs arrive and we time their pods, against the bare controller's
burst with R pods running.

Times are arrivals of watch events in this process (monotonic clock, sub-millisecond) from the
job's ADDED event; the API's own timestamps are reported alongside for the scheduled time. The
operator's footprint comes from /proc/<pid>, the API requests from the API server's
apiserver_request_total before and after each phase, attributed by (verb, resource). The load
average is recorded at the start and end of every phase. bench/goals.py turns the report into
issue 12's goals (pass / fail), bench/plots.py into PNGs.

    .venv/bin/python bench/operator_scale.py [--jobs 100,1000] [--nodes 128] [--idle-seconds 30]
        [--sides limit,ours,native,nativeFast,before] [--baseline-ref COMMIT]
        [--running-jobs 5000 --burst-jobs 1000 --epoch-seconds 120 --steady-idle-seconds 360]

Writes bench/results/operator_scale.json and the PNGs, and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "contract", ROOT / "operator", ROOT / "trainer"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from finetune_contract import TrainerResult, encode_result  # noqa: E402
from finetune_operator.api import GROUP, LABEL_JOB, LABEL_MANAGED_BY, PLURAL, VERSION  # noqa: E402
from finetune_operator.config import OperatorConfig  # noqa: E402
from finetune_operator.pod import pod_name, render_pod  # noqa: E402

import localcluster  # noqa: E402
from bench import controller_manager, goals, plots  # noqa: E402
from bench.bare_controller import BareController, bare_create, orphan_pod  # noqa: E402
from bench.kube_watch import SECONDS, Watcher, count_delta, parallel, request_counts  # noqa: E402
from bench.proc_sampler import CoreShares, Sampler, cpu_model, wait_quiet  # noqa: E402
from bench.progress_feed import ProgressFeed, Pusher  # noqa: E402
from localcluster import GPUS_PER_NODE, Cluster, KubeError, KubeRest, OperatorProcess, drive_annotations  # noqa: E402

FTJ = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
BATCH_JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
PODS = "/api/v1/namespaces/{ns}/pods"
NATIVE_JOB_LABEL = "batch.kubernetes.io/job-name"
SIDES = ("limit", "ours", "before", "native", "nativeFast")
OPERATOR_SIDES = ("ours", "before")
SIDE_LABELS = {
    "limit": "limit (bare controller)",
    "ours": "ours",
    "before": "before (baseline commit)",
    "native": "Job controller, 20 qps",
    "nativeFast": "Job controller, 200 qps",
}

# Requests only the operator makes while its phase runs (the benchmark's own are subtracted or
# of other verbs; the scheduler posts events.k8s.io Events, kwok patches pods/status). Watches
# are not counted: they are long-lived streams (the operator's resume every 5 minutes, the
# benchmark's own every minute).
OURS_REQUESTS = {
    ("GET", GROUP, PLURAL, ""): "get job",
    ("LIST", GROUP, PLURAL, ""): "list jobs",
    ("PATCH", GROUP, PLURAL, "status"): "patch job status",
    ("PUT", GROUP, PLURAL, "status"): "update job status",
    ("POST", "", "pods", ""): "create pod",
    ("GET", "", "pods", ""): "get pod",
    ("LIST", "", "pods", ""): "list pods",
    ("CONNECT", "", "pods", "log"): "read pod log",  # the API server counts log reads as CONNECT
    ("DELETE", "", "pods", ""): "delete pod",
    ("POST", "", "events", ""): "create event",
    ("POST", "authentication.k8s.io", "tokenreviews", ""): "token review",
    ("POST", "authorization.k8s.io", "selfsubjectaccessreviews", ""): "access review",
}
# The bare controller's: exactly these two.
LIMIT_REQUESTS = {
    ("POST", "", "pods", ""): "create pod",
    ("PATCH", GROUP, PLURAL, "status"): "patch job status",
}
# The Job controller's in its phase ("patch pod": removing its tracking finalizer; the
# benchmark's own N drive patches are subtracted).
NATIVE_REQUESTS = {
    ("POST", "", "pods", ""): "create pod",
    ("PUT", "batch", "jobs", "status"): "update job status",
    ("PATCH", "batch", "jobs", "status"): "patch job status",
    ("PATCH", "", "pods", ""): "patch pod",
    ("POST", "", "events", ""): "create event",
    ("DELETE", "", "pods", ""): "delete pod",
}


# A side starts once the machine keeps fewer cores than this busy (0: at once); --quiet-cores.
QUIET = {"cores": 0.0}


def quiet_start() -> dict[str, float] | None:
    """Wait for a quiet machine before a side (None: not asked to)."""
    return wait_quiet(QUIET["cores"]) if QUIET["cores"] > 0 else None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------ recording
@dataclass
class Track:
    """Arrival times (monotonic) of the moments that matter for one job."""

    created: float | None = None
    pod_created: float | None = None
    pod_scheduled: float | None = None
    pod_running: float | None = None
    pod_succeeded: float | None = None
    done: float | None = None
    running: float | None = None  # the job's status says Running (or already Succeeded)
    # server timestamps (1 s granularity), seconds since the epoch
    created_ts: float | None = None
    scheduled_ts: float | None = None


@dataclass
class Recorder:
    """Turns watch events of jobs and their pods into per-job Tracks."""

    pod_job_label: str
    job_done: Callable[[dict[str, Any]], bool]
    only: frozenset[str] | None = None  # the jobs of this phase (others in the namespace: ignored)
    tracks: dict[str, Track] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, name: str) -> Track:
        return self.tracks.setdefault(name, Track())

    def on_job(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED" or (self.only is not None and obj["metadata"]["name"] not in self.only):
            return
        with self.lock:
            t = self.track(obj["metadata"]["name"])
            if t.created is None:
                t.created = at
                t.created_ts = _epoch(obj["metadata"].get("creationTimestamp"))
            if t.done is None and self.job_done(obj):
                t.done = at
            phase = (obj.get("status") or {}).get("phase")
            if t.running is None and phase in ("Running", "Succeeded"):
                t.running = at

    def on_pod(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        job = (obj["metadata"].get("labels") or {}).get(self.pod_job_label)
        if not job or (self.only is not None and job not in self.only):
            return
        status = obj.get("status") or {}
        with self.lock:
            t = self.track(job)
            if t.pod_created is None:
                t.pod_created = at
            if t.pod_scheduled is None and (obj.get("spec") or {}).get("nodeName"):
                t.pod_scheduled = at
                cond = next((c for c in status.get("conditions") or [] if c["type"] == "PodScheduled"), {})
                t.scheduled_ts = _epoch(cond.get("lastTransitionTime"))
            if t.pod_running is None and status.get("phase") == "Running":
                t.pod_running = at
            if t.pod_succeeded is None and status.get("phase") == "Succeeded":
                t.pod_succeeded = at

    def count(self, attr: str) -> int:
        with self.lock:
            return sum(1 for t in self.tracks.values() if getattr(t, attr) is not None)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def ftj_done(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == "Succeeded" and "top1" in (status.get("metrics") or {})


def native_done(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:  # nearest rank
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))], 3)

    return {
        "n": len(ordered),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": round(ordered[-1], 3),
    }


def samples(values: list[float]) -> list[float]:
    """The sorted values, in milliseconds' precision, for the plots."""
    return [round(v, 3) for v in sorted(values)]


def intervals(tracks: dict[str, Track], start: str, end: str) -> list[float]:
    out = []
    for t in tracks.values():
        a, b = getattr(t, start), getattr(t, end)
        if a is not None and b is not None:
            out.append(b - a)
    return out


def pace(tracks: dict[str, Track]) -> dict[str, float]:
    """Whether pod creation kept pace with job creation: jobs per second, pods per second while
    jobs still arrived, and the median job created -> pod created of the first and of the last
    tenth of the jobs (in order of creation). A last tenth far behind the first is a backlog
    that grew through the burst: its p99 is then the backlog's size, not a reaction time."""
    pairs = sorted(
        (t.created, t.pod_created)
        for t in tracks.values()
        if t.created is not None and t.pod_created is not None
    )
    if len(pairs) < 10:
        return {}
    first_job, last_job = pairs[0][0], pairs[-1][0]
    span = last_job - first_job
    if span <= 0:
        return {}
    tenth = len(pairs) // 10

    def median_lag(part: list[tuple[float, float]]) -> float:
        lags = sorted(pod - job for job, pod in part)
        return round(lags[len(lags) // 2], 3)

    return {
        "jobsPerSecond": round(len(pairs) / span, 1),
        "podsPerSecond": round(sum(1 for _, pod in pairs if pod <= last_job) / span, 1),
        "lagFirstTenthP50": median_lag(pairs[:tenth]),
        "lagLastTenthP50": median_lag(pairs[-tenth:]),
    }


def cluster_pids(cluster: Cluster) -> dict[str, int]:
    """The control plane's processes (as recorded now: the controller manager may have been
    restarted with other flags) and this benchmark's own process."""
    state = json.loads((cluster.state_dir / "state.json").read_text())
    pids = {p["name"]: p["pid"] for p in state["processes"]}
    pids["benchmark"] = os.getpid()
    return pids


TIMED_OUT: list[str] = []  # the waits that gave up, reported in the JSON


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    watchers: list[Watcher],
    bare: BareController | None = None,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in watchers:
            if w.error is not None:
                raise RuntimeError(f"watch of {w.path} failed: {w.error!r}")
        if bare is not None and bare.errors:
            raise RuntimeError(f"the bare controller failed: {bare.errors[0]}")
        if check():
            return True
        time.sleep(0.05)
    print(f"  !! timed out after {timeout:.0f}s waiting for {what}", file=sys.stderr)
    TIMED_OUT.append(what)
    return False


# ------------------------------------------------------------------------------ the manifests
# What the trainer would report for job_manifest's 2-epoch job; the pods on fake nodes finish
# with it as termination message. (The tests share tests/contract/sample.py; bench/ never
# imports tests/, so it keeps this one of its own.)
RESULT = TrainerResult(
    exitCode=0,
    reason="Completed",
    top1=0.8125,
    top5=0.96875,
    bestEpoch=2,
    epochsRun=2,
    epochs=2,
    durationSeconds=42.0,
)


FAKE_VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}


def job_manifest(name: str, *, gpus: int = 1) -> dict[str, Any]:
    """A small valid FineTuneJob. Its volumes are inline CSI volumes: nothing mounts them (the pod
    is fake), unlike claims they need no PersistentVolume binding, which costs up to the binder's
    15 s resync and would blur the operator's own timings, and unlike hostPath folders the
    operator runs them without --allow-host-path and Pod Security "restricted" accepts them."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
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


def native_job(name: str, gpus: int) -> dict[str, Any]:
    """A batch/v1 Job whose pod template is exactly what the operator renders for the same
    FineTuneJob (its own labels aside)."""
    ftj = job_manifest(name, gpus=gpus)
    ftj["metadata"].update(namespace="native", uid="00000000-0000-0000-0000-000000000000")
    pod = render_pod(ftj, 1, OperatorConfig())
    labels = {k: v for k, v in pod["metadata"]["labels"].items() if k not in (LABEL_JOB, LABEL_MANAGED_BY)}
    labels.pop("finetune.paddle.dev/attempt", None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "template": {"metadata": {"labels": labels}, "spec": pod["spec"]},
        },
    }


# ------------------------------------------------------------------------------ one phase
@dataclass
class Phase:
    """One side at one N."""

    kind: str  # one of SIDES
    n: int
    gpus: int
    namespace: str
    first: int = 0  # the first job's number (the steady state adds jobs to a namespace)

    @property
    def native(self) -> bool:
        return self.kind in ("native", "nativeFast")

    @property
    def jobs_path(self) -> str:
        return (BATCH_JOBS if self.native else FTJ).format(ns=self.namespace)

    @property
    def names(self) -> list[str]:
        return [f"job-{i:05d}" for i in range(self.first, self.first + self.n)]

    def manifest(self, name: str) -> dict[str, Any]:
        return native_job(name, self.gpus) if self.native else job_manifest(name, gpus=self.gpus)

    def recorder(self) -> Recorder:
        only = frozenset(self.names) if self.first else None
        if self.native:
            return Recorder(NATIVE_JOB_LABEL, native_done, only)
        return Recorder(LABEL_JOB, ftj_done, only)

    @property
    def requests(self) -> dict[tuple[str, str, str, str], str]:
        if self.native:
            return NATIVE_REQUESTS
        return LIMIT_REQUESTS if self.kind == "limit" else OURS_REQUESTS


def run_phase(
    cluster: Cluster,
    phase: Phase,
    sampler: Sampler | None,
    idle_seconds: float,
    finish: bool = True,
    bare: BareController | None = None,
) -> dict[str, Any]:
    """Create the phase's N jobs at once, time their pods; then (finish) drive every pod to
    Succeeded and time the jobs. `bare`: the bare controller that handles them (the limit)."""
    kubeconfig = Path(cluster.kubeconfig)
    rest = KubeRest(kubeconfig)
    rec = phase.recorder()

    def on_job(at: float, kind: str, obj: dict[str, Any]) -> None:
        rec.on_job(at, kind, obj)
        if bare is not None:
            bare.on_job(at, kind, obj)

    def on_pod(at: float, kind: str, obj: dict[str, Any]) -> None:
        rec.on_pod(at, kind, obj)
        if bare is not None:
            bare.on_pod(at, kind, obj)

    watchers = [
        Watcher(kubeconfig, phase.jobs_path, on_job).start(),
        Watcher(kubeconfig, PODS.format(ns=phase.namespace), on_pod).start(),
    ]
    n, names = phase.n, phase.names
    label = f"{phase.kind} N={n} in {phase.namespace}"
    quiet = quiet_start()
    result: dict[str, Any] = {
        "side": phase.kind,
        "n": n,
        "gpusPerJob": phase.gpus,
        "namespace": phase.namespace,
        "load": {"start": load_average()},
    }
    if quiet is not None:
        result["quiet"] = quiet
    budget = 120 + n * 0.5  # generous: the native controller creates pods at about 20 requests/s

    def left(since: float) -> float:  # one budget for all the waits of a stage
        return max(1.0, since + budget - time.monotonic())

    def wait(what: str, check: Callable[[], bool], since: float) -> bool:
        return wait_until(f"{label}: {what}", check, left(since), watchers, bare)

    try:
        before = request_counts(rest)
        window = sampler.window() if sampler else None
        pids = cluster_pids(cluster)
        if sampler:
            pids["operator"] = sampler.pid
        shares = CoreShares(pids)
        t0 = time.monotonic()
        parallel(lambda r, name: r.create(phase.jobs_path, phase.manifest(name)), names, kubeconfig)
        t_posted = time.monotonic()
        print(f"  {label}: {n} created in {t_posted - t0:.1f}s", file=sys.stderr)
        wait("every pod created", lambda: rec.count("pod_created") >= n, t0)
        creation_cores = shares.close()
        t_all_pods = max((t.pod_created for t in rec.tracks.values() if t.pod_created), default=t0)
        wait("every pod scheduled", lambda: rec.count("pod_scheduled") >= n, t0)
        wait("every pod running", lambda: rec.count("pod_running") >= n, t0)
        if phase.kind in OPERATOR_SIDES:  # the operator has seen them run: its burst is over
            wait("every job Running", lambda: rec.count("running") >= n, t0)
        burst_counts = count_delta(before, request_counts(rest))
        created = intervals(rec.tracks, "created", "pod_created")
        result["burst"] = {
            "createSeconds": round(t_posted - t0, 3),
            "allPodsExistSeconds": round(t_all_pods - t0, 3),
            "podCreated": percentiles(created),
            "podScheduled": percentiles(intervals(rec.tracks, "created", "pod_scheduled")),
            "podScheduledServerTimestamps": percentiles(
                [
                    t.scheduled_ts - t.created_ts
                    for t in rec.tracks.values()
                    if t.scheduled_ts and t.created_ts
                ]
            ),
            "requests": _requests(burst_counts, phase, n, drives=0),
            "pace": pace(rec.tracks),
            "creationCores": creation_cores,
        }
        if phase.kind in OPERATOR_SIDES:  # how late `kubectl get ftj` shows a pod's start
            result["burst"]["podRunningToJobRunning"] = percentiles(
                intervals(rec.tracks, "pod_running", "running")
            )
        result["samples"] = {"podCreated": samples(created)}
        if sampler and window:
            result["burst"]["operator"] = sampler.close(window)
        if sampler and idle_seconds > 0:
            result["idleRunning"] = _idle(rest, sampler, phase, idle_seconds, running=n)
        if not finish:
            return result

        # ---- status propagation: every pod finishes at once
        message = encode_result(RESULT)
        patch = {"metadata": {"annotations": drive_annotations("Succeeded", 0, message)}}
        pods_path = PODS.format(ns=phase.namespace)
        if phase.native:  # the Job controller names its pods itself
            pods = [p["metadata"]["name"] for p in rest.get(pods_path)["items"]]
        else:
            pods = [pod_name(name, 1) for name in names]
        before = request_counts(rest)
        window = sampler.window() if sampler else None
        t_drive = time.monotonic()
        parallel(lambda r, pod: r.patch(f"{pods_path}/{pod}", patch, kind="merge-patch"), pods, kubeconfig)
        t_driven = time.monotonic()
        wait("every job done", lambda: rec.count("done") >= n, t_drive)
        t_all_done = max((t.done for t in rec.tracks.values() if t.done), default=t_drive)
        done = intervals(rec.tracks, "pod_succeeded", "done")
        result["propagation"] = {
            "driveSeconds": round(t_driven - t_drive, 3),
            "podSucceededToJobDone": percentiles(done),
            "allDoneAfterDriveSeconds": round(t_all_done - t_drive, 3),
            "done": rec.count("done"),
            "requests": _requests(count_delta(before, request_counts(rest)), phase, n, drives=len(pods)),
        }
        result["samples"]["propagation"] = samples(done)
        if sampler and window:
            result["propagation"]["operator"] = sampler.close(window)
        if sampler and idle_seconds > 0:
            result["idleFinished"] = _idle(rest, sampler, phase, idle_seconds, running=0)
        return result
    finally:
        for w in watchers:
            w.stop()
        if bare is not None:
            bare.close()
            result["bare"] = {"requests": dict(bare.requests), "errors": bare.errors[:5]}
        result["load"]["end"] = load_average()


def _requests(delta: dict[Any, float], phase: Phase, n: int, drives: int) -> dict[str, Any]:
    wanted = phase.requests
    by_kind: dict[str, float] = {}
    for key, what in wanted.items():
        value = delta.get(key, 0.0)
        if key == ("PATCH", "", "pods", ""):
            value -= drives  # the benchmark's own drive patches
        if value > 0:
            by_kind[what] = value
    latency: dict[str, float] = {}  # mean seconds per request, as the API server measured it
    for key, what in wanted.items():
        count, seconds = delta.get(key, 0.0), delta.get((SECONDS + key[0], *key[1:]), 0.0)
        if count > 0 and seconds > 0:
            latency[what] = round(seconds / count, 4)
    total = sum(by_kind.values())
    # Core Events are posted by other components too (node controller, kwok): shown apart.
    quiet = total - by_kind.get("create event", 0.0)
    return {
        "total": int(total),
        "perJob": round(total / n, 2) if n else None,
        "perJobWithoutEvents": round(quiet / n, 2) if n else None,
        "byKind": {k: int(v) for k, v in sorted(by_kind.items())},
        "meanSeconds": dict(sorted(latency.items())),
        "allDeltas": {
            "/".join(k): int(v)
            for k, v in sorted(
                ((k, v) for k, v in delta.items() if not k[0].startswith(SECONDS)), key=lambda kv: -kv[1]
            )[:25]
        },
    }


def _settle(rest: KubeRest, phase: Phase, limit: float = 30.0) -> float:
    """Wait (at most `limit` s) until the operator's requests pause for 2 s, so an idle window
    does not count the tail of the work before it; returns the seconds waited."""
    t0 = time.monotonic()
    last = request_counts(rest)
    while time.monotonic() - t0 < limit:
        time.sleep(2)
        now = request_counts(rest)
        if _requests(count_delta(last, now), phase, phase.n, drives=0)["total"] <= 2:
            break
        last = now
    return round(time.monotonic() - t0, 1)


def _idle(rest: KubeRest, sampler: Sampler, phase: Phase, seconds: float, running: int) -> dict[str, Any]:
    """Nothing changes for `seconds`: what does the operator cost meanwhile?"""
    settled = _settle(rest, phase)
    before = request_counts(rest)
    window = sampler.window()
    load0 = load_average()
    time.sleep(seconds)
    out = sampler.close(window)
    reqs = _requests(count_delta(before, request_counts(rest)), phase, phase.n, drives=0)
    out["requests"] = reqs
    out["settleSeconds"] = settled
    out["requestsPerMinute"] = round(reqs["total"] * 60 / seconds, 1)
    out["running"] = running
    if running:
        out["requestsPerRunningJobPerMinute"] = round(reqs["total"] * 60 / seconds / running, 3)
    out["load"] = {"start": load0, "end": load_average()}
    return out


def delete_all(cluster: Cluster, namespace: str, timeout: float = 300) -> float:
    """Delete the namespace (jobs, pods, events) and wait until it is gone; returns seconds."""
    rest = KubeRest(Path(cluster.kubeconfig))
    t0 = time.monotonic()
    try:
        rest.delete(f"/api/v1/namespaces/{namespace}")
    except KubeError as exc:
        if exc.status != 404:
            raise
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            rest.get(f"/api/v1/namespaces/{namespace}")
        except KubeError as exc:
            if exc.status == 404:
                return time.monotonic() - t0
            raise
        time.sleep(0.5)
    print(f"  !! namespace {namespace} still terminating after {timeout:.0f}s", file=sys.stderr)
    return time.monotonic() - t0


def create_namespace(cluster: Cluster, namespace: str) -> None:
    KubeRest(Path(cluster.kubeconfig)).create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    )


# ------------------------------------------------------------------------------ the sides
def gpus_for(n: int, capacity: int) -> int:
    """1 GPU per job while the fake nodes have room for all N, else none (pods still schedule)."""
    return 1 if n <= capacity else 0


def run_bare_create(
    cluster: Cluster, n: int, gpus: int, namespace: str, scheduled_timeout: float = 0.0
) -> dict[str, Any]:
    create_namespace(cluster, namespace)
    config = OperatorConfig()
    pods = []
    for name in (f"job-{i:05d}" for i in range(n)):
        job = job_manifest(name, gpus=gpus)
        job["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
        pods.append(orphan_pod(job, config))
    quiet = quiet_start()
    load0 = load_average()
    out = bare_create(Path(cluster.kubeconfig), namespace, pods, scheduled_timeout)
    out["load"] = {"start": load0, "end": load_average()}
    if quiet is not None:
        out["quiet"] = quiet
    return out


def run_side(
    cluster: Cluster,
    side: str,
    n: int,
    gpus: int,
    sampler: Sampler | None,
    idle_seconds: float,
) -> dict[str, Any]:
    namespace = f"{side.lower()}-{n}"
    if side not in OPERATOR_SIDES:
        create_namespace(cluster, namespace)
    phase = Phase(side, n, gpus, namespace)
    extra: dict[str, Any] = {}
    if side == "nativeFast":
        extra["controllerManagerRestartSeconds"] = controller_manager.restart(
            cluster, controller_manager.FULL_SPEED
        )
        extra["controllerManagerFlags"] = list(controller_manager.FULL_SPEED)
    bare = BareController(Path(cluster.kubeconfig), namespace, OperatorConfig()) if side == "limit" else None
    try:
        out = run_phase(cluster, phase, sampler, idle_seconds, bare=bare)
    finally:
        if side == "nativeFast":
            controller_manager.restart(cluster)  # back to the defaults
    out.update(extra)
    out["cleanupSeconds"] = round(delete_all(cluster, namespace), 1)
    return out


def run_limit_steady(cluster: Cluster, running: int, burst: int, capacity: int) -> dict[str, Any]:
    """The bare controller's burst of `burst` jobs while `running` pods run (created bare: the
    cluster holds as many running pods as in the operator's steady state, without its work)."""
    background = "limit-steady"
    out: dict[str, Any] = {"running": running}
    out["background"] = run_bare_create(cluster, running, 0, background)
    kubeconfig = Path(cluster.kubeconfig)
    seen: set[str] = set()
    lock = threading.Lock()

    def on_pod(at: float, kind: str, obj: dict[str, Any]) -> None:
        if (obj.get("status") or {}).get("phase") == "Running":
            with lock:
                seen.add(obj["metadata"]["name"])

    watcher = Watcher(kubeconfig, PODS.format(ns=background), on_pod).start()
    try:
        wait_until("limit steady: background pods running", lambda: len(seen) >= running,
                   120 + running * 0.1, [watcher])  # fmt: skip
    finally:
        watcher.stop()
    namespace = "limit-steady-burst"
    create_namespace(cluster, namespace)
    bare = BareController(kubeconfig, namespace, OperatorConfig())
    phase = Phase("limit", burst, gpus_for(burst, capacity), namespace)
    out["burstWhileRunning"] = {"n": burst, **run_phase(cluster, phase, None, 0, finish=False, bare=bare)}
    out["cleanupSeconds"] = round(
        delete_all(cluster, namespace) + delete_all(cluster, background, timeout=900), 1
    )
    return out


def run_operator_steady(
    cluster: Cluster,
    side: str,
    sampler: Sampler,
    running: int,
    burst: int,
    capacity: int,
    idle: float,
    epoch_seconds: float = 0.0,
    operator: OperatorProcess | None = None,
) -> dict[str, Any]:
    """`running` jobs run and finish, `running` more run (2 x running jobs present), an idle
    window, then `burst` new jobs in another namespace while those run. With `epoch_seconds`,
    the running pods print a trainer's progress line every epoch (bench/progress_feed.py), the
    idle window starts 2.5 epochs + 30 s after the first lines (by then the operator can have
    seen two epochs of every pod and pace its reads by them), and the window reports which
    epochs reached the jobs' statuses, how late. An `operator` that serves the progress endpoint
    (OperatorProcess with progress_ips) also gets every record pushed, as trainers do."""
    namespace, burst_ns = f"{side}-steady", f"{side}-steady-burst"
    out: dict[str, Any] = {"running": running, "finished": running}
    print(f"== {side}, steady state: {running} finished + {running} running", file=sys.stderr)
    out["finishedBatch"] = run_phase(cluster, Phase(side, running, 0, namespace), sampler, 0)
    phase = Phase(side, running, 0, namespace, first=running)
    if epoch_seconds <= 0:
        second = run_phase(cluster, phase, sampler, idle, finish=False)
        out["runningBatch"] = {k: v for k, v in second.items() if k != "idleRunning"}
        out["idleRunning"] = second.get("idleRunning")
    else:
        pods = [pod_name(name, 1) for name in phase.names]
        pusher = None
        if operator is not None and operator.progress_port and operator.progress_ca is not None:
            url = f"https://127.0.0.1:{operator.progress_port}"
            pusher = Pusher(KubeRest(Path(cluster.kubeconfig)), url, operator.progress_ca, namespace)
        feed = ProgressFeed(cluster, namespace, phase.names, pods, epoch_seconds, push=pusher).start()
        watcher = Watcher(Path(cluster.kubeconfig), FTJ.format(ns=namespace), feed.on_job).start()
        try:
            second = out["runningBatch"] = run_phase(cluster, phase, sampler, 0, finish=False)
            if pusher is not None:  # the kubelet's part: a bound token per pod, once it runs
                out["pushTokensMintedSeconds"] = round(pusher.mint(phase.names, pods), 1)
            # Each pod's pace is known after two epochs it saw (the first read comes a poll
            # interval after the pod started): then the steady state begins.
            warm = (feed.started or 0.0) + 2.5 * epoch_seconds + 30 - time.monotonic()
            if warm > 0:
                print(f"  progress: {warm:.0f}s until every pace is known", file=sys.stderr)
                time.sleep(warm)
            t0 = time.monotonic()
            rest = KubeRest(Path(cluster.kubeconfig))
            out["idleRunning"] = window = _idle(rest, sampler, phase, idle, running)
            report = feed.report(t0 + window["settleSeconds"], time.monotonic())
            window["progress"] = {
                "epochSeconds": epoch_seconds,
                "groups": feed.groups,
                **report.as_dict(),
                "lagSeconds": percentiles(report.lags),
            }
            window["samples"] = {"progressLag": samples(report.lags)}
            if pusher is not None:
                window["progress"]["pushAnswers"] = {str(k): v for k, v in sorted(pusher.answers.items())}
            print(f"  progress in the window: {window['progress']}", file=sys.stderr)
            if watcher.error is not None:
                raise RuntimeError(f"watch of the jobs failed: {watcher.error!r}")
        finally:
            watcher.stop()
            feed.stop()
            if pusher is not None:
                pusher.close()
    print(f"== {side}, steady state: a burst of {burst}", file=sys.stderr)
    phase = Phase(side, burst, gpus_for(burst, capacity), burst_ns)
    out["burstWhileRunning"] = {"n": burst, **run_phase(cluster, phase, sampler, 0, finish=False)}
    # The peak while 2 x running jobs were present: their creation, the idle window, the burst.
    peaks = [
        (second.get("burst") or {}).get("operator", {}).get("rssPeakMiB"),
        (second.get("idleRunning") or {}).get("rssPeakMiB"),
        (out["burstWhileRunning"].get("burst") or {}).get("operator", {}).get("rssPeakMiB"),
    ]
    out["rssPeakMiB"] = max((p for p in peaks if p is not None), default=None)
    out["cleanupSeconds"] = round(
        delete_all(cluster, burst_ns) + delete_all(cluster, namespace, timeout=1200), 1
    )
    return out


@contextlib.contextmanager
def baseline_source(ref: str) -> Iterator[Path]:
    """The operator and contract packages of git commit `ref`, extracted into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="pfo-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "operator", "contract"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def start_operator(
    cluster: Cluster,
    side: str,
    namespaces: list[str],
    flags: list[str],
    source: Path | None,
    push: bool = False,
) -> OperatorProcess:
    """The operator of this tree (ours) or of the baseline commit's source (before); with `push`,
    serving the progress endpoint on 127.0.0.1."""
    log_path = Path(tempfile.gettempdir()) / f"pfo-bench-operator-{side}.log"
    log_path.unlink(missing_ok=True)
    ips = ("127.0.0.1",) if push else ()
    operator = OperatorProcess(cluster, namespaces, log_path, extra=flags, progress_ips=ips)
    saved = os.environ.get("PYTHONPATH")
    if source is not None:  # its packages ahead of this tree's editable install
        os.environ["PYTHONPATH"] = os.pathsep.join([str(source / "operator"), str(source / "contract")])
    try:
        operator.start()
    finally:
        if source is not None:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
    return operator


# ------------------------------------------------------------------------------ report
def summarise(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios ours / each other side, per N (below 1: ours is faster)."""
    out = []
    for r in rounds:
        ours = r.get("ours")
        if not ours:
            continue
        for other in ("limit", "before", "native", "nativeFast"):
            theirs = r.get(other)
            if not theirs:
                continue
            row: dict[str, Any] = {"n": r["n"], "against": other}
            for metric in ("podCreated", "podScheduled"):
                for q in ("p50", "p95", "p99"):
                    row[f"{metric}.{q}"] = goals.ratio(ours["burst"][metric][q], theirs["burst"][metric][q])
            row["allPodsExist"] = goals.ratio(
                ours["burst"]["allPodsExistSeconds"], theirs["burst"]["allPodsExistSeconds"]
            )
            if "propagation" in ours and "propagation" in theirs:
                for q in ("p50", "p99"):
                    row[f"propagation.{q}"] = goals.ratio(
                        ours["propagation"]["podSucceededToJobDone"][q],
                        theirs["propagation"]["podSucceededToJobDone"][q],
                    )
            out.append(row)
    return out


def side_order(sides: list[str], repeat: int) -> list[str]:
    """The sides of a round: in the fixed order, with the limit and ours swapped in every other
    round, so that neither always runs on the cluster the other has just used."""
    if repeat % 2 == 0:
        return list(sides)
    swapped = {"limit": "ours", "ours": "limit"} if {"limit", "ours"} <= set(sides) else {}
    return [swapped.get(s, s) for s in sides]


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*cells: str) -> list[str]:
    return [_row(*cells), _row(*("---" for _ in cells))]


def _load(part: dict[str, Any] | None) -> str:
    load = (part or {}).get("load") or {}
    quiet = (part or {}).get("quiet")
    waited = f" (quiet: {quiet['busyCores']} cores after {quiet['waitedSeconds']} s)" if quiet else ""
    return f"{load.get('start')}-{load.get('end')}{waited}"


CORE_COLUMNS = (
    "kube-apiserver",
    "etcd",
    "kube-scheduler",
    "kube-controller-manager",
    "kwok",
    "operator",
    "benchmark",
)


def _creation_cores(report: dict[str, Any]) -> list[str]:
    """From the jobs' first POST until every pod exists: how the cores were split, and whether
    pod creation kept pace with job creation."""
    rows = []
    for r in report["rounds"]:
        for side in SIDES:
            b = (r.get(side) or {}).get("burst") or {}
            cc, pc = b.get("creationCores"), b.get("pace")
            if not cc:
                continue
            cores = cc["cores"]
            rows.append(
                _row(
                    r["n"],
                    SIDE_LABELS[side],
                    cc["seconds"],
                    cc["machineBusyCores"],
                    *(cores.get(c, "") for c in CORE_COLUMNS),
                    (pc or {}).get("jobsPerSecond", ""),
                    (pc or {}).get("podsPerSecond", ""),
                    f"{(pc or {}).get('lagFirstTenthP50', '')} / {(pc or {}).get('lagLastTenthP50', '')}",
                )
            )
    if not rows:
        return []
    lines = ["", "Creation window (first job POST until every pod exists): cores busy, by process, "
             "and the pace (pod created lag p50 of the first / last tenth of the jobs):", ""]  # fmt: skip
    lines += _header(
        "N", "side", "seconds", "machine", *CORE_COLUMNS, "jobs/s", "pods/s", "lag first / last s"
    )
    return lines + rows


def markdown(report: dict[str, Any]) -> str:
    load = report.get("loadAverage") or {}
    lines = [
        f"### Operator at scale ({report['machine']}, {report['nodes']} fake GPU nodes, load average "
        f"{load.get('start')} at the start, {load.get('end')} at the end, commit {report.get('commit')})",
        "",
    ]
    lines += _header(
        "N", "side", "load 1m", "create s", "pod created p50/p95/p99 s", "pod scheduled p99 s",
        "all pods exist s", "done p50/p99 s", "all done s", "requests/job burst + finish",
    )  # fmt: skip
    for r in report["rounds"]:
        if r.get("bareCreate"):
            b = r["bareCreate"]
            lines.append(_row(r["n"], "bare create (pods only)", _load(b), b["postSeconds"], "", "",
                              b["allPodsExistSeconds"], "", "", "1 (create pod)"))  # fmt: skip
        for side in SIDES:
            s = r.get(side)
            if not s:
                continue
            b = s["burst"]
            pc, ps = b["podCreated"], b["podScheduled"]
            p = s.get("propagation") or {}
            pd = p.get("podSucceededToJobDone") or {}
            lines.append(
                _row(
                    r["n"],
                    SIDE_LABELS[side],
                    _load(s),
                    b["createSeconds"],
                    f"{pc['p50']} / {pc['p95']} / {pc['p99']}",
                    ps["p99"],
                    b["allPodsExistSeconds"],
                    f"{pd.get('p50')} / {pd.get('p99')}",
                    p.get("allDoneAfterDriveSeconds"),
                    f"{b['requests']['perJob']} + {(p.get('requests') or {}).get('perJob')}",
                )  # fmt: skip
            )
    lines += _creation_cores(report)
    lines += ["", "Ratios ours / the other side (same run; below 1 means ours is faster):", ""]
    lines += _header(
        "N", "against", "pod created p50 / p95 / p99", "pod scheduled p99", "all pods exist", "done p50 / p99"
    )
    for row in report["ratios"]:
        lines.append(
            _row(
                row["n"],
                SIDE_LABELS[row["against"]],
                " / ".join(str(row[f"podCreated.{q}"]) for q in ("p50", "p95", "p99")),
                row["podScheduled.p99"],
                row["allPodsExist"],
                f"{row.get('propagation.p50')} / {row.get('propagation.p99')}",
            )  # fmt: skip
        )
    lines += ["", "Operator footprint (RSS from /proc; CPU seconds of the operator process):", ""]
    lines += _header(
        "side", "jobs present", "state", "load 1m", "seconds", "CPU s", "CPU share", "RSS peak MiB",
        "RSS end MiB", "operator requests/min", "per running job/min",
    )  # fmt: skip
    for side in OPERATOR_SIDES:
        e = (report.get("footprint", {}).get(side) or {}).get("empty")
        if e:
            lines.append(_row(side, 0, "idle", _load(e), e["seconds"], e["cpuSeconds"], e["cpuFraction"],
                              e["rssPeakMiB"], e["rssEndMiB"], e["requestsPerMinute"], ""))  # fmt: skip
        states = (
            ("burst", "burst"),
            ("idleRunning", "idle, pods running"),
            ("propagation", "all finish"),
            ("idleFinished", "idle, all Succeeded"),
        )
        for r in report["rounds"]:
            s = r.get(side)
            if not s:
                continue
            for key, state in states:
                part = s.get(key)
                if not part:
                    continue
                o = part.get("operator", part)
                if "cpuSeconds" not in o:
                    continue
                lines.append(
                    _row(
                        side,
                        r["n"],
                        state,
                        _load(part if "load" in part else s),
                        o["seconds"],
                        o["cpuSeconds"],
                        o["cpuFraction"],
                        o["rssPeakMiB"],
                        o["rssEndMiB"],
                        part.get("requestsPerMinute", ""),
                        part.get("requestsPerRunningJobPerMinute", ""),
                    )  # fmt: skip
                )
        st = (report.get("steady") or {}).get(side)
        if st and st.get("idleRunning"):
            i = st["idleRunning"]
            lines.append(
                _row(
                    side,
                    f"{st['finished']} finished + {st['running']} running",
                    "idle, steady state",
                    _load(i),
                    i["seconds"],
                    i["cpuSeconds"],
                    i["cpuFraction"],
                    i["rssPeakMiB"],
                    i["rssEndMiB"],
                    i["requestsPerMinute"],
                    i.get("requestsPerRunningJobPerMinute", ""),
                )  # fmt: skip
            )
    steady = report.get("steady") or {}
    if steady:
        lines += ["", f"Steady state: a burst of new jobs while {steady.get('running')} run:", ""]
        lines += _header("side", "load 1m", "pod created p50 / p95 / p99 s", "all pods exist s")
        for side in ("limit", *OPERATOR_SIDES):
            b = ((steady.get(side) or {}).get("burstWhileRunning") or {}).get("burst")
            if b:
                pc = b["podCreated"]
                lines.append(_row(SIDE_LABELS[side], _load(steady[side]["burstWhileRunning"]),
                                  f"{pc['p50']} / {pc['p95']} / {pc['p99']}",
                                  b["allPodsExistSeconds"]))  # fmt: skip
        for side in OPERATOR_SIDES:
            pr = (((steady.get(side) or {}).get("idleRunning")) or {}).get("progress")
            if pr:
                lag = pr["lagSeconds"]
                lines += ["", f"Progress ({SIDE_LABELS[side]}), a line every {pr['epochSeconds']:g} s: "
                          f"{pr['epochsReached']} of {pr['epochsReported']} epochs reached the status "
                          f"({pr['epochsSkipped']} skipped, {pr['epochsMissed']} missed), line -> status "
                          f"p50 / p99 / max {lag['p50']} / {lag['p99']} / {lag['max']} s"]  # fmt: skip
    lines += ["", "Issue 12's goals (bench/goals.py):", "", *goals.markdown(goals.evaluate(report))]
    if report.get("figures"):
        lines += ["", "Figures: " + ", ".join(report["figures"])]
    return "\n".join(lines)


def production_flags(workers: int) -> list[str]:
    """The operator's own defaults, over OperatorProcess's fast test flags."""
    defaults = OperatorConfig()
    return [
        "--backoff-base", str(defaults.backoff_base_seconds),
        "--backoff-max", str(defaults.backoff_max_seconds),
        "--progress-poll-interval", str(defaults.progress_poll_seconds),
        "--start-timeout", str(defaults.start_timeout_seconds), "--workers", str(workers),
    ]  # fmt: skip


def machine() -> str:
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores available"


def git_commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout.strip() or "unknown"


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="100,1000", help="comma-separated N (default 100,1000)")
    parser.add_argument("--nodes", type=int, default=128, help=f"fake GPU nodes, {GPUS_PER_NODE} GPUs each")
    parser.add_argument("--idle-seconds", type=float, default=30, help="idle window per state (0: skip)")
    parser.add_argument(
        "--sides",
        default="limit,ours,native,nativeFast",
        help=f"comma-separated, of {','.join(SIDES)} (before needs --baseline-ref)",
    )
    parser.add_argument("--baseline-ref", default="", help="git commit whose operator is the 'before' side")
    parser.add_argument("--running-jobs", type=int, default=0, help="steady state: R finished + R running")
    parser.add_argument(
        "--steady-idle-seconds",
        type=float,
        default=360,
        help="steady state: the window with R running (s; three epochs at the default pace)",
    )
    parser.add_argument("--burst-jobs", type=int, default=1000, help="steady state: new jobs while R run")
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=120,
        help="steady state: the running pods print a trainer's progress line every so many seconds "
        "(0: they print nothing). Each epoch costs a log read and a status write: 2 / epoch minutes "
        "requests per running job per minute, 1.0 at the default",
    )
    parser.add_argument(
        "--native-max", type=int, default=1000, help="the Job controller's rounds up to this N"
    )
    parser.add_argument(
        "--workers", type=int, default=OperatorConfig().workers, help="the operator's --workers"
    )
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=0,
        help="ours: the operator's --sweep-interval, seconds between relists of every job and pod "
        "(0: its default); a short one puts relists inside the bursts, the memory's worst case",
    )
    parser.add_argument(
        "--progress-push",
        action="store_true",
        help="ours: serve the progress endpoint; the steady state's pods push each epoch's record "
        "to it as trainers do (and still print it)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per N; the limit and ours swap places every other round, and each goal takes "
        "the median over the rounds (one round at N=1,000 moves by tens of percent on 2 cores)",
    )
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.0,
        help="start each side of a round once the whole machine keeps fewer than this many cores "
        "busy over 2 s (at most 90 s of waiting; 0: at once), so that no side runs on the tail "
        "of the one before",
    )
    parser.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pfo-bench-cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "operator_scale.json")
    args = parser.parse_args(argv)
    QUIET["cores"] = args.quiet_cores
    ns_list = [int(x) for x in args.jobs.split(",") if x.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        parser.error(f"--sides: unknown {unknown}; choose from {', '.join(SIDES)}")
    if "before" in sides and not args.baseline_ref:
        parser.error("--sides before needs --baseline-ref COMMIT (the operator to compare with)")
    if args.baseline_ref and "before" not in sides:
        sides.append("before")
    sides = [s for s in SIDES if s in sides]  # a fixed order: limit, ours, before, native, nativeFast
    capacity = args.nodes * GPUS_PER_NODE

    t_start = time.monotonic()
    print(f"starting a local control plane with {args.nodes} fake GPU nodes in {args.state_dir}",
          file=sys.stderr)  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "operator at scale vs the bare limit and kube-controller-manager's Job controller",
        "command": "bench/operator_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": git_commit(),
        "baselineRef": args.baseline_ref or None,
        "machine": machine(),
        "loadAverage": {"start": load_average()},
        "startedAt": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nodes": args.nodes,
        "gpusPerNode": GPUS_PER_NODE,
        "sides": sides,
        "rounds": [],
        "footprint": {},
    }
    # Fake nodes only: the real node (a kubelet with containerd) adds nothing to this measurement.
    cluster = localcluster.start(args.state_dir, gpu_nodes=args.nodes, owner_pid=os.getpid(), real_node=False)
    report["clusterStartSeconds"] = cluster.state.get("start_seconds")
    operators: dict[str, OperatorProcess] = {}
    samplers: dict[str, Sampler] = {}
    with contextlib.ExitStack() as stack:
        try:
            cluster.install_crds(ROOT / "crds")
            flags = production_flags(args.workers)
            report["operatorFlags"] = flags
            if args.sweep_interval:
                report["oursSweepInterval"] = args.sweep_interval
            if args.progress_push:
                report["oursProgressPush"] = True
            args.out.parent.mkdir(parents=True, exist_ok=True)
            for side in OPERATOR_SIDES:
                if side not in sides:
                    continue
                namespaces = [f"{side}-{n}" for n in ns_list]
                if args.running_jobs:
                    namespaces += [f"{side}-steady", f"{side}-steady-burst"]
                for ns in namespaces:
                    create_namespace(cluster, ns)
                source = stack.enter_context(baseline_source(args.baseline_ref)) if side == "before" else None
                own = flags + (["--sweep-interval", str(args.sweep_interval)] if args.sweep_interval else [])
                push = args.progress_push and side == "ours"
                operators[side] = start_operator(
                    cluster, side, namespaces, own if side == "ours" else flags, source, push
                )
                assert operators[side].proc is not None
                samplers[side] = Sampler(operators[side].proc.pid)
                if args.idle_seconds > 0:
                    rest = KubeRest(Path(cluster.kubeconfig))
                    empty = Phase(side, 1, 1, f"{side}-empty")
                    report["footprint"].setdefault(side, {})["empty"] = _idle(
                        rest, samplers[side], empty, min(args.idle_seconds, 30), running=0
                    )

            for n, repeat in ((n, i) for n in ns_list for i in range(args.repeat)):
                order = side_order(sides, repeat)
                rnd: dict[str, Any] = {"n": n, "repeat": repeat + 1, "order": order}
                report["rounds"].append(rnd)
                gpus = gpus_for(n, capacity)
                for side in operators:
                    if repeat and side in order:  # the last round deleted the operator's namespace
                        create_namespace(cluster, f"{side}-{n}")
                if "limit" in sides:
                    print(f"== bare create, N={n}", file=sys.stderr)
                    # Bound before deleted: the next side starts with an idle scheduler.
                    rnd["bareCreate"] = run_bare_create(cluster, n, gpus, f"bare-{n}", 120 + n * 0.1)
                    rnd["bareCreate"]["cleanupSeconds"] = round(delete_all(cluster, f"bare-{n}"), 1)
                for side in order:
                    if side in ("native", "nativeFast") and n > args.native_max:
                        continue
                    print(f"== {side}, N={n}", file=sys.stderr)
                    rnd[side] = run_side(cluster, side, n, gpus, samplers.get(side), args.idle_seconds)
                    _save(args.out, report)
            if args.running_jobs:
                r, b = args.running_jobs, args.burst_jobs
                steady: dict[str, Any] = {"running": r, "finished": r, "burst": b}
                report["steady"] = steady
                if "limit" in sides:
                    print(f"== limit, steady state: {r} pods running, a burst of {b}", file=sys.stderr)
                    steady["limit"] = run_limit_steady(cluster, r, b, capacity)
                    _save(args.out, report)
                for side in OPERATOR_SIDES:
                    if side in operators:
                        steady[side] = run_operator_steady(
                            cluster, side, samplers[side], r, b, capacity, args.steady_idle_seconds,
                            args.epoch_seconds, operators[side],
                        )  # fmt: skip
                        _save(args.out, report)
            report["operatorReconcileErrors"] = {
                side: _reconcile_errors(op) for side, op in operators.items()
            }
        finally:
            for operator in operators.values():
                operator.stop()
            cluster.stop()
            report["loadAverage"]["end"] = load_average()
            report["totalSeconds"] = round(time.monotonic() - t_start, 1)
            report["timedOut"] = TIMED_OUT
            report["ratios"] = summarise(report["rounds"])
            report["goals"] = [g.as_dict() for g in goals.evaluate(report)]
            try:
                report["figures"] = [os.path.relpath(p, ROOT) for p in plots.write(report, args.out.parent)]
            except Exception as exc:  # a figure must not cost the measurements
                print(f"  !! figures failed: {exc!r}", file=sys.stderr)
            _save(args.out, report)
    print(markdown(report))
    print(f"\nwrote {args.out} in {report['totalSeconds']}s")
    return 0


def _reconcile_errors(operator: OperatorProcess) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("finetune_reconcile_errors_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _save(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
