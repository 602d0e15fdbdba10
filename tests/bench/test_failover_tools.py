"""The failover benchmark's bookkeeping (no cluster): what counts as a second pod for an attempt,
two live pods of one job, the Lease's holder changes and the figures' summary."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.failover import Timeline, Traffic, fails_once, markdown, reconciled_jobs, summarise, unclosed_jobs


def pod(job: str, attempt: int, uid: str, phase: str = "Pending") -> dict:
    return {
        "metadata": {
            "name": f"{job}-attempt-{attempt}",
            "uid": uid,
            "labels": {"finetune.paddle.dev/job-name": job, "finetune.paddle.dev/attempt": str(attempt)},
        },
        "status": {"phase": phase},
    }


def test_a_retry_after_the_failed_attempt_is_no_violation() -> None:
    t = Timeline()
    t.on_pod(1.0, "ADDED", pod("job-0003", 1, "u1"))
    t.on_pod(2.0, "MODIFIED", pod("job-0003", 1, "u1", "Running"))
    t.on_pod(3.0, "MODIFIED", pod("job-0003", 1, "u1", "Failed"))
    t.on_pod(5.0, "ADDED", pod("job-0003", 2, "u2"))
    assert t.violations == []
    assert t.writes == [1.0, 5.0] and t.pod_attempt == {"job-0003-attempt-1": 1, "job-0003-attempt-2": 2}
    assert [name for _, name in t.running] == ["job-0003-attempt-1"]


def test_a_pod_made_again_or_beside_a_live_one_is_a_violation() -> None:
    t = Timeline()
    t.on_pod(1.0, "ADDED", pod("job-0001", 1, "u1"))
    t.on_pod(2.0, "ADDED", pod("job-0001", 2, "u2"))  # attempt 1 still live
    t.on_pod(3.0, "DELETED", pod("job-0001", 1, "u1"))
    t.on_pod(4.0, "ADDED", pod("job-0001", 1, "u3"))  # the same name, a new uid
    assert len(t.violations) == 3, t.violations
    assert "created while ['job-0001-attempt-1'] still live" in t.violations[0]
    assert "created again" in t.violations[1]


def test_holder_changes_and_writes_after_a_moment() -> None:
    t = Timeline(lease_name="l")
    lease = lambda holder: {"metadata": {"name": "l"}, "spec": {"holderIdentity": holder}}  # noqa: E731
    t.on_lease(1.0, "ADDED", lease("a"))
    t.on_lease(2.0, "MODIFIED", lease("a"))  # a renewal: no change
    t.on_lease(3.0, "MODIFIED", {"metadata": {"name": "other"}, "spec": {"holderIdentity": "x"}})
    t.on_lease(12.0, "MODIFIED", lease("b"))
    assert t.holders == [(1.0, "a"), (12.0, "b")]
    assert t.holder_change_after(5.0, "a") == 12.0 and t.holder_change_after(5.0, "b") is None
    t.on_job(11.0, "MODIFIED", {"metadata": {"name": "job-0001"}})
    t.on_job(13.0, "MODIFIED", {"metadata": {"name": "job-0001"}})
    t.on_job(14.0, "ADDED", {"metadata": {"name": "job-0002"}})  # created by the user: no write
    assert t.first_write_after(12.0) == 13.0


def test_summary_and_markdown() -> None:
    report = {
        "leaseDurationSeconds": 10,
        "renewDeadlineSeconds": 7,
        "retryPeriodSeconds": 1,
        "kills": [
            {
                "takeoverSeconds": t,
                "firstReconcileSeconds": t + 1,
                "firstWriteSeconds": t + 1.5,
                "newJobPodSeconds": t + 2,
                "loadAverage1m": 3.0,
            }
            for t in (9.0, 10.0, 11.5)
        ],
        "restarts": [{"newJobPodSeconds": 3.0}, {"newJobPodSeconds": 4.0}],
        "jobs": 30,
        "pods": 40,
        "retries": 10,
        "violations": [],
    }
    s = summarise(report)
    assert s["firstReconcileSeconds"] == {"median": 11.0, "max": 12.5, "min": 10.0}
    assert s["ratioNewJobPodFailoverOverRestart"] == round(12.0 / 3.5, 2)
    report["summary"] = s
    text = markdown(report)
    assert "| SIGKILL -> the new leader's first reconcile (goal <= 15 s) | 11.0 | 12.5 | 10.0 |" in text


def test_one_job_in_three_fails_once() -> None:
    assert [fails_once(f"job-{i:04d}") for i in range(1, 7)] == [False, False, True, False, False, True]


def test_reconciled_jobs_sums_the_phase_gauge() -> None:
    text = """# HELP finetune_jobs FineTuneJobs by phase
# TYPE finetune_jobs gauge
finetune_jobs{phase="Pending"} 0.0
finetune_jobs{phase="Running"} 2.0
finetune_jobs{phase="Succeeded"} 5.0
finetune_job_top1{name="a",namespace="n"} 0.5
finetune_leader 1.0
"""
    assert reconciled_jobs(text) == 7.0
    assert reconciled_jobs('finetune_jobs{phase="Pending"} 0.0\n') == 0.0


def test_traffic_never_started_stops_without_hiding_the_failure_before_it(tmp_path: Path) -> None:
    """The harness closes in a `finally`: when an operator failed to start, stopping traffic that
    never started raised "cannot join thread before it is started" over the real error."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [
                    {"name": "k", "cluster": {"server": "https://127.0.0.1:1", "certificate-authority": "ca"}}
                ],
                "users": [{"name": "u", "user": {"client-certificate": "crt", "client-key": "key"}}],
            }
        )
    )
    traffic = Traffic(kubeconfig, "ns", Timeline(), interval=60.0)
    traffic.stop()
    assert traffic.created == {} and all(not t.is_alive() for t in traffic._threads)


def test_a_succeeded_job_without_its_completed_event_is_named() -> None:
    jobs = {
        "job-0001": {"status": {"phase": "Succeeded"}},
        "job-0002": {"status": {"phase": "Succeeded"}},
        "job-0003": {"status": {"phase": "Running"}},
    }
    event = lambda job, reason: {"involvedObject": {"name": job}, "reason": reason}  # noqa: E731
    events = [event("job-0001", "Completed"), event("job-0002", "Running"), event("job-0003", "Completed")]
    assert unclosed_jobs(["job-0001", "job-0002", "job-0003", "job-0004"], jobs, events) == ["job-0002"]
    assert unclosed_jobs(["job-0001"], jobs, events) == []
