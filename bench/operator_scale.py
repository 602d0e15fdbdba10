"""Benchmark: the operator at scale against Kubernetes' own Job controller, on one local control
plane with many fake (kwok) GPU nodes.

For each N (--jobs), in the same cluster and run:
* ours: N FineTuneJobs created at once (16 client threads) in namespace ours-N, watched by the
  real operator (`python -m finetune_operator`, production defaults: --workers 4,
  --progress-poll-interval 30). Per job: creation -> pod created, creation -> pod scheduled;
  the time until all pods exist. Then every pod is finished at once (localcluster's kwok drive
  annotations, with the trainer's result as termination message) and we time until each job
  shows Succeeded with its metrics.
* native: N batch/v1 Jobs with the same pod template (rendered by the operator's own
  render_pod) in namespace native-N, handled by kube-controller-manager's Job controller
  (default client limits: --kube-api-qps 20, --kube-api-burst 30). Same measurements; "done" is
  the Job's Complete condition.

Times are arrivals of watch events in this process (monotonic clock, sub-millisecond) from the
job's ADDED event; the API's own timestamps (creationTimestamp, PodScheduled's
lastTransitionTime) have one-second granularity and are reported alongside for the scheduled
time. The operator's footprint comes from /proc/<pid> (RSS, CPU seconds) and the API requests
from the API server's apiserver_request_total before and after each phase, attributed by
(verb, resource): only the operator issues those in its phase (see OURS_REQUESTS).

    .venv/bin/python bench/operator_scale.py [--jobs 100,1000] [--nodes 128] [--idle-seconds 30]
        [--footprint-jobs 5000]

Writes bench/results/operator_scale.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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
from finetune_operator.pod import render_pod  # noqa: E402

import localcluster  # noqa: E402
from bench.kube_watch import SECONDS, Watcher, count_delta, parallel, request_counts  # noqa: E402
from bench.proc_sampler import Sampler, cpu_model  # noqa: E402
from localcluster import GPUS_PER_NODE, Cluster, KubeError, KubeRest, OperatorProcess, drive_annotations  # noqa: E402

FTJ = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
BATCH_JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
PODS = "/api/v1/namespaces/{ns}/pods"
NATIVE_JOB_LABEL = "batch.kubernetes.io/job-name"

# Requests only the operator makes while its phase runs (the benchmark's own are subtracted or
# of other verbs; the scheduler posts events.k8s.io Events, kwok patches pods/status).
OURS_REQUESTS = {
    ("GET", GROUP, PLURAL, ""): "get job",
    ("PATCH", GROUP, PLURAL, "status"): "patch job status",
    ("POST", "", "pods", ""): "create pod",
    ("LIST", "", "pods", ""): "list pods",
    ("CONNECT", "", "pods", "log"): "read pod log",  # the API server counts log reads as CONNECT
    ("DELETE", "", "pods", ""): "delete pod",
    ("POST", "", "events", ""): "create event",
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
    # server timestamps (1 s granularity), seconds since the epoch
    created_ts: float | None = None
    scheduled_ts: float | None = None


@dataclass
class Recorder:
    """Turns watch events of jobs and their pods into per-job Tracks."""

    pod_job_label: str
    job_done: Callable[[dict[str, Any]], bool]
    tracks: dict[str, Track] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, name: str) -> Track:
        return self.tracks.setdefault(name, Track())

    def on_job(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        with self.lock:
            t = self.track(obj["metadata"]["name"])
            if t.created is None:
                t.created = at
                t.created_ts = _epoch(obj["metadata"].get("creationTimestamp"))
            if t.done is None and self.job_done(obj):
                t.done = at

    def on_pod(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        job = (obj["metadata"].get("labels") or {}).get(self.pod_job_label)
        if not job:
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


def intervals(tracks: dict[str, Track], start: str, end: str) -> list[float]:
    out = []
    for t in tracks.values():
        a, b = getattr(t, start), getattr(t, end)
        if a is not None and b is not None:
            out.append(b - a)
    return out


TIMED_OUT: list[str] = []  # the waits that gave up, reported in the JSON


def wait_until(what: str, check: Callable[[], bool], timeout: float, watchers: list[Watcher]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in watchers:
            if w.error is not None:
                raise RuntimeError(f"watch of {w.path} failed: {w.error!r}")
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
    """One side (ours or native) at one N."""

    kind: str  # "ours" | "native" | "footprint"
    n: int
    gpus: int
    namespace: str

    @property
    def jobs_path(self) -> str:
        return (FTJ if self.kind != "native" else BATCH_JOBS).format(ns=self.namespace)

    def manifest(self, name: str) -> dict[str, Any]:
        return native_job(name, self.gpus) if self.kind == "native" else job_manifest(name, gpus=self.gpus)

    def recorder(self) -> Recorder:
        if self.kind == "native":
            return Recorder(NATIVE_JOB_LABEL, native_done)
        return Recorder(LABEL_JOB, ftj_done)


def run_phase(
    cluster: Cluster,
    phase: Phase,
    sampler: Sampler | None,
    idle_seconds: float,
    finish: bool = True,
) -> dict[str, Any]:
    kubeconfig = Path(cluster.kubeconfig)
    rest = KubeRest(kubeconfig)
    rec = phase.recorder()
    watchers = [
        Watcher(kubeconfig, phase.jobs_path, rec.on_job).start(),
        Watcher(kubeconfig, PODS.format(ns=phase.namespace), rec.on_pod).start(),
    ]
    n, names = phase.n, [f"job-{i:05d}" for i in range(phase.n)]
    label = f"{phase.kind} N={n}"
    result: dict[str, Any] = {
        "side": phase.kind,
        "n": n,
        "gpusPerJob": phase.gpus,
        "namespace": phase.namespace,
    }
    budget = 120 + n * 0.5  # generous: the native controller creates pods at about 20 requests/s

    def left(since: float) -> float:  # one budget for all the waits of a stage
        return max(1.0, since + budget - time.monotonic())

    try:
        before = request_counts(rest)
        window = sampler.window() if sampler else None
        t0 = time.monotonic()
        parallel(lambda r, name: r.create(phase.jobs_path, phase.manifest(name)), names, kubeconfig)
        t_posted = time.monotonic()
        print(f"  {label}: {n} created in {t_posted - t0:.1f}s", file=sys.stderr)
        wait_until(f"{label}: every pod created", lambda: rec.count("pod_created") >= n, left(t0), watchers)
        t_all_pods = max((t.pod_created for t in rec.tracks.values() if t.pod_created), default=t0)
        wait_until(
            f"{label}: every pod scheduled", lambda: rec.count("pod_scheduled") >= n, left(t0), watchers
        )
        wait_until(f"{label}: every pod running", lambda: rec.count("pod_running") >= n, left(t0), watchers)
        if phase.kind != "native":  # the operator has seen them run: its burst is over
            wait_until(
                f"{label}: every job Running", lambda: _all_phase(rest, phase, "Running"), left(t0), watchers
            )
        burst_counts = count_delta(before, request_counts(rest))
        result["burst"] = {
            "createSeconds": round(t_posted - t0, 3),
            "allPodsExistSeconds": round(t_all_pods - t0, 3),
            "podCreated": percentiles(intervals(rec.tracks, "created", "pod_created")),
            "podScheduled": percentiles(intervals(rec.tracks, "created", "pod_scheduled")),
            "podScheduledServerTimestamps": percentiles(
                [
                    t.scheduled_ts - t.created_ts
                    for t in rec.tracks.values()
                    if t.scheduled_ts and t.created_ts
                ]
            ),
            "requests": _requests(burst_counts, phase, n, drives=0),
        }
        if sampler and window:
            result["burst"]["operator"] = sampler.close(window)
        if sampler and idle_seconds > 0:
            result["idleRunning"] = _idle(rest, sampler, phase, idle_seconds)
        if not finish:
            return result

        # ---- status propagation: every pod finishes at once
        message = encode_result(RESULT)
        patch = {"metadata": {"annotations": drive_annotations("Succeeded", 0, message)}}
        pods_path = PODS.format(ns=phase.namespace)
        pods = [p["metadata"]["name"] for p in rest.get(pods_path)["items"]]
        before = request_counts(rest)
        window = sampler.window() if sampler else None
        t_drive = time.monotonic()
        parallel(lambda r, pod: r.patch(f"{pods_path}/{pod}", patch, kind="merge-patch"), pods, kubeconfig)
        t_driven = time.monotonic()
        wait_until(f"{label}: every job done", lambda: rec.count("done") >= n, left(t_drive), watchers)
        t_all_done = max((t.done for t in rec.tracks.values() if t.done), default=t_drive)
        result["propagation"] = {
            "driveSeconds": round(t_driven - t_drive, 3),
            "podSucceededToJobDone": percentiles(intervals(rec.tracks, "pod_succeeded", "done")),
            "allDoneAfterDriveSeconds": round(t_all_done - t_drive, 3),
            "done": rec.count("done"),
            "requests": _requests(count_delta(before, request_counts(rest)), phase, n, drives=len(pods)),
        }
        if sampler and window:
            result["propagation"]["operator"] = sampler.close(window)
        if sampler and idle_seconds > 0:
            result["idleFinished"] = _idle(rest, sampler, phase, idle_seconds)
        return result
    finally:
        for w in watchers:
            w.stop()


def _all_phase(rest: KubeRest, phase: Phase, want: str) -> bool:
    items = rest.get(phase.jobs_path)["items"]
    return len(items) >= phase.n and all((i.get("status") or {}).get("phase") == want for i in items)


def _requests(delta: dict[Any, float], phase: Phase, n: int, drives: int) -> dict[str, Any]:
    wanted = NATIVE_REQUESTS if phase.kind == "native" else OURS_REQUESTS
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


def _idle(rest: KubeRest, sampler: Sampler, phase: Phase, seconds: float) -> dict[str, Any]:
    """Nothing changes for `seconds`: what does the operator cost meanwhile?"""
    settled = _settle(rest, phase)
    before = request_counts(rest)
    window = sampler.window()
    time.sleep(seconds)
    out = sampler.close(window)
    reqs = _requests(count_delta(before, request_counts(rest)), phase, phase.n, drives=0)
    out["requests"] = reqs
    out["settleSeconds"] = settled
    out["requestsPerMinute"] = round(reqs["total"] * 60 / seconds, 1)
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


# ------------------------------------------------------------------------------ report
def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def summarise(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rounds:
        ours, native = r.get("ours"), r.get("native")
        if not ours or not native:
            continue
        row: dict[str, Any] = {"n": r["n"]}
        for metric in ("podCreated", "podScheduled"):
            for q in ("p50", "p95", "p99"):
                row[f"{metric}.{q}"] = ratio(ours["burst"][metric][q], native["burst"][metric][q])
        row["allPodsExist"] = ratio(
            ours["burst"]["allPodsExistSeconds"], native["burst"]["allPodsExistSeconds"]
        )
        if "propagation" in ours and "propagation" in native:
            for q in ("p50", "p99"):
                row[f"propagation.{q}"] = ratio(
                    ours["propagation"]["podSucceededToJobDone"][q],
                    native["propagation"]["podSucceededToJobDone"][q],
                )
        out.append(row)
    return out


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*cells: str) -> list[str]:
    return [_row(*cells), _row(*("---" for _ in cells))]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### Operator at scale ({report['machine']}, {report['nodes']} fake GPU nodes)", ""]
    lines += _header(
        "N", "side", "create s", "pod created p50/p95/p99 s", "pod scheduled p50/p95/p99 s",
        "scheduled (API stamps) p50/p99 s", "all pods exist s", "done p50/p99 s", "all done s",
        "requests/job burst + finish",
    )  # fmt: skip
    for r in report["rounds"]:
        for side in ("ours", "native"):
            s = r.get(side)
            if not s:
                continue
            b = s["burst"]
            pc, ps, st = b["podCreated"], b["podScheduled"], b["podScheduledServerTimestamps"]
            p = s.get("propagation") or {}
            pd = p.get("podSucceededToJobDone") or {}
            lines.append(
                _row(
                    r["n"],
                    side,
                    b["createSeconds"],
                    f"{pc['p50']} / {pc['p95']} / {pc['p99']}",
                    f"{ps['p50']} / {ps['p95']} / {ps['p99']}",
                    f"{st['p50']} / {st['p99']}",
                    b["allPodsExistSeconds"],
                    f"{pd.get('p50')} / {pd.get('p99')}",
                    p.get("allDoneAfterDriveSeconds"),
                    f"{b['requests']['perJob']} + {(p.get('requests') or {}).get('perJob')}",
                )  # fmt: skip
            )
    lines += ["", "Ratios ours / native (same run; below 1 means ours is faster):", ""]
    lines += _header(
        "N",
        "pod created p50 / p95 / p99",
        "pod scheduled p50 / p95 / p99",
        "all pods exist",
        "done p50 / p99",
    )
    for row in report["ratios"]:
        lines.append(
            _row(
                row["n"],
                " / ".join(str(row[f"podCreated.{q}"]) for q in ("p50", "p95", "p99")),
                " / ".join(str(row[f"podScheduled.{q}"]) for q in ("p50", "p95", "p99")),
                row["allPodsExist"],
                f"{row.get('propagation.p50')} / {row.get('propagation.p99')}",
            )  # fmt: skip
        )
    lines += ["", "Operator footprint (RSS from /proc; CPU seconds of the operator process):", ""]
    lines += _header(
        "jobs present", "state", "seconds", "CPU s", "CPU share", "RSS peak MiB", "RSS end MiB",
        "operator requests/min",
    )  # fmt: skip
    fp = report.get("footprint", {})
    if "empty" in fp:
        e = fp["empty"]
        lines.append(
            _row(
                0,
                "idle",
                e["seconds"],
                e["cpuSeconds"],
                e["cpuFraction"],
                e["rssPeakMiB"],
                e["rssEndMiB"],
                e["requestsPerMinute"],
            )  # fmt: skip
        )
    states = (
        ("burst", "burst"),
        ("idleRunning", "idle, pods running"),
        ("propagation", "all finish"),
        ("idleFinished", "idle, all Succeeded"),
    )
    for r in report["rounds"] + report.get("footprintRounds", []):
        s = r.get("ours") or r.get("footprint")
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
                    r["n"],
                    state,
                    o["seconds"],
                    o["cpuSeconds"],
                    o["cpuFraction"],
                    o["rssPeakMiB"],
                    o["rssEndMiB"],
                    part.get("requestsPerMinute", ""),
                )  # fmt: skip
            )
    return "\n".join(lines)


def machine() -> str:
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores available"


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="100,1000", help="comma-separated N (default 100,1000)")
    parser.add_argument("--nodes", type=int, default=128, help=f"fake GPU nodes, {GPUS_PER_NODE} GPUs each")
    parser.add_argument("--idle-seconds", type=float, default=30, help="idle window per state (0: skip)")
    parser.add_argument(
        "--footprint-jobs", default="", help="extra N for footprint only (e.g. 5000; pods use no GPU)"
    )
    parser.add_argument("--sides", default="ours,native", help="ours, native or both")
    parser.add_argument(
        "--workers", type=int, default=OperatorConfig().workers, help="the operator's --workers"
    )
    parser.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pfo-bench-cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "operator_scale.json")
    args = parser.parse_args(argv)
    ns_list = [int(x) for x in args.jobs.split(",") if x.strip()]
    footprint_ns = [int(x) for x in args.footprint_jobs.split(",") if x.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    capacity = args.nodes * GPUS_PER_NODE
    too_big = [n for n in ns_list if n > capacity]
    if too_big:
        parser.error(
            f"--jobs {too_big} need more GPUs than --nodes {args.nodes} x {GPUS_PER_NODE} = {capacity}"
        )

    t_start = time.monotonic()
    print(
        f"starting a local control plane with {args.nodes} fake GPU nodes in {args.state_dir}",
        file=sys.stderr,
    )
    # Fake nodes only: the real node (a kubelet with containerd) adds nothing to this measurement.
    cluster = localcluster.start(args.state_dir, gpu_nodes=args.nodes, owner_pid=os.getpid(), real_node=False)
    report: dict[str, Any] = {
        "benchmark": "operator at scale vs kube-controller-manager's Job controller",
        "command": "bench/operator_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "nodes": args.nodes,
        "gpusPerNode": GPUS_PER_NODE,
        "clusterStartSeconds": cluster.state.get("start_seconds"),
        "rounds": [],
        "footprintRounds": [],
    }
    operator = None
    try:
        cluster.install_crds(ROOT / "crds")
        namespaces = [f"ours-{n}" for n in ns_list] + [f"footprint-{n}" for n in footprint_ns]
        for ns in namespaces + [f"native-{n}" for n in ns_list]:
            cluster.kubectl("create", "namespace", ns)
        defaults = OperatorConfig()
        extra = [
            "--backoff-base", str(defaults.backoff_base_seconds),
            "--backoff-max", str(defaults.backoff_max_seconds),
            "--progress-poll-interval", str(defaults.progress_poll_seconds),
            "--start-timeout", str(defaults.start_timeout_seconds), "--workers", str(args.workers),
        ]  # fmt: skip
        log_path = Path(tempfile.gettempdir()) / "pfo-bench-operator.log"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        report["operatorLog"] = str(log_path)
        operator = OperatorProcess(cluster, namespaces, log_path, extra=extra)
        operator.start()
        assert operator.proc is not None
        sampler = Sampler(operator.proc.pid)
        report["operatorFlags"] = extra
        if args.idle_seconds > 0:
            rest = KubeRest(Path(cluster.kubeconfig))
            empty = Phase("ours", 1, 1, "ours-empty")
            report.setdefault("footprint", {})["empty"] = _idle(
                rest, sampler, empty, min(args.idle_seconds, 30)
            )

        for n in ns_list:
            rnd: dict[str, Any] = {"n": n}
            report["rounds"].append(rnd)
            for side in sides:
                print(f"== {side}, N={n}", file=sys.stderr)
                phase = Phase(side, n, 1, f"{side}-{n}")
                rnd[side] = run_phase(cluster, phase, sampler if side == "ours" else None, args.idle_seconds)
                rnd[side]["cleanupSeconds"] = round(delete_all(cluster, phase.namespace), 1)
                _save(args.out, report)
        for n in footprint_ns:
            print(f"== footprint, N={n} (pods without GPUs)", file=sys.stderr)
            phase = Phase("footprint", n, 0, f"footprint-{n}")
            rnd = {"n": n, "footprint": run_phase(cluster, phase, sampler, args.idle_seconds, finish=False)}
            report["footprintRounds"].append(rnd)
            rnd["footprint"]["cleanupSeconds"] = round(delete_all(cluster, phase.namespace, timeout=600), 1)
            _save(args.out, report)
        report["ratios"] = summarise(report["rounds"])
        report["operatorReconcileErrors"] = _reconcile_errors(operator)
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()
        report["totalSeconds"] = round(time.monotonic() - t_start, 1)
        report["timedOut"] = TIMED_OUT
        report.setdefault("ratios", summarise(report["rounds"]))
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
