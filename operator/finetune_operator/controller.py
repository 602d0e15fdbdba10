"""The reconcile loop of one FineTuneJob: look at the job and its pods, converge, say when to
look again.

Level-based: every decision comes from the job (spec and status) and the pods that exist now, so
a restarted operator picks up where the last one stopped. One pass reads the job and its pods,
decides, and writes in this order:

1. the attempt's pods (one per rank), its PodGroup and, once rank 0 has an IP, its ConfigMap,
   created while deciding (whether they were created, refused or invalid decides the status);
2. Events, before the status: a process that dies between the two posts them again on its next
   pass rather than never; under the same names (kube.event_name: the job's version, the
   Event's place in the pass and the Event), so the API server keeps one and `kubectl describe`
   shows each transition once;
3. the status, one JSON merge patch of what changed;
4. the Event of the job's last transition (Succeeded or Failed), after the status: the status
   then waits for no other request. A job makes that transition once, so the Event is named
   after the job's uid and reason, and the first pass over a finished job in a process (after
   a restart or a failover, or after the post failed) posts it again from the status, which
   the API server keeps once: at most one more request per job finished within the API
   server's Event TTL, at each restart;
5. deletions, after the status that says why: pods that must not run any more, and the job
   itself once its TTL is over.

What makes every crash point safe (tests/operator/test_crash_points.py dies before and after each
write of each pass):

* `status.attempts` is the highest attempt started. Its pods are created first, named after the
  job, the attempt and the rank; a pod the status has not recorded yet is adopted, not
  duplicated. A multi-node attempt's `status.ranks.attempt` says all its ranks were created:
  until then a missing rank is created (a crash came between two creations), after it a missing
  rank is a vanished pod.
* `status.endedAttempts`: attempts up to it have ended and are accounted for;
  `status.failedAttempts`: how many of them failed. The one patch that judges attempt N writes
  both, so a failure is counted exactly once, however often the pod is seen afterwards and even
  once it is deleted. A pod that vanished before it was judged is a transient failure
  (`PodMissing`), retried after the back-off like any other.
* The next attempt's pod is created only by a pass after the one that ended the previous
  attempt, so an end is never lost to a crash between the two writes.
* At most one attempt's pods run: pods of ended attempts are deleted (all ranks, as soon as one
  failed), and the next attempt waits until they are gone (their trainer may still be writing
  its checkpoint).

The only in-process state is when to read each running trainer's log (progress_pace.py) and the
metrics, which a restart merely resets, and, when `kube` reads from the watch cache (cache.py),
that cache. A cache may lag behind the API server, so a pass trusts it for what it shows and
never for an absence or an old status: a pod it does not show is confirmed with the API server
before it counts as missing and before a retry's pod is created; a pod is deleted only on what
the API server shows; a creation refused for a name in use and a status write refused for a
stale resourceVersion (the write's precondition) send the pass back to the API server
(`_Stale`), which repeats it on fresh reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_contract import SettingsError, TrainerResult, parse_last_progress

from . import retry, spec_checks, waiting
from .api import (
    CONTAINER,
    FINISHED,
    KUEUE_POD_GROUP_NAME,
    KUEUE_QUEUE_NAME,
    LABEL_ATTEMPT,
    MASTER_KEY,
    Phase,
    Reason,
    Waiting,
)
from .cache import CachedKube
from .config import OperatorConfig
from .gang import CONFIG_WAIT, Gang, observe_gang, rank_of
from .gang import counts as rank_counts
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
from .kube import KubeApi, KubeReads, api_status, is_status
from .kueue import KueueStop, kueue_gated, kueue_managed, kueue_stop, workload_stop, workload_words
from .metrics import Metrics
from .pod import (
    attempt_name,
    nodes_of,
    pod_name,
    pod_selector,
    queue_name,
    render_attempt,
    render_master_config,
    render_pod_group,
)
from .pod_state import PodOutcome
from .progress_pace import Pace, line_time
from .progress_push import Pushed
from .refusal import classify
from .trainer_settings import trainer_settings

log = logging.getLogger("finetune_operator")

LOG_LIMIT_BYTES = 256 * 1024  # the most a progress poll reads, whatever the line lengths
WAIT_FOR_TERMINATION = 2.0  # seconds between looks at a pod that is being deleted
OVERDUE_SECONDS = 10.0  # a pod still shown this long after its deletion deadline is checked
# The longest a job that is not finished goes without a timed look (a safety net under the
# watches, for waits that have no deadline of their own).
RESYNC_SECONDS = 300.0
# A job Kueue holds is looked at this often for its Workload's words (its admission itself comes
# through the pod watch: Kueue removes the pod's gate), and sooner while Kueue has said nothing yet.
QUEUED_POLL_SECONDS = 15.0
QUEUED_FIRST_POLL_SECONDS = 2.0
# kube-apiserver's default --event-ttl: a job that finished longer ago has lost its Events anyway,
# so a restart does not post its closing Event again.
EVENT_TTL_SECONDS = 3600.0
CLOSING_RETRY_SECONDS = 5.0  # a closing Event that could not be posted is tried again this soon
# The closing Event's type: a pass that repeats it knows the phase, not the type it was posted as.
CLOSING_TYPE = {Phase.SUCCEEDED: "Normal", Phase.FAILED: "Warning"}
_REPORTED = ("metrics", "finetune", "progress")  # status parts that come from the trainer's output
# A pending pod's reasons that only say it is on its way (created, scheduled, pulling, mounting).
_ROUTINE = (Reason.POD_PENDING, "ContainerCreating", "PodInitializing")


class _Stale(Exception):
    """The watch cache contradicted the API server, or cannot be trusted for a decision: redo the
    pass on fresh reads."""


@dataclass
class _Pass:
    """What one reconcile pass knows and has decided."""

    job: dict[str, Any]
    now: datetime
    fresh: bool = True  # read from the API server (False: from the watch cache)
    update: StatusUpdate = field(default_factory=StatusUpdate)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    closing: tuple[str, str, str] | None = None  # the last transition's Event, after the status
    closing_owed: bool = False  # its post failed: look again soon
    deletes: list[tuple[str, str]] = field(default_factory=list)  # pods (name, uid), after the status
    delete_job: bool = False  # the TTL is over: delete the job after the status
    top1: float | None = None  # for the per-job gauge
    gone: bool = False  # the job was deleted (by us, or under us)

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

    def count(self, key: str) -> int:
        return int(self.get(key) or 0)

    def transition(self, phase: str, reason: str, message: str, event_type: str | None = "Normal") -> None:
        """Phase, reason and message; an Event of `event_type` if they changed (None: a routine
        step that is not worth an Event)."""
        old = self.status
        self.update.transition(old, phase, reason, message, self.stamp, self.meta.get("generation"))
        self.update.fields["waiting"] = None  # a Pending wait sets its own after this
        if event_type and (old.get("phase"), old.get("reason")) != (phase, reason):
            if phase in FINISHED:
                self.closing = (CLOSING_TYPE[phase], reason, message)
            else:
                self.events.append((event_type, reason, message))

    def delete(self, pod: dict[str, Any]) -> None:
        if not self.fresh:  # the cache may show a pod running that has ended (its log matters)
            raise _Stale(f"pod {pod['metadata']['name']} is to be deleted")
        item = (pod["metadata"]["name"], pod["metadata"]["uid"])
        if item not in self.deletes:
            self.deletes.append(item)


class Reconciler:
    def __init__(
        self,
        kube: KubeApi,
        config: OperatorConfig,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        live: KubeReads | None = None,
    ) -> None:
        """`live`: the API server's reads when `kube` reads from a watch cache (cache.py), for
        the decisions an absence in the cache must not make; None when `kube` reads fresh."""
        self.kube = kube
        self.live = live
        self.stale_passes = 0  # passes redone on fresh reads (the cache lagged)
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._paces: dict[tuple[str, str], Pace] = {}  # per running job: when to read its log
        self._pushed: dict[tuple[str, str], Pushed] = {}  # per job: the latest progress pushed
        self._closed: dict[tuple[str, str], str] = {}  # finished jobs whose closing Event was posted
        # Per job: the spec version (uid, generation) last checked, and what was wrong with it.
        self._checked: dict[tuple[str, str], tuple[tuple[str, Any], str | None]] = {}
        self._lock = threading.Lock()
        # Whether new jobs are piling up (the work queue sets it): then a new job's first pass
        # only creates its pod, and a later pass records it (see `_start_attempt`).
        self.busy: Callable[[], bool] = lambda: False

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        """The job (`uid`, or whichever job had that name) was deleted."""
        with self._lock:
            self._paces.pop((namespace, name), None)
            self._pushed.pop((namespace, name), None)
            self._closed.pop((namespace, name), None)
            self._checked.pop((namespace, name), None)
        self.metrics.forget_job(namespace, name, uid)

    def sweep(self) -> None:
        """Forget the jobs that were deleted while no watch event could say so (a watch gap, a
        deletion between two passes): what an informer's relist does for its cache."""
        mark = self.metrics.mark()
        present: set[tuple[str, str, str]] = set()
        # On the watch cache, the same lists also drop what it holds of objects deleted unseen.
        relist = getattr(self.kube, "relist", self.kube.list_jobs)
        for namespace in self.config.namespaces or (None,):
            for job in relist(namespace):
                meta = job["metadata"]
                present.add((meta["namespace"], meta["name"], meta["uid"]))
        for namespace, name, uid in self.metrics.seen_before(mark):
            if (namespace, name, uid) not in present:
                self.forget(namespace, name, uid)

    def report_error(
        self, namespace: str, name: str, error: BaseException, failures: int, delay: float
    ) -> None:
        """A Warning Event on a job whose reconcile keeps failing (best effort: the API server
        may be what fails)."""
        uid = self.metrics.uid_of(namespace, name) or ""
        job = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
        message = (
            f"reconciling the job failed {failures} times in a row "
            f"({type(error).__name__}: {str(error)[:300]}); next try in {delay:g}s"
        )
        try:
            self.kube.job_event(job, "Warning", Reason.RECONCILE_ERROR, message, now_iso(self.clock()))
        except Exception as exc:
            log.debug("%s/%s: no ReconcileError event: %s", namespace, name, exc)

    # ------------------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> float | None:
        """Converge one job; returns the seconds until it should be looked at again (None: only
        when something changes)."""
        if self.live is None:
            return self._reconcile(namespace, name, fresh=True)
        try:
            return self._reconcile(namespace, name, fresh=False)
        except _Stale as why:
            self.stale_passes += 1
            log.debug("%s/%s: the watch cache lags (%s): reading from the API server", namespace, name, why)
            return self._reconcile(namespace, name, fresh=True)

    def _reads(self, p: _Pass) -> KubeReads:
        return self.live if p.fresh and self.live is not None else self.kube

    def _reconcile(self, namespace: str, name: str, fresh: bool) -> float | None:
        reads = self.live if fresh and self.live is not None else self.kube
        self.metrics.passes.labels(reads="fresh" if fresh else "cache").inc()
        try:
            job = reads.get_job(namespace, name)
        except Exception as exc:
            if is_status(exc, 404):
                self.forget(namespace, name)
                return None
            raise
        meta = job["metadata"]
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes the pods
        p = _Pass(job=job, now=self.clock(), fresh=fresh)
        requeue = self._decide(p)
        self._commit(p)
        if p.gone:
            self.forget(namespace, name, meta["uid"])
            return None
        self.metrics.observe_job(namespace, name, meta["uid"], p.get("phase"), p.top1)
        if p.closing_owed:
            return CLOSING_RETRY_SECONDS if requeue is None else min(requeue, CLOSING_RETRY_SECONDS)
        return requeue

    def _commit(self, p: _Pass) -> None:
        meta = p.meta
        where = f"{meta['namespace']}/{meta['name']}"
        for seq, (event_type, reason, message) in enumerate(p.events):
            try:
                self.kube.job_event(p.job, event_type, reason, message, p.stamp, seq)
            except Exception as exc:  # an Event is worth a log line, not a failed reconcile
                log.warning("could not post the %s event for %s: %s", reason, where, exc)
            log.info("%s: %s: %s", where, reason, message)
        changes = p.update.changes(p.status)
        # A status decided from the watch cache is written only onto the job it was read from.
        version = None if p.fresh else meta.get("resourceVersion")
        if changes:
            try:
                self.kube.patch_job_status(meta["namespace"], meta["name"], changes, version)
            except Exception as exc:
                if is_status(exc, 404):  # deleted under us: nothing left to converge
                    p.gone = True
                    return
                if is_status(exc, 409) and not p.fresh:
                    raise _Stale("the job changed since the cache showed it") from exc
                if not is_status(exc, 422) or not set(changes) & set(_REPORTED):
                    raise
                # The trainer reported something the status schema refuses: keep the lifecycle
                # moving without the report rather than retrying the same patch forever.
                dropped = ", ".join(sorted(set(changes) & set(_REPORTED)))
                log.error(
                    "%s: status rejected (%s); retrying without %s", where, getattr(exc, "body", exc), dropped
                )
                trimmed = {k: v for k, v in changes.items() if k not in _REPORTED}
                if trimmed:
                    self.kube.patch_job_status(meta["namespace"], meta["name"], trimmed, version)
        if p.closing is not None:
            self._post_closing(p, where, *p.closing)
        for name, uid in p.deletes:
            self.kube.delete_pod(meta["namespace"], name, uid)
        if p.delete_job:
            try:
                self.kube.delete_job(meta["namespace"], meta["name"], meta["uid"])
            except Exception as exc:
                if not is_status(exc, 404) and not is_status(exc, 409):
                    raise
            p.gone = True

    def _post_closing(self, p: _Pass, where: str, event_type: str, reason: str, message: str) -> None:
        stamp = p.get("completionTime") or p.stamp  # when the transition happened
        try:
            self.kube.job_event(p.job, event_type, reason, message, stamp, closing=True)
        except Exception as exc:
            log.warning("could not post the %s event for %s: %s", reason, where, exc)
            p.closing_owed = True
            return
        with self._lock:
            self._closed[(p.meta["namespace"], p.meta["name"])] = p.meta["uid"]
        if p.status.get("phase") not in FINISHED:  # not a repeat
            log.info("%s: %s: %s", where, reason, message)

    def _closing_unsure(self, p: _Pass) -> None:
        """A job found finished: its closing Event is posted again (the API server keeps one)
        unless this process knows it posted it, or the API server has dropped it by now."""
        key = (p.meta["namespace"], p.meta["name"])
        with self._lock:
            if self._closed.get(key) == p.meta["uid"]:
                return
        done = parse_time(p.status.get("completionTime"))
        if done is None or (p.now - done).total_seconds() > EVENT_TTL_SECONDS:
            with self._lock:
                self._closed[key] = p.meta["uid"]
            return
        status = p.status
        p.closing = (CLOSING_TYPE[status["phase"]], status.get("reason") or "", status.get("message") or "")

    def _owned_pods(self, p: _Pass) -> dict[int, dict[int, dict[str, Any]]]:
        """The job's pods: attempt -> rank -> pod."""
        uid = p.meta["uid"]
        pods: dict[int, dict[int, dict[str, Any]]] = {}
        selector = pod_selector(p.meta["name"])
        listed = self._reads(p).list_pods(p.meta["namespace"], selector)
        if p.fresh and isinstance(self.kube, CachedKube):  # the cache lagged: catch it up
            self.kube.refresh(p.meta["namespace"], selector, p.job, listed)
        for pod in listed:
            owners = pod["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == uid and o.get("controller") for o in owners):
                continue  # a pod of an earlier job with the same name, on its way out
            try:
                attempt = int(pod["metadata"]["labels"][LABEL_ATTEMPT])
            except (KeyError, ValueError):
                continue
            rank = rank_of(pod)
            if rank >= 0:
                pods.setdefault(attempt, {})[rank] = pod
        return pods

    # ------------------------------------------------------------------------------------------
    def _decide(self, p: _Pass) -> float | None:
        pods = self._owned_pods(p)
        if p.status.get("phase") in FINISHED:
            with self._lock:  # its spec is checked no more
                self._checked.pop((p.meta["namespace"], p.meta["name"]), None)
            self._closing_unsure(p)
            return self._finished(p, pods)

        newest = max(pods, default=0)
        if newest > p.count("attempts"):
            # Created just before the operator stopped, before the status recorded it: adopt it
            # (and, below, create the ranks a crash kept from being created).
            resumed = p.status.get("phase") in (Phase.SUSPENDED, Phase.QUEUED)
            self._record_attempt(p, newest, resumed, pods[newest])
        attempts = p.count("attempts")
        in_flight = attempts > p.count("endedAttempts")
        ranks = pods.get(attempts, {}) if in_flight else {}
        for number, group in pods.items():  # pods of ended attempts must not run
            for pod in group.values():
                if (number != attempts or not in_flight) and _active(pod) and not _terminating(pod):
                    p.delete(pod)

        problem = self._spec_problem(p)
        if problem is not None:
            self._fail(p, Reason.INVALID_SPEC, problem)
            return self._finished(p, pods)

        nodes = nodes_of(p.job)
        gang = observe_gang(ranks, nodes) if ranks else None
        outcome = gang.outcome if gang else None
        if outcome and outcome.phase == "Succeeded":
            self._rank_status(p, attempts, ranks, gang)
            self._succeed(p, outcome)
            return self._finished(p, pods)
        if p.policy.get("suspend"):
            return self._suspend(p, ranks, outcome, pods)
        remaining = self._deadline_remaining(p)
        if remaining is not None and remaining <= 0:
            deadline = p.policy["activeDeadlineSeconds"]
            self._fail(
                p, Reason.DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds ({deadline}s)"
            )
            return self._finished(p, pods)

        if in_flight:
            name = pod_name(p.meta["name"], attempts, 0, nodes)
            if gang is None:
                what = f"pod {name}" if nodes == 1 else f"the pods of attempt {attempts}"
                if not p.fresh:
                    raise _Stale(f"the cache does not show {what}")
                missed = self._missed_kueue_stop(p, attempts)
                if missed is not None:
                    return self._kueue_stopped(p, {}, missed)
                message = f"{what} disappeared before it finished"
                p.events.append(("Warning", Reason.POD_MISSING, message))
                return self._attempt_failed(
                    p, PodOutcome("Failed", Reason.POD_MISSING, message, transient=True), ranks
                )
            for pod in ranks.values():  # Kueue stops all ranks (a preemption is no failure)
                stop = kueue_stop(pod)
                if stop is not None:
                    return self._kueue_stopped(p, ranks, stop)
            if outcome is not None and outcome.phase == "Failed":
                self._rank_status(p, attempts, ranks, gang)
                return self._attempt_failed(p, outcome, ranks, gang.rank)
            if gang.missing:
                if not self._all_created(p, attempts):
                    # A crash (or a refusal) came between the creation of two ranks.
                    return self._start_attempt(p, attempts, resumed=False, existing=ranks)
                rank = gang.missing[0]
                missing = pod_name(p.meta["name"], attempts, rank, nodes)
                if not p.fresh:
                    raise _Stale(f"the cache does not show pod {missing}")
                message = f"pod {missing} (rank {rank}) disappeared before it finished"
                p.events.append(("Warning", Reason.POD_MISSING, message))
                self._rank_status(p, attempts, ranks, gang)
                p.update.fields["ranks"].update(failedRank=rank, failedReason=Reason.POD_MISSING)
                missing_outcome = PodOutcome("Failed", Reason.POD_MISSING, message, transient=True)
                return self._attempt_failed(p, missing_outcome, ranks, rank)
            self._rank_status(p, attempts, ranks, gang)
            if outcome is None:
                self._check_gone_in_time(p, list(ranks.values()))
                return WAIT_FOR_TERMINATION  # someone deletes it: judge it once it has terminated
            gated = [pod for pod in ranks.values() if kueue_gated(pod)]
            if gated and outcome.phase == "Pending":
                return self._queued(p, gated[0])
            if not p.get("startTime"):
                # Kueue admitted the attempt just now: the job's clock starts here, not when it
                # was queued (as for a batch Job that Kueue unsuspends).
                p.update.fields["startTime"] = p.stamp
                remaining = self._deadline_remaining(p)
            if nodes > 1 and not self._publish_master(p, attempts, ranks.get(0)):
                return WAIT_FOR_TERMINATION  # another ConfigMap of that name is in the way
            if outcome.phase == "Pending":
                return self._pending(p, ranks, outcome, remaining, gang, nodes)
            if nodes == 1:
                message = f"attempt {attempts}: pod {name} is running"
            else:
                message = f"attempt {attempts}: all {nodes} ranks are running (rank 0: pod {name})"
            p.transition(Phase.RUNNING, Reason.RUNNING, message)
            started = parse_time(((ranks.get(0) or {}).get("status") or {}).get("startTime"))
            return _soonest(self._poll_progress(p, name, started), remaining)

        # No attempt in flight: start the next once the last one's pods are gone and its back-off
        # is over.
        active = [pod for group in pods.values() for pod in group.values() if _active(pod)]
        if active:
            self._check_gone_in_time(p, active)
            return WAIT_FOR_TERMINATION
        next_at = parse_time(p.get("nextAttemptTime"))
        if next_at and p.now < next_at:
            return _soonest((next_at - p.now).total_seconds(), remaining)
        # After a suspension, or a preemption by Kueue, the next attempt resumes (from the checkpoint).
        resumed = p.status.get("phase") in (Phase.SUSPENDED, Phase.QUEUED)
        if attempts and not p.fresh:
            raise _Stale("an earlier attempt's pod may still run where the cache does not show it")
        return self._start_attempt(p, attempts + 1, resumed=resumed)

    def _spec_problem(self, p: _Pass) -> str | None:
        """Why the job's spec cannot run (naming the field), or None. Checked once per spec
        version (the job's uid and generation), not on every pass: building the trainer's
        settings was 4% of the operator's CPU in a burst."""
        key = (p.meta["namespace"], p.meta["name"])
        version = (p.meta["uid"], p.meta.get("generation"))
        with self._lock:
            known = self._checked.get(key)
        if known is not None and known[0] == version:
            return known[1]
        problem = spec_checks.refused(p.job, self.config)
        if problem is None:
            try:
                trainer_settings(p.job)
            except SettingsError as exc:
                problem = str(exc)
        with self._lock:
            self._checked[key] = (version, problem)
        return problem

    # ------------------------------------------------------------------------------------------
    def _check_gone_in_time(self, p: _Pass, pods: list[dict[str, Any]]) -> None:
        """Waiting for pods to go, on the watch cache: one past its deletion deadline (its grace
        period) by more than a few seconds may have gone while the watch was down (kopf reports
        no deletions after a relist): ask the API server."""
        if p.fresh:
            return
        for pod in pods:
            deadline = parse_time(pod["metadata"].get("deletionTimestamp"))
            if deadline is not None and (p.now - deadline).total_seconds() > OVERDUE_SECONDS:
                raise _Stale(f"pod {pod['metadata']['name']} should be gone by now")

    def _deadline_remaining(self, p: _Pass) -> float | None:
        deadline = p.policy.get("activeDeadlineSeconds")
        start = parse_time(p.get("startTime"))
        if not deadline or not start:
            return None
        return (start + timedelta(seconds=deadline) - p.now).total_seconds()

    def _end_attempt(self, p: _Pass) -> None:
        """The attempt in flight has ended (accounted for in the same patch as its outcome)."""
        p.update.fields["endedAttempts"] = p.count("attempts")

    def _all_created(self, p: _Pass, attempt: int) -> bool:
        """Whether every rank of `attempt` was created (the status says so once they all
        existed; a single-node attempt is recorded only once its pod exists)."""
        return nodes_of(p.job) == 1 or (p.get("ranks") or {}).get("attempt") == attempt

    def _rank_status(
        self, p: _Pass, attempt: int, ranks: dict[int, dict[str, Any]], gang: Gang | None = None
    ) -> None:
        """status.ranks of a multi-node attempt whose ranks all exist(ed): how many are pending,
        running, succeeded and failed, the rank that failed and why, and rank 0's address."""
        if nodes_of(p.job) == 1:
            return
        old = p.get("ranks") or {}
        record: dict[str, Any] = {"attempt": attempt, **rank_counts(ranks)}
        if old.get("attempt") == attempt and old.get("master"):
            record["master"] = old["master"]
        outcome = gang.outcome if gang else None
        if outcome is not None and outcome.phase == "Failed":
            record["failedRank"] = gang.rank if gang else 0
            record["failedReason"] = outcome.reason
        # A merge patch: the keys of the last attempt's record that this one lacks are deleted.
        p.update.fields["ranks"] = {**{k: None for k in old}, **record}

    def _record_attempt(
        self, p: _Pass, attempt: int, resumed: bool, ranks: dict[int, dict[str, Any]]
    ) -> None:
        """The status records attempt `attempt`, whose pods (some or all ranks) exist."""
        nodes = nodes_of(p.job)
        name = pod_name(p.meta["name"], attempt, 0, nodes)
        fields = p.update.fields
        fields.update(attempts=attempt, podName=name, nextAttemptTime=None)
        what = "resumed" if resumed else ("started" if attempt == 1 else "retried")
        if nodes == 1:
            message = f"attempt {attempt} {what}: created pod {name}"
        else:
            last = pod_name(p.meta["name"], attempt, nodes - 1, nodes)
            message = f"attempt {attempt} {what}: created pods {name} .. {last} ({nodes} ranks)"
        if len(ranks) == nodes:
            self._rank_status(p, attempt, ranks)
        pod = next(iter(ranks.values()))
        if kueue_gated(pod):
            # Queued: the job's clock (activeDeadlineSeconds) starts when Kueue admits it.
            if resumed:
                fields["startTime"] = None
            queue = pod["metadata"].get("labels", {}).get(KUEUE_QUEUE_NAME, "")
            p.transition(
                Phase.QUEUED, Reason.QUEUED, f"{message}, waiting for admission by LocalQueue {queue}"
            )
            p.update.fields["waiting"] = waiting.Wait(
                Waiting.ADMISSION, Reason.QUEUED, "", p.now, None
            ).status()
            return
        if resumed or not p.status.get("startTime"):
            fields["startTime"] = p.stamp
        p.transition(Phase.PENDING, Reason.POD_CREATED, message)

    def _start_attempt(
        self,
        p: _Pass,
        attempt: int,
        resumed: bool,
        existing: dict[int, dict[str, Any]] | None = None,
    ) -> float | None:
        """Create the ranks of `attempt` that do not exist yet (all of a new attempt), rank 0
        first, and record the attempt. Names are derived from the job, the attempt and the rank,
        so a pass repeated after a crash finds the ranks it made instead of making second ones."""
        ranks = dict(existing or {})
        recorded = p.count("attempts") == attempt
        group = render_pod_group(p.job, attempt, self.config)
        if group is not None and len(ranks) < nodes_of(p.job):
            try:  # before the pods, which name it: the gang scheduler places them together
                self.kube.create_pod_group(group)
            except Exception as exc:
                if not is_status(exc, 409):
                    raise
        for pod in render_attempt(p.job, attempt, self.config):
            rank = rank_of(pod)
            if rank in ranks:
                continue
            name = pod["metadata"]["name"]
            try:
                ranks[rank] = self.kube.create_pod(pod)
            except Exception as exc:
                status = api_status(exc)
                if status is None or status.code not in (403, 409, 422):
                    raise
                if status.code == 409 and not p.fresh:
                    raise _Stale(f"pod {name} exists where the cache shows none") from exc
                if ranks and not recorded:
                    # Some ranks exist: the attempt has begun (the rest are created later).
                    self._record_attempt(p, attempt, resumed, ranks)
                    self.metrics.attempts.inc()
                if status.code == 409:
                    # Not ours (ours would have been adopted): a pod of a deleted job of the same
                    # name on its way out, or one a concurrent pass just created. Look again soon.
                    p.transition(
                        Phase.PENDING,
                        Reason.POD_EXISTS,
                        f"pod {name} exists and is not this job's yet: waiting for it to go",
                        "Warning",
                    )
                    return WAIT_FOR_TERMINATION
                return self._refused(p, name, status, {attempt: ranks} if ranks else {})
        if recorded:
            self._rank_status(p, attempt, ranks)  # the last ranks of a recorded attempt
            return WAIT_FOR_TERMINATION
        created = ranks[0]
        queue = queue_name(p.job)
        if attempt == 1 and nodes_of(p.job) == 1 and not queue and self.busy():
            # A burst: the pod now, its Event and status later. The next pass (its pod's next
            # event, or the timed requeue below, which waits the burst out) records the attempt
            # as a crash here would have it recorded (`_decide` adopts it), usually together
            # with the pod's next step: one status write where there were two.
            self._count_creation(p, attempt)
            return 0.0
        self._record_attempt(p, attempt, resumed, ranks)
        if queue and not kueue_managed(created):
            p.events.append(
                (
                    "Warning",
                    Reason.NOT_QUEUED,
                    f"the job asks for the Kueue LocalQueue {queue}, but Kueue did not take pod "
                    f"{created['metadata']['name']}: Kueue is not installed or does not manage "
                    f"namespace {p.meta['namespace']} (its managedJobsNamespaceSelector); the pod "
                    "runs without waiting for quota",
                )
            )
        self._count_creation(p, attempt)
        # A pod Kueue gates brings no event of its own until admission (the watch cache already
        # holds what the create answered): look again soon for the Workload's words.
        wait = QUEUED_FIRST_POLL_SECONDS if kueue_gated(created) else RESYNC_SECONDS
        return _soonest(wait, self._deadline_remaining(p))

    def _count_creation(self, p: _Pass, attempt: int) -> None:
        self.metrics.attempts.inc()
        if attempt == 1 and not p.status.get("attempts"):
            created_at = parse_time(p.meta.get("creationTimestamp"))
            if created_at:
                self.metrics.pod_creation.observe(max(0.0, (p.now - created_at).total_seconds()))

    def _publish_master(self, p: _Pass, attempt: int, rank0: dict[str, Any] | None) -> bool:
        """Once rank 0 has an IP, the attempt's ConfigMap tells the other ranks its address
        (their kubelets hold them until it exists). False: a ConfigMap of that name that is not
        this rank 0's is in the way; try again soon."""
        if rank0 is None or not (rank0.get("status") or {}).get("podIP"):
            return True
        config_map = render_master_config(p.job, attempt, rank0)
        address = config_map["data"][MASTER_KEY]
        ranks = p.get("ranks") or {}
        if ranks.get("attempt") == attempt and ranks.get("master") == address:
            return True
        namespace, name = p.meta["namespace"], config_map["metadata"]["name"]
        try:
            self.kube.create_config_map(config_map)
        except Exception as exc:
            if not is_status(exc, 409):
                raise
            found = self.kube.get_config_map(namespace, name) or {}
            owners = (found.get("metadata") or {}).get("ownerReferences") or []
            rank0_uid = rank0["metadata"]["uid"]
            if found and not any(o.get("uid") == rank0_uid for o in owners):
                # Not this rank 0's: a deleted job's (the garbage collector removes it with its
                # pod) or someone else's. The operator may not delete ConfigMaps (RBAC.md).
                p.transition(
                    Phase.PENDING,
                    Reason.CONFIG_MAP_EXISTS,
                    f"ConfigMap {name} exists and is not this attempt's (rank 0's address): "
                    "waiting for it to go",
                    "Warning",
                )
                return False
        p.update.fields["ranks"] = {**ranks, "attempt": attempt, "master": address}
        return True

    def _refused(
        self, p: _Pass, name: str, status: Any, pods: dict[int, dict[int, dict[str, Any]]]
    ) -> float | None:
        """The API server refused one of the attempt's pods: fail (deleting `pods`, the ranks
        created before it), or wait and try again (refusal.py)."""
        namespace = p.meta["namespace"]
        refusal = classify(status, name, namespace, lambda: self.kube.can_i("create", "pods", namespace))
        if refusal.wait is None:
            self._fail(p, refusal.reason, refusal.message)
            return self._finished(p, pods)
        since = waiting.remembered_since(p.status.get("waiting"), refusal.wait, p.now)
        wait = waiting.Wait(
            refusal.wait,
            refusal.reason,
            refusal.message,
            since,
            waiting.limit(refusal.wait, p.policy, self.config),
        )
        if wait.expired(p.now):
            self._fail(p, refusal.reason, f"{refusal.message} (for more than {wait.limit:g}s)")
            return self._finished(p, pods)
        if refusal.reason == Reason.MISSING_PERMISSION:
            log.error("%s/%s: %s", namespace, p.meta["name"], refusal.message)
        p.transition(Phase.PENDING, refusal.reason, refusal.message, "Warning")
        p.update.fields["waiting"] = wait.status()
        # Try again soon at first, then further apart (level-based: from how long it has lasted).
        waited = (p.now - since).total_seconds()
        delay = min(self.config.backoff_max_seconds, max(self.config.backoff_base_seconds, waited))
        return _soonest(delay, wait.left(p.now), self._deadline_remaining(p))

    def _queued(self, p: _Pass, pod: dict[str, Any]) -> float | None:
        """Kueue holds the attempt's pod until its LocalQueue admits the attempt: phase Queued,
        with the Workload's words, and no time limit (the job's clock has not started)."""
        labels = pod["metadata"].get("labels") or {}
        queue = labels.get(KUEUE_QUEUE_NAME, "")
        group = labels.get(KUEUE_POD_GROUP_NAME) or pod["metadata"]["name"]
        words = None
        try:
            words = workload_words(self.kube.get_workload(p.meta["namespace"], group))
        except Exception as exc:  # no permission, or Kueue's API not served: the phase still says it
            log.debug("%s/%s: no Workload %s: %s", p.meta["namespace"], p.meta["name"], group, exc)
        if words is None:
            reason, message = Reason.QUEUED, f"waiting for admission by LocalQueue {queue}"
        else:
            kueue_reason, said = words
            reason = Reason.INADMISSIBLE if kueue_reason == "Inadmissible" else Reason.QUEUED
            message = f"waiting for admission by LocalQueue {queue}: {said}"
        since = waiting.remembered_since(p.status.get("waiting"), Waiting.ADMISSION, p.now)
        # A pod adopted in this very pass (created before a crash) was reported Queued already.
        said = any(r == reason for _, r, _ in p.events)
        kind = None if said else ("Warning" if reason == Reason.INADMISSIBLE else "Normal")
        p.transition(Phase.QUEUED, reason, message, kind)
        p.update.fields["waiting"] = waiting.Wait(Waiting.ADMISSION, reason, message, since, None).status()
        return QUEUED_POLL_SECONDS if words else QUEUED_FIRST_POLL_SECONDS

    def _missed_kueue_stop(self, p: _Pass, attempt: int) -> KueueStop | None:
        """The attempt's pod is gone unseen (the operator was down): Kueue stopped it if the
        attempt's Workload, named after its pod group, is still there and says Evicted."""
        if not queue_name(p.job):
            return None
        try:
            return workload_stop(
                self.kube.get_workload(p.meta["namespace"], attempt_name(p.meta["name"], attempt))
            )
        except Exception as exc:  # no permission, or Kueue's API not served: judged as missing
            log.debug(
                "%s/%s: no Workload for attempt %d: %s", p.meta["namespace"], p.meta["name"], attempt, exc
            )
            return None

    def _kueue_stopped(self, p: _Pass, ranks: dict[int, dict[str, Any]], stop: KueueStop) -> float | None:
        """Kueue preempted (or evicted) the attempt and deletes its pod, whose trainer checkpoints on
        SIGTERM: the attempt ends without counting a failure, and the next one (a new pod group)
        is created once the pod is gone, queued until Kueue admits it again, and resumes from the
        checkpoint."""
        attempts = p.count("attempts")
        self._end_attempt(p)
        fields = p.update.fields
        fields["nextAttemptTime"] = None
        fields["startTime"] = None  # the next admission starts the job's clock again
        _delete_active(p, ranks)
        self.metrics.retries.labels(reason=stop.reason).inc()
        p.transition(
            Phase.QUEUED,
            stop.reason,
            f"attempt {attempts} stopped by Kueue ({stop.kueue_reason}): {stop.message}; "
            "the next attempt waits for admission and resumes from the checkpoint",
            "Warning",
        )
        fields["waiting"] = waiting.Wait(Waiting.ADMISSION, stop.reason, "", p.now, None).status()
        return WAIT_FOR_TERMINATION

    def _pending(
        self,
        p: _Pass,
        ranks: dict[int, dict[str, Any]],
        outcome: PodOutcome,
        remaining: float | None,
        gang: Gang,
        nodes: int,
    ) -> float | None:
        """The attempt waits: for the rank that holds the group back (`gang.rank`), for capacity
        or to start. The limits apply to the whole group, which is deleted whole when one is over. A
        group that is partly placed (some ranks hold their nodes' GPUs while another waits for
        room) may wait no longer than a start, whatever the scheduling limit."""
        pod = ranks[gang.rank]
        kind = outcome.waiting or Waiting.START
        since = parse_time(outcome.since) or p.now
        admitted = parse_time(p.get("startTime"))
        if kueue_managed(pod) and admitted and admitted > since:
            # The pod's PodScheduled condition dates from its creation, gated: the time in
            # Kueue's queue is not time waiting for capacity.
            since = admitted
        limit = waiting.limit(kind, p.policy, self.config)
        partly = kind == Waiting.CAPACITY and bool(gang.placed)
        if partly:
            start = waiting.limit(Waiting.START, p.policy, self.config)
            limit = start if limit is None or start is None else min(limit, start)
        wait = waiting.Wait(kind, outcome.reason, outcome.message, since, limit)
        name = pod["metadata"]["name"]
        detail = f": {outcome.message}" if outcome.message else ""
        if wait.expired(p.now):
            if partly:
                held = ", ".join(str(r) for r in gang.placed)
                message = (
                    f"the ranks could not all be placed for more than {wait.limit:g}s "
                    f"(ranks {held} held their nodes){detail}"
                )
            elif kind == Waiting.CAPACITY:
                message = f"the pod waited for capacity for more than {wait.limit:g}s{detail}"
            else:
                message = f"the pod could not start for more than {wait.limit:g}s{detail}"
            if nodes > 1:
                message = f"attempt {p.count('attempts')}: {message}; all its pods are deleted"
            reason = outcome.reason
            if reason in _ROUTINE or reason == CONFIG_WAIT:  # no reason of the scheduler's or the kubelet's
                reason = Reason.UNSCHEDULABLE if kind == Waiting.CAPACITY else Reason.START_TIMEOUT
            self._fail(p, reason, message)
            return self._finished(p, {p.count("attempts"): ranks})
        rank = gang.rank
        routine = outcome.reason in _ROUTINE or (rank > 0 and outcome.reason == CONFIG_WAIT)
        if routine and outcome.reason == CONFIG_WAIT:
            config_map = attempt_name(p.meta["name"], p.count("attempts"))
            message = f"rank {rank} waits for rank 0's address (ConfigMap {config_map})"
        elif routine:
            message = outcome.message or f"pod {name} is starting"
        elif kind == Waiting.CAPACITY:
            message = f"waiting for capacity{detail}"
        else:
            message = f"pod {name} cannot start ({outcome.reason}){detail}"
        # Waiting for capacity or unable to start is worth an Event; pulling and mounting is not.
        p.transition(Phase.PENDING, outcome.reason, message, None if routine else "Warning")
        p.update.fields["waiting"] = wait.status()
        left = wait.left(p.now)
        return _soonest(RESYNC_SECONDS if left is None else left, remaining)

    def _count_failure(self, p: _Pass, outcome: PodOutcome) -> retry.RetryDecision:
        """Attempt `attempts` failed: counted once, in the patch that ends it."""
        failures = p.count("failedAttempts") + 1
        p.update.fields["failedAttempts"] = failures
        self._end_attempt(p)
        return retry.decide(outcome, failures, int(p.policy.get("backoffLimit", 2)))

    def _attempt_failed(
        self, p: _Pass, outcome: PodOutcome, ranks: dict[int, dict[str, Any]], rank: int = 0
    ) -> float | None:
        """A rank failed (`outcome` is its own): the attempt ends, counted once, and the other
        ranks are deleted after the status that says why."""
        attempts = p.count("attempts")
        _delete_active(p, ranks)
        decision = self._count_failure(p, outcome)
        if not decision.retry:
            self._fail(p, decision.reason, decision.message)
            return self._finished(p, {})
        delay = retry.backoff_seconds(
            p.count("failedAttempts"), self.config.backoff_base_seconds, self.config.backoff_max_seconds
        )
        p.update.fields["nextAttemptTime"] = now_iso(p.now + timedelta(seconds=delay))
        self.metrics.retries.labels(reason=outcome.reason).inc()
        p.transition(
            Phase.PENDING,
            Reason.RETRYING,
            f"attempt {attempts} failed ({outcome.reason}: {outcome.message}); "
            f"attempt {attempts + 1} starts after {delay:g}s",
            "Warning",
        )
        return _soonest(delay, self._deadline_remaining(p))

    def _suspend(
        self,
        p: _Pass,
        ranks: dict[int, dict[str, Any]],
        outcome: PodOutcome | None,
        pods: dict[int, dict[int, dict[str, Any]]],
    ) -> float | None:
        message = "the job is suspended (spec.runPolicy.suspend): no pod runs until it is resumed"
        if p.status.get("phase") == Phase.SUSPENDED:
            message = p.status.get("message") or message  # keep the suspension's own message
        if p.count("attempts") > p.count("endedAttempts"):
            if outcome is not None and outcome.phase == "Failed":
                # It failed before the suspension took effect: that failure counts.
                decision = self._count_failure(p, outcome)
                if not decision.retry:
                    self._fail(p, decision.reason, decision.message)
                    return self._finished(p, pods)
            else:
                self._end_attempt(p)  # a suspension ends the attempt; it is not a failure
            active = sorted(pod["metadata"]["name"] for pod in ranks.values() if _active(pod))
            if active:
                _delete_active(p, ranks, terminating=True)
                message = f"the job is suspended (spec.runPolicy.suspend): deleted pod {', '.join(active)}"
        p.update.fields["nextAttemptTime"] = None
        p.transition(Phase.SUSPENDED, Reason.SUSPENDED, message)
        return None

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
        self._end_attempt(p)
        p.transition(Phase.SUCCEEDED, Reason.COMPLETED, success_message(result, outcome.message))
        self._count_outcome(p, Phase.SUCCEEDED, Reason.COMPLETED)

    def _fail(self, p: _Pass, reason: str, message: str) -> None:
        """The job fails; its pods are deleted after the status says why (`_finished`)."""
        p.update.fields["completionTime"] = p.stamp
        p.update.fields["nextAttemptTime"] = None
        self._end_attempt(p)
        p.transition(Phase.FAILED, reason, message, "Warning")
        self._count_outcome(p, Phase.FAILED, reason)

    def _count_outcome(self, p: _Pass, phase: str, reason: str) -> None:
        if p.status.get("phase") == phase:
            return
        self.metrics.outcomes.labels(phase=phase, reason=reason).inc()
        created = parse_time(p.meta.get("creationTimestamp"))
        if created:
            self.metrics.duration.labels(phase=phase).observe(max(0.0, (p.now - created).total_seconds()))

    def _finished(self, p: _Pass, pods: dict[int, dict[int, dict[str, Any]]]) -> float | None:
        """A Succeeded/Failed job: no pod of it runs any more, its top-1 is reported, and it is
        deleted when its TTL is over."""
        for ranks in pods.values():
            _delete_active(p, ranks)
        top1 = (p.get("metrics") or {}).get("top1")
        if top1 is not None:
            p.top1 = top1
        ttl = p.policy.get("ttlSecondsAfterFinished")
        done = parse_time(p.get("completionTime"))
        if ttl is None or done is None:
            return None
        left = (done + timedelta(seconds=ttl) - p.now).total_seconds()
        if left > 0:
            return left
        log.info(
            "%s/%s: ttlSecondsAfterFinished (%ss) is over: deleting the job",
            p.meta["namespace"],
            p.meta["name"],
            ttl,
        )
        p.delete_job = True
        return None

    def _poll_progress(self, p: _Pass, pod: str, started: datetime | None) -> float:
        """The trainer's latest progress into the status, when it changed: what it pushed
        (progress_push.py), and its log's tail read when its pace says a new line is due
        (progress_pace.py: about once per epoch; only when the pushes stop, for one that pushes).
        Returns the seconds until the next read."""
        key = (p.meta["namespace"], p.meta["name"])
        with self._lock:
            pace = self._paces.get(key)
            if pace is None:
                # A pod that has just started has printed nothing worth a request (in a burst,
                # one per new job): the first read comes a poll interval after the pod started,
                # at once for one that ran longer (as after a restart of the operator).
                base = self.config.progress_poll_seconds
                recent = started is not None and (p.now - started).total_seconds() < base
                pace = self._paces[key] = Pace(base, last_read=started if recent else None)
            pushed = self._pushed.get(key)
            if pushed is not None and pushed.pod != pod:  # an earlier attempt's
                del self._pushed[key]
                pushed = None
            if pushed is not None:
                pace.pushed(datetime.fromtimestamp(pushed.at, timezone.utc), pushed.record["epoch"])
            due = pace.due(p.now)
            if due:
                since = pace.window(p.now)
                pace.last_read = p.now  # a concurrent pass of the same job does not read too
        record = pushed.record if pushed is not None else None
        if due:
            # Only what was written since about the last read: a progress line older than that
            # is in the status already, and the window keeps a long progress-bar line from
            # filling the byte limit before the newest lines.
            read, text = None, ""
            try:
                text = self.kube.pod_log_tail(
                    key[0], pod, CONTAINER, self.config.log_tail_lines, LOG_LIMIT_BYTES, since
                )
                read = parse_last_progress(text)
            except Exception as exc:  # no log yet, or a node that serves none
                if is_status(exc, 404) and not p.fresh:  # the pod is gone where the cache shows it
                    raise _Stale(f"pod {pod} has no log") from exc
                log.debug("%s/%s: no log for progress: %s", key[0], key[1], exc)
            epoch, written = (read["epoch"], line_time(text)) if read is not None else (None, None)
            with self._lock:
                pace.read(p.now, epoch, written)
            if read is not None and (record is None or read["epoch"] > record["epoch"]):
                record = read
        with self._lock:
            wait = pace.seconds_to_next(p.now)
        if record is None:
            return wait
        progress = progress_from_record(record, p.stamp)
        if not same_progress(p.status.get("progress"), progress):
            p.update.fields["progress"] = progress
        if "top1" in progress:
            p.top1 = progress["top1"]
        return wait

    def pushed(self, namespace: str, name: str, pushed: Pushed) -> None:
        """A trainer pushed its progress (progress_push.py): the job's next pass writes it.
        Called from the endpoint's threads."""
        key = (namespace, name)
        with self._lock:
            old = self._pushed.get(key)
            if old is None or old.pod != pushed.pod or pushed.record["epoch"] >= old.record["epoch"]:
                self._pushed[key] = pushed


def _active(pod: dict[str, Any]) -> bool:
    """May still run: not Succeeded or Failed (being deleted or not)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _delete_active(p: _Pass, ranks: dict[int, dict[str, Any]], terminating: bool = False) -> None:
    """Delete the ranks that may still run (and those being deleted too, with `terminating`)."""
    for pod in ranks.values():
        if _active(pod) and (terminating or not _terminating(pod)):
            p.delete(pod)


def _terminating(pod: dict[str, Any]) -> bool:
    """Being deleted and not finished yet."""
    return bool(pod["metadata"].get("deletionTimestamp")) and _active(pod)


def _soonest(*delays: float | None) -> float | None:
    known = [d for d in delays if d is not None]
    return max(0.0, min(known)) if known else None
