"""The steady state's progress feed: which written epochs reached a job's status (no cluster),
and the feed's lines served as the logs of real kwok pods (cluster)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from finetune_contract import parse_last_progress
from hypothesis import given
from hypothesis import strategies as st

from bench.progress_feed import ProgressFeed, Written, epoch_report
from localcluster import Cluster

EPOCH = 10.0
WRITTEN = [[Written(e, 100.0 + e * EPOCH) for e in range(8)]]  # one group, epochs 0..7 at 100, 110, ...


def report(seen: dict[str, list[tuple[int, float]]], since: float = 105.0, until: float = 165.0):
    return epoch_report(WRITTEN, seen, dict.fromkeys("abc", 0), since, until, EPOCH / 2)


def test_each_epoch_in_the_window_is_reached_skipped_or_missed_with_its_lag() -> None:
    # window 105..165, due by 160: epochs 1..6 (written 110..160) count, 0 and 7 do not
    seen = {
        "a": [(e, 100.0 + e * EPOCH + 0.5) for e in range(8)],  # every epoch, 0.5 s late
        "b": [(1, 110.2), (3, 130.3), (4, 140.1), (6, 161.0)],  # 2 and 5 skipped
        "c": [(1, 111.0), (2, 121.0)],  # stuck at 2 from 121 on: 3..6 missed
    }
    r = report(seen)
    assert r.reported == 18
    assert (r.reached, r.skipped, r.missed) == (6 + 4 + 2, 2, 4)
    assert sorted(round(x, 3) for x in r.lags)[:6] == [0.1, 0.2, 0.3, 0.5, 0.5, 0.5]
    assert max(r.lags) == 1.0
    assert r.as_dict()["everyEpochReached"] is False
    only_a = epoch_report(WRITTEN, seen, {"a": 0}, 105.0, 165.0, EPOCH / 2)
    assert only_a.as_dict()["everyEpochReached"] is True and only_a.reported == 6


def test_a_status_shown_before_the_line_was_written_is_not_the_line_reaching_it() -> None:
    # epoch 3 in the status at 125 s can only be an earlier run's: epoch 3 is written at 130
    r = epoch_report(WRITTEN, {"a": [(3, 125.0)]}, {"a": 0}, 125.0, 140.0, 5.0)
    assert (r.reported, r.reached, r.missed) == (1, 0, 1)


def test_no_epoch_in_the_window_is_not_every_epoch_reached() -> None:
    r = epoch_report(WRITTEN, {}, {"a": 0}, 500.0, 600.0, 5.0)
    assert r.reported == 0 and r.as_dict()["everyEpochReached"] is False


@given(
    st.lists(st.tuples(st.integers(0, 9), st.floats(90, 200)), max_size=12),
    st.floats(90, 200),
    st.floats(0, 100),
)
def test_every_epoch_due_is_counted_exactly_once(changes: list, since: float, span: float) -> None:
    changes.sort(key=lambda c: c[1])
    r = epoch_report(WRITTEN, {"a": changes}, {"a": 0}, since, since + span, EPOCH / 2)
    due = [w for w in WRITTEN[0] if since <= w.at <= since + span - EPOCH / 2]
    assert r.reported == len(due) == r.reached + r.skipped + r.missed
    assert len(r.lags) == r.reached and all(lag >= 0 for lag in r.lags)


def job(name: str, epoch: int | None) -> dict[str, Any]:
    status = {} if epoch is None else {"progress": {"epoch": epoch}}
    return {"metadata": {"name": name}, "status": status}


def test_the_feed_serves_staggered_epochs_as_the_pods_logs(cluster: Cluster, namespace: str) -> None:
    from kubernetes import client

    pods = [f"p{i}" for i in range(4)]
    items = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
         "spec": {"containers": [{"name": "trainer", "image": "fake"}]}}
        for name in pods
    ]  # fmt: skip
    body = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body), namespace=namespace)
    feed = ProgressFeed(cluster, namespace, [f"job-{p}" for p in pods], pods, epoch_seconds=2.0, groups=2)
    feed.start()
    try:
        for name in pods:
            cluster.wait_pod_phase(namespace, name, "Running")
        time.sleep(5.5)  # group 0 wrote epochs 1 and 2 (at 2 and 4 s), group 1 also (3 and 5 s)
        core = client.CoreV1Api(cluster.api_client())
        epochs = {}
        for name in pods:
            record = parse_last_progress(core.read_namespaced_pod_log(name, namespace))
            assert record is not None and record["epochs"] > 1000
            epochs[name] = record["epoch"]
        assert epochs["p0"] == epochs["p2"] == len(feed.written[0]) - 1 >= 2  # same group, same file
        assert epochs["p1"] == epochs["p3"] == len(feed.written[1]) - 1 >= 2
        # the watch callback keeps each job's epoch changes, once each
        for epoch in (None, 1, 1, 2):
            feed.on_job(time.monotonic(), "MODIFIED", job("job-p0", epoch))
        feed.on_job(time.monotonic(), "MODIFIED", job("not-ours", 5))
        assert [e for e, _ in feed.seen["job-p0"]] == [1, 2] and "not-ours" not in feed.seen
    finally:
        feed.stop()
    left = cluster.kubectl("get", "clusterlogs.kwok.x-k8s.io", "-o", "name").stdout
    assert "pfo-bench-progress" not in left


def test_with_push_every_pod_posts_each_epoch_and_it_reaches_the_status(
    cluster: Cluster, namespace: str, tmp_path: Any
) -> None:
    """The benchmark's push as trainers do it, against the real operator's endpoint: each pod's own
    bound token, every epoch's record accepted, and every epoch in the job's status."""
    from finetune_operator.pod import pod_name

    from bench.progress_feed import Pusher
    from localcluster import KubeRest, OperatorProcess
    from tests.operator.cluster_jobs import apply, job_manifest, phase_is, wait_job
    from tests.operator.test_operator_lifecycle import VOLUME, metric_value

    cluster.install_crds(Path(__file__).resolve().parents[2] / "crds")
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    op = OperatorProcess(
        cluster, [namespace], tmp_path / "operator.log",
        extra=["--progress-poll-interval", "600"], progress_ips=("127.0.0.1",),
    )  # fmt: skip
    op.start()
    jobs = ["j0", "j1", "j2"]
    pods = [pod_name(j, 1) for j in jobs]
    rest = KubeRest(cluster.kubeconfig)
    pusher = Pusher(rest, f"https://127.0.0.1:{op.progress_port}", op.progress_ca, namespace, threads=4)
    feed = ProgressFeed(cluster, namespace, jobs, pods, epoch_seconds=3.0, groups=3, push=pusher)
    try:
        for name in jobs:
            apply(cluster, namespace, job_manifest(name, VOLUME))
        for name in jobs:
            wait_job(cluster, op, namespace, name, phase_is("Running"), "Running")
        assert pusher.mint(jobs, pods) >= 0 and set(pusher.tokens) == set(pods)
        feed.start()
        time.sleep(8)  # epochs 1 and 2 of every group, pushed
        for name in jobs:
            status = wait_job(
                cluster,
                op,
                namespace,
                name,
                lambda s: (s.get("progress") or {}).get("epoch", 0) >= 2,
                "epoch 2",
            )
            assert status["progress"]["epochs"] > 1000
        feed.stop()
        pusher.close()
        assert set(pusher.answers) == {202} and pusher.answers[202] >= 3 * 3  # epochs 0, 1, 2 of each
        text = op.metrics()
        assert metric_value(text, "finetune_api_requests_total", verb="create", resource="tokenreviews") == 3
        assert not metric_value(text, "finetune_api_requests_total", verb="get", resource="pods/log")
    finally:
        feed.stop()
        op.stop()
