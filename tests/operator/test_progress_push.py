"""The progress endpoint against the real control plane: tokens minted by the API server for the
kwok pods (TokenRequest, bound to the pod, for a job's audience), reviewed by the API server
(TokenReview), the status written by the real operator.

What must hold: a job's pod can push its progress and it reaches the status; a token of one job's
pod is refused for any other job, whatever audience it was minted for; a token not bound to a pod,
a missing or forged token, a bad or oversized body are refused with the status that says why; a
token is reviewed once, not per push; a pod that finished can no longer push.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest
from finetune_contract import PUSH_BODY_LIMIT, push_audience, push_path

from localcluster import OperatorProcess
from tests.operator.cluster_jobs import apply, job_manifest, phase_is, wait_job
from tests.operator.test_operator_lifecycle import VOLUME, metric_value

pytestmark = pytest.mark.cluster


@pytest.fixture
def push_operator(cluster, namespace, crd_installed, tmp_path):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # Log reads only every 10 minutes: whatever reaches the status came through the endpoint.
    proc = OperatorProcess(
        cluster,
        [namespace],
        tmp_path / "operator.log",
        extra=["--progress-poll-interval", "600"],
        progress_ips=("127.0.0.1",),
    )
    proc.start()
    yield proc
    proc.stop()


def token(cluster, namespace: str, audience: str, pod: str | None = None) -> str:
    """A ServiceAccount token from the API server, bound to `pod` (its uid too) unless None."""
    args = ["create", "token", "default", "--audience", audience, "--duration", "10m"]
    if pod is not None:
        uid = cluster.get_pod(namespace, pod)["metadata"]["uid"]
        args += ["--bound-object-kind", "Pod", "--bound-object-name", pod, "--bound-object-uid", uid]
    return cluster.kubectl(*args, namespace=namespace).stdout.strip()


def post(op: OperatorProcess, namespace: str, job: str, auth: str | None, body: bytes) -> int:
    context = ssl.create_default_context(cafile=str(op.progress_ca))
    url = f"https://127.0.0.1:{op.progress_port}{push_path(namespace, job)}"
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as rsp:
            return rsp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def record(epoch: int, **extra) -> bytes:
    return json.dumps({"epoch": epoch, "epochs": 10, **extra}).encode()


def reviews(op: OperatorProcess) -> float:
    return (
        metric_value(op.metrics(), "finetune_api_requests_total", verb="create", resource="tokenreviews") or 0
    )


def progress(cluster, namespace: str, job: str):
    got = cluster.kubectl("get", "ftj", job, "-o", "json", namespace=namespace).stdout
    return (json.loads(got).get("status") or {}).get("progress")


def test_a_pod_pushes_its_own_jobs_progress_and_no_other(cluster, namespace, push_operator):
    op = push_operator
    for name in ("a", "b"):
        apply(cluster, namespace, job_manifest(name, VOLUME))
    for name in ("a", "b"):
        wait_job(cluster, op, namespace, name, phase_is("Running"), "Running")
    pod_a, pod_b = "a-attempt-1", "b-attempt-1"

    # The pod is told where to push, and gets a token for its job's audience alone.
    manifest = cluster.get_pod(namespace, pod_a)
    env = {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_PROGRESS_URL"] == f"https://127.0.0.1:{op.progress_port}{push_path(namespace, 'a')}"
    assert env["FINETUNE_PROGRESS_CA"] == op.progress_ca.read_text()
    sources = [v for v in manifest["spec"]["volumes"] if v["name"] == "progress-token"][0]["projected"][
        "sources"
    ]
    assert sources == [
        {
            "serviceAccountToken": {
                "audience": push_audience(namespace, "a"),
                "expirationSeconds": 3600,
                "path": "token",
            }
        }
    ]

    own = token(cluster, namespace, push_audience(namespace, "a"), pod_a)
    before = reviews(op)
    assert post(op, namespace, "a", f"Bearer {own}", record(3, top1=0.5)) == 202
    wait_job(cluster, op, namespace, "a", lambda s: (s.get("progress") or {}).get("epoch") == 3, "epoch 3")
    assert progress(cluster, namespace, "a")["top1"] == 0.5
    # The same token again: no second review.
    assert post(op, namespace, "a", f"Bearer {own}", record(4)) == 202
    wait_job(cluster, op, namespace, "a", lambda s: (s.get("progress") or {}).get("epoch") == 4, "epoch 4")
    assert reviews(op) - before == 1

    # Job a's pod, however its token was minted, cannot write job b.
    assert post(op, namespace, "b", f"Bearer {own}", record(7)) == 403
    for_b = token(cluster, namespace, push_audience(namespace, "b"), pod_a)
    assert post(op, namespace, "b", f"Bearer {for_b}", record(7)) == 403
    # A token for b's audience that is not bound to a pod; none at all; a forged one.
    loose = token(cluster, namespace, push_audience(namespace, "b"))
    assert post(op, namespace, "b", f"Bearer {loose}", record(7)) == 403
    assert post(op, namespace, "b", None, record(7)) == 401
    head, payload, _ = for_b.split(".")
    assert post(op, namespace, "b", f"Bearer {head}.{payload}.forged", record(7)) == 403
    # b's own pod may.
    own_b = token(cluster, namespace, push_audience(namespace, "b"), pod_b)
    assert post(op, namespace, "b", f"Bearer {own_b}", b'{"epochs": 2}') == 400
    assert post(op, namespace, "b", f"Bearer {own_b}", b"x" * (PUSH_BODY_LIMIT + 1)) == 413
    assert progress(cluster, namespace, "b") is None
    assert post(op, namespace, "b", f"Bearer {own_b}", record(1)) == 202
    wait_job(cluster, op, namespace, "b", lambda s: (s.get("progress") or {}).get("epoch") == 1, "b epoch 1")
    assert progress(cluster, namespace, "a")["epoch"] == 4

    # A finished pod pushes no more.
    cluster.drive_pod(namespace, pod_a, "Failed", exit_code=2)
    wait_job(cluster, op, namespace, "a", phase_is("Failed"), "Failed")
    assert post(op, namespace, "a", f"Bearer {own}", record(9)) in (403, 409)
    text = op.metrics()
    assert metric_value(text, "finetune_progress_pushes_total", result="accepted") == 3
    assert metric_value(text, "finetune_progress_pushes_total", result="forbidden") >= 4
