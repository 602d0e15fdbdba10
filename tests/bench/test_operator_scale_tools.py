"""The operator benchmark's own arithmetic and bookkeeping (no cluster needed): percentiles,
the API server's request counters, per-job timelines from watch events, and the claim that the
native Job runs exactly the pod the operator renders."""

from __future__ import annotations

import copy

import pytest
from finetune_operator.config import OperatorConfig
from finetune_operator.pod import render_pod

from bench.kube_watch import count_delta, parse_request_counts
from bench.operator_scale import (
    Recorder,
    Track,
    _creation_cores,
    ftj_done,
    intervals,
    job_manifest,
    native_done,
    native_job,
    pace,
    percentiles,
)


def test_percentiles_are_nearest_rank() -> None:
    stats = percentiles([float(v) for v in range(100, 0, -1)])  # 1..100, unsorted
    assert (stats["n"], stats["p50"], stats["p95"], stats["p99"], stats["max"]) == (100, 50, 95, 99, 100)
    assert percentiles([2.5])["p99"] == 2.5
    assert percentiles([])["p50"] is None


METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests ...
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="finetune.paddle.dev",resource="finetunejobs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2e+01
apiserver_request_duration_seconds_count{component="apiserver",group="",resource="pods",verb="LIST"} 99
apiserver_request_duration_seconds_sum{component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 0.35
"""  # noqa: E501


def test_request_counts_sum_over_codes_and_skip_other_series() -> None:
    counts = parse_request_counts(METRICS)
    assert counts == {
        ("LIST", "", "pods", ""): 7.0,
        ("POST", "", "pods", ""): 4.0,
        ("PATCH", "finetune.paddle.dev", "finetunejobs", "status"): 20.0,
        ("seconds:LIST", "", "pods", ""): 0.35,
    }
    later = dict(counts)
    later[("POST", "", "pods", "")] += 5
    assert count_delta(counts, later) == {("POST", "", "pods", ""): 5.0}


def _pod(job: str, node: str = "", phase: str = "Pending") -> dict:
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:03Z"}]
    return {
        "metadata": {"name": f"{job}-attempt-1", "labels": {"finetune.paddle.dev/job-name": job}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions if node else []},
    }


def test_recorder_keeps_the_first_arrival_of_each_moment() -> None:
    rec = Recorder("finetune.paddle.dev/job-name", ftj_done)
    job = {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:01Z"}}
    rec.on_job(10.0, "ADDED", job)
    rec.on_pod(10.5, "ADDED", _pod("a"))
    rec.on_pod(10.7, "MODIFIED", _pod("a", node="n1"))
    rec.on_pod(10.9, "MODIFIED", _pod("a", node="n1"))  # a later event changes nothing recorded
    rec.on_pod(12.0, "MODIFIED", _pod("a", node="n1", phase="Succeeded"))
    rec.on_job(12.5, "MODIFIED", {**job, "status": {"phase": "Succeeded"}})  # no metrics yet
    rec.on_job(12.75, "MODIFIED", {**job, "status": {"phase": "Succeeded", "metrics": {"top1": 0.5}}})
    rec.on_pod(13.0, "ADDED", _pod("other-job"))
    t = rec.tracks["a"]
    assert (t.created, t.pod_created, t.pod_scheduled, t.pod_succeeded, t.done) == (
        10.0,
        10.5,
        10.7,
        12.0,
        12.75,
    )
    assert t.scheduled_ts is not None and t.created_ts is not None and t.scheduled_ts - t.created_ts == 2.0
    assert intervals(rec.tracks, "created", "pod_scheduled") == [pytest.approx(0.7)]  # other-job: no creation
    assert rec.count("done") == 1


def test_native_done_needs_the_complete_condition() -> None:
    running = {"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}}
    complete = copy.deepcopy(running)
    complete["status"]["conditions"].append({"type": "Complete", "status": "True"})
    assert not native_done(running) and native_done(complete)


def test_native_job_runs_the_pod_the_operator_renders() -> None:
    job = native_job("job-00001", gpus=1)
    ftj = job_manifest("job-00001", gpus=1)
    ftj["metadata"].update(namespace="native", uid="00000000-0000-0000-0000-000000000000")
    ours = render_pod(ftj, 1, OperatorConfig())["spec"]
    assert job["spec"]["template"]["spec"] == ours
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert job["spec"]["backoffLimit"] == 0


def _tracks(jobs_per_second: float, pods_per_second: float, n: int) -> dict[str, Track]:
    """Jobs created at one rate, each job's pod created in order at another (no faster than its
    job, 0.2 s at the least)."""
    tracks, pod_free = {}, 0.0
    for i in range(n):
        created = i / jobs_per_second
        pod_free = max(pod_free + 1 / pods_per_second, created + 0.2)
        tracks[f"job-{i}"] = Track(created=created, pod_created=pod_free)
    return tracks


def test_pace_shows_a_backlog_that_grows_through_the_burst() -> None:
    behind = pace(_tracks(100, 80, 1000))
    assert behind["jobsPerSecond"] == pytest.approx(100, rel=0.01)
    assert behind["podsPerSecond"] == pytest.approx(80, rel=0.02)
    # 1,000 jobs in 10 s, pods 20% slower: the last jobs wait about 2.5 s, the first 0.2 s
    assert behind["lagFirstTenthP50"] < 0.5
    assert behind["lagLastTenthP50"] == pytest.approx(2.5, abs=0.2)
    kept = pace(_tracks(100, 150, 1000))
    assert kept["podsPerSecond"] == pytest.approx(100, rel=0.02)  # no more pods than jobs yet
    assert kept["lagFirstTenthP50"] == kept["lagLastTenthP50"] == pytest.approx(0.2, abs=0.01)


def test_pace_needs_ten_jobs_with_their_pods_and_a_span() -> None:
    assert pace(_tracks(100, 80, 9)) == {}
    assert pace({f"j{i}": Track(created=1.0, pod_created=2.0) for i in range(20)}) == {}
    tracks = _tracks(100, 80, 20)
    tracks["no-pod"] = Track(created=0.05)
    assert pace(tracks)["jobsPerSecond"] == pytest.approx(100, rel=0.06)


def test_the_creation_window_table_has_a_row_per_side_that_measured_it() -> None:
    burst = {
        "creationCores": {
            "seconds": 50.0,
            "machineBusyCores": 1.99,
            "cores": {"kube-apiserver": 1.2, "operator": 0.3, "benchmark": 0.2},
        },
        "pace": {"jobsPerSecond": 110.0, "podsPerSecond": 88.0, "lagFirstTenthP50": 0.9,
                 "lagLastTenthP50": 7.0},
    }  # fmt: skip
    report = {"rounds": [{"n": 5000, "ours": {"burst": burst}, "limit": {"burst": {}}}]}
    lines = _creation_cores(report)
    rows = [line for line in lines if line.startswith("| 5000")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2:5] == ["50.0", "1.99", "1.2"]
    assert cells[-3:] == ["110.0", "88.0", "0.9 / 7.0"]
    header = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[header.index("operator")] == "0.3" and cells[header.index("etcd")] == ""
    assert _creation_cores({"rounds": [{"n": 1, "limit": {"burst": {}}}]}) == []
