"""The operator's Prometheus metrics: bounded label sets, per-job series removed on deletion."""

from finetune_operator.metrics import Metrics
from prometheus_client import generate_latest


def value(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def test_jobs_by_phase_follow_each_job():
    m = Metrics()
    m.observe_job("a", "one", "u1", None)
    m.observe_job("a", "two", "u2", "Running")
    assert (value(m, "finetune_jobs", phase="Pending"), value(m, "finetune_jobs", phase="Running")) == (1, 1)
    m.observe_job("a", "two", "u2", "Succeeded")  # a job moves: it is counted once, in its new phase
    assert value(m, "finetune_jobs", phase="Running") == 0
    assert value(m, "finetune_jobs", phase="Succeeded") == 1
    m.forget_job("a", "two", "u2")
    assert value(m, "finetune_jobs", phase="Succeeded") == 0
    assert value(m, "finetune_jobs", phase="Suspended") == 0  # every phase is always exported


def test_top1_series_is_removed_with_the_job():
    m = Metrics()
    m.observe_job("a", "one", "u1", "Running", top1=0.93)
    m.observe_job("a", "two", "u2", "Running", top1=0.5)
    m.forget_job("a", "one", "u1")
    m.forget_job("a", "never-seen")  # harmless
    text = generate_latest(m.registry).decode()
    assert 'finetune_job_top1{name="one",namespace="a"}' not in text
    assert 'finetune_job_top1{name="two",namespace="a"} 0.5' in text


def test_a_top1_stands_until_the_next_report_and_is_not_inherited_by_a_new_job_of_that_name():
    m = Metrics()
    m.observe_job("a", "one", "u1", "Running", top1=0.6)
    m.observe_job("a", "one", "u1", "Running")  # a pass that read no new progress
    assert value(m, "finetune_job_top1", namespace="a", name="one") == 0.6
    m.observe_job("a", "one", "u1", "Succeeded", top1=0.8)
    assert value(m, "finetune_job_top1", namespace="a", name="one") == 0.8
    m.observe_job("a", "one", "u2", "Pending")  # deleted and created again, the DELETED event missed
    assert value(m, "finetune_job_top1", namespace="a", name="one") is None


def test_the_metrics_of_a_job_cost_a_few_hundred_bytes():
    """Goal 5a of issue 12 (10,000 jobs in 150 MiB): what the metrics keep per job, half of them
    with a top-1 (with a client Gauge's labelled child per job: 570 bytes; now about 210)."""
    import tracemalloc

    m = Metrics()
    names = [(f"job-{i:05d}", f"{i:08d}-0000-4000-8000-000000000000") for i in range(4000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, (name, uid) in enumerate(names):
            m.observe_job("team-a", name, uid, "Succeeded" if i % 2 else "Running", 0.9 if i % 2 else None)
        per_job = (tracemalloc.get_traced_memory()[0] - before) / len(names)
    finally:
        tracemalloc.stop()
    assert value(m, "finetune_jobs", phase="Succeeded") == 2000
    assert per_job < 400, per_job


def test_exposition_names():
    m = Metrics()
    m.outcomes.labels(phase="Failed", reason="DataError").inc()
    m.retries.labels(reason="Evicted").inc()
    m.attempts.inc()
    m.duration.labels(phase="Failed").observe(120)
    m.pod_creation.observe(0.3)
    m.reconcile_errors.labels(kind="ApiException").inc()
    assert value(m, "finetune_job_outcomes_total", phase="Failed", reason="DataError") == 1
    assert value(m, "finetune_retries_total", reason="Evicted") == 1
    assert value(m, "finetune_attempts_total") == 1
    assert value(m, "finetune_job_duration_seconds_bucket", phase="Failed", le="300.0") == 1
    assert value(m, "finetune_job_duration_seconds_bucket", phase="Failed", le="60.0") == 0
    assert value(m, "finetune_job_pod_creation_seconds_count") == 1
    assert value(m, "finetune_reconcile_errors_total", kind="ApiException") == 1


def test_a_deleted_job_cannot_come_back_but_a_new_one_of_the_same_name_can():
    m = Metrics()
    m.observe_job("a", "one", "old", "Running", top1=0.4)
    m.forget_job("a", "one", "old")
    m.observe_job("a", "one", "old", "Succeeded", top1=0.9)  # a pass that read it before the delete
    assert value(m, "finetune_jobs", phase="Succeeded") == 0
    assert value(m, "finetune_job_top1", namespace="a", name="one") is None
    m.observe_job("a", "one", "new", "Pending")  # created again with the same name
    assert value(m, "finetune_jobs", phase="Pending") == 1
    m.forget_job("a", "one", "old")  # a late event about the old one leaves the new one alone
    assert value(m, "finetune_jobs", phase="Pending") == 1
    assert m.uid_of("a", "one") == "new"


def test_seen_before_a_mark_is_what_a_later_list_must_contain():
    m = Metrics()
    m.observe_job("a", "early", "u1", "Running")
    mark = m.mark()
    m.observe_job("a", "late", "u2", "Pending")  # observed after the mark: maybe not in the list
    assert m.seen_before(mark) == [("a", "early", "u1")]


def test_jobs_by_phase_equal_a_count_of_the_jobs_after_any_sequence():
    """The gauge is kept as jobs move (no scan per pass): after generated sequences of
    observations, moves, repeats, renames with a new uid and deletions, every phase's value is
    the number of live jobs in it."""
    import random

    from finetune_operator.api import PHASES

    phases = [*PHASES, None]
    for seed in range(50):
        rng = random.Random(seed)
        m = Metrics()
        model: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (uid, phase)
        gone: set[str] = set()
        for step in range(200):
            key = ("ns", f"job-{rng.randrange(8)}")
            if rng.random() < 0.2:
                uid = rng.choice([model.get(key, ("u",))[0], None, f"other-{step}"])
                m.forget_job(*key, uid)
                if uid:
                    gone.add(uid)
                if key in model and (uid is None or model[key][0] == uid):
                    del model[key]
                continue
            uid = model[key][0] if key in model and rng.random() < 0.8 else f"{key[1]}-{step}"
            phase = rng.choice(phases)
            m.observe_job(*key, uid, phase)
            if uid not in gone:
                model[key] = (uid, phase or "Pending")
        for phase in PHASES:
            expected = sum(1 for _, p in model.values() if p == phase)
            assert value(m, "finetune_jobs", phase=phase) == expected, (seed, phase)
