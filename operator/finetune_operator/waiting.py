"""How long a Pending job may wait, and for what (pure functions).

Two kinds of waiting (`pod_state` tells them apart):

* **capacity**: the scheduler finds no node with room (free GPUs), or a ResourceQuota is full.
  Normal on a busy GPU cluster: the job queues, bounded only by `schedulingTimeoutSeconds`
  (the operator's `--scheduling-timeout`, default no limit), timed from when the pod became
  unschedulable.
* **start**: the pod has a node, or could have one, but cannot run: an image that cannot be
  pulled, a bad config, a claim that does not exist, an admission webhook that refuses it, or a
  start that never comes (a volume that never mounts). Bounded by `startTimeoutSeconds`
  (`--start-timeout`, default 600 s), timed from when the pod entered that state (placed on a
  node, or refused), not from its creation: time spent waiting for capacity does not count.

A refused creation leaves no pod to date the wait from, so the status remembers when the wait
began (`status.waiting.since`). A missing permission is a third kind: an installation to fix, not
a job's failure, so it has no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .api import Waiting
from .config import OperatorConfig
from .job_status import now_iso, parse_time


@dataclass(frozen=True)
class Wait:
    """A Pending job's wait: its kind, the scheduler's or kubelet's reason and words, since when,
    and for how long it may last (None: no limit)."""

    kind: str
    reason: str
    message: str
    since: datetime
    limit: float | None

    @property
    def deadline(self) -> datetime | None:
        return None if self.limit is None else self.since + timedelta(seconds=self.limit)

    def left(self, now: datetime) -> float | None:
        """Seconds until the wait is over (<= 0: it is), None without a limit."""
        deadline = self.deadline
        return None if deadline is None else (deadline - now).total_seconds()

    def expired(self, now: datetime) -> bool:
        left = self.left(now)
        return left is not None and left <= 0

    def status(self) -> dict[str, Any]:
        """status.waiting."""
        out: dict[str, Any] = {"kind": self.kind, "reason": self.reason, "since": now_iso(self.since)}
        if self.deadline is not None:
            out["deadline"] = now_iso(self.deadline)
        return out


def limit(kind: str, run_policy: dict[str, Any], config: OperatorConfig) -> float | None:
    """The seconds a wait of `kind` may last for this job (None: no limit)."""
    if kind == Waiting.START:
        return float(run_policy.get("startTimeoutSeconds") or config.start_timeout_seconds)
    if kind == Waiting.CAPACITY:
        seconds = run_policy.get("schedulingTimeoutSeconds")
        seconds = config.scheduling_timeout_seconds if seconds is None else seconds
        return float(seconds) if seconds else None  # 0: no limit
    return None


def remembered_since(previous: dict[str, Any] | None, kind: str, now: datetime) -> datetime:
    """When a wait with no pod to date it began: the status's record of a wait of the same kind,
    else now."""
    if previous and previous.get("kind") == kind:
        return parse_time(previous.get("since")) or now
    return now
