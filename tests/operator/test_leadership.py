"""The process side of leader election (finetune_operator/leadership.py): the election thread,
the fenced API client and the standby's /healthz. Real threads and the real clock with short
durations; the Lease store is the in-memory fake (the real API server: test_leader_failover.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from finetune_operator.leadership import Election, FencedApiClient, LeadershipLost, StandbyHealth
from finetune_operator.lease import LeaderElector, Timings
from kubernetes.client import Configuration

from localcluster import free_port
from tests.operator.fake_leases import FakeLeaseStore

FAST = Timings(lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)
NS, NAME = "pfo-system", "pfo-leader"


class RealClock:
    def __call__(self) -> float:
        return time.monotonic()

    def advance(self, seconds: float) -> None:  # requests take real time here
        pass


def elector(store: FakeLeaseStore, who: str) -> LeaderElector:
    return LeaderElector(store.view(who), NS, NAME, who, FAST, clock=time.monotonic)


class Recorder:
    def __init__(self, e: LeaderElector) -> None:
        self.e = e
        self.started = threading.Event()
        self.lost = threading.Event()
        self.lost_reason = ""
        self.lost_at = 0.0
        self.deadline_at_loss: float | None = None
        self.fence_at_loss = True

    def on_started(self) -> None:
        assert self.e.fence_open(), "on_started while the fence is closed"
        self.started.set()

    def on_lost(self, reason: str) -> None:
        self.lost_at = time.monotonic()
        self.deadline_at_loss = self.e.deadline()
        self.fence_at_loss = self.e.fence_open()
        self.lost_reason = reason
        self.lost.set()


def test_a_leader_that_cannot_renew_gives_up_at_the_deadline_and_not_before() -> None:
    store = FakeLeaseStore(RealClock())  # type: ignore[arg-type]
    broken = threading.Event()
    store.fail = lambda caller, verb: broken.is_set()
    e = elector(store, "a")
    rec = Recorder(e)
    election = Election(e, rec.on_started, rec.on_lost)
    election.start()
    try:
        assert rec.started.wait(5), "never became the leader"
        time.sleep(3 * FAST.retry_period)
        assert not rec.lost.is_set() and e.fence_open(), "a healthy leader gave up"
        broken.set()  # the API server goes away
        assert rec.lost.wait(5), "a leader that cannot renew never gave up"
        assert rec.deadline_at_loss is not None and rec.lost_at >= rec.deadline_at_loss, "gave up early"
        assert not rec.fence_at_loss
        assert "could not renew" in rec.lost_reason
        # It gives up promptly: within one retry period (and scheduling) of the deadline.
        assert rec.lost_at - rec.deadline_at_loss < FAST.retry_period + 0.5
    finally:
        election.stop(release=False)


def test_a_standby_waits_then_takes_over_when_the_leader_stops_renewing() -> None:
    store = FakeLeaseStore(RealClock())  # type: ignore[arg-type]
    a, b = elector(store, "a"), elector(store, "b")
    ra, rb = Recorder(a), Recorder(b)
    ea, eb = Election(a, ra.on_started, ra.on_lost), Election(b, rb.on_started, rb.on_lost)
    ea.start()
    assert ra.started.wait(5)
    eb.start()
    try:
        time.sleep(FAST.lease_duration * 2)
        assert not rb.started.is_set(), "the standby took a Lease that was being renewed"
        assert eb.alive() and b.holder == "a"
        killed = time.monotonic()
        ea.stop(release=False)  # a dies without releasing
        assert rb.started.wait(5), "the standby never took over"
        waited = time.monotonic() - killed
        assert FAST.lease_duration - FAST.retry_period <= waited, f"took over after {waited:.2f}s"
    finally:
        eb.stop(release=False)


def test_stop_with_release_hands_over_within_a_retry_period() -> None:
    store = FakeLeaseStore(RealClock())  # type: ignore[arg-type]
    a, b = elector(store, "a"), elector(store, "b")
    ra, rb = Recorder(a), Recorder(b)
    ea, eb = Election(a, ra.on_started, ra.on_lost), Election(b, rb.on_started, rb.on_lost)
    ea.start()
    assert ra.started.wait(5)
    eb.start()
    try:
        time.sleep(3 * FAST.retry_period)
        released = time.monotonic()
        assert ea.stop(release=True)
        assert not a.fence_open()
        assert rb.started.wait(5)
        assert time.monotonic() - released < FAST.lease_duration, "the standby waited for expiry"
    finally:
        eb.stop(release=False)


def test_the_fenced_client_sends_nothing_once_the_fence_is_closed() -> None:
    cfg = Configuration()
    cfg.host = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request sent would fail differently
    open_ = [True]
    api = FencedApiClient(cfg, lambda: open_[0])
    request = api.param_serialize("GET", "/api/v1/namespaces", header_params={"Accept": "application/json"})
    with pytest.raises(Exception) as sent:
        api.call_api(*request, _request_timeout=2)
    assert not isinstance(sent.value, LeadershipLost)  # the request went out (connection refused)
    open_[0] = False
    with pytest.raises(LeadershipLost):
        api.call_api(*request, _request_timeout=2)


def test_standby_healthz_answers_while_the_election_runs() -> None:
    store = FakeLeaseStore(RealClock())  # type: ignore[arg-type]
    holder = elector(store, "a")
    assert holder.try_acquire_or_renew()
    e = elector(store, "b")
    election = Election(e, lambda: None, lambda reason: None)
    port = free_port()
    health = StandbyHealth(port, election)
    try:
        election.start()
        time.sleep(2 * FAST.retry_period)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as rsp:
            assert rsp.status == 200
            body = json.loads(rsp.read())
        assert body["role"] == "standby" and body["holder"] == "a"
        election.stop(release=False)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.code == 503, "a dead election thread must fail the liveness probe"
    finally:
        health.close()
    # The port is free again for kopf's liveness endpoint.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))


def test_a_failing_election_thread_counts_as_a_lost_leadership() -> None:
    store = FakeLeaseStore(RealClock())  # type: ignore[arg-type]
    e = elector(store, "a")
    rec = Recorder(e)

    def broken_clock() -> float:
        raise RuntimeError("a bug")

    election = Election(e, rec.on_started, rec.on_lost)
    e.clock = broken_clock  # type: ignore[method-assign]
    election.start()
    assert rec.lost.wait(5) and "thread failed" in rec.lost_reason
