"""The watch streams that feed the work queue: the FineTuneJobs and the operator's own pods of
each watched namespace (or of the cluster), each a list and then a long watch from the list's
resourceVersion, on a thread of its own.

Why not kopf's watches: kopf ran every event through its per-object workers and handler
machinery (causes, state, invocation) before the operator saw it. Profiled in a burst of 1,000
jobs (py-spy, GIL samples) that was about 30% of the operator's Python time, for a handler that
only stores the object and enqueues its job. Here a thread reads the stream, parses each event,
hands it to `observe` (the watch cache, thread-safe) on the spot, and what the queue must learn
goes to the event loop in batches: one wake-up of the loop for all the events read at once.

A stream resumes from the last resourceVersion it saw (bookmarks keep it fresh while nothing
changes); the API server's 410 Gone (that version was compacted away) makes it list again, and
every listed object is observed as if it had just arrived (the event type None, as at start), so
nothing changed during the gap is missed. A deletion missed during a gap is the sweep's to find
(--sweep-interval). Other failures (the API server down, a broken connection) retry after
a back-off of 0.5 s doubling to 8 s, resuming where they left off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from .api import LABEL_MANAGED_BY, MANAGED_BY
from .kube import Kube, collection_path

log = logging.getLogger("finetune_operator")

WATCH_SECONDS = 300  # the API server ends each watch request after this; the stream resumes
RETRY_FIRST, RETRY_MAX = 0.5, 8.0  # back-off between failed attempts to list or watch
POD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"  # only our pods cross the wire

Observe = Callable[[str, "str | None", dict[str, Any]], bool]  # (kind, type, object) -> news?
Route = Callable[[str, "str | None", dict[str, Any]], None]  # the same, on the event loop


class Gone(Exception):
    """The API server no longer has the resourceVersion the stream would resume from."""


class Stream:
    """One collection (the jobs or the operator's pods of one namespace, or of all), followed on
    a thread of its own: every object listed or changed goes to `observe` on that thread, and the
    events that brought news (and every deletion) to `handover`."""

    def __init__(
        self,
        kube: Kube,
        kind: str,
        namespace: str | None,
        observe: Observe,
        handover: Callable[[tuple[str, str | None, dict[str, Any]]], None],
        seconds: int = WATCH_SECONDS,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.path = collection_path(kind, namespace)
        self.query: list[tuple[str, Any]] = [("labelSelector", POD_SELECTOR)] if kind == "pod" else []
        self.observe = observe
        self.handover = handover
        self.seconds = seconds
        self.listed = threading.Event()  # the first list is in
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch {self.path}", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self, wait: float = 5.0) -> None:
        """End the stream, interrupting a read in progress."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # wakes the reading thread
            except Exception as exc:  # already closed
                log.debug("closing the watch of %s: %s", self.path, exc)
        self._thread.join(wait)

    def _run(self) -> None:
        version = ""
        delay = RETRY_FIRST
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                version = self._follow(version)
                delay = RETRY_FIRST
            except Gone:
                log.info("the watch of %s expired (410 Gone): listing again", self.path)
                version = ""
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("watching %s failed (%s); again in %.0fs", self.path, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _list(self) -> str:
        items, version = self.kube.list_versioned(self.path, self.query)
        for obj in items:
            self._event(None, obj)
        self.listed.set()
        return version

    def _follow(self, version: str) -> str:
        """One watch request; returns the version to resume from."""
        try:
            for event in self.kube.watch(self.path, self.query, version, self.seconds, self._opened):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", ""))
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self._event(kind, obj)
                if self._stop.is_set():
                    break
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from exc
            raise
        finally:
            self._response = None
        return version

    def _opened(self, response: Any) -> None:
        self._response = response
        if self._stop.is_set():  # stopped while it connected
            response.shutdown()

    def _event(self, kind: str | None, obj: dict[str, Any]) -> None:
        try:
            news = self.observe(self.kind, kind, obj)
        except Exception:  # skipped, not retried: the same event would fail the same way
            log.exception("a %s event of %s could not be kept", kind, self.path)
            return
        if news or (kind == "DELETED" and self.kind == "job"):
            self.handover((self.kind, kind, obj))


class Intake:
    """The streams of jobs and pods of every watched namespace, and the batches of what they
    observed, handed to `route` on the event loop."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...], observe: Observe, route: Route) -> None:
        self.kube = kube
        self.namespaces: tuple[str | None, ...] = namespaces or (None,)
        self.observe = observe
        self.route = route
        self.streams: list[Stream] = []
        self._lock = threading.Lock()
        self._batch: list[tuple[str, str | None, dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.streams = [
            Stream(self.kube, kind, ns, self.observe, self._handover).start()
            for ns in self.namespaces
            for kind in ("job", "pod")
        ]

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.streams))

    def _handover(self, item: tuple[str, str | None, dict[str, Any]]) -> None:
        """From a stream's thread: add to the batch; the first item of a batch wakes the loop."""
        with self._lock:
            self._batch.append(item)
            if len(self._batch) > 1:
                return
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the operator is stopping
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        for kind, event_type, obj in batch:
            try:
                self.route(kind, event_type, obj)
            except Exception:  # one malformed object must not lose the rest of the batch
                log.exception("routing a %s event failed", kind)
