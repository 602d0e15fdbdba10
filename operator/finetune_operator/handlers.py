"""The kopf wiring: watch FineTuneJobs and their pods, and feed one work queue.

Why event handlers and a work queue instead of kopf's create/update handlers, timers or daemons:
* kopf's change-detecting handlers keep their bookkeeping in the object (an annotation with the
  last handled spec, progress in status), and its timers and daemons add a finalizer to every
  job, so a job could not be deleted while the operator is down (or uninstalled). Watch-event
  handlers need neither: the operator writes only `status` and never blocks a deletion.
* Every trigger (job change, pod change, retry back-off over, deadline, pending timeout,
  progress poll, TTL) becomes "reconcile this job now / in N seconds". The queue runs one
  reconcile per job at a time and `--workers` jobs in parallel, which bounds the load on the
  API server however many jobs there are.
kopf still provides the watch streams (with reconnects and resourceVersion bookkeeping), the
startup/cleanup lifecycle and the liveness endpoint.

One active instance: kopf runs standalone (peering off); with several replicas only the holder of
the leader Lease starts kopf and this queue at all (leadership.py, RBAC.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .api import GROUP, KIND, LABEL_MANAGED_BY, MANAGED_BY, PLURAL, VERSION
from .config import OperatorConfig
from .controller import Reconciler
from .metrics import Metrics
from .workqueue import WorkQueue

log = logging.getLogger("finetune_operator")

ERROR_RETRY_SECONDS = 5.0  # a reconcile that raised is tried again this much later


class ReconcileQueue:
    """The work queue of jobs to reconcile and the workers that drain it (with the reconciler
    they call), started and stopped with kopf's lifecycle."""

    def __init__(self, config: OperatorConfig, metrics: Metrics, reconciler_factory: Any) -> None:
        self.config = config
        self.metrics = metrics
        self._reconciler_factory = reconciler_factory
        self.reconciler: Reconciler | None = None
        self.queue: WorkQueue | None = None
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.reconciler = self._reconciler_factory()
        self.queue = WorkQueue()
        self._workers = [
            asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(self.config.workers)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def enqueue(self, namespace: str, name: str, delay: float = 0.0) -> None:
        if self.queue is not None:
            self.queue.add((namespace, name), delay)

    def deleted(self, namespace: str, name: str) -> None:
        if self.queue is not None:
            self.queue.discard((namespace, name))
        if self.reconciler is not None:
            self.reconciler.forget(namespace, name)

    async def _work(self) -> None:
        assert self.queue is not None and self.reconciler is not None
        while True:
            key = await self.queue.get()
            namespace, name = key  # type: ignore[misc]
            try:
                # The kubernetes client is synchronous: run it off the event loop.
                again = await asyncio.to_thread(self.reconciler.reconcile, namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = type(exc).__name__
                self.metrics.reconcile_errors.labels(kind=kind).inc()
                log.warning(
                    "%s/%s: reconcile failed (%s: %s); retrying in %ss",
                    namespace,
                    name,
                    kind,
                    exc,
                    ERROR_RETRY_SECONDS,
                )
                again = ERROR_RETRY_SECONDS
            finally:
                self.queue.done(key)
            if again is not None:
                self.queue.add(key, again)


def build_registry(queue: ReconcileQueue) -> kopf.OperatorRegistry:
    """The kopf handlers, registered on a registry of their own (no module-level globals)."""
    registry = kopf.OperatorRegistry()
    # A registry of our own gets none of kopf's default login handlers: use the kubernetes
    # client's (in-cluster service account, else $KUBECONFIG), as the reconciler does.
    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Discovery once at startup: the CRD must be installed first (the chart does), and the
        # operator needs no permission on CustomResourceDefinitions or Namespaces.
        settings.scanning.disabled = True
        # Watch only our pods, filtered by the API server (the handler's `labels=` alone would
        # filter client-side, after every pod of the cluster had crossed the wire).
        settings.watching.label_selectors["v1", "pods"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        # Watch requests end every few minutes and resume from the last resourceVersion, so a
        # silently dead connection is noticed. No resync is needed: every job that is not
        # finished has a timed re-queue of its own (back-off, deadline, pending timeout, poll).
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        # kopf posts Events only for its own warnings; the job's story comes from the reconciler.
        settings.posting.level = logging.WARNING
        await queue.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await queue.stop()

    # Coroutines, so kopf calls them on the event loop: it runs sync handlers in a thread pool,
    # and the work queue (a dict and an asyncio.Event) is not thread-safe.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def job_event(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
        if event.get("type") == "DELETED":
            queue.deleted(namespace, name)
        else:
            queue.enqueue(namespace, name)

    @kopf.on.event("v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)
    async def pod_event(body: dict[str, Any], namespace: str, **_: Any) -> None:
        for owner in body.get("metadata", {}).get("ownerReferences") or []:
            if owner.get("kind") == KIND and owner.get("apiVersion", "").startswith(GROUP + "/"):
                queue.enqueue(namespace, owner["name"])

    return registry
