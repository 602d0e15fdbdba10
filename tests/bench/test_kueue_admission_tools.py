"""The admission benchmark's own arithmetic and bookkeeping (no cluster needed): the ABBA order,
the admitted moment from watch events, the pooled percentiles and the kueue / plain ratios."""

from __future__ import annotations

import random

from bench.kueue_admission import (
    SIDES,
    STAGES,
    AdmissionRecorder,
    pooled,
    queued_manifest,
    ratios,
    side_order,
    stage_samples,
)
from bench.operator_scale import percentiles

GATE = {"name": "kueue.x-k8s.io/admission"}


def test_sides_alternate_abba_and_each_runs_as_often() -> None:
    assert side_order(1) == ["plain", "kueue"]
    assert side_order(2) == ["plain", "kueue", "kueue", "plain"]
    for rounds in range(1, 7):
        order = side_order(rounds)
        assert [order.count(s) for s in SIDES] == [rounds, rounds]
        # Over every pair of rounds each side is first once: a steady drift falls on both.
        if rounds % 2 == 0:
            first = [order[i] for i in range(0, len(order), 2)]
            assert first.count("plain") == first.count("kueue")


def _pod(job: str, gated: bool, node: str = "", phase: str = "Pending") -> dict:
    return {
        "metadata": {"name": f"{job}-attempt-1", "labels": {"finetune.paddle.dev/job-name": job}},
        "spec": {"schedulingGates": [GATE] if gated else [], **({"nodeName": node} if node else {})},
        "status": {"phase": phase},
    }


def test_a_gated_pod_is_admitted_when_its_gate_goes_and_a_plain_one_when_created() -> None:
    rec = AdmissionRecorder()
    for job in ("q", "p"):
        rec.on_job(10.0, "ADDED", {"metadata": {"name": job}})
    rec.on_pod(10.2, "ADDED", _pod("q", gated=True))
    rec.on_pod(10.4, "MODIFIED", _pod("q", gated=True))  # still held: not admitted
    rec.on_pod(11.0, "MODIFIED", _pod("q", gated=False))
    rec.on_pod(11.1, "MODIFIED", _pod("q", gated=False, node="n1"))
    rec.on_pod(11.3, "MODIFIED", _pod("q", gated=False, node="n1", phase="Running"))
    rec.on_pod(12.0, "MODIFIED", _pod("q", gated=False, node="n1", phase="Running"))  # no later change
    rec.on_pod(10.5, "ADDED", _pod("p", gated=False))
    rec.on_pod(10.6, "DELETED", _pod("other", gated=False))
    q, p = rec.tracks["q"], rec.tracks["p"]
    assert (q.pod_created, q.pod_admitted, q.pod_scheduled, q.pod_running) == (10.2, 11.0, 11.1, 11.3)
    assert (p.pod_created, p.pod_admitted) == (10.5, 10.5)
    samples = stage_samples(rec.tracks)
    assert [round(v, 3) for v in samples["podAdmitted"]] == [1.0, 0.5]
    assert [round(v, 3) for v in samples["podRunning"]] == [1.3]  # p has not run: left out
    assert [round(v, 3) for v in samples["podCreatedToAdmitted"]] == [0.8, 0.0]
    assert "other" not in rec.tracks


def test_pooled_percentiles_cover_every_round_of_a_side_and_ratios_divide_kueue_by_plain() -> None:
    rng = random.Random(7)
    rounds = []
    for i, side in enumerate(side_order(2)):
        scale = 3.0 if side == "kueue" else 1.0
        rounds.append(
            {
                "side": side,
                "round": i,
                "samples": {s: [scale * rng.uniform(0.1, 1) for _ in range(50)] for s in STAGES},
            }
        )
    stats = pooled(rounds)
    for side in SIDES:
        for stage in STAGES:
            every = [v for r in rounds if r["side"] == side for v in r["samples"][stage]]
            assert stats[side][stage] == percentiles(every) and stats[side][stage]["n"] == 100
    got = ratios(stats)
    assert set(got) == {f"{s}.{q}" for s in STAGES for q in ("p50", "p95", "p99")}
    for key, value in got.items():
        stage, q = key.split(".")
        assert value == round(stats["kueue"][stage][q] / stats["plain"][stage][q], 2)
        assert 2.0 < value < 4.5  # Kueue's side was drawn three times as slow


def test_a_side_with_no_samples_has_no_ratio() -> None:
    empty = {s: percentiles([]) for s in STAGES}
    some = {s: percentiles([1.0]) for s in STAGES}
    assert set(ratios({"plain": empty, "kueue": some}).values()) == {None}


def test_only_the_kueue_side_carries_the_queue_label() -> None:
    assert queued_manifest("a", "team")["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "team"}
    assert "labels" not in queued_manifest("a", None)["metadata"]
