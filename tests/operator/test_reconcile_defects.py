"""One test per defect of the reconciler found by reading it (issue 10), against the in-memory fake
API. Each of these failed on the code before its fix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from finetune_operator import handlers
from finetune_operator.config import OperatorConfig
from finetune_operator.metrics import Metrics
from finetune_operator.pod import render_pod
from finetune_operator.workqueue import WorkQueue

from tests.operator import crd
from tests.operator.fake_kube import Crash, api_error, forbidden
from tests.operator.reconcile_kit import CONFIG, NAME, NS, World, pod

GPUS_MISSING = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu. preemption: 0/5 nodes are available."


def sample(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


# --- 1. Two pods after a resume --------------------------------------------------------------
def test_resume_interrupted_after_creating_the_pod_makes_no_second_pod():
    w = World(runPolicy={"backoffLimit": 2, "suspend": True})
    w.settle()
    assert w.status["phase"] == "Suspended"
    w.kube.update_spec(NS, NAME, runPolicy={"suspend": False})
    w.kube.crash_at(0, "after")  # the resumed attempt's pod is created; the status write never comes
    with pytest.raises(Crash):
        w.reconcile()
    w.restart()
    w.settle()
    assert w.kube.created == [pod(1)]
    assert (w.status["phase"], w.status["attempts"]) == ("Pending", 1)


def test_resume_of_a_started_job_interrupted_after_creating_the_pod():
    w = World()
    w.settle()
    w.run(1)
    w.settle()
    w.kube.update_spec(NS, NAME, runPolicy={"suspend": True})
    w.settle()
    assert w.kube.active_pods(NS, NAME) == []
    w.kube.update_spec(NS, NAME, runPolicy={"suspend": False})
    w.kube.crash_at(0, "after")
    with pytest.raises(Crash):
        w.reconcile()
    w.restart()
    w.settle()
    assert w.kube.created == [pod(1), pod(2)]
    assert w.kube.active_pods(NS, NAME) == [pod(2)]


# --- 3. backoffLimit can be escaped ----------------------------------------------------------
def test_failures_of_deleted_pods_still_count_against_the_backoff_limit():
    w = World(runPolicy={"backoffLimit": 1})
    w.settle()
    w.fail(1)
    w.settle()
    w.clock.advance(10)
    w.settle()
    assert w.kube.created == [pod(1), pod(2)]
    w.kube.remove_pod(NS, pod(1))  # pod garbage collection, a drain or a user removes the failed pod
    w.fail(2)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", "BackoffLimitExceeded")
    assert w.status["failedAttempts"] == 2
    w.clock.advance(3600)
    w.settle()
    assert w.kube.created == [pod(1), pod(2)]


def test_a_vanished_pod_is_a_counted_failure_with_back_off():
    w = World(runPolicy={"backoffLimit": 2})
    w.settle()
    w.run(1)
    w.settle()
    w.kube.remove_pod(NS, pod(1))
    w.settle()
    assert w.kube.created == [pod(1)], "a new attempt started at once, without back-off"
    assert (w.status["phase"], w.status["reason"], w.status["failedAttempts"]) == ("Pending", "Retrying", 1)
    assert "PodMissing" in w.reasons()
    w.clock.advance(10)
    w.settle()
    assert w.kube.created == [pod(1), pod(2)]


# --- 4. Per-job metrics outlive their job ------------------------------------------------------
def test_a_job_deleted_while_it_is_reconciled_leaves_no_series():
    w = World()
    w.settle()
    w.succeed(1)
    uid = w.kube.job(NS, NAME)["metadata"]["uid"]
    patch = w.kube.patch_job_status

    def deleted_meanwhile(*args: Any, **kwargs: Any) -> dict[str, Any]:
        done = patch(*args, **kwargs)
        w.kube.delete_job_now(NS, NAME)  # a user deletes the job just after the status write,
        w.reconciler.forget(NS, NAME, uid)  # and its DELETED event comes before the pass ends
        return done

    w.kube.patch_job_status = deleted_meanwhile
    w.reconcile()
    for phase in ("Pending", "Running", "Succeeded", "Failed", "Suspended"):
        assert sample(w.metrics, "finetune_jobs", phase=phase) == 0, phase
    assert sample(w.metrics, "finetune_job_top1", namespace=NS, name=NAME) is None


def test_the_ttl_deletion_leaves_no_series():
    w = World(runPolicy={"backoffLimit": 2, "ttlSecondsAfterFinished": 5})
    w.settle()
    w.succeed(1)
    w.settle()
    assert sample(w.metrics, "finetune_jobs", phase="Succeeded") == 1
    w.clock.advance(5)
    w.reconcile()  # deletes the job: no DELETED event is needed to forget it
    assert (NS, NAME) not in w.kube.jobs
    assert sample(w.metrics, "finetune_jobs", phase="Succeeded") == 0
    assert sample(w.metrics, "finetune_job_top1", namespace=NS, name=NAME) is None


def test_a_ttl_of_zero_deletes_the_job_after_its_status_says_succeeded():
    w = World(runPolicy={"backoffLimit": 2, "ttlSecondsAfterFinished": 0})
    w.settle()
    w.succeed(1)
    w.settle()
    assert (NS, NAME) not in w.kube.jobs
    written = [x.body.get("phase") for x in w.kube.writes if x.verb == "patch_status"]
    assert written[-1] == "Succeeded", "the job was deleted before its status said how it ended"
    assert [x.verb for x in w.kube.writes][-1] == "delete_job"
    assert sample(w.metrics, "finetune_jobs", phase="Succeeded") == 0


def test_jobs_deleted_while_the_watch_was_down_are_swept():
    w = World()
    w.settle()
    w.succeed(1)
    w.settle()
    assert sample(w.metrics, "finetune_jobs", phase="Succeeded") == 1
    w.kube.delete_job_now(NS, NAME)  # no DELETED event ever reaches the operator
    w.reconciler.sweep()
    assert sample(w.metrics, "finetune_jobs", phase="Succeeded") == 0
    assert sample(w.metrics, "finetune_job_top1", namespace=NS, name=NAME) is None


# --- 5. Errors retried every 5 s forever -------------------------------------------------------
class RecordingQueue(WorkQueue):
    """A work queue that records the delays it is asked for and makes every key due at once."""

    delays: list[float] = []

    def add(self, key: Any, delay: float = 0.0) -> None:
        RecordingQueue.delays.append(delay)
        super().add(key, 0.0)


def test_a_failing_reconcile_backs_off_exponentially_and_is_visible(monkeypatch):
    w = World()
    calls = {"n": 0}
    get_job = w.kube.get_job
    outage = api_error(503, "ServiceUnavailable", "the server is currently unable to handle the request")

    def flaky(namespace: str, name: str) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 4:  # three failures so far
            seen["failing"] = sample(w.metrics, "finetune_reconcile_failing_jobs")
        if calls["n"] <= 4 or calls["n"] in (6, 7):  # four failures, a success, two failures
            raise outage
        return get_job(namespace, name)

    w.kube.get_job = flaky
    seen: dict[str, Any] = {}
    RecordingQueue.delays = []
    monkeypatch.setattr(handlers, "WorkQueue", RecordingQueue)
    config = OperatorConfig(workers=1)
    queue = handlers.ReconcileQueue(config, w.metrics, lambda: w.reconciler)

    async def scenario() -> None:
        await queue.start()
        queue.enqueue(NS, NAME)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(RecordingQueue.delays) >= 8:
                break
        await queue.stop()

    asyncio.run(scenario())
    delays = RecordingQueue.delays[1:]  # after the first enqueue
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0], delays
    assert delays[5:7] == [1.0, 2.0], f"the back-off did not reset after a success: {delays}"
    assert seen["failing"] == 1
    assert sample(w.metrics, "finetune_reconcile_errors_total", kind="ApiException") == 6
    assert "ReconcileError" in w.reasons()


# --- 6. An RBAC error looks like a quota -------------------------------------------------------
RBAC_REFUSAL = (
    'pods is forbidden: User "system:serviceaccount:pfo-system:pfo" cannot create resource "pods" '
    'in API group "" in the namespace "team-a"'
)


def test_a_missing_permission_is_said_at_once():
    w = World()
    w.kube.admission = lambda p: forbidden(RBAC_REFUSAL)
    w.kube.allowed = lambda verb, resource, namespace: (verb, resource) != ("create", "pods")
    w.reconcile()
    status = w.status
    assert (status["phase"], status["reason"]) == ("Pending", "MissingPermission")
    assert 'cannot create resource "pods"' in status["message"]
    assert "RBAC" in status["message"]
    assert ("Warning", "MissingPermission") in [(e["type"], e["reason"]) for e in w.kube.events]


def test_a_quota_refusal_waits_and_a_pod_security_refusal_fails_at_once():
    quota = World()
    quota.kube.admission = lambda p: forbidden(
        f'pods "{pod(1)}" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
        "used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8",
        name=pod(1),
    )
    quota.settle()
    quota.clock.advance(2 * 3600)
    quota.settle()
    assert (quota.status["phase"], quota.status["reason"]) == ("Pending", "QuotaExceeded")
    assert quota.status["waiting"]["kind"] == "Capacity"

    psa = World()
    psa.kube.admission = lambda p: forbidden(
        f'pods "{pod(1)}" is forbidden: violates PodSecurity "restricted:latest": restricted volume '
        'types (volume "dataset" uses restricted volume type "hostPath")',
        name=pod(1),
    )
    psa.settle()
    assert (psa.status["phase"], psa.status["reason"]) == ("Failed", "PodSecurityViolation")


# --- 9. Waiting for GPUs is not an error -------------------------------------------------------
def test_waiting_for_gpus_is_not_a_failure():
    w = World()
    w.settle()
    w.kube.unschedulable(NS, pod(1), GPUS_MISSING)
    w.settle()
    w.clock.advance(3 * 3600)
    w.settle()
    status = w.status
    assert (status["phase"], status["reason"]) == ("Pending", "Unschedulable")
    assert status["waiting"]["kind"] == "Capacity"
    assert GPUS_MISSING in status["message"]


def test_a_pod_that_cannot_start_fails_after_the_start_timeout_counted_from_then():
    w = World()
    w.settle()
    w.kube.unschedulable(NS, pod(1), GPUS_MISSING)
    w.settle()
    w.clock.advance(500)  # 500 s waiting for GPUs, then placed: the image cannot be pulled
    w.kube.waiting(NS, pod(1), "ImagePullBackOff", 'Back-off pulling image "registry.example.com/t:1"')
    w.settle()
    w.clock.advance(200)  # 700 s after the pod was created, 200 s unable to start
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == ("Pending", "ImagePullBackOff")
    assert w.status["waiting"]["kind"] == "Start"
    w.clock.advance(CONFIG.start_timeout_seconds - 200)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", "ImagePullBackOff")
    assert "Back-off pulling image" in w.status["message"]
    assert w.kube.active_pods(NS, NAME) == []


# --- 10. Smaller ---------------------------------------------------------------------------
def test_one_class_is_refused_by_the_crd():
    assert crd.node("spec.dataset.numClasses")["minimum"] == 2


def test_the_dataset_volume_is_not_chowned_on_every_attempt():
    job = World().kube.job(NS, NAME)
    security = render_pod(job, 1, CONFIG)["spec"]["securityContext"]
    assert security["fsGroupChangePolicy"] == "OnRootMismatch"


def test_host_path_volumes_need_the_installations_consent():
    volume = {"hostPath": {"path": "/srv/flowers"}}
    w = World(dataset={"volume": volume, "numClasses": 102})
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.dataset.volume.hostPath" in w.status["message"]
    assert "allowHostPath" in w.status["message"]
    assert w.kube.created == []

    allowed = World(OperatorConfig(allow_host_path=True), dataset={"volume": volume, "numClasses": 102})
    allowed.settle()
    assert allowed.kube.created == [pod(1)]
