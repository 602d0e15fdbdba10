"""Benchmark: failover between two operator replicas with leader election (a coordination.k8s.io
Lease), on a local control plane with fake (kwok) GPU nodes.

Two real operator processes (`python -m finetune_operator --leader-elect`, the lease timings the
chart ships: config.py's defaults) run side by side. FineTuneJobs are created at a steady rate
(--job-interval) and every pod is driven to an outcome about a second after it runs: one job in
three fails its first attempt transiently (exit code 137) and is retried, the rest succeed. Meanwhile
the leader is SIGKILLed --kills times (each a few random seconds after the previous handover, so
the kill lands anywhere in the renew cycle); the killed process is started again and stands by.
Per kill, from the arrival times of watch events here (monotonic clock):

* takeover: SIGKILL -> the Lease names the other replica;
* first reconcile: SIGKILL -> the new leader has reconciled a job (its finetune_jobs gauge, polled
  every 50 ms, counts one);
* first write: SIGKILL -> the new leader's first write (a pod created or a job's status);
* new job's pod: SIGKILL -> the pod of a job created right after the kill. The new leader
  reconciles every job once as its watches list them (finished ones too, in name order, with
  --workers at a time), so this grows with the number of jobs in the namespace.

The reference, in the same run (--restarts times): one replica alone, SIGKILLed and started again
at once with the same identity (a container restarted in its pod continues its own Lease), timed
to the pod of a job created right after the kill: the floor of any handover (the process start,
kopf's first listing, the queue) without the wait for the Lease.

Invariants, from watch streams over the whole run: every pod name was created once (one UID), a
job never had two live pods at once, a job's attempts are 1..n with n = status.attempts, every job
Succeeded after exactly the attempts its script asked for, every transition was reported by
one Event (two replicas acting at once each report it), and every Succeeded job has its Completed
Event (posted after the status, so a leader killed between the two leaves it to the next one's
first pass over the job). The control (--control-seconds): the same
traffic with two replicas and no leader election, which the Event check must catch.

    .venv/bin/python bench/failover.py [--kills 10] [--restarts 3] [--job-interval 1.0]
        [--control-seconds 20]

Writes bench/results/failover.json and prints a markdown table. `run_failover` is also what
tests/operator/test_leader_failover.py runs (fewer kills) against the test session's cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "contract", ROOT / "operator", ROOT / "trainer"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from finetune_contract import encode_result  # noqa: E402
from finetune_operator.api import GROUP, LABEL_ATTEMPT, LABEL_JOB, PLURAL, VERSION  # noqa: E402
from finetune_operator.config import OperatorConfig  # noqa: E402

import localcluster  # noqa: E402
from bench.kube_watch import Watcher  # noqa: E402
from bench.operator_scale import RESULT, job_manifest  # noqa: E402
from bench.proc_sampler import cpu_model  # noqa: E402
from localcluster import Cluster, KubeError, KubeRest, OperatorProcess, drive_annotations  # noqa: E402

FTJ = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
PODS = "/api/v1/namespaces/{ns}/pods"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
EVENTS = "/api/v1/namespaces/{ns}/events"
LEASE_NAME = "pfo-failover"
DRIVE_AFTER = 1.0  # seconds a pod runs before it is driven to its outcome
TERMINAL = ("Succeeded", "Failed")


def fails_once(job: str) -> bool:
    """The job's script: one in three fails its first attempt transiently."""
    return int(job.rsplit("-", 1)[1]) % 3 == 0


# ------------------------------------------------------------------------------ recording
@dataclass
class Timeline:
    """What the watch streams showed: pods, operator writes, Lease holders, in arrival order."""

    pod_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    pod_added: dict[str, float] = field(default_factory=dict)
    pod_job: dict[str, str] = field(default_factory=dict)
    pod_attempt: dict[str, int] = field(default_factory=dict)
    live: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # job -> pods
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest object per job
    writes: list[float] = field(default_factory=list)  # operator writes: pod created, status
    holders: list[tuple[float, str]] = field(default_factory=list)  # Lease holder changes
    violations: list[str] = field(default_factory=list)
    running: list[tuple[float, str]] = field(default_factory=list)  # pods to drive
    lock: threading.Lock = field(default_factory=threading.Lock)
    lease_name: str = LEASE_NAME

    def on_pod(self, at: float, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        name, uid = meta["name"], meta["uid"]
        labels = meta.get("labels") or {}
        job = labels.get(LABEL_JOB, "")
        phase = (pod.get("status") or {}).get("phase", "")
        with self.lock:
            if uid not in self.pod_uids[name]:
                self.pod_uids[name].add(uid)
                if len(self.pod_uids[name]) > 1:
                    self.violations.append(f"pod {name} created again (uids {sorted(self.pod_uids[name])})")
                others = self.live[job] - {name}
                if others:
                    self.violations.append(f"job {job}: pod {name} created while {sorted(others)} still live")
                self.pod_added[name] = at
                self.pod_job[name] = job
                self.pod_attempt[name] = int(labels.get(LABEL_ATTEMPT, "0"))
                if kind == "ADDED":
                    self.writes.append(at)
            if kind == "DELETED" or phase in TERMINAL:
                self.live[job].discard(name)
            elif name not in self.live[job] and phase not in TERMINAL:
                self.live[job].add(name)
            driven = (meta.get("annotations") or {}).get("pfo.dev/drive-phase")
            if phase == "Running" and not driven and all(n != name for _, n in self.running):
                self.running.append((at + DRIVE_AFTER, name))

    def on_job(self, at: float, kind: str, job: dict[str, Any]) -> None:
        with self.lock:
            if kind == "MODIFIED":  # only the operator writes a job (its status) after creation
                self.writes.append(at)
            if kind != "DELETED":
                self.jobs[job["metadata"]["name"]] = job

    def on_lease(self, at: float, kind: str, lease: dict[str, Any]) -> None:
        if lease["metadata"]["name"] != self.lease_name:
            return
        holder = (lease.get("spec") or {}).get("holderIdentity") or ""
        with self.lock:
            if not self.holders or self.holders[-1][1] != holder:
                self.holders.append((at, holder))

    def first_write_after(self, t: float) -> float | None:
        with self.lock:
            return min((w for w in self.writes if w > t), default=None)

    def holder_change_after(self, t: float, old: str) -> float | None:
        with self.lock:
            return next((at for at, h in self.holders if at > t and h and h != old), None)


def _join_if_started(thread: threading.Thread, timeout: float) -> None:
    if thread.ident is not None:
        thread.join(timeout)


class Traffic:
    """Creates a job every `interval` seconds and drives running pods to their outcomes."""

    def __init__(self, kubeconfig: Path, namespace: str, timeline: Timeline, interval: float) -> None:
        self.rest = KubeRest(kubeconfig)
        self.driver_rest = KubeRest(kubeconfig)
        self.namespace = namespace
        self.timeline = timeline
        self.interval = interval
        self.created: dict[str, float] = {}
        self.drive_errors: list[str] = []
        self._lock = threading.Lock()
        self._count = 0
        self._stop_creating = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._create_loop, name="create jobs", daemon=True),
            threading.Thread(target=self._drive_loop, name="drive pods", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def create_now(self) -> str:
        with self._lock:
            self._count += 1
            name = f"job-{self._count:04d}"
            manifest = job_manifest(name)
            manifest["spec"]["runPolicy"] = {"backoffLimit": 2}
            self.rest.create(FTJ.format(ns=self.namespace), manifest)
            self.created[name] = time.monotonic()
        return name

    def stop_creating(self) -> None:
        self._stop_creating.set()
        _join_if_started(self._threads[0], 30)

    def stop(self) -> None:
        """Also after a failure before `start` (the harness closes in a `finally`): joining a
        thread never started would raise and hide that failure."""
        self.stop_creating()
        self._stop.set()
        _join_if_started(self._threads[1], 30)

    def _create_loop(self) -> None:
        while not self._stop_creating.wait(self.interval):
            self.create_now()

    def _drive_loop(self) -> None:
        done: set[str] = set()
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self.timeline.lock:
                due = [n for at, n in self.timeline.running if at <= now and n not in done]
            for name in due:
                done.add(name)
                job = name.rsplit("-attempt-", 1)[0]
                if fails_once(job) and name.endswith("-attempt-1"):
                    notes = drive_annotations("Failed", exit_code=137, reason="Error", message="killed")
                else:
                    notes = drive_annotations("Succeeded", message=encode_result(RESULT))
                try:
                    patch = {"metadata": {"annotations": notes}}
                    self.driver_rest.patch(
                        f"{PODS.format(ns=self.namespace)}/{name}", patch, kind="merge-patch"
                    )
                except KubeError as exc:
                    self.drive_errors.append(f"{name}: {exc}")


# ------------------------------------------------------------------------------ the run
def _wait(what: str, check: Any, timeout: float, watchers: list[Watcher]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for w in watchers:
            if w.error is not None:
                raise RuntimeError(f"the watch of {w.path} failed: {w.error!r}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _one_leader(ops: list[OperatorProcess]) -> OperatorProcess | None:
    leading = [op for op in ops if op.leading()]
    return leading[0] if len(leading) == 1 else None


class Harness:
    """Watches (pods, jobs, the Lease, Events), traffic and operator replicas in one namespace."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        workdir: Path,
        job_interval: float,
        kubeconfig: str | None,
        lease_namespace: str = "",
        lease_name: str = LEASE_NAME,
        durations: tuple[float, float, float] | None = None,
    ) -> None:
        self.cluster = cluster
        self.durations = durations
        self.namespace = namespace
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.lease_namespace = lease_namespace or namespace
        self.lease_name = lease_name
        admin = Path(cluster.kubeconfig)
        self.timeline = Timeline(lease_name=lease_name)
        self.events: list[dict[str, Any]] = []
        self.watchers = [
            Watcher(admin, PODS.format(ns=namespace), self.timeline.on_pod).start(),
            Watcher(admin, FTJ.format(ns=namespace), self.timeline.on_job).start(),
            Watcher(admin, LEASES.format(ns=self.lease_namespace), self.timeline.on_lease).start(),
            Watcher(admin, EVENTS.format(ns=namespace), self._on_event).start(),
        ]
        self.traffic = Traffic(admin, namespace, self.timeline, job_interval)
        self.ops: list[OperatorProcess] = []

    def _on_event(self, at: float, kind: str, event: dict[str, Any]) -> None:
        if kind in ("ADDED", "LISTED") and event.get("involvedObject", {}).get("kind") == "FineTuneJob":
            self.events.append(event)

    def replica(self, identity: str, leader_elect: bool = True) -> OperatorProcess:
        flags = ["--workers", str(OperatorConfig().workers)]
        if leader_elect:
            flags += ["--leader-elect", "--leader-election-namespace", self.lease_namespace]
            flags += ["--leader-election-id", self.lease_name, "--leader-election-identity", identity]
            if self.durations:
                lease, renew, retry = (str(x) for x in self.durations)
                flags += ["--leader-elect-lease-duration", lease, "--leader-elect-renew-deadline", renew]
                flags += ["--leader-elect-retry-period", retry]
        op = OperatorProcess(
            self.cluster,
            [self.namespace],
            self.workdir / f"{identity}.log",
            extra=flags,
            kubeconfig=self.kubeconfig,
        )
        self.ops.append(op)
        return op

    def wait(self, what: str, check: Any, timeout: float) -> Any:
        return _wait(what, check, timeout, self.watchers)

    def finish(self) -> None:
        """Stop creating jobs and wait until every job created has finished."""
        self.traffic.stop_creating()
        tl = self.timeline

        def all_done() -> bool:
            with tl.lock:
                phases = [(tl.jobs.get(n) or {}).get("status", {}).get("phase") for n in self.traffic.created]
            return all(p in ("Succeeded", "Failed") for p in phases)

        self.wait("every job finished", all_done, 180)
        time.sleep(1.0)  # Events posted right after the last status write
        # A leader killed between a job's Succeeded status and its closing Event leaves that
        # Event to the next leader's first pass over the job: give it the time a takeover takes.
        with contextlib.suppress(TimeoutError):
            self.wait("every job's Completed Event", lambda: not self.unclosed(), 30)

    def unclosed(self) -> list[str]:
        with self.timeline.lock:
            jobs = dict(self.timeline.jobs)
        return unclosed_jobs(self.traffic.created, jobs, list(self.events))

    def close(self) -> None:
        self.traffic.stop()
        for op in self.ops:
            op.stop()
        for w in self.watchers:
            w.stop()

    def verdict(self) -> dict[str, Any]:
        tl, traffic = self.timeline, self.traffic
        violations = list(tl.violations) + [f"drive: {e}" for e in traffic.drive_errors]
        by_job: dict[str, list[int]] = defaultdict(list)
        for pod, job in tl.pod_job.items():
            by_job[job].append(tl.pod_attempt[pod])
        retries = 0
        for job in traffic.created:
            status = (tl.jobs.get(job) or {}).get("status") or {}
            attempts = sorted(by_job.get(job, []))
            want = 2 if fails_once(job) else 1
            retries += max(0, len(attempts) - 1)
            if status.get("phase") != "Succeeded":
                violations.append(f"job {job}: ended {status.get('phase')} ({status.get('message')})")
            if attempts != list(range(1, want + 1)):
                violations.append(f"job {job}: pods for attempts {attempts}, expected 1..{want}")
            if status.get("attempts") != len(attempts):
                violations.append(
                    f"job {job}: status.attempts {status.get('attempts')} but {len(attempts)} pods"
                )
        # Each transition is reported by exactly one Event (its message names the attempt): two
        # replicas acting at once both report it (the control run shows this happening).
        seen = Counter((e["involvedObject"]["name"], e["reason"], e["message"]) for e in self.events)
        twice = sorted(key for key, n in seen.items() if n > 1)
        violations += [
            f"job {job}: transition {reason} reported {seen[(job, reason, m)]} times"
            for job, reason, m in twice
        ]
        # ... and none is lost: the closing Event follows the status, so a kill between the two
        # must be made good by the next leader.
        violations += [f"job {job}: Succeeded without a Completed Event" for job in self.unclosed()]
        return {
            "jobs": len(traffic.created),
            "pods": len(tl.pod_job),
            "retries": retries,
            "events": len(self.events),
            "transitionsReportedTwice": len(twice),
            "violations": violations,
        }


def unclosed_jobs(
    created: list[str], jobs: dict[str, dict[str, Any]], events: list[dict[str, Any]]
) -> list[str]:
    """The jobs of `created` whose latest object says Succeeded and that no Completed Event names."""
    closed = {e["involvedObject"]["name"] for e in events if e.get("reason") == "Completed"}
    phase = {name: ((job or {}).get("status") or {}).get("phase") for name, job in jobs.items()}
    return [name for name in created if phase.get(name) == "Succeeded" and name not in closed]


def reconciled_jobs(metrics_text: str) -> float:
    """Jobs a replica has reconciled (the sum of its finetune_jobs gauge): 0 on a standby."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("finetune_jobs{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _handover(h: Harness, t_kill: float, old: str, survivor: OperatorProcess) -> dict[str, Any]:
    """Create a job at once, then wait for the moments of one handover: the Lease taken, the
    survivor's first reconcile pass (its finetune_jobs gauge counts a job), its first write, the
    new job's pod."""
    tl = h.timeline
    probe = h.traffic.create_now()
    pod = f"{probe}-attempt-1"
    first_pass: float | None = None

    def served() -> bool:
        nonlocal first_pass
        if first_pass is None:
            try:
                if reconciled_jobs(survivor.metrics()) > 0:
                    first_pass = time.monotonic()
            except OSError:
                pass
        return pod in tl.pod_added and first_pass is not None

    h.wait(f"pod {pod} of the job created after the kill, and a first reconcile", served, 90)
    takeover = h.wait("the Lease to name another holder", lambda: tl.holder_change_after(t_kill, old), 30)
    first_write = tl.first_write_after(takeover)
    with tl.lock:
        holder = tl.holders[-1][1]
    assert first_pass is not None
    return {
        "takeoverSeconds": round(takeover - t_kill, 3),
        "firstReconcileSeconds": round(first_pass - t_kill, 3),
        "firstWriteSeconds": round((first_write or tl.pod_added[pod]) - t_kill, 3),
        "newJobPodSeconds": round(tl.pod_added[pod] - t_kill, 3),
        "newLeader": holder,
        "loadAverage1m": round(os.getloadavg()[0], 2),
        "jobsSoFar": len(h.traffic.created),
    }


def run_failover(
    cluster: Cluster,
    namespace: str,
    workdir: Path,
    kills: int = 10,
    restarts: int = 3,
    job_interval: float = 1.0,
    seed: int = 1,
    kubeconfig: str | None = None,
    lease_namespace: str = "",
    lease_name: str = LEASE_NAME,
    durations: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """Two replicas, the leader SIGKILLed `kills` times, then the reference restarts, in
    `namespace` (which must exist, with the CRD installed); `kubeconfig` is the operators' identity
    (default: the admin's), the Lease `lease_name` in `lease_namespace` (default: `namespace`), the
    operator's default lease durations unless `durations` (lease, renew deadline, retry) are given."""
    rng = random.Random(seed)
    defaults = OperatorConfig()
    lease, renew, retry = durations or (
        defaults.lease_duration_seconds,
        defaults.renew_deadline_seconds,
        defaults.retry_period_seconds,
    )
    report: dict[str, Any] = {
        "leaseDurationSeconds": lease,
        "renewDeadlineSeconds": renew,
        "retryPeriodSeconds": retry,
        "jobIntervalSeconds": job_interval,
        "kills": [],
        "restarts": [],
    }
    h = Harness(cluster, namespace, workdir, job_interval, kubeconfig, lease_namespace, lease_name, durations)
    try:
        ops = [h.replica("replica-a"), h.replica("replica-b")]
        for op in ops:
            op.start()
        h.wait("one replica leading", lambda: _one_leader(ops), 60)
        h.traffic.start()
        for k in range(kills):
            leader = h.wait("exactly one leader", lambda: _one_leader(ops), 60)
            time.sleep(rng.uniform(2.0, 4.0))  # anywhere in the renew cycle, amid traffic
            old = next(holder for _, holder in reversed(h.timeline.holders) if holder)
            t_kill = time.monotonic()
            leader.kill()
            survivor = next(op for op in ops if op is not leader)
            row = {"kill": k + 1, "killed": old, **_handover(h, t_kill, old, survivor)}
            report["kills"].append(row)
            print(
                f"  kill {k + 1}: takeover {row['takeoverSeconds']:.2f}s, first reconcile "
                f"{row['firstReconcileSeconds']:.2f}s, first write {row['firstWriteSeconds']:.2f}s, "
                f"new job's pod {row['newJobPodSeconds']:.2f}s (load {row['loadAverage1m']}, "
                f"{row['jobsSoFar']} jobs)",
                file=sys.stderr,
            )
            leader.start()  # back as the standby
        if restarts:  # the reference: one replica alone, restarted at once with its own identity
            next(op for op in ops if not op.leading()).stop()
            for r in range(restarts):
                leader = h.wait("the remaining replica leading", lambda: _one_leader(ops), 60)
                time.sleep(rng.uniform(2.0, 4.0))
                t_kill = time.monotonic()
                leader.kill()
                probe = h.traffic.create_now()
                leader.start()
                pod = f"{probe}-attempt-1"
                h.wait(f"pod {pod}", lambda: pod in h.timeline.pod_added, 90)  # noqa: B023
                row = {
                    "restart": r + 1,
                    "newJobPodSeconds": round(h.timeline.pod_added[pod] - t_kill, 3),
                    "loadAverage1m": round(os.getloadavg()[0], 2),
                }
                report["restarts"].append(row)
                print(f"  restart {r + 1}: new job's pod {row['newJobPodSeconds']:.2f}s", file=sys.stderr)
        h.finish()
    finally:
        h.close()
    report.update(h.verdict())
    report["summary"] = summarise(report)
    return report


def run_control(
    cluster: Cluster, namespace: str, workdir: Path, seconds: float, job_interval: float = 1.0
) -> dict[str, Any]:
    """The control: the same traffic with two replicas and no leader election (both act)."""
    h = Harness(cluster, namespace, workdir, job_interval, None)
    try:
        for identity in ("control-a", "control-b"):
            h.replica(identity, leader_elect=False).start()
        h.traffic.start()
        time.sleep(seconds)
        h.finish()
    finally:
        h.close()
    return {"seconds": seconds, **h.verdict()}


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None, "min": None}
    return {
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "min": round(min(values), 2),
    }


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    kills, restarts = report["kills"], report["restarts"]
    summary = {
        key: _stats([k[key] for k in kills])
        for key in ("takeoverSeconds", "firstReconcileSeconds", "firstWriteSeconds", "newJobPodSeconds")
    }
    summary["restartNewJobPodSeconds"] = _stats([r["newJobPodSeconds"] for r in restarts])
    summary["loadAverage1m"] = _stats([k["loadAverage1m"] for k in kills])
    ref = summary["restartNewJobPodSeconds"]["median"]
    own = summary["newJobPodSeconds"]["median"]
    summary["ratioNewJobPodFailoverOverRestart"] = round(own / ref, 2) if own and ref else None
    return summary


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    rows = [
        ("SIGKILL -> the Lease names the other replica", s["takeoverSeconds"]),
        ("SIGKILL -> the new leader's first reconcile (goal <= 15 s)", s["firstReconcileSeconds"]),
        ("SIGKILL -> the new leader's first write (a pod, a status)", s["firstWriteSeconds"]),
        ("SIGKILL -> pod of a job created right after the kill", s["newJobPodSeconds"]),
        ("reference: one replica restarted at once -> new job's pod", s["restartNewJobPodSeconds"]),
        ("load average (1 min) at the kills", s["loadAverage1m"]),
    ]
    lines = [
        f"Lease {report['leaseDurationSeconds']} s, renew deadline {report['renewDeadlineSeconds']} s, "
        f"retry {report['retryPeriodSeconds']} s; {len(report['kills'])} kills, "
        f"{len(report['restarts'])} restarts; "
        f"{report['jobs']} jobs, {report['pods']} pods ({report['retries']} retries); "
        f"violations: {len(report['violations'])}",
        "",
        "| seconds | median | worst | best |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {v['median']} | {v['max']} | {v['min']} |" for name, v in rows]
    lines.append("")
    lines.append(f"failover / restart (new job's pod, medians): {s['ratioNewJobPodFailoverOverRestart']}")
    control = report.get("control")
    if control:
        lines.append(
            f"control, two replicas without leader election for {control['seconds']:g} s: "
            f"{control['jobs']} jobs, {control['transitionsReportedTwice']} transitions reported twice, "
            f"{len(control['violations'])} violations"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="times the leader is SIGKILLed")
    parser.add_argument("--restarts", type=int, default=3, help="reference: one replica restarted at once")
    parser.add_argument("--job-interval", type=float, default=1.0, help="seconds between new jobs")
    parser.add_argument(
        "--control-seconds", type=float, default=20, help="control: two replicas without election (0: skip)"
    )
    parser.add_argument(
        "--durations",
        default="",
        help="lease,renew-deadline,retry seconds (default: the operator's own, which the chart ships)",
    )
    parser.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pfo-bench-failover")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "failover.json")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    print(f"starting a local control plane in {args.state_dir}", file=sys.stderr)
    cluster = localcluster.start(args.state_dir, owner_pid=os.getpid())
    workdir = Path(tempfile.mkdtemp(prefix="pfo-failover-"))
    try:
        cluster.install_crds(ROOT / "crds")
        cluster.kubectl("create", "namespace", "failover")
        durations = tuple(float(x) for x in args.durations.split(",")) if args.durations else None
        report = run_failover(
            cluster,
            "failover",
            workdir,
            args.kills,
            args.restarts,
            args.job_interval,
            durations=durations,  # type: ignore[arg-type]
        )
        if args.control_seconds > 0:
            cluster.kubectl("create", "namespace", "control")
            report["control"] = run_control(
                cluster, "control", workdir, args.control_seconds, args.job_interval
            )
    finally:
        cluster.stop()
    report.update(
        benchmark="failover between two operator replicas (leader election on a Lease)",
        command="bench/failover.py " + " ".join(sys.argv[1:] if argv is None else argv),
        machine=f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores available",
        operatorLogs=str(workdir),
        totalSeconds=round(time.monotonic() - t0, 1),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"\nwrote {args.out} in {report['totalSeconds']}s")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
