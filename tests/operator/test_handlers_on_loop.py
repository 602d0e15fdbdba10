"""The work queue is touched only from the event loop: kopf runs *sync* handlers in a thread pool,
and WorkQueue (a dict and an asyncio.Event) is not thread-safe. A sync handler adding keys while a
worker scans the queue raised "dictionary changed size during iteration" in the worker, which
ended it silently; under a burst of 5000 jobs all workers died and the operator stopped
(bench/operator_scale.py --footprint-jobs 5000 stalled at 225 pods)."""

from __future__ import annotations

from finetune_operator.config import OperatorConfig
from finetune_operator.handlers import ReconcileQueue, build_registry
from finetune_operator.metrics import Metrics


def test_kopf_watches_nothing_itself() -> None:
    """The watch streams are the operator's own (watches.py): a resource handler registered with
    kopf would start a second watch of the same objects and run kopf's per-event machinery."""
    registry = build_registry(ReconcileQueue(OperatorConfig(), Metrics(), lambda: None))
    assert not list(registry._watching.get_all_handlers())
    assert not list(registry._changing.get_all_handlers())
    assert not list(registry._spawning.get_all_handlers())
    assert {h.id.split(".")[-1] for h in registry._activities.get_all_handlers()} >= {"startup", "cleanup"}


def test_the_executor_runs_exactly_workers_passes_at_once() -> None:
    """--workers bounds the passes that run at once, and is not itself bounded by the default
    executor's min(32, CPUs + 4) threads."""
    import asyncio
    import threading
    import time

    workers = 40
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Slow:
        kube = None

        def reconcile(self, namespace: str, name: str) -> None:
            with lock:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            time.sleep(0.2)
            with lock:
                running["now"] -= 1

    queue = ReconcileQueue(OperatorConfig(workers=workers), Metrics(), Slow)

    async def scenario() -> None:
        await queue.start()
        for i in range(workers * 2):
            queue.enqueue("ns", f"job-{i}")
        await asyncio.sleep(1.0)
        await queue.stop()

    asyncio.run(scenario())
    assert running["most"] == workers


def test_the_sweep_runs_every_sweep_interval() -> None:
    """--sweep-interval sets how often the cache is relisted (the benchmark shortens it so that
    relists fall inside its bursts of creations)."""
    import asyncio

    class Counting:
        kube = None
        sweeps = 0

        def reconcile(self, namespace: str, name: str) -> None: ...

        def sweep(self) -> None:
            Counting.sweeps += 1

    queue = ReconcileQueue(OperatorConfig(sweep_seconds=0.1), Metrics(), Counting)

    async def scenario() -> None:
        await queue.start()
        await asyncio.sleep(0.55)
        await queue.stop()

    asyncio.run(scenario())
    assert 4 <= Counting.sweeps <= 5


def test_an_event_the_cache_held_already_costs_no_pass() -> None:
    """The watch event of the operator's own write (written through into the cache, or a change
    of nothing but the status) enqueues nothing; someone else's change does."""
    import asyncio

    from finetune_operator.cache import CachedKube

    from tests.operator.fake_kube import FakeKube

    class Holder:
        def __init__(self) -> None:
            self.kube = CachedKube(FakeKube())

    queue = ReconcileQueue(OperatorConfig(), Metrics(), Holder)
    job = {"metadata": {"namespace": "ns", "name": "j", "uid": "u", "resourceVersion": "5"}}

    async def scenario() -> list[bool]:
        await queue.start()
        seen = [queue.observe("job", None, job)]
        seen.append(queue.observe("job", "MODIFIED", job))  # a repeat
        newer = {"metadata": {**job["metadata"], "resourceVersion": "6"}, "status": {"phase": "Running"}}
        seen.append(queue.observe("job", "MODIFIED", newer))  # ours
        newer = {**newer, "metadata": {**job["metadata"], "resourceVersion": "7"}, "spec": {"x": 1}}
        seen.append(queue.observe("job", "MODIFIED", newer))
        await queue.stop()
        return seen

    assert asyncio.run(scenario()) == [True, False, False, True]
    samples = {
        new: queue.metrics.registry.get_sample_value(
            "finetune_watch_events_total", {"kind": "job", "new": new}
        )
        for new in ("true", "false")
    }
    assert samples == {"true": 2.0, "false": 2.0}


def _owned_pod(job: str, phase: str, **meta: object) -> dict[str, object]:
    owner = {"apiVersion": "finetune.paddle.dev/v1alpha1", "kind": "FineTuneJob", "name": job}
    return {
        "metadata": {"namespace": "ns", "name": f"{job}-attempt-1", "ownerReferences": [owner], **meta},
        "status": {"phase": phase},
    }


def test_new_jobs_and_ended_pods_go_before_pods_on_their_way_and_timed_looks() -> None:
    """A burst: jobs are created while earlier jobs' pods start and others end. Every job change
    and every ended or deleted pod is worked before any pod that only started, and those before
    the timed looks, whatever the order the events came in."""
    import asyncio

    from finetune_operator.handlers import TIMED

    queue = ReconcileQueue(OperatorConfig(), Metrics(), lambda: None)
    queue.reconciler = None  # no watch cache: every event is new
    urgent: set[str] = set()

    async def scenario() -> list[str]:
        from finetune_operator.workqueue import WorkQueue

        queue.queue = WorkQueue()
        for i in range(30):
            queue.enqueue("ns", f"timed-{i}", priority=TIMED)
            pod = _owned_pod(f"started-{i}", "Running" if i % 2 else "Pending", nodeName="n")
            queue.route("pod", "MODIFIED", pod)
            job = {"metadata": {"namespace": "ns", "name": f"new-{i}"}}
            queue.route("job", "ADDED", job)
            urgent.add(f"new-{i}")
            ended = _owned_pod(f"ended-{i}", "Succeeded" if i % 2 else "Failed")
            queue.route("pod", "MODIFIED", ended)
            urgent.add(f"ended-{i}")
            gone = _owned_pod(f"gone-{i}", "Running", deletionTimestamp="2026-01-01T00:00:00Z")
            kind = "DELETED" if i % 2 else "MODIFIED"
            queue.route("pod", kind, gone)
            urgent.add(f"gone-{i}")
        order = []
        while len(queue.queue):
            key = await queue.queue.get()
            queue.queue.done(key)
            order.append(key[1])
        return order

    order = asyncio.run(scenario())
    assert len(order) == 150
    first = order[: len(urgent)]
    assert set(first) == urgent, f"behind a routine or timed key: {sorted(set(first) - urgent)[:5]}"
    middle = order[len(urgent) : len(urgent) + 30]
    assert all(k.startswith("started-") for k in middle), middle
    assert all(k.startswith("timed-") for k in order[-30:]), order[-30:]
