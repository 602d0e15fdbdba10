"""Trainer progress for the benchmark's kwok pods: a progress line per epoch, as a trainer prints.

The steady state's running jobs are kwok pods, which print nothing: the operator's progress reads
found nothing, and "progress reaches the status once per epoch" (goal 4a) went unchecked. A feed
writes the trainer's own progress lines (finetune_contract.format_progress) at an epoch's pace into
a few log files, each served by kwok as the log of a group of pods (Cluster.serve_fake_logs, one
ClusterLogs object per group). The groups' epochs are staggered over one epoch, as for jobs that
started at different times. A watch of the jobs records when each job's status.progress.epoch
changed; `epoch_report` says which written epochs reached the status, which were skipped, and how
late each arrived.

With `push` (a `Pusher`), every pod also POSTs each record to the operator's progress endpoint, as
the trainer does (trainer/finetune_trainer/push.py): a new TLS connection per push, the pod's own
token, which the API server mints bound to the pod for its job's audience (a TokenRequest, as the
kubelet's projected volume does; the minting is the kubelet's work, not the operator's).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_contract import format_progress, progress_record, push_audience, push_path

from localcluster import Cluster, KubeRest
from localcluster.kwok import append_log_lines

EPOCHS = 100_000  # the feed's jobs never finish by epochs


@dataclass
class Written:
    epoch: int
    at: float  # time.monotonic() when the line was written


@dataclass
class EpochReport:
    reported: int = 0  # (job, epoch) pairs written and due in the window
    reached: int = 0  # ... whose epoch the job's status showed
    skipped: int = 0  # ... whose epoch the status never showed, a later one instead
    missed: int = 0  # ... not in the status by the window's end
    lags: list[float] = field(default_factory=list)  # written -> in the status, seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochsReported": self.reported,
            "epochsReached": self.reached,
            "epochsSkipped": self.skipped,
            "epochsMissed": self.missed,
            "everyEpochReached": self.reported > 0 and self.reached == self.reported,
        }


def epoch_report(
    written: Sequence[Sequence[Written]],
    seen: dict[str, list[tuple[int, float]]],
    group_of: dict[str, int],
    since: float,
    until: float,
    due_after: float,
) -> EpochReport:
    """For each job and each epoch its group's file got in [since, until - due_after]: did the
    job's status show that epoch, and how long after the line was written? `seen[job]`: the
    status.progress.epoch values in the order the watch saw them, with their arrival times."""
    out = EpochReport()
    for job, group in group_of.items():
        changes = seen.get(job, [])
        for w in written[group]:
            if not since <= w.at <= until - due_after:
                continue
            out.reported += 1
            exact = next((t for e, t in changes if e == w.epoch and t >= w.at), None)
            later = next((t for e, t in changes if e > w.epoch and t >= w.at), None)
            if exact is not None:
                out.reached += 1
                out.lags.append(exact - w.at)
            elif later is not None:
                out.skipped += 1
            else:
                out.missed += 1
    return out


class Pusher:
    """POSTs progress records for pods, as their trainers would, `threads` at a time."""

    def __init__(self, rest: KubeRest, url: str, ca: Path, namespace: str, threads: int = 16) -> None:
        self.rest, self.url, self.namespace = rest, url.rstrip("/"), namespace
        self.tls = ssl.create_default_context(cafile=str(ca))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="push")
        self.tokens: dict[str, str] = {}  # pod -> token
        self.answers: dict[int, int] = {}  # HTTP status -> count (0: no answer)
        self._lock = threading.Lock()

    def mint(self, jobs: Sequence[str], pods: Sequence[str]) -> float:
        """A bound token per pod (TokenRequest); returns the seconds it took."""
        t0 = time.monotonic()
        ns = self.namespace
        uids = {
            p["metadata"]["name"]: p["metadata"]["uid"]
            for p in self.rest.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        }

        def one(job: str, pod: str) -> None:
            body = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [push_audience(ns, job)],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uids[pod]},
                },
            }
            answer = self.rest.create(f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", body)
            self.tokens[pod] = answer["status"]["token"]

        list(self.pool.map(one, jobs, pods))
        return time.monotonic() - t0

    def push(self, job: str, pod: str, record: dict[str, Any]) -> None:
        token = self.tokens.get(pod)
        if token is None:  # not minted yet: the pod is not there yet, or just made
            return
        request = urllib.request.Request(
            self.url + push_path(self.namespace, job),
            data=json.dumps(record, separators=(",", ":"), sort_keys=True).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=30) as rsp:
                status = rsp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        with self._lock:
            self.answers[status] = self.answers.get(status, 0) + 1

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class ProgressFeed:
    """Progress lines every `epoch_seconds` for the pods of `jobs` (pod `pods[i]` of job `jobs[i]`)."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        jobs: Sequence[str],
        pods: Sequence[str],
        epoch_seconds: float,
        groups: int = 8,
        push: Pusher | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.epoch_seconds = epoch_seconds
        self.groups = max(1, min(groups, len(jobs)))
        self.group_of = {job: i % self.groups for i, job in enumerate(jobs)}
        self._pods = [[p for i, p in enumerate(pods) if i % self.groups == g] for g in range(self.groups)]
        self._jobs = [[j for i, j in enumerate(jobs) if i % self.groups == g] for g in range(self.groups)]
        self.push = push
        self.files = [cluster.fake_log_dir() / f"progress-{namespace}-{g}.log" for g in range(self.groups)]
        self.written: list[list[Written]] = [[] for _ in range(self.groups)]
        self.seen: dict[str, list[tuple[int, float]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress feed", daemon=True)
        self.started: float | None = None

    def _object(self, group: int) -> str:
        return f"pfo-bench-progress-{self.namespace}-{group}"

    def start(self) -> ProgressFeed:
        """Write every group's first line (epoch 0, as the trainer prints at its start), serve the
        files, and write an epoch's line at each group's pace from now on."""
        self.started = time.monotonic()
        for g, path in enumerate(self.files):
            path.unlink(missing_ok=True)
            self._write(g, 0)
            self.cluster.serve_fake_logs(self._object(g), Path(path), [self.namespace], self._pods[g])
        self._thread.start()
        return self

    def _write(self, group: int, epoch: int) -> None:
        extra = {"top1": round(min(0.99, 0.5 + epoch / 200), 4), "loss": 1.0}
        append_log_lines(self.files[group], [format_progress(epoch, EPOCHS, **extra)])
        with self._lock:
            self.written[group].append(Written(epoch, time.monotonic()))
        if self.push is not None:
            record = progress_record(epoch, EPOCHS, **extra)
            for job, pod in zip(self._jobs[group], self._pods[group], strict=True):
                self.push.pool.submit(self.push.push, job, pod, record)

    def _run(self) -> None:
        assert self.started is not None
        epoch = [0] * self.groups
        while not self._stop.is_set():
            now = time.monotonic()
            for g in range(self.groups):
                # group g's epoch k ends k + g / groups epochs after the start: staggered
                due = self.started + (epoch[g] + 1 + g / self.groups) * self.epoch_seconds
                if now >= due:
                    epoch[g] += 1
                    self._write(g, epoch[g])
            self._stop.wait(0.05)

    def on_job(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        """A Watcher callback on the jobs: record each change of status.progress.epoch."""
        name = obj["metadata"]["name"]
        if name not in self.group_of or kind == "DELETED":
            return
        epoch = ((obj.get("status") or {}).get("progress") or {}).get("epoch")
        if not isinstance(epoch, int):
            return
        with self._lock:
            changes = self.seen.setdefault(name, [])
            if not changes or changes[-1][0] != epoch:
                changes.append((epoch, at))

    def report(self, since: float, until: float) -> EpochReport:
        """Epochs written in the window that were due by its end: the operator reads about 5%
        of an epoch after a line should be there (progress_pace.py), half an epoch is plenty."""
        with self._lock:
            written = [list(w) for w in self.written]
            seen = {k: list(v) for k, v in self.seen.items()}
        return epoch_report(written, seen, self.group_of, since, until, self.epoch_seconds / 2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for g in range(self.groups):
            self.cluster.stop_fake_logs(self._object(g))
