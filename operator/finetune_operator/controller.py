"""The reconcile loop of one FineTuneJob: look at the job and its pods, converge, say when to
look again.

Level-based: every decision comes from the job (spec and status) and the pods that exist now, so
a restarted operator picks up where the last one stopped. The attempt's pod name is derived from
the job and the attempt number; a pod created just before a crash, whose attempt the status has
not recorded yet, is adopted rather than duplicated. The only in-process state is a throttle for
log reads, which a restart merely resets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_contract import SettingsError, TrainerResult, parse_last_progress

from . import retry
from .api import CONTAINER, FINISHED, LABEL_ATTEMPT, Phase, Reason
from .config import OperatorConfig
from .job_status import (
    StatusUpdate,
    finetune_from_result,
    metrics_from_result,
    now_iso,
    parse_time,
    progress_at_success,
    progress_from_record,
    same_progress,
    success_message,
)
from .kube import Kube, api_message, is_status
from .metrics import Metrics
from .pod import pod_name, pod_selector, render_pod
from .pod_state import PodOutcome, observe_pod
from .trainer_settings import trainer_settings

log = logging.getLogger("finetune_operator")

LOG_LIMIT_BYTES = 256 * 1024  # the most a progress poll reads, whatever the line lengths
WAIT_FOR_TERMINATION = 2.0  # seconds between looks at a pod that is being deleted
_REPORTED = ("metrics", "finetune", "progress")  # status parts that come from the trainer's output


@dataclass
class _Pass:
    """What one reconcile pass knows and has decided."""

    job: dict[str, Any]
    now: datetime
    update: StatusUpdate = field(default_factory=StatusUpdate)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def meta(self) -> dict[str, Any]:
        return self.job["metadata"]

    @property
    def spec(self) -> dict[str, Any]:
        return self.job.get("spec") or {}

    @property
    def status(self) -> dict[str, Any]:
        return self.job.get("status") or {}

    @property
    def policy(self) -> dict[str, Any]:
        return self.spec.get("runPolicy") or {}

    @property
    def stamp(self) -> str:
        return now_iso(self.now)

    def get(self, key: str) -> Any:
        """The status field as this pass will leave it."""
        return self.update.fields[key] if key in self.update.fields else self.status.get(key)

    def transition(self, phase: str, reason: str, message: str, event_type: str = "Normal") -> None:
        old = self.status
        self.update.transition(old, phase, reason, message, self.stamp, self.meta.get("generation"))
        if (old.get("phase"), old.get("reason")) != (phase, reason):
            self.events.append((event_type, reason, message))


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._last_poll: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def forget(self, namespace: str, name: str) -> None:
        """The job was deleted."""
        with self._lock:
            self._last_poll.pop((namespace, name), None)
        self.metrics.forget_job(namespace, name)

    # ------------------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> float | None:
        """Converge one job; returns the seconds until it should be looked at again (None: only
        when something changes)."""
        try:
            job = self.kube.get_job(namespace, name)
        except Exception as exc:
            if is_status(exc, 404):
                self.forget(namespace, name)
                return None
            raise
        if job["metadata"].get("deletionTimestamp"):
            return None  # the garbage collector removes the pods
        p = _Pass(job=job, now=self.clock())
        try:
            requeue = self._decide(p)
        finally:
            self._commit(p)
        self.metrics.observe_job(namespace, name, p.get("phase"))
        return requeue

    def _commit(self, p: _Pass) -> None:
        meta = p.meta
        changes = p.update.changes(p.status)
        if changes:
            try:
                self.kube.patch_job_status(meta["namespace"], meta["name"], changes)
            except Exception as exc:
                if not is_status(exc, 422) or not set(changes) & set(_REPORTED):
                    raise
                # The trainer reported something the status schema refuses: keep the lifecycle
                # moving without the report rather than retrying the same patch forever.
                dropped = ", ".join(sorted(set(changes) & set(_REPORTED)))
                where = f"{meta['namespace']}/{meta['name']}"
                log.error(
                    "%s: status rejected (%s); retrying without %s", where, getattr(exc, "body", exc), dropped
                )
                trimmed = {k: v for k, v in changes.items() if k not in _REPORTED}
                if trimmed:
                    self.kube.patch_job_status(meta["namespace"], meta["name"], trimmed)
        for event_type, reason, message in p.events:
            try:
                self.kube.job_event(p.job, event_type, reason, message, p.stamp)
            except Exception as exc:  # an Event is worth a log line, not a failed reconcile
                log.warning(
                    "could not post the %s event for %s/%s: %s", reason, meta["namespace"], meta["name"], exc
                )
            log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)

    def _owned_pods(self, p: _Pass) -> dict[int, dict[str, Any]]:
        uid = p.meta["uid"]
        pods = {}
        for pod in self.kube.list_pods(p.meta["namespace"], pod_selector(p.meta["name"])):
            owners = pod["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == uid and o.get("controller") for o in owners):
                continue  # a pod of an earlier job with the same name, on its way out
            try:
                pods[int(pod["metadata"]["labels"][LABEL_ATTEMPT])] = pod
            except (KeyError, ValueError):
                continue
        return pods

    def _decide(self, p: _Pass) -> float | None:
        status, policy = p.status, p.policy
        if status.get("phase") in FINISHED:
            return self._finished(p)

        pods = self._owned_pods(p)
        attempts = max([status.get("attempts") or 0, *pods])
        if attempts != (status.get("attempts") or 0):
            # A pod created just before the operator stopped: adopt it.
            p.update.fields.update(
                attempts=attempts, podName=pod_name(p.meta["name"], attempts), nextAttemptTime=None
            )

        try:
            trainer_settings(p.job)
        except SettingsError as exc:
            self._fail(p, pods.get(attempts), Reason.INVALID_SPEC, str(exc))
            return self._finished(p)

        current = pods.get(attempts)
        if current and _terminating(current):
            if policy.get("suspend") or status.get("phase") == Phase.SUSPENDED:
                current = None  # our own deletion on suspend: the pod is as good as gone
            else:
                return WAIT_FOR_TERMINATION  # someone deletes it: judge it once it has terminated
        outcome = observe_pod(current) if current else None

        if outcome and outcome.phase == "Succeeded":
            self._succeed(p, outcome)
            return self._finished(p)

        if policy.get("suspend"):
            message = "the job is suspended (spec.runPolicy.suspend): no pod runs until it is resumed"
            if status.get("phase") == Phase.SUSPENDED:
                message = status.get("message") or message  # keep the suspension's own message
            if current and outcome and outcome.phase in ("Pending", "Running"):
                name = current["metadata"]["name"]
                self.kube.delete_pod(p.meta["namespace"], name, current["metadata"]["uid"])
                message = f"the job is suspended (spec.runPolicy.suspend): deleted pod {name}"
            p.update.fields["nextAttemptTime"] = None
            p.transition(Phase.SUSPENDED, Reason.SUSPENDED, message)
            return None

        if status.get("phase") == Phase.SUSPENDED:
            # Resumed: a new attempt, with a fresh deadline (as batch/v1 Job does).
            return self._start_attempt(p, attempts + 1, resumed=True)

        remaining = self._deadline_remaining(p)
        if remaining is not None and remaining <= 0:
            if current and outcome and outcome.phase in ("Pending", "Running"):
                self.kube.delete_pod(
                    p.meta["namespace"], current["metadata"]["name"], current["metadata"]["uid"]
                )
            deadline = policy["activeDeadlineSeconds"]
            self._fail(
                p,
                None,
                Reason.DEADLINE_EXCEEDED,
                f"the job ran longer than activeDeadlineSeconds ({deadline}s)",
            )
            return self._finished(p)

        if outcome is None:
            if attempts == 0:
                return self._start_attempt(p, 1)
            next_at = parse_time(p.get("nextAttemptTime"))
            if next_at and p.now < next_at:
                return _soonest((next_at - p.now).total_seconds(), remaining)
            if not next_at and p.status.get("reason") != Reason.POD_FORBIDDEN:
                p.events.append(
                    ("Warning", Reason.POD_MISSING, f"pod {pod_name(p.meta['name'], attempts)} disappeared")
                )
            return self._start_attempt(p, attempts + 1)
        if outcome.phase == "Failed":
            failures = sum(1 for pod in pods.values() if (pod.get("status") or {}).get("phase") == "Failed")
            return self._failed_attempt(p, outcome, attempts, failures, remaining)
        if outcome.phase == "Pending":
            return self._pending(p, current, outcome, remaining)
        # Running
        pod = current["metadata"]["name"]
        p.transition(Phase.RUNNING, Reason.RUNNING, f"attempt {attempts}: pod {pod} is running")
        self._poll_progress(p, pod)
        return _soonest(self.config.progress_poll_seconds, remaining)

    # ------------------------------------------------------------------------------------------
    def _deadline_remaining(self, p: _Pass) -> float | None:
        deadline = p.policy.get("activeDeadlineSeconds")
        start = parse_time(p.get("startTime"))
        if not deadline or not start:
            return None
        return (start + timedelta(seconds=deadline) - p.now).total_seconds()

    def _start_attempt(self, p: _Pass, attempt: int, resumed: bool = False) -> float | None:
        meta = p.meta
        pod = render_pod(p.job, attempt, self.config)
        name = pod["metadata"]["name"]
        try:
            self.kube.create_pod(pod)
        except Exception as exc:
            if is_status(exc, 422):  # the pod as rendered can never be created
                self._fail(
                    p, None, Reason.POD_INVALID, f"the API server refused pod {name}: {api_message(exc)}"
                )
                return self._finished(p)
            if is_status(exc, 403):  # a quota or an admission policy: may pass later
                return self._forbidden(p, name, api_message(exc))
            if not is_status(exc, 409):  # 409: it exists already, which is what we want
                raise
        fields = p.update.fields
        fields.update(attempts=attempt, podName=name, nextAttemptTime=None)
        if resumed or not p.status.get("startTime"):
            fields["startTime"] = p.stamp
        if attempt == 1 and not p.status.get("attempts"):
            created = parse_time(meta.get("creationTimestamp"))
            if created:
                self.metrics.pod_creation.observe(max(0.0, (p.now - created).total_seconds()))
        self.metrics.attempts.inc()
        what = "resumed" if resumed else ("started" if attempt == 1 else "retried")
        p.transition(Phase.PENDING, Reason.POD_CREATED, f"attempt {attempt} {what}: created pod {name}")
        if (p.status.get("phase"), p.status.get("reason")) == (Phase.PENDING, Reason.POD_CREATED):
            p.events.append(("Normal", Reason.POD_CREATED, f"attempt {attempt} {what}: created pod {name}"))
        return _soonest(self._pending_timeout(p), self._deadline_remaining(p))

    def _forbidden(self, p: _Pass, name: str, message: str) -> float | None:
        """Pod creation refused (403: ResourceQuota, PodSecurity, another admission policy):
        Pending with the API server's words, retried, Failed after the pending timeout."""
        timeout = self._pending_timeout(p)
        waiting_since = p.now
        if p.status.get("reason") == Reason.POD_FORBIDDEN:
            waiting_since = parse_time(p.status.get("lastTransitionTime")) or p.now
        waited = (p.now - waiting_since).total_seconds()
        text = f"the API server refused pod {name}: {message}"
        if waited >= timeout:
            self._fail(p, None, Reason.POD_FORBIDDEN, f"{text} (for more than {timeout:g}s)")
            return self._finished(p)
        p.transition(Phase.PENDING, Reason.POD_FORBIDDEN, text, "Warning")
        return _soonest(min(self.config.backoff_max_seconds, timeout - waited), self._deadline_remaining(p))

    def _pending_timeout(self, p: _Pass) -> float:
        return float(p.policy.get("pendingTimeoutSeconds") or self.config.pending_timeout_seconds)

    def _pending(
        self, p: _Pass, pod: dict[str, Any], outcome: PodOutcome, remaining: float | None
    ) -> float | None:
        timeout = self._pending_timeout(p)
        since = parse_time(outcome.since) or p.now
        waited = (p.now - since).total_seconds()
        if waited >= timeout:
            self.kube.delete_pod(p.meta["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"])
            reason = (
                outcome.reason
                if outcome.reason not in (Reason.POD_PENDING, "ContainerCreating")
                else Reason.PENDING_TIMEOUT
            )
            detail = f": {outcome.message}" if outcome.message else ""
            self._fail(p, None, reason, f"the pod was pending for more than {timeout:g}s{detail}")
            return self._finished(p)
        message = outcome.message or f"pod {pod['metadata']['name']} is waiting to start"
        p.transition(
            Phase.PENDING,
            outcome.reason,
            message,
            "Warning" if outcome.reason == Reason.UNSCHEDULABLE else "Normal",
        )
        return _soonest(timeout - waited, remaining)

    def _failed_attempt(
        self, p: _Pass, outcome: PodOutcome, attempts: int, failures: int, remaining: float | None
    ) -> float | None:
        decision = retry.decide(outcome, failures, int(p.policy.get("backoffLimit", 2)))
        if not decision.retry:
            self._fail(p, None, decision.reason, decision.message)
            return self._finished(p)
        next_at = parse_time(p.get("nextAttemptTime"))
        if next_at is None:
            delay = retry.backoff_seconds(
                failures, self.config.backoff_base_seconds, self.config.backoff_max_seconds
            )
            next_at = p.now + timedelta(seconds=delay)
            p.update.fields["nextAttemptTime"] = now_iso(next_at)
            self.metrics.retries.labels(reason=outcome.reason).inc()
            p.transition(
                Phase.PENDING,
                Reason.RETRYING,
                f"attempt {attempts} failed ({outcome.reason}: {outcome.message}); "
                f"attempt {attempts + 1} starts after {delay:g}s",
                "Warning",
            )
        if p.now < next_at:
            return _soonest((next_at - p.now).total_seconds(), remaining)
        return self._start_attempt(p, attempts + 1)

    def _succeed(self, p: _Pass, outcome: PodOutcome) -> None:
        result = outcome.result or TrainerResult()
        fields = p.update.fields
        fields["metrics"] = metrics_from_result(result)
        finetune = finetune_from_result(result)
        if finetune:
            fields["finetune"] = finetune
        progress = progress_at_success(result, p.status.get("progress"), p.stamp)
        if progress is not None:
            fields["progress"] = progress
        fields["completionTime"] = p.stamp
        fields["nextAttemptTime"] = None
        p.transition(Phase.SUCCEEDED, Reason.COMPLETED, success_message(result, outcome.message))
        self._count_outcome(p, Phase.SUCCEEDED, Reason.COMPLETED)

    def _fail(self, p: _Pass, pod: dict[str, Any] | None, reason: str, message: str) -> None:
        if pod is not None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self.kube.delete_pod(p.meta["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"])
        p.update.fields["completionTime"] = p.stamp
        p.update.fields["nextAttemptTime"] = None
        p.transition(Phase.FAILED, reason, message, "Warning")
        self._count_outcome(p, Phase.FAILED, reason)

    def _count_outcome(self, p: _Pass, phase: str, reason: str) -> None:
        if p.status.get("phase") == phase:
            return
        self.metrics.outcomes.labels(phase=phase, reason=reason).inc()
        created = parse_time(p.meta.get("creationTimestamp"))
        if created:
            self.metrics.duration.labels(phase=phase).observe(max(0.0, (p.now - created).total_seconds()))

    def _finished(self, p: _Pass) -> float | None:
        """A Succeeded/Failed job: keep the top-1 gauge, and delete it when its TTL is over."""
        meta = p.meta
        top1 = (p.get("metrics") or {}).get("top1")
        if top1 is not None:
            self.metrics.top1.labels(namespace=meta["namespace"], name=meta["name"]).set(top1)
        ttl = p.policy.get("ttlSecondsAfterFinished")
        done = parse_time(p.get("completionTime"))
        if ttl is None or done is None:
            return None
        left = (done + timedelta(seconds=ttl) - p.now).total_seconds()
        if left > 0:
            return left
        log.info(
            "%s/%s: ttlSecondsAfterFinished (%ss) is over: deleting the job",
            meta["namespace"],
            meta["name"],
            ttl,
        )
        try:
            self.kube.delete_job(meta["namespace"], meta["name"], meta["uid"])
        except Exception as exc:
            if not is_status(exc, 404) and not is_status(exc, 409):
                raise
        return None

    def _poll_progress(self, p: _Pass, pod: str) -> None:
        """Read the trainer's latest progress line from the tail of its log, at most once per
        poll interval per job, and patch only when it changed."""
        key = (p.meta["namespace"], p.meta["name"])
        tick = time.monotonic()
        with self._lock:
            last = self._last_poll.get(key)
            if last is not None and tick - last < self.config.progress_poll_seconds * 0.9:
                return
            self._last_poll[key] = tick
        # Only what was written since about the last poll: a progress line older than that is in
        # the status already, and the window keeps a long progress-bar line from filling the
        # byte limit before the newest lines.
        since = int(self.config.progress_poll_seconds * 2) + 10
        try:
            text = self.kube.pod_log_tail(
                key[0], pod, CONTAINER, self.config.log_tail_lines, LOG_LIMIT_BYTES, since
            )
        except Exception as exc:  # no log yet, or a node that serves none
            log.debug("%s/%s: no log for progress: %s", key[0], key[1], exc)
            return
        record = parse_last_progress(text)
        if record is None:
            return
        progress = progress_from_record(record, p.stamp)
        if not same_progress(p.status.get("progress"), progress):
            p.update.fields["progress"] = progress
        if "top1" in progress:
            self.metrics.top1.labels(namespace=key[0], name=key[1]).set(progress["top1"])


def _terminating(pod: dict[str, Any]) -> bool:
    """Being deleted and not finished yet."""
    phase = (pod.get("status") or {}).get("phase")
    return bool(pod["metadata"].get("deletionTimestamp")) and phase not in ("Succeeded", "Failed")


def _soonest(*delays: float | None) -> float | None:
    known = [d for d in delays if d is not None]
    return max(0.0, min(known)) if known else None
