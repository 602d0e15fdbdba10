"""The leader-election lock: a coordination.k8s.io/v1 Lease, taken and renewed as client-go's
`leaderelection` package does (`tryAcquireOrRenew`, `release`), with dicts in and out.

Safety rests on two clocks never being compared across machines:
* a standby treats the Lease as held until `leaseDurationSeconds` have passed on *its own*
  monotonic clock since it last saw the Lease's spec change (the holder's `renewTime` is only
  informative, as in client-go);
* the leader may act only until `renew_deadline` after the *start* of its last successful write
  (`fence_open`), which is shorter than the lease duration. The write reached the API server after
  it started and the standby saw it after that, so the leader stops before any standby may start.
Writes use optimistic concurrency: an update carries the resourceVersion that was read (409 if
someone wrote in between) and a create fails with 409 if the Lease appeared meanwhile; either way
this round is lost and the next one reads again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class LeaseConflict(Exception):
    """The Lease changed since it was read (update), or exists already (create): HTTP 409."""


class LeaseStore(Protocol):
    """The three Lease calls the election makes (RBAC.md: get, create, update)."""

    def get(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        """The Lease, or None if there is none."""

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Create it; LeaseConflict if it exists."""

    def replace(self, namespace: str, name: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Update it (PUT, with the resourceVersion in `lease`); LeaseConflict if that is stale."""


class ApiLeaseStore:
    """LeaseStore on the kubernetes client's ApiClient (credentials, TLS, connection pool)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def _call(self, method: str, path: str, body: Any, timeout: float) -> dict[str, Any] | None:
        request = self.api.param_serialize(
            method,
            path,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=timeout)
        response.read()
        if response.status == 404 and method == "GET":
            return None
        if response.status == 409:
            raise LeaseConflict(f"{method} {path}: 409 Conflict")
        if not 200 <= response.status <= 299:
            self.api.response_deserialize(response, {})  # raises ApiException with the body
        return json.loads(response.data or b"{}")

    def get(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        return self._call("GET", f"{LEASES.format(namespace=namespace)}/{quote(name)}", None, timeout)

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self._call("POST", LEASES.format(namespace=namespace), lease, timeout) or {}

    def replace(self, namespace: str, name: str, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        path = f"{LEASES.format(namespace=namespace)}/{quote(name)}"
        return self._call("PUT", path, lease, timeout) or {}


@dataclass(frozen=True)
class Timings:
    """client-go's three durations, in seconds (config.py checks renew < lease, 1.2 retry < renew)."""

    lease_duration: float
    renew_deadline: float
    retry_period: float


def micro_time(at: datetime) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for one Lease. Not thread-safe: one thread calls its methods (the
    `fence_open` check reads two floats and may be called from anywhere)."""

    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        if not identity:
            raise ValueError("a leader-election identity must not be empty")
        self.store = store
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings
        self.clock = clock
        self.wall = wall
        self._lease: dict[str, Any] | None = None  # as last read or written
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0  # when the spec above was first seen (this process's clock)
        self._renewed_at: float | None = None  # start of the last successful write while leading
        self.lost_to = ""  # another holder seen while this one was leading

    # ------------------------------------------------------------------------------ state
    @property
    def leading(self) -> bool:
        return self._renewed_at is not None

    def deadline(self) -> float | None:
        """Until when (this clock) the leader may act; None when not leading."""
        at = self._renewed_at
        return None if at is None else at + self.timings.renew_deadline

    def fence_open(self) -> bool:
        """May this process act as the leader right now?"""
        deadline = self.deadline()
        return deadline is not None and not self.lost_to and self.clock() < deadline

    @property
    def holder(self) -> str:
        """The holder as last seen ('' when free or unknown)."""
        return str(((self._lease or {}).get("spec") or {}).get("holderIdentity") or "")

    # ------------------------------------------------------------------------------ one round
    def try_acquire_or_renew(self) -> bool:
        """One attempt to take the Lease, or to renew it while leading. True: this candidate
        holds it until `deadline()`. API errors other than 409 propagate (the round failed)."""
        started = self.clock()
        timeout = self._timeout(started)
        if self.leading and self._lease is not None:
            # Fast path (as client-go): renew what we wrote last. On any failure (409: someone
            # else wrote; 404: deleted; an error) fall back to reading the Lease.
            try:
                renewed = self.store.replace(self.namespace, self.name, self._renewal(self._lease), timeout)
                self._wrote(renewed, started)
                return True
            except Exception:
                timeout = self._timeout(self.clock())
        lease = self.store.get(self.namespace, self.name, timeout)
        if lease is None and self.leading:
            # Deleted under us (by a person): a standby may create it now, so this one stops.
            self.lost_to = "(the Lease was deleted)"
            return False
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(acquired=micro_time(self.wall()), transitions=0),
            }
            try:
                self._wrote(self.store.create(self.namespace, body, timeout), started)
            except LeaseConflict:
                return False
            return True
        self._observe(lease)
        holder = self.holder
        if holder and holder != self.identity:
            if self.leading:
                self.lost_to = holder  # never act again: the caller must stop at once
                return False
            spec = lease.get("spec") or {}
            held_for = spec.get("leaseDurationSeconds") or math.ceil(self.timings.lease_duration)
            if self._observed_at + float(held_for) > self.clock():
                return False  # held by another, and not yet expired by our clock
        try:
            self._wrote(self.store.replace(self.namespace, self.name, self._renewal(lease), timeout), started)
        except LeaseConflict:
            return False
        return True

    def release(self) -> bool:
        """Hand the Lease back (holder cleared, 1 s duration) so a standby takes over at once,
        as client-go's ReleaseOnCancel does. Call only once this process has stopped acting."""
        if not self.leading or self._lease is None or self.lost_to:
            return False
        spec = self._lease.get("spec") or {}
        stamp = micro_time(self.wall())
        released = {
            **self._lease,
            "spec": {
                "leaseDurationSeconds": 1,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": spec.get("leaseTransitions", 0),
            },
        }
        self._renewed_at = None
        try:
            self._lease = self.store.replace(self.namespace, self.name, released, self.timings.renew_deadline)
        except (LeaseConflict, ApiException, OSError):
            return False
        return True

    # ------------------------------------------------------------------------------ helpers
    def _timeout(self, now: float) -> float:
        """A request may not outlive the leader's deadline; a standby's gets the renew deadline."""
        deadline = self.deadline()
        if deadline is None:
            return self.timings.renew_deadline
        return max(0.05, deadline - now)

    def _observe(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec, self._observed_at = spec, self.clock()

    def _wrote(self, lease: dict[str, Any], started: float) -> None:
        self._observe(lease)
        self._renewed_at = started

    def _spec(self, acquired: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.timings.lease_duration),
            "acquireTime": acquired,
            "renewTime": micro_time(self.wall()),
            "leaseTransitions": transitions,
        }

    def _renewal(self, lease: dict[str, Any]) -> dict[str, Any]:
        """The Lease with this candidate as holder; metadata (and so resourceVersion) kept."""
        spec = lease.get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0)
        if spec.get("holderIdentity") == self.identity:
            acquired = spec.get("acquireTime") or micro_time(self.wall())
            new = self._spec(acquired=acquired, transitions=transitions)
        else:
            new = self._spec(acquired=micro_time(self.wall()), transitions=transitions + 1)
        return {**lease, "spec": {**spec, **new}}
