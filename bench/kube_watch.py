"""What the operator benchmark needs from the API server beyond localcluster/kube_rest.py:
watch streams that record when each event arrived here, concurrent writes, and the API server's
own request counters.

Arrival times come from this process's monotonic clock, so they resolve far finer than the API's
one-second timestamps (creationTimestamp, condition times); both sides of every comparison are
observed through the same kind of watch, so the watch's own delivery delay cancels out.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from localcluster import KubeError, KubeRest

Event = tuple[float, str, dict[str, Any]]  # (arrival, type, object)


class Watcher:
    """Follows one collection (e.g. /api/v1/namespaces/x/pods) from a fresh list on, calling
    `on_event(arrival, type, object)` from its own thread; re-lists if the server says 410."""

    def __init__(self, kubeconfig: Path, path: str, on_event: Callable[[float, str, dict[str, Any]], None]):
        self.rest = KubeRest(kubeconfig)
        self.path = path
        self.on_event = on_event
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Watcher:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"the watch of {self.path} did not start within 30 s: {self.error}")
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                listed = self.rest.get(self.path)
                now = time.monotonic()
                for item in listed.get("items") or []:
                    self.on_event(now, "LISTED", item)
                rv = listed["metadata"]["resourceVersion"]
                self._ready.set()
                try:
                    while not self._stop.is_set():
                        for event in self.rest.watch(self.path, timeout_seconds=60, resourceVersion=rv):
                            arrival = time.monotonic()
                            if event["type"] == "ERROR":
                                raise KubeError(event["object"].get("code", 0), str(event["object"]))
                            rv = event["object"]["metadata"]["resourceVersion"]
                            self.on_event(arrival, event["type"], event["object"])
                            if self._stop.is_set():
                                return
                except KubeError as exc:
                    if exc.status != 410:  # 410 Gone: too old a resourceVersion, list again
                        raise
        except BaseException as exc:  # reported by whoever waits on the results
            self.error = exc
            self._ready.set()


def parallel(
    fn: Callable[[KubeRest, Any], Any], items: Iterable[Any], kubeconfig: Path, threads: int = 16
) -> list[Any]:
    """fn(client, item) for every item on `threads` threads, each with a client of its own
    (a requests session is not meant to be shared across threads); returns results in order."""
    local = threading.local()

    def call(item: Any) -> Any:
        if not hasattr(local, "rest"):
            local.rest = KubeRest(kubeconfig)
        return fn(local.rest, item)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, items))


_SAMPLE = re.compile(
    r"^(?P<metric>apiserver_request_total|apiserver_request_duration_seconds_sum)"
    r"\{(?P<labels>[^}]*)\} (?P<value>\S+)$"
)
SECONDS = "seconds:"  # verb prefix of the keys that hold summed request durations
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
RequestKey = tuple[str, str, str, str]  # (verb, group, resource, subresource)


def request_counts(rest: KubeRest) -> dict[RequestKey, float]:
    """apiserver_request_total summed over codes and scopes, by (verb, group, resource, subresource)."""
    resp = rest.session.get(rest.server + "/metrics", timeout=30)
    resp.raise_for_status()
    return parse_request_counts(resp.text)


def parse_request_counts(text: str) -> dict[RequestKey, float]:
    """apiserver_request_total samples of a Prometheus text exposition, summed by RequestKey; the
    summed durations (apiserver_request_duration_seconds_sum) under the verb SECONDS + verb."""
    counts: dict[RequestKey, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        verb = labels.get("verb", "")
        if match["metric"] != "apiserver_request_total":
            verb = SECONDS + verb
        key = (verb, labels.get("group", ""), labels.get("resource", ""), labels.get("subresource", ""))
        counts[key] = counts.get(key, 0.0) + float(match["value"])
    return counts


def count_delta(before: dict[RequestKey, float], after: dict[RequestKey, float]) -> dict[RequestKey, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
