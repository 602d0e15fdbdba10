"""Two real operator processes with leader election against the local control plane, while jobs
are created and their pods finish (one in three fails once and is retried): the leader is
SIGKILLed, frozen past its lease, or stopped with SIGTERM, and the other takes over without a
second pod for any attempt or a transition reported twice. The same harness as `make bench`'s
bench/failover.py, with fewer kills (the benchmark's README has the figures of 10)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from finetune_operator.config import OperatorConfig
from finetune_operator.leadership import EXIT_LEADERSHIP_LOST

from bench.failover import LEASE_NAME, Harness, _one_leader, run_control, run_failover

DEFAULTS = OperatorConfig()
LEASE, RETRY = DEFAULTS.lease_duration_seconds, DEFAULTS.retry_period_seconds


def test_the_leader_killed_three_times_hands_over_with_one_pod_per_attempt(
    cluster: Any, crd_installed: str, namespace: str, tmp_path: Path
) -> None:
    report = run_failover(cluster, namespace, tmp_path, kills=3, restarts=0)
    print(json.dumps(report["summary"], indent=1))
    assert report["violations"] == [], "\n".join(report["violations"][:20])
    assert report["retries"] > 0 and report["jobs"] >= 20, "the traffic did not exercise retries"
    for kill in report["kills"]:
        assert kill["newLeader"] != kill["killed"]
        # The standby waits for the lease to run out from the last renewal it saw (at most one
        # retry period before the kill), then takes it at its next try.
        assert kill["takeoverSeconds"] >= LEASE - RETRY - 0.5, f"took over too early: {kill}"
        assert kill["takeoverSeconds"] <= LEASE + 2 * RETRY + 3, f"took over too late: {kill}"
        # The new leader starts kopf and reconciles: seconds, even on a loaded machine.
        assert kill["firstReconcileSeconds"] - kill["takeoverSeconds"] <= 10, kill
        assert kill["newJobPodSeconds"] <= 30, kill


def test_the_checks_catch_two_replicas_acting_at_once(
    cluster: Any, crd_installed: str, namespace: str, tmp_path: Path
) -> None:
    """The control: without leader election both replicas act, and the Event check says so; so
    the zero above is a measurement, not a check that cannot fail."""
    control = run_control(cluster, namespace, tmp_path, seconds=6)
    assert control["transitionsReportedTwice"] > 0, control
    assert any("reported 2 times" in v for v in control["violations"]), control["violations"][:5]


def test_a_frozen_leader_exits_when_it_wakes_up_after_losing_the_lease(
    cluster: Any, crd_installed: str, namespace: str, tmp_path: Path
) -> None:
    """SIGSTOP (a stalled node, a long pause) past the lease: the standby takes over; on SIGCONT
    the old leader finds its renew deadline long gone, sends nothing and exits."""
    h = Harness(cluster, namespace, tmp_path, job_interval=1.0, kubeconfig=None)
    try:
        ops = [h.replica("frozen-a"), h.replica("frozen-b")]
        for op in ops:
            op.start()
        leader = h.wait("one leader", lambda: _one_leader(ops), 60)
        other = next(op for op in ops if op is not leader)
        h.traffic.start()
        time.sleep(3)
        t_stop = time.monotonic()
        leader.signal(signal.SIGSTOP)
        h.wait("the standby to lead", other.leading, LEASE + 10)
        waited = time.monotonic() - t_stop
        assert waited >= LEASE - RETRY - 0.5, f"the standby took over after {waited:.1f}s"
        time.sleep(2)  # both "leaders" exist now; only one may act
        leader.signal(signal.SIGCONT)
        h.wait("the old leader to exit", lambda: leader.returncode is not None, 15)
        assert leader.returncode == EXIT_LEADERSHIP_LOST, leader.log_tail()
        assert "leader election lost" in leader.log_tail(), leader.log_tail()
        time.sleep(3)
        h.finish()
    finally:
        h.close()
    verdict = h.verdict()
    assert verdict["violations"] == [], "\n".join(verdict["violations"][:20])
    lease = json.loads(cluster.kubectl("get", "lease", LEASE_NAME, "-o", "json", namespace=namespace).stdout)
    assert lease["spec"]["leaseTransitions"] >= 1


def test_a_leader_stopped_with_sigterm_hands_over_without_waiting_for_the_lease(
    cluster: Any, crd_installed: str, namespace: str, tmp_path: Path
) -> None:
    """What a rolling update or a drain does: SIGTERM; the leader stops acting, releases the
    Lease, and the standby takes over within a retry period or two, not a lease duration."""
    h = Harness(cluster, namespace, tmp_path, job_interval=1.0, kubeconfig=None)
    try:
        ops = [h.replica("graceful-a"), h.replica("graceful-b")]
        for op in ops:
            op.start()
        leader = h.wait("one leader", lambda: _one_leader(ops), 60)
        other = next(op for op in ops if op is not leader)
        h.traffic.start()
        time.sleep(3)
        old = h.timeline.holders[-1][1]
        t_term = time.monotonic()
        leader.stop()  # SIGTERM, waits for the exit
        assert leader.returncode == 0, leader.log_tail()
        assert "Lease released" in leader.log_tail(), leader.log_tail()
        taken = h.wait(
            "the standby to take the Lease", lambda: h.timeline.holder_change_after(t_term, old), 30
        )
        assert taken - t_term < LEASE - RETRY, f"took {taken - t_term:.1f}s: the Lease was not released"
        h.wait("the standby to lead", other.leading, 10)
        time.sleep(3)
        h.finish()
    finally:
        h.close()
    verdict = h.verdict()
    assert verdict["violations"] == [], "\n".join(verdict["violations"][:20])
