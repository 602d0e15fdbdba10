"""FineTuneJobs queued, admitted and preempted by the real Kueue (v0.17.1, localcluster/kueue.py)
beside the local control plane; kwok fake GPU nodes run the pods and the tests play the trainer's
part (`cluster.drive_pod`). The real operator process watches the test's namespace, which Kueue
manages (its opt-in label) and which has a ClusterQueue and a LocalQueue of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_contract import encode_result

from localcluster.kueue import Kueue, is_gated, priority_class, queue_objects
from tests.contract.sample import SAMPLE_RESULT
from tests.operator.cluster_jobs import apply, events, get_job, job_manifest, phase_is, wait_job
from tests.operator.fake_jobs import wait_for

VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}
QUEUE = "kueue.x-k8s.io/queue-name"
PRIORITY = "kueue.x-k8s.io/priority-class"
# Stands for the kubelet while the trainer checkpoints: kwok removes a deleted pod that has no
# finalizer at once (Kueue drops its own from a deleted plain pod within a second), where a real
# kubelet keeps the pod until its container has exited. With this finalizer kwok's pod-terminate
# Stage stops the pod after pfo.dev/terminate-after (exit 143, Failed), as a kubelet would.
HOLD = "pfo.dev/test-kubelet"


def _delete_cluster_scoped(kueue: Kueue, objects: list[dict[str, Any]]) -> None:
    for o in objects:
        if "namespace" not in o["metadata"]:
            kueue.cluster.kubectl(
                "delete", f"{o['kind'].lower()}s.kueue.x-k8s.io", o["metadata"]["name"], "--wait=false",
                "--ignore-not-found", check=False,
            )  # fmt: skip


def _queue(kueue: Kueue, namespace: str, gpus: int) -> Iterator[str]:
    kueue.enable_namespace(namespace)
    objects = queue_objects(namespace, namespace, gpus=gpus)
    kueue.apply(objects)
    kueue.wait_active(namespace, namespace)
    yield namespace
    kueue.cluster.kubectl("delete", "ftj", "--all", "--wait=false", namespace=namespace, check=False)
    kueue.cluster.kubectl("delete", "workloads.kueue.x-k8s.io", "--all", "--wait=false", namespace=namespace)
    _delete_cluster_scoped(kueue, objects)


@pytest.fixture
def queue8(kueue: Kueue, namespace: str) -> Iterator[str]:
    """The LocalQueue (named after the namespace) of a ClusterQueue with 8 GPUs of quota."""
    yield from _queue(kueue, namespace, 8)


@pytest.fixture
def queue4(kueue: Kueue, namespace: str) -> Iterator[str]:
    yield from _queue(kueue, namespace, 4)


def queued_job(name: str, queue: str, gpus: int, priority: str | None = None, **spec: Any) -> dict[str, Any]:
    manifest = job_manifest(name, VOLUME, resources={"gpus": gpus}, **spec)
    labels = {QUEUE: queue}
    if priority:
        labels[PRIORITY] = priority
    manifest["metadata"]["labels"] = labels
    return manifest


def pod_of(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    return cluster.get_pod(namespace, name)


def succeed(cluster: Any, namespace: str, pod: str) -> None:
    cluster.drive_pod(namespace, pod, "Succeeded", message=encode_result(SAMPLE_RESULT))


def test_three_4_gpu_jobs_on_8_gpus_of_quota_two_run_the_third_queues(
    cluster: Any, namespace: str, queue8: str, operator: Any
) -> None:
    for name in ("a", "b", "c"):
        apply(cluster, namespace, queued_job(name, queue8, 4))
    # Two run; which two is Kueue's choice (jobs created in the same second).
    wait_for(
        "two jobs Running and one Queued with Kueue's words",
        lambda: (
            sorted((get_job(cluster, namespace, n) or {}).get("status", {}).get("phase", "") for n in "abc")
            == ["Queued", "Running", "Running"]
            and "insufficient unused quota" in _queued_message(cluster, namespace)
        ),
        60,
        lambda: operator.log_tail(60),
    )
    statuses = {n: get_job(cluster, namespace, n)["status"] for n in "abc"}
    (waiting,) = [n for n, s in statuses.items() if s["phase"] == "Queued"]
    s = statuses[waiting]
    assert s["reason"] == "Queued"
    assert s["message"] == (
        f"waiting for admission by LocalQueue {queue8}: couldn't assign flavors to pod set "
        f"{_pod_set(cluster, namespace, waiting)}: insufficient unused quota for nvidia.com/gpu in "
        f"flavor {queue8}-flavor, 4 more needed"
    )
    assert s["waiting"]["kind"] == "Admission" and "deadline" not in s["waiting"]
    assert "startTime" not in s  # its clock has not started
    pod = pod_of(cluster, namespace, f"{waiting}-attempt-1")
    assert pod is not None and is_gated(pod)
    labels, notes = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels["kueue.x-k8s.io/pod-group-name"] == f"{waiting}-attempt-1"
    assert notes["kueue.x-k8s.io/pod-group-total-count"] == "1"
    assert notes["kueue.x-k8s.io/retriable-in-group"] == "false"
    # kubectl shows it, and an Event says it.
    table = cluster.kubectl("get", "ftj", waiting, namespace=namespace).stdout
    assert table.splitlines()[1].split()[:2] == [waiting, "Queued"]
    assert ("Normal", "Queued") in [(t, r) for t, r, _ in events(cluster, namespace, waiting)]

    # One finishes: its quota goes to the queued job at once, which then runs.
    finisher = next(n for n in "abc" if n != waiting)
    succeed(cluster, namespace, f"{finisher}-attempt-1")
    status = wait_job(cluster, operator, namespace, waiting, phase_is("Running"), "Running", timeout=30)
    assert status["attempts"] == 1 and status.get("failedAttempts", 0) == 0 and status["startTime"]
    assert get_job(cluster, namespace, finisher)["status"]["phase"] == "Succeeded"

    # A deleted job releases its quota too (the garbage collector deletes its pod).
    apply(cluster, namespace, queued_job("d", queue8, 4))
    wait_job(cluster, operator, namespace, "d", phase_is("Queued"), "Queued", timeout=30)
    other = next(n for n in "abc" if n not in (waiting, finisher))
    cluster.kubectl("delete", "ftj", other, "--wait=false", namespace=namespace)
    wait_job(cluster, operator, namespace, "d", phase_is("Running"), "Running", timeout=30)


def _queued_message(cluster: Any, namespace: str) -> str:
    for n in "abc":
        s = (get_job(cluster, namespace, n) or {}).get("status") or {}
        if s.get("phase") == "Queued":
            return s.get("message", "")
    return ""


def _pod_set(cluster: Any, namespace: str, job: str) -> str:
    wl = json.loads(
        cluster.kubectl(
            "get", "workloads.kueue.x-k8s.io", f"{job}-attempt-1", "-o", "json", namespace=namespace
        ).stdout
    )
    return wl["spec"]["podSets"][0]["name"]


@pytest.fixture
def priorities(kueue: Kueue, namespace: str) -> Iterator[tuple[str, str]]:
    low, high = f"{namespace}-low", f"{namespace}-high"
    objects = [priority_class(low, 100), priority_class(high, 1000)]
    kueue.apply(objects)
    yield low, high
    _delete_cluster_scoped(kueue, objects)


def test_a_higher_priority_job_preempts_and_the_preempted_job_resumes_without_a_failure(
    cluster: Any, namespace: str, queue4: str, priorities: tuple[str, str], operator: Any
) -> None:
    low, high = priorities
    # backoffLimit 0: a preemption counted as a failure would fail the job.
    victim = queued_job(
        "low",
        queue4,
        4,
        low,
        runPolicy={"backoffLimit": 0},
        template={"annotations": {"pfo.dev/terminate-after": "3s"}},
    )
    apply(cluster, namespace, victim)
    wait_job(cluster, operator, namespace, "low", phase_is("Running"), "Running", timeout=60)
    patch = json.dumps({"metadata": {"finalizers": [HOLD]}})
    cluster.kubectl("patch", "pod", "low-attempt-1", "--type=merge", "-p", patch, namespace=namespace)

    apply(cluster, namespace, queued_job("high", queue4, 4, high))
    status = wait_job(
        cluster, operator, namespace, "low", lambda s: s.get("reason") == "Preempted", "Preempted", timeout=30
    )
    assert status["phase"] == "Queued"
    assert "Preempted to accommodate a workload" in status["message"]
    assert f"preemptor path: /{queue4}" in status["message"]
    assert status.get("failedAttempts", 0) == 0 and status["endedAttempts"] == 1
    # The trainer's SIGTERM: it checkpoints and exits 143 (kwok, after terminate-after).
    wait_for(
        "the preempted pod stopped with 143",
        lambda: (
            ((pod_of(cluster, namespace, "low-attempt-1") or {}).get("status") or {}).get("phase") == "Failed"
        ),
        30,
        lambda: operator.log_tail(40),
    )
    release = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
    cluster.kubectl("patch", "pod", "low-attempt-1", "--type=json", "-p", release, namespace=namespace)
    # The next attempt: a new group, queued behind the preemptor.
    status = wait_job(
        cluster, operator, namespace, "low",
        lambda s: s.get("attempts") == 2 and s.get("phase") == "Queued", "attempt 2 Queued", timeout=30,
    )  # fmt: skip
    queued = [m for _, r, m in events(cluster, namespace, "low") if r == "Queued"]
    assert any(m.startswith("attempt 2 resumed: created pod low-attempt-2") for m in queued), queued
    second = pod_of(cluster, namespace, "low-attempt-2")
    assert second is not None and is_gated(second)
    assert second["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "low-attempt-2"
    wait_job(cluster, operator, namespace, "high", phase_is("Running"), "Running", timeout=30)

    # The preemptor finishes; the preempted job is admitted again and succeeds, no failure counted.
    succeed(cluster, namespace, "high-attempt-1")
    wait_job(cluster, operator, namespace, "low", phase_is("Running"), "Running again", timeout=30)
    succeed(cluster, namespace, "low-attempt-2")
    status = wait_job(
        cluster, operator, namespace, "low", phase_is("Succeeded", "Failed"), "finished", timeout=30
    )
    assert (status["phase"], status.get("failedAttempts", 0), status["attempts"]) == ("Succeeded", 0, 2)
    reasons = [r for _, r, _ in events(cluster, namespace, "low")]
    assert reasons.count("Preempted") == 1 and reasons[-1] == "Completed"
    assert "Queued" in reasons[reasons.index("Preempted") :]


def test_the_shared_cluster_example_is_accepted(kueue: Kueue, crd_installed: str, namespace: str) -> None:
    """examples/kueue-shared-cluster.yaml: every object passes the API server's and Kueue's
    validation (server-side dry run: nothing is created)."""
    example = Path(__file__).parents[2] / "examples" / "kueue-shared-cluster.yaml"
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert [d["kind"] for d in docs] == [
        "ResourceFlavor",
        "ClusterQueue",
        "LocalQueue",
        "WorkloadPriorityClass",
        "FineTuneJob",
    ]
    job = docs[-1]
    assert job["metadata"]["labels"][QUEUE] == docs[2]["metadata"]["name"]
    assert job["metadata"]["labels"][PRIORITY] == docs[3]["metadata"]["name"]
    assert docs[2]["spec"]["clusterQueue"] == docs[1]["metadata"]["name"]
    proc = kueue.cluster.kubectl(
        "apply", "--server-side", "--validate=strict", "--dry-run=server", "-f", str(example),
        namespace=namespace,
    )  # fmt: skip
    assert proc.stdout.count("serverside-applied (server dry run)") == len(docs), proc.stdout


def test_a_queue_that_does_not_exist_is_inadmissible_with_kueues_words(
    cluster: Any, namespace: str, queue4: str, operator: Any
) -> None:
    apply(cluster, namespace, queued_job("lost", "no-such-queue", 1))
    status = wait_job(
        cluster, operator, namespace, "lost",
        lambda s: s.get("reason") == "Inadmissible", "Queued, Inadmissible", timeout=60,
    )  # fmt: skip
    assert status["phase"] == "Queued"
    assert status["message"] == (
        "waiting for admission by LocalQueue no-such-queue: LocalQueue no-such-queue doesn't exist"
    )
    assert ("Warning", "Inadmissible") in [(t, r) for t, r, _ in events(cluster, namespace, "lost")]


def test_a_namespace_kueue_does_not_manage_runs_the_job_unqueued_and_says_so(
    cluster: Any, namespace: str, kueue: Kueue, operator: Any
) -> None:
    apply(cluster, namespace, queued_job("free", "team-x", 1))
    wait_job(cluster, operator, namespace, "free", phase_is("Running"), "Running", timeout=60)
    pod = pod_of(cluster, namespace, "free-attempt-1")
    assert pod is not None and not is_gated(pod)
    assert "kueue.x-k8s.io/managed" not in pod["metadata"]["labels"]
    warned = [m for t, r, m in events(cluster, namespace, "free") if (t, r) == ("Warning", "NotQueued")]
    assert warned and f"does not manage namespace {namespace}" in warned[0], warned
