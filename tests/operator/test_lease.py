"""The Lease lock (finetune_operator/lease.py) against an in-memory store with the API server's
optimistic concurrency and a simulated clock: who leads, when a standby may take over, and the
one invariant that matters: never two candidates allowed to act at the same instant."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import pytest
from finetune_operator.lease import LeaderElector, Timings
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.operator.fake_leases import Clock, FakeLeaseStore, Unreachable

NS, NAME = "pfo-system", "pfo-leader"
T = Timings(lease_duration=10, renew_deadline=7, retry_period=1)


def candidate(store: FakeLeaseStore, who: str, timings: Timings = T, skew: float = 0.0) -> LeaderElector:
    """A candidate whose wall clock is `skew` seconds off (it must not matter)."""
    wall = lambda: datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=store.clock() + skew)  # noqa: E731
    return LeaderElector(store.view(who), NS, NAME, who, timings, clock=store.clock, wall=wall)


def lease(store: FakeLeaseStore) -> dict:
    return store.leases[(NS, NAME)]


def test_the_first_candidate_creates_the_lease_and_the_second_stands_by() -> None:
    store = FakeLeaseStore(Clock())
    a, b = candidate(store, "a"), candidate(store, "b")
    assert a.try_acquire_or_renew() and a.leading and a.fence_open()
    spec = lease(store)["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 10
    assert spec["leaseTransitions"] == 0 and spec["acquireTime"] == spec["renewTime"]
    assert spec["renewTime"].endswith("Z") and len(spec["renewTime"]) == len("2026-01-01T00:16:40.000000Z")
    for _ in range(30):  # a renews every second for 30 s: b never gets it
        store.clock.advance(1)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew() and not b.fence_open()
    assert b.holder == "a"
    assert lease(store)["spec"]["acquireTime"] == spec["acquireTime"], "a renewal keeps acquireTime"


def test_a_standby_takes_over_a_lease_duration_after_it_last_saw_it_change() -> None:
    store = FakeLeaseStore(Clock())
    a, b = candidate(store, "a"), candidate(store, "b")
    assert a.try_acquire_or_renew()
    store.clock.advance(0.5)
    assert not b.try_acquire_or_renew()  # b sees a's record at t0 + 0.5
    seen = store.clock()
    # a dies. b keeps trying every retry period; the record no longer changes.
    while store.clock() < seen + T.lease_duration - T.retry_period:
        store.clock.advance(T.retry_period)
        assert not b.try_acquire_or_renew(), (
            f"b took over {store.clock() - seen:.1f}s after it last saw a renewal"
        )
    store.clock.advance(T.retry_period)
    assert b.try_acquire_or_renew() and b.fence_open()
    spec = lease(store)["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_wall_clocks_do_not_matter(skew: float) -> None:
    """renewTime is written but never trusted: a leader whose clock is an hour off is neither
    taken over early nor kept alive late."""
    store = FakeLeaseStore(Clock())
    a, b = candidate(store, "a", skew=skew), candidate(store, "b")
    assert a.try_acquire_or_renew()
    for _ in range(20):
        store.clock.advance(1)
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    # a dies right after its last renewal, which b has just seen.
    store.clock.advance(T.lease_duration - 0.01)
    assert not b.try_acquire_or_renew(), "taken over before the lease duration had passed"
    store.clock.advance(0.02)
    assert b.try_acquire_or_renew(), "not taken over once the lease duration had passed"


def test_a_leader_renews_without_reading_first() -> None:
    store = FakeLeaseStore(Clock())
    a = candidate(store, "a")
    assert a.try_acquire_or_renew()
    store.calls.clear()
    for _ in range(5):
        store.clock.advance(1)
        assert a.try_acquire_or_renew()
    assert store.calls == [("a", "update")] * 5


def test_two_candidates_creating_at_once_get_one_lease() -> None:
    store = FakeLeaseStore(Clock())
    a, b = candidate(store, "a"), candidate(store, "b")
    real_get = store.get

    def get_then_let_b_create(namespace: str, name: str, timeout: float):  # a reads; b creates first
        seen = real_get(namespace, name, timeout)
        if store.caller == "a":
            store.get = real_get  # type: ignore[method-assign]
            assert b.try_acquire_or_renew()
            store.caller = "a"
        return seen

    store.get = get_then_let_b_create  # type: ignore[method-assign]
    assert not a.try_acquire_or_renew(), "a's create must get 409, not a second Lease"
    assert not a.leading and b.leading and lease(store)["spec"]["holderIdentity"] == "b"


def test_two_candidates_taking_an_expired_lease_at_once_get_one_leader() -> None:
    store = FakeLeaseStore(Clock())
    old, a, b = candidate(store, "old"), candidate(store, "a"), candidate(store, "b")
    assert old.try_acquire_or_renew()
    assert not a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    store.clock.advance(T.lease_duration + 1)  # old is dead; both see it expired
    real_get = store.get

    def get_then_let_b_update(namespace: str, name: str, timeout: float):
        seen = real_get(namespace, name, timeout)
        if store.caller == "a":
            store.get = real_get  # type: ignore[method-assign]
            assert b.try_acquire_or_renew()
            store.caller = "a"
        return seen

    store.get = get_then_let_b_update  # type: ignore[method-assign]
    assert not a.try_acquire_or_renew(), "a's update carried a stale resourceVersion: it must lose"
    assert b.leading and not a.leading and lease(store)["spec"]["holderIdentity"] == "b"
    assert lease(store)["spec"]["leaseTransitions"] == 1


def test_a_leader_that_cannot_renew_closes_its_fence_at_the_renew_deadline() -> None:
    store = FakeLeaseStore(Clock(), latency=lambda: (0.2, 0.3))
    a = candidate(store, "a")
    started = store.clock()
    assert a.try_acquire_or_renew()
    assert a.deadline() == started + T.renew_deadline, "the deadline counts from the request's start"
    store.fail = lambda caller, verb: True  # partitioned from the API server
    while store.clock() < started + T.renew_deadline - 0.01:
        assert a.fence_open()
        with pytest.raises(Unreachable):
            a.try_acquire_or_renew()
        store.clock.advance(0.1)
    store.clock.advance(0.02)
    assert not a.fence_open()


def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    store = FakeLeaseStore(Clock())
    a = candidate(store, "a")
    assert a.try_acquire_or_renew()
    lease(store)["spec"]["holderIdentity"] = "b"  # written behind a's back (a person, a bug)
    store.version += 1
    lease(store)["metadata"]["resourceVersion"] = str(store.version)
    store.clock.advance(1)
    assert not a.try_acquire_or_renew()  # the fast path's update gets 409, the read shows b
    assert a.lost_to == "b" and not a.fence_open()


def test_a_deleted_lease_ends_the_leadership() -> None:
    store = FakeLeaseStore(Clock())
    a = candidate(store, "a")
    assert a.try_acquire_or_renew()
    del store.leases[(NS, NAME)]
    store.clock.advance(1)
    assert not a.try_acquire_or_renew()  # the update gets 404, the read finds nothing
    assert a.lost_to and not a.fence_open()


def test_release_lets_the_standby_take_over_at_once() -> None:
    store = FakeLeaseStore(Clock())
    a, b = candidate(store, "a"), candidate(store, "b")
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert a.release() and not a.fence_open() and not a.leading
    spec = lease(store)["spec"]
    assert "holderIdentity" not in spec and spec["leaseDurationSeconds"] == 1
    store.clock.advance(T.retry_period)
    assert b.try_acquire_or_renew(), "a released Lease is free without waiting for it to expire"
    assert lease(store)["spec"]["leaseTransitions"] == 1
    assert not a.release(), "only a leader releases"


def test_a_restarted_process_with_the_same_identity_continues_its_lease() -> None:
    """The chart's identity is the pod name: a restarted container (the old process is dead)
    continues at once, as client-go does."""
    store = FakeLeaseStore(Clock())
    assert candidate(store, "pod-1").try_acquire_or_renew()
    store.clock.advance(2)
    again = candidate(store, "pod-1")
    assert again.try_acquire_or_renew() and lease(store)["spec"]["leaseTransitions"] == 0


# ------------------------------------------------------------------------------------------------
# The invariant, under generated schedules: candidates that pause (GC, a stopped process), lose
# requests, and see slow requests; time moves on between and inside their rounds.
# ------------------------------------------------------------------------------------------------
def _simulate(
    steps: list[tuple[int, float, bool]], timings: Timings, latency: tuple[float, float]
) -> tuple[list[str], int]:
    """Run rounds in the given order; return the violations of "at most one may act" and the
    number of times the Lease changed hands."""
    store = FakeLeaseStore(Clock(), latency=lambda: latency)
    failing: set[str] = set()
    store.fail = lambda caller, verb: caller in failing
    names = ["a", "b", "c"]
    electors = [candidate(store, n, timings) for n in names]
    violations = []
    for who, pause, unreachable in steps:
        store.clock.advance(pause)
        e = electors[who]
        failing.clear()
        if unreachable:
            failing.add(e.identity)
        if e.lost_to or (e.leading and not e.fence_open()):  # Election exits; a fresh process starts
            electors[who] = e = candidate(store, f"{names[who]}'", timings)
        with contextlib.suppress(Unreachable):
            e.try_acquire_or_renew()
        acting = [x.identity for x in electors if x.fence_open()]
        if len(acting) > 1:
            violations.append(f"t={store.clock():.2f}: {acting} may all act")
        holder = store.leases.get((NS, NAME), {}).get("spec", {}).get("holderIdentity")
        if acting and acting != [holder]:
            violations.append(f"t={store.clock():.2f}: {acting} acts but the Lease names {holder}")
    final = store.leases.get((NS, NAME), {}).get("spec", {})
    return violations, int(final.get("leaseTransitions", 0))


schedules = st.lists(
    st.tuples(
        st.integers(0, 2),  # whose round
        st.floats(0, 12, allow_nan=False),  # time passing before it (pauses up to past a lease)
        st.booleans(),  # its requests fail this round
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(steps=schedules, latency=st.tuples(st.floats(0, 2), st.floats(0, 2)))
def test_never_two_candidates_may_act_at_once(steps, latency) -> None:
    violations, handovers = _simulate(steps, T, latency)
    event(f"handovers: {min(handovers, 5)}{'+' if handovers >= 5 else ''}")
    assert violations == []


def test_the_invariant_check_catches_a_renew_deadline_longer_than_the_lease() -> None:
    """The same simulation with client-go's rule broken (renew deadline > lease duration) finds
    two leaders, so the property above is not vacuous."""
    broken = Timings(lease_duration=5, renew_deadline=8, retry_period=1)
    # a leads; a's requests then fail; b waits out the lease and takes over while a's fence is open.
    steps = [(0, 0.0, False), (1, 0.5, False)] + [(0, 0.5, True), (1, 0.5, False)] * 6
    assert _simulate(steps, broken, (0.0, 0.0))[0], "two leaders should have been found"
    assert _simulate(steps, T, (0.0, 0.0))[0] == []
