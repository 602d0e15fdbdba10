"""An in-memory LeaseStore with the API server's optimistic concurrency (resourceVersion checked on
update, 409 on a stale one or on creating an existing Lease), a simulated clock that requests
advance, and injectable failures."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.lease import LeaseConflict


class Unreachable(ConnectionError):
    """The API server could not be reached (a partition, a timeout)."""


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@dataclass
class FakeLeaseStore:
    clock: Clock
    # Seconds a request takes to reach the server, and its answer to come back (each call).
    latency: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)
    # fail(caller, verb) -> True: this call never reaches the server (raises Unreachable).
    fail: Callable[[str, str], bool] = lambda caller, verb: False
    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (caller, verb)
    version: int = 0
    caller: str = ""  # set by StoreView before each call

    def _enter(self, verb: str) -> None:
        self.calls.append((self.caller, verb))
        there, back = self.latency()
        self.clock.advance(there)
        self._back = back
        if self.fail(self.caller, verb):
            raise Unreachable(f"{self.caller}: {verb} did not reach the API server")

    def _leave(self, value: Any) -> Any:
        self.clock.advance(self._back)
        return copy.deepcopy(value)

    def get(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        self._enter("get")
        return self._leave(self.leases.get((namespace, name)))

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._enter("create")
        key = (namespace, lease["metadata"]["name"])
        if key in self.leases:
            self._leave(None)
            raise LeaseConflict("exists")
        self.version += 1
        stored = copy.deepcopy(lease)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[key] = stored
        return self._leave(stored)

    def replace(self, namespace: str, name: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._enter("update")
        current = self.leases.get((namespace, name))
        if current is None:
            self._leave(None)
            raise LookupError("404: not found")
        if lease["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self._leave(None)
            raise LeaseConflict("stale resourceVersion")
        self.version += 1
        stored = copy.deepcopy(lease)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(namespace, name)] = stored
        return self._leave(stored)

    def view(self, caller: str) -> StoreView:
        return StoreView(self, caller)


@dataclass
class StoreView:
    """The store as one candidate sees it (so calls and failures can be told apart)."""

    store: FakeLeaseStore
    caller: str

    def get(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        self.store.caller = self.caller
        return self.store.get(namespace, name, timeout)

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.store.caller = self.caller
        return self.store.create(namespace, lease, timeout)

    def replace(self, namespace: str, name: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.store.caller = self.caller
        return self.store.replace(namespace, name, lease, timeout)
