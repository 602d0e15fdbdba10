"""Trainer progress for the benchmark's kwok pods: a progress line per epoch, as a trainer prints.

The steady state's running jobs are kwok pods, which print nothing: the operator's progress reads
found nothing, and "progress reaches the status once per epoch" (goal 4a) went unchecked. A feed
writes the trainer's own progress lines (finetune_contract.format_progress) at an epoch's pace into
a few log files, each served by kwok as the log of a group of pods (Cluster.serve_fake_logs, one
ClusterLogs object per group). The groups' epochs are staggered over one epoch, as for jobs that
started at different times. A watch of the jobs records when each job's status.progress.epoch
changed; `epoch_report` says which written epochs reached the status, which were skipped, and how
late each arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_contract import format_progress

from localcluster import Cluster
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
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.epoch_seconds = epoch_seconds
        self.groups = max(1, min(groups, len(jobs)))
        self.group_of = {job: i % self.groups for i, job in enumerate(jobs)}
        self._pods = [[p for i, p in enumerate(pods) if i % self.groups == g] for g in range(self.groups)]
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
        line = format_progress(epoch, EPOCHS, top1=round(min(0.99, 0.5 + epoch / 200), 4), loss=1.0)
        append_log_lines(self.files[group], [line])
        with self._lock:
            self.written[group].append(Written(epoch, time.monotonic()))

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
