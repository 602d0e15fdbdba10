"""The work queue is touched only from the event loop: kopf runs *sync* handlers in a thread pool,
and WorkQueue (a dict and an asyncio.Event) is not thread-safe. A sync handler adding keys while a
worker scans the queue raised "dictionary changed size during iteration" in the worker, which
ended it silently; under a burst of 5000 jobs all workers died and the operator stopped
(bench/operator_scale.py --footprint-jobs 5000 stalled at 225 pods)."""

from __future__ import annotations

import inspect

from finetune_operator.config import OperatorConfig
from finetune_operator.handlers import ReconcileQueue, build_registry
from finetune_operator.metrics import Metrics


def test_every_event_handler_is_a_coroutine_so_kopf_runs_it_on_the_loop() -> None:
    registry = build_registry(ReconcileQueue(OperatorConfig(), Metrics(), lambda: None))
    handlers = list(registry._watching.get_all_handlers())
    assert handlers, "no event handlers registered"
    sync = [h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)]
    assert not sync, f"sync handlers run in kopf's thread pool and race the work queue: {sync}"
