"""The work queue of jobs to reconcile, fed by the watch streams (watches.py), and its place in
kopf's lifecycle.

Why a work queue instead of kopf's create/update handlers, timers or daemons:
* kopf's change-detecting handlers keep their bookkeeping in the object (an annotation with the
  last handled spec, progress in status), and its timers and daemons add a finalizer to every
  job, so a job could not be deleted while the operator is down (or uninstalled). The operator
  writes only `status` and never blocks a deletion.
* Every trigger (job change, pod change, retry back-off over, deadline, start timeout,
  progress poll, TTL) becomes "reconcile this job now / in N seconds". The queue runs one
  reconcile per job at a time and `--workers` jobs in parallel, which bounds the load on the
  API server however many jobs there are.
kopf provides the startup/cleanup lifecycle, login, signals and the liveness endpoint; the
watch streams are the operator's own (watches.py: kopf's per-event machinery was about 30% of
the operator's CPU). The same events feed the reconciler's watch cache (cache.py), so passes
read no job and no pods from the API server; an event that brings nothing the cache did not
hold (the operator's own status write, written through already, or a repeat after a watch
reconnect) costs no pass.

Three priorities: a job's own change (a new job, a spec edit, a deletion) and a pod that ended or
went go first; then the routine steps of a pod on its way (scheduled, started); then timed looks
(progress reads, resyncs). In a burst of new jobs the pods are created first (each pass sends
only the pod's POST; the status and Events follow in the pod's first pass), the routine and
timed passes share a few workers until it is over, and finished pods never wait behind either. The passes
run on an executor of exactly `--workers` threads (the kubernetes client is synchronous).

A reconcile that raises (the API server unreachable, a conflict, a bug) is retried with a per-key
exponential back-off, 1 s doubling to 5 minutes, reset by the next success (as client-go's
rate-limited work queue does); a job that keeps failing shows in the log (an error from the 5th
failure in a row), in `finetune_reconcile_failing_jobs` and `finetune_reconcile_errors_total`,
and as a `ReconcileError` Warning Event on the job (3rd failure, then every 10th). Every
`--sweep-interval` (config.sweep_seconds) the reconciler's `sweep` forgets jobs deleted while no
watch event said so, and every `TRIM_SECONDS` the C allocator gives free pages back (heap.py: a
relist or a burst leaves tens of MiB free but held).

With `--progress-port`, the progress endpoint (progress_server.py) starts and stops with the
queue: an accepted push becomes a timed pass of its job.

One active instance: kopf runs standalone (peering off); with several replicas only the holder of
the leader Lease starts kopf and this queue at all (leadership.py, RBAC.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from . import heap
from .api import GROUP, KIND
from .config import OperatorConfig
from .controller import Reconciler
from .metrics import Metrics
from .progress_push import PushGate
from .progress_server import ProgressServer, deliver_on, server_tls
from .watches import Intake
from .workqueue import URGENT, ExponentialBackoff, WorkQueue

log = logging.getLogger("finetune_operator")

ERROR_BACKOFF_BASE = 1.0  # a reconcile that raised is tried again after 1, 2, 4, ... seconds
ERROR_BACKOFF_MAX = 300.0
TRIM_SECONDS = 60.0  # how often free heap pages go back to the kernel (heap.py)
# Work queue priorities (lower first): a job changed or a pod ended; a pod on its way; a timed look.
ROUTINE, TIMED = URGENT + 1, URGENT + 2
BURST_QUIET = 0.5  # urgent adds closer than this make a burst (workqueue.py)
# A timed look (a progress read, a deadline, a retry) waits out a burst for at most this long
# past its due time: half the default progress poll, so that a read is late by at most that.
BURST_HOLD_SECONDS = 15.0
_ENDED = ("Succeeded", "Failed")


def pod_priority(event_type: str | None, pod: dict[str, Any]) -> int:
    """How urgent a pod's watch event is: an outcome (ended, being deleted, gone) decides the
    job; a step on the pod's way (bound, pulling, running) only reports progress."""
    if event_type == "DELETED" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return URGENT
    return URGENT if (pod.get("status") or {}).get("phase") in _ENDED else ROUTINE


def _report_now(failures: int) -> bool:
    """Which failures in a row become a Warning Event: the 3rd, then every 10th."""
    return failures == 3 or (failures > 3 and failures % 10 == 3)


class ReconcileQueue:
    """The work queue of jobs to reconcile and the workers that drain it (with the reconciler
    they call), started and stopped with kopf's lifecycle."""

    def __init__(
        self,
        config: OperatorConfig,
        metrics: Metrics,
        reconciler_factory: Any,
        intake_factory: Callable[[ReconcileQueue], Intake] | None = None,
        reviewer_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._reconciler_factory = reconciler_factory
        self._intake_factory = intake_factory
        self._reviewer_factory = reviewer_factory
        self.intake: Intake | None = None
        self.progress: ProgressServer | None = None
        self.reconciler: Reconciler | None = None
        self.queue: WorkQueue | None = None
        self.backoff = ExponentialBackoff(ERROR_BACKOFF_BASE, ERROR_BACKOFF_MAX)
        self._workers: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self.reconciler = self._reconciler_factory()
        # During a burst, routine steps share one worker in eight, and timed looks wait.
        self.queue = WorkQueue(
            quiet=BURST_QUIET,
            share=max(1, self.config.workers // 8),
            hold_from=TIMED,
            hold=BURST_HOLD_SECONDS,
        )
        if self.reconciler is not None:
            self.reconciler.busy = self._busy
        self._executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="reconcile")
        self._workers = [
            asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(self.config.workers)
        ]
        self._workers.append(asyncio.create_task(self._sweep(), name="sweep"))
        self._workers.append(asyncio.create_task(self._trim(), name="trim"))
        if self._intake_factory is not None:
            self.intake = self._intake_factory(self)
            self.intake.start()
        if self.config.progress_port and self.reconciler is not None:
            self.progress = self._progress_server(self.reconciler)
            await self.progress.start()

    def _progress_server(self, reconciler: Reconciler) -> ProgressServer:
        """The progress endpoint, on this loop: pods from the watch cache, reviews from the API
        server, accepted records to the reconciler and the job's pass into the queue."""
        live = self._reviewer_factory() if self._reviewer_factory else (reconciler.live or reconciler.kube)
        enqueue = lambda namespace, job: self.enqueue(namespace, job, priority=TIMED)  # noqa: E731
        gate = PushGate(
            pods=reconciler.kube.list_pods,
            review=live.review_token,  # type: ignore[attr-defined]
            deliver=deliver_on(asyncio.get_running_loop(), reconciler.pushed, enqueue),
        )
        tls = server_tls(self.config.progress_tls_cert, self.config.progress_tls_key)
        return ProgressServer(gate, self.metrics, self.config.progress_port, tls)

    def _busy(self) -> bool:
        """New work arrives in a burst, or piles up (more urgent keys wait than there are
        workers). Read from the workers' threads: counters and times, never the queue's
        structure."""
        queue = self.queue
        return queue is not None and (queue.in_burst() or queue.waiting(URGENT) > self.config.workers)

    async def stop(self) -> None:
        if self.progress is not None:
            await self.progress.stop()
        if self.intake is not None:
            await self.intake.stop()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def observe(self, kind: str, event_type: str | None, obj: dict[str, Any]) -> bool:
        """A watch event of a job or pod (`event_type` None: listed): into the reconciler's watch
        cache, if it has one. Whether it brought anything new (False: no pass needed). Called
        from the watch streams' threads: the cache and the metrics are thread-safe."""
        observe = getattr(self.reconciler.kube if self.reconciler else None, "observe", None)
        new = True if observe is None else bool(observe(kind, event_type, obj))
        self.metrics.watch_events.labels(kind=kind, new=str(new).lower()).inc()
        return new

    def route(self, kind: str, event_type: str | None, obj: dict[str, Any]) -> None:
        """On the event loop (the queue is not thread-safe): what an event that brought news asks
        for. A job's change is worked at once, its deletion forgotten; a pod's change is its
        job's to work, at the urgency of what happened to the pod."""
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if kind == "job":
            if event_type == "DELETED":
                self.deleted(namespace, name, meta.get("uid"))
            else:
                self.enqueue(namespace, name)
            return
        priority = pod_priority(event_type, obj)
        for owner in meta.get("ownerReferences") or []:
            if owner.get("kind") == KIND and owner.get("apiVersion", "").startswith(GROUP + "/"):
                self.enqueue(namespace, owner["name"], priority=priority)

    def enqueue(self, namespace: str, name: str, delay: float = 0.0, priority: int = URGENT) -> None:
        if self.queue is not None:
            self.queue.add((namespace, name), delay, priority)

    def deleted(self, namespace: str, name: str, uid: str | None = None) -> None:
        if self.queue is not None:
            self.queue.discard((namespace, name))
        if self.backoff.forget((namespace, name)):
            self.metrics.failing.set(self.backoff.failing())
        if self.reconciler is not None:
            self.reconciler.forget(namespace, name, uid)

    async def _work(self) -> None:
        assert self.queue is not None and self.reconciler is not None
        while True:
            key = await self.queue.get()
            namespace, name = key  # type: ignore[misc]
            try:
                # The kubernetes client is synchronous: run it off the event loop.
                loop = asyncio.get_running_loop()
                again = await loop.run_in_executor(self._executor, self.reconciler.reconcile, namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                again = await self._failed(namespace, name, exc)
            else:
                if self.backoff.forget(key):
                    self.metrics.failing.set(self.backoff.failing())
            finally:
                self.queue.done(key)
            if again is not None:
                self.queue.add(key, again, TIMED)

    async def _failed(self, namespace: str, name: str, exc: Exception) -> float:
        """A reconcile raised: when to try again, and make a job that keeps failing visible."""
        assert self.reconciler is not None
        failures, delay = self.backoff.failed((namespace, name))
        kind = type(exc).__name__
        self.metrics.reconcile_errors.labels(kind=kind).inc()
        self.metrics.failing.set(self.backoff.failing())
        level = logging.ERROR if failures >= 5 else logging.WARNING
        log.log(
            level,
            "%s/%s: reconcile failed (%s: %s), %d in a row; retrying in %ss",
            namespace,
            name,
            kind,
            exc,
            failures,
            delay,
        )
        if _report_now(failures):
            await asyncio.to_thread(self.reconciler.report_error, namespace, name, exc, failures, delay)
        return delay

    async def _sweep(self) -> None:
        assert self.reconciler is not None
        while True:
            await asyncio.sleep(self.config.sweep_seconds)
            try:
                await asyncio.to_thread(self.reconciler.sweep)
            except Exception as exc:  # the next sweep will do
                log.warning("sweeping deleted jobs failed: %s", exc)

    async def _trim(self) -> None:
        while True:
            await asyncio.sleep(TRIM_SECONDS)
            await asyncio.to_thread(heap.trim)


def build_registry(queue: ReconcileQueue) -> kopf.OperatorRegistry:
    """kopf's part: login, the work queue and the watch streams started and stopped with kopf's
    lifecycle (a registry of its own: no module-level globals). kopf watches nothing itself."""
    registry = kopf.OperatorRegistry()
    # A registry of our own gets none of kopf's default login handlers: use the kubernetes
    # client's (in-cluster service account, else $KUBECONFIG), as the reconciler does.
    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # No discovery: the operator's own streams watch the CRD's jobs (the chart installs it
        # first), and it needs no permission on CustomResourceDefinitions or Namespaces.
        settings.scanning.disabled = True
        # kopf posts Events only for its own warnings; the job's story comes from the reconciler.
        settings.posting.level = logging.WARNING
        await queue.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await queue.stop()

    return registry
