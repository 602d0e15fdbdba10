"""The operator against the real local control plane: kwok fake GPU nodes run the pods, the
tests play the trainer's part with `cluster.drive_pod` (exit code, termination message).

Each test starts the real operator process (fixture `operator`) watching a fresh namespace that
enforces Pod Security "restricted", so the API server itself checks every pod the operator
renders.
"""

from __future__ import annotations

import json
import re
import time

from finetune_contract import TrainerResult, encode_result

from tests.contract.sample import SAMPLE_RESULT
from tests.operator.cluster_jobs import (
    apply,
    condition,
    events,
    get_job,
    job_manifest,
    phase_is,
    pod_names,
    wait_job,
)

# Fake pods never open their volumes: an inline CSI volume (allowed by Pod Security
# "restricted", and with no claim to bind first) stands for the data and output volumes.
VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}


def start(cluster, operator, namespace, name, **spec):
    """Create a job and wait until its first pod runs on a fake node; returns the pod name."""
    apply(cluster, namespace, job_manifest(name, VOLUME, **spec))
    wait_job(cluster, operator, namespace, name, phase_is("Running"), "Running")
    return f"{name}-attempt-1"


def suspend(cluster, namespace, name, value):
    patch = json.dumps({"spec": {"runPolicy": {"suspend": value}}})
    cluster.kubectl("patch", "ftj", name, "--type=merge", "-p", patch, namespace=namespace)


def metric_value(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_success_reports_metrics_conditions_events_and_prometheus(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "ok")
    manifest = cluster.get_pod(namespace, pod)
    assert manifest["spec"]["nodeName"].startswith("kwok-gpu-")  # the scheduler placed a GPU pod
    assert manifest["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    owner = manifest["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FineTuneJob", "ok", True)

    cluster.drive_pod(namespace, pod, "Succeeded", message=encode_result(SAMPLE_RESULT))
    status = wait_job(cluster, operator, namespace, "ok", phase_is("Succeeded", "Failed"), "finished")
    assert status["phase"] == "Succeeded"
    assert status["reason"] == "Completed"
    assert status["metrics"] == {
        "top1": 0.8125,
        "top5": 0.96875,
        "bestEpoch": 3,
        "epochsRun": 4,
        "durationSeconds": 12.5,
        "imagesPerSecond": 321.0,
        "worstClasses": [c.to_dict() for c in SAMPLE_RESULT.worstClasses],
    }
    assert status["finetune"]["strippedParameters"] == ["fc.weight", "fc.bias"]
    assert status["finetune"]["freeze"]["strategy"] == "fc-only"
    assert status["finetune"]["freeze"]["decidedBy"] == "auto"
    assert status["progress"]["display"] == "4/4"
    assert (status["attempts"], status["podName"]) == (1, pod)
    assert status["completionTime"] >= status["startTime"]
    job = get_job(cluster, namespace, "ok")
    assert status["observedGeneration"] == job["metadata"]["generation"]
    succeeded, running = condition(status, "Succeeded"), condition(status, "Running")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "Completed")
    assert running["status"] == "False"
    assert condition(status, "Failed")["status"] == "False"
    assert succeeded["observedGeneration"] == job["metadata"]["generation"]

    waited = cluster.kubectl(
        "wait", "--for=condition=Succeeded", "--timeout=20s", "ftj/ok", namespace=namespace
    )
    assert "condition met" in waited.stdout
    table = cluster.kubectl("get", "ftj", "ok", namespace=namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "EPOCH", "TOP1", "AGE"]
    assert row.split()[:4] == ["ok", "Succeeded", "4/4", "0.8125"]

    reasons = [reason for _, reason, _ in events(cluster, namespace, "ok")]
    assert reasons[:3] == ["PodCreated", "Running", "Completed"]
    described = cluster.kubectl("describe", "ftj", "ok", namespace=namespace).stdout
    assert "top-1 0.8125 (best epoch 3); worst classes: sweet pea 0.50, pink primrose 0.75" in described
    assert "Worst Classes:" in described and re.search(r"Name:\s+hard-leaved pocket orchid", described)

    text = operator.metrics()
    assert metric_value(text, "finetune_job_top1", namespace=namespace, name="ok") == 0.8125
    assert metric_value(text, "finetune_job_outcomes_total", phase="Succeeded", reason="Completed") == 1
    assert metric_value(text, "finetune_jobs", phase="Succeeded") == 1
    assert metric_value(text, "finetune_attempts_total") == 1
    assert metric_value(text, "finetune_job_duration_seconds_count", phase="Succeeded") == 1
    assert metric_value(text, "finetune_job_pod_creation_seconds_count") == 1


def test_permanent_failure_fails_at_once(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "bad-data")
    message = encode_result(
        TrainerResult(exitCode=3, reason="DataError", message="val_list.txt line 2: missing image")
    )
    cluster.drive_pod(namespace, pod, "Failed", exit_code=3, message=message)
    status = wait_job(cluster, operator, namespace, "bad-data", phase_is("Failed", "Succeeded"), "finished")
    assert (status["phase"], status["reason"]) == ("Failed", "DataError")
    assert status["message"] == "val_list.txt line 2: missing image"
    assert status["attempts"] == 1
    assert (condition(status, "Failed")["status"], condition(status, "Failed")["reason"]) == (
        "True",
        "DataError",
    )
    assert pod_names(cluster, namespace, "bad-data") == [pod]  # no retry
    warnings = [
        (kind, reason) for kind, reason, _ in events(cluster, namespace, "bad-data") if kind == "Warning"
    ]
    assert ("Warning", "DataError") in warnings
    assert "finetune_job_outcomes_total" in operator.metrics()


def test_transient_failure_then_success_on_retry(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "flaky")
    cluster.drive_pod(namespace, pod, "Failed", exit_code=143)
    status = wait_job(cluster, operator, namespace, "flaky", lambda s: s.get("attempts") == 2, "on attempt 2")
    assert status["podName"] == "flaky-attempt-2"
    wait_job(cluster, operator, namespace, "flaky", phase_is("Running"), "Running again")
    cluster.drive_pod(namespace, "flaky-attempt-2", "Succeeded", message=encode_result(SAMPLE_RESULT))
    status = wait_job(cluster, operator, namespace, "flaky", phase_is("Succeeded", "Failed"), "finished")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 2)
    assert pod_names(cluster, namespace, "flaky") == ["flaky-attempt-1", "flaky-attempt-2"]
    reasons = [reason for _, reason, _ in events(cluster, namespace, "flaky")]
    assert "Retrying" in reasons
    assert 'finetune_retries_total{reason="Interrupted"} 1.0' in operator.metrics()


def test_backoff_limit_exhausted(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "hopeless", runPolicy={"backoffLimit": 1})
    cluster.drive_pod(namespace, pod, "Failed", exit_code=75)
    wait_job(
        cluster,
        operator,
        namespace,
        "hopeless",
        lambda s: s.get("phase") == "Running" and s["attempts"] == 2,
        "retried",
    )
    cluster.drive_pod(namespace, "hopeless-attempt-2", "Failed", exit_code=75)
    status = wait_job(cluster, operator, namespace, "hopeless", phase_is("Failed"), "Failed")
    assert (status["reason"], status["attempts"]) == ("BackoffLimitExceeded", 2)
    assert "2 attempts failed (backoffLimit 1)" in status["message"]
    assert "TransientError" in status["message"]
    assert pod_names(cluster, namespace, "hopeless") == ["hopeless-attempt-1", "hopeless-attempt-2"]


def test_active_deadline_fails_the_job_and_deletes_the_pod(cluster, namespace, operator):
    pod = start(
        cluster, operator, namespace, "slow", runPolicy={"backoffLimit": 2, "activeDeadlineSeconds": 4}
    )
    status = wait_job(cluster, operator, namespace, "slow", phase_is("Failed"), "Failed", timeout=20)
    assert status["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (4s)" in status["message"]
    cluster.wait_for("the pod to be deleted", lambda: cluster.get_pod(namespace, pod) is None, 20)
    assert status["attempts"] == 1


def test_suspend_deletes_the_pod_and_resume_starts_a_new_attempt(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "queued")
    suspend(cluster, namespace, "queued", True)
    status = wait_job(cluster, operator, namespace, "queued", phase_is("Suspended"), "Suspended")
    assert (condition(status, "Suspended")["status"], condition(status, "Running")["status"]) == (
        "True",
        "False",
    )
    cluster.wait_for("the pod to be deleted", lambda: cluster.get_pod(namespace, pod) is None, 20)
    suspend(cluster, namespace, "queued", False)
    status = wait_job(cluster, operator, namespace, "queued", phase_is("Running"), "Running after resume")
    assert (status["attempts"], status["podName"]) == (2, "queued-attempt-2")
    assert condition(status, "Suspended")["status"] == "False"
    assert pod_names(cluster, namespace, "queued") == ["queued-attempt-2"]
    # A suspension is not a failure: the resumed attempt still has its full backoffLimit.
    cluster.drive_pod(namespace, "queued-attempt-2", "Succeeded", message=encode_result(SAMPLE_RESULT))
    assert (
        wait_job(cluster, operator, namespace, "queued", phase_is("Succeeded"), "Succeeded")["attempts"] == 2
    )


def test_created_suspended_runs_nothing_until_resumed(cluster, namespace, operator):
    """How a queueing system (Kueue) holds a job: created suspended, admitted later."""
    apply(cluster, namespace, job_manifest("held", VOLUME, runPolicy={"backoffLimit": 2, "suspend": True}))
    status = wait_job(cluster, operator, namespace, "held", phase_is("Suspended"), "Suspended")
    assert "no pod runs until it is resumed" in status["message"]
    assert not status.get("attempts")
    assert pod_names(cluster, namespace, "held") == []
    suspend(cluster, namespace, "held", False)
    status = wait_job(cluster, operator, namespace, "held", phase_is("Running"), "Running")
    assert (status["attempts"], status["podName"]) == (1, "held-attempt-1")


def test_waiting_for_gpus_is_pending_until_the_scheduling_timeout(cluster, namespace, operator):
    apply(cluster, namespace, job_manifest("huge", VOLUME, resources={"gpus": 16}))
    status = wait_job(
        cluster,
        operator,
        namespace,
        "huge",
        lambda s: s.get("reason") == "Unschedulable",
        "Pending: Unschedulable",
    )
    assert status["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in status["message"]
    assert re.search(r"0/\d+ nodes are available", status["message"])
    assert status["waiting"]["kind"] == "Capacity" and "deadline" not in status["waiting"]
    time.sleep(4)  # no limit by default: still waiting, not failed
    assert get_job(cluster, namespace, "huge")["status"]["phase"] == "Pending"
    # runPolicy may change while the job exists: give the wait a limit.
    patch = json.dumps({"spec": {"runPolicy": {"schedulingTimeoutSeconds": 5}}})
    cluster.kubectl("patch", "ftj", "huge", "--type=merge", "-p", patch, namespace=namespace)
    status = wait_job(cluster, operator, namespace, "huge", phase_is("Failed"), "Failed", timeout=20)
    assert status["reason"] == "Unschedulable"
    assert status["message"].startswith("the pod waited for capacity for more than 5s: 0/")
    cluster.wait_for(
        "the pod to be deleted", lambda: cluster.get_pod(namespace, "huge-attempt-1") is None, 20
    )


def test_a_missing_claim_cannot_start_and_fails_after_the_start_timeout(cluster, namespace, operator):
    """The real scheduler's words for a claim that does not exist are recognised as 'cannot
    run', not as waiting for capacity."""
    volume = {"persistentVolumeClaim": {"claimName": "no-such-claim"}}
    apply(cluster, namespace, job_manifest("orphan", volume, runPolicy={"startTimeoutSeconds": 4}))
    status = wait_job(
        cluster, operator, namespace, "orphan", lambda s: (s.get("waiting") or {}).get("kind"), "waiting"
    )
    assert status["waiting"]["kind"] == "Start", status
    assert 'persistentvolumeclaim "no-such-claim" not found' in status["message"]
    status = wait_job(cluster, operator, namespace, "orphan", phase_is("Failed"), "Failed", timeout=20)
    assert status["message"].startswith("the pod could not start for more than 4s")
    assert "no-such-claim" in status["message"]


def test_a_full_quota_is_waited_for_then_fails_after_the_scheduling_timeout(cluster, namespace, operator):
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(quota), namespace=namespace)
    cluster.wait_for(  # the quota controller fills status.hard before admission enforces it
        "the quota to be active",
        lambda: "pods" in cluster.kubectl("get", "resourcequota", "no-pods", "-o", "jsonpath={.status.hard}",
                                          namespace=namespace).stdout,
        30,
    )  # fmt: skip
    apply(cluster, namespace, job_manifest("blocked", VOLUME, runPolicy={"schedulingTimeoutSeconds": 4}))
    status = wait_job(
        cluster, operator, namespace, "blocked", lambda s: s.get("reason") == "QuotaExceeded", "refused"
    )
    assert status["phase"] == "Pending"
    assert status["waiting"]["kind"] == "Capacity"
    assert "exceeded quota" in status["message"]
    status = wait_job(cluster, operator, namespace, "blocked", phase_is("Failed"), "Failed", timeout=20)
    assert status["reason"] == "QuotaExceeded"
    assert "exceeded quota" in status["message"] and "(for more than 4s)" in status["message"]
    assert pod_names(cluster, namespace, "blocked") == []


def test_host_path_volumes_are_refused_by_the_operator_and_by_pod_security(cluster, namespace, operator):
    host = {"hostPath": {"path": "/tmp/pfo-host-path-test", "type": "DirectoryOrCreate"}}
    apply(cluster, namespace, job_manifest("host", host))
    status = wait_job(cluster, operator, namespace, "host", phase_is("Failed"), "Failed")
    assert status["reason"] == "InvalidSpec"
    assert "spec.dataset.volume.hostPath" in status["message"] and "allowHostPath" in status["message"]
    # An installation that allows hostPath still runs into the namespace's Pod Security level:
    # the real API server's refusal fails the job at once, with its words.
    operator.stop()
    operator.extra = ["--allow-host-path"]
    operator.start()
    apply(cluster, namespace, job_manifest("host-allowed", host))
    status = wait_job(cluster, operator, namespace, "host-allowed", phase_is("Failed"), "Failed")
    assert status["reason"] == "PodSecurityViolation", status
    assert 'violates PodSecurity "restricted' in status["message"] and "hostPath" in status["message"]
    assert pod_names(cluster, namespace, "host-allowed") == []


def test_ttl_deletes_the_finished_job(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "short-lived", runPolicy={"ttlSecondsAfterFinished": 2})
    cluster.drive_pod(namespace, pod, "Succeeded", message=encode_result(SAMPLE_RESULT))
    wait_job(cluster, operator, namespace, "short-lived", phase_is("Succeeded"), "Succeeded")
    cluster.wait_for("the job to be deleted", lambda: get_job(cluster, namespace, "short-lived") is None, 20)


def test_operator_restart_keeps_one_pod_per_attempt_and_the_status(cluster, namespace, operator):
    pod = start(cluster, operator, namespace, "durable")
    before = get_job(cluster, namespace, "durable")["status"]
    operator.kill()
    operator.start()  # finds the running pod by name instead of creating another
    wait_job(cluster, operator, namespace, "durable", phase_is("Running"), "Running")
    after = get_job(cluster, namespace, "durable")["status"]
    assert pod_names(cluster, namespace, "durable") == [pod]
    assert after["attempts"] == 1
    assert after["startTime"] == before["startTime"]
    assert (
        condition(after, "Running")["lastTransitionTime"]
        == condition(before, "Running")["lastTransitionTime"]
    )

    # The attempt fails while no operator runs; the next one converges to exactly one retry.
    operator.kill()
    cluster.drive_pod(namespace, pod, "Failed", exit_code=143)
    operator.start()
    status = wait_job(
        cluster,
        operator,
        namespace,
        "durable",
        lambda s: s.get("attempts") == 2 and s["phase"] == "Running",
        "retried",
    )
    operator.kill()
    operator.start()
    cluster.drive_pod(namespace, "durable-attempt-2", "Succeeded", message=encode_result(SAMPLE_RESULT))
    status = wait_job(cluster, operator, namespace, "durable", phase_is("Succeeded"), "Succeeded")
    assert status["attempts"] == 2
    assert pod_names(cluster, namespace, "durable") == ["durable-attempt-1", "durable-attempt-2"]
    assert status["metrics"]["top1"] == 0.8125


def test_deleting_a_job_removes_its_pods_and_its_top1_series(cluster, namespace, operator):
    # Last in the module: by now the garbage collector has picked up the FineTuneJob kind (it
    # rediscovers resources every 30 s, so a CRD installed a moment ago may not be watched yet).
    pod = start(cluster, operator, namespace, "doomed")
    cluster.drive_pod(namespace, pod, "Succeeded", message=encode_result(SAMPLE_RESULT))
    wait_job(cluster, operator, namespace, "doomed", phase_is("Succeeded"), "Succeeded")
    assert metric_value(operator.metrics(), "finetune_job_top1", namespace=namespace, name="doomed") == 0.8125
    cluster.kubectl("delete", "ftj", "doomed", "--wait=true", "--timeout=30s", namespace=namespace)
    cluster.wait_for("the pod to be garbage-collected", lambda: cluster.get_pod(namespace, pod) is None, 60)
    cluster.wait_for(
        "the top-1 series to go",
        lambda: (
            metric_value(operator.metrics(), "finetune_job_top1", namespace=namespace, name="doomed") is None
        ),
        10,
    )
    assert metric_value(operator.metrics(), "finetune_jobs", phase="Succeeded") == 0
