"""The operator's own watch streams (watches.py) on the real API server: what existed before is
listed, every later change arrives in order, only the operator's pods cross the wire, the cache
is fed on the streams' threads and the queue only on the event loop, and stopping interrupts a
watch the server would hold open for minutes. (410 Gone and outages: test_chaos.py.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from finetune_operator.api import LABEL_MANAGED_BY, MANAGED_BY
from finetune_operator.kube import Kube
from finetune_operator.watches import Intake

from tests.operator import crd

Seen = tuple[str, "str | None", str]  # (kind, event type, name)


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
    }


def test_the_streams_list_then_follow_and_hand_the_queue_its_events_on_the_loop(
    cluster: Any, namespace: str, crd_installed: str
) -> None:
    def apply(obj: dict[str, Any]) -> None:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), namespace=namespace)

    apply(crd.minimal_job("before"))
    observed: list[tuple[Seen, str]] = []  # with the thread that observed it
    routed: list[tuple[Seen, str]] = []
    lock = threading.Lock()

    def observe(kind: str, event_type: str | None, obj: dict[str, Any]) -> bool:
        with lock:
            observed.append(((kind, event_type, obj["metadata"]["name"]), threading.current_thread().name))
        return event_type != "MODIFIED"  # a change that brings nothing new is not routed

    def route(kind: str, event_type: str | None, obj: dict[str, Any]) -> None:
        routed.append(((kind, event_type, obj["metadata"]["name"]), threading.current_thread().name))

    def names() -> set[Seen]:
        return {seen for seen, _ in routed}

    api_client = cluster.api_client()
    try:
        intake = Intake(Kube(api_client), (namespace,), observe, route)

        async def until(what: str, done: Any, timeout: float = 30) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, f"{what}: routed {sorted(names(), key=str)}"
                await asyncio.sleep(0.05)

        async def scenario() -> float:
            intake.start()
            await until("the first lists", lambda: all(s.listed.is_set() for s in intake.streams))
            await asyncio.to_thread(apply, crd.minimal_job("after"))
            await asyncio.to_thread(apply, _pod("ours", {LABEL_MANAGED_BY: MANAGED_BY}))
            await asyncio.to_thread(apply, _pod("theirs", {"app": "other"}))
            await asyncio.to_thread(cluster.kubectl, "label", "ftj", "after", "x=1", namespace=namespace)
            await asyncio.to_thread(cluster.kubectl, "delete", "ftj", "before", namespace=namespace)
            await until(
                "every change",
                lambda: (
                    {("job", "ADDED", "after"), ("pod", "ADDED", "ours"), ("job", "DELETED", "before")}
                    <= names()
                ),
            )
            began = time.monotonic()
            await intake.stop()
            return time.monotonic() - began

        stop_seconds = asyncio.run(scenario())
    finally:
        api_client.close()

    assert ("job", None, "before") in names()  # listed at start, as an event without a type
    assert ("job", "MODIFIED", "after") in {seen for seen, _ in observed}  # the label change
    assert ("job", "MODIFIED", "after") not in names()  # observed, no news: not routed
    assert not any(name == "theirs" for (_, _, name), _ in observed)  # the selector held
    jobs = [seen for seen, _ in observed if seen[0] == "job" and seen[2] == "after"]
    assert jobs == [("job", "ADDED", "after"), ("job", "MODIFIED", "after")], jobs  # in order
    assert all(thread.startswith("watch ") for _, thread in observed), observed
    assert all(thread == "MainThread" for _, thread in routed), routed
    # The server would have held the watches open for 5 minutes: stop interrupts them.
    assert stop_seconds < 3, stop_seconds
    assert not any(s._thread.is_alive() for s in intake.streams)
