"""Bad input, for real: what the kubelet and the scheduler say about a job that cannot run, and
what the operator makes of it. The chart's operator pod watches a namespace enforcing Pod
Security "restricted"; each job is placed on the real node.

* an image the node does not have, with `imagePullPolicy: Never` (`ErrImageNeverPull`), or from
  a registry that cannot be reached (`ErrImagePull` / `ImagePullBackOff`: a registry address on
  127.0.0.1 that refuses connections, so nothing leaves the machine): Pending with the kubelet's
  reason, then Failed with that reason after the short "cannot run" timeout;
* an image without the trainer's command (the pause image): the runtime cannot start the
  container (`StartError`, exit code 128): Failed at once, permanently, with the kubelet's words;
* a dataset claim that does not exist: the pod stays Pending, unscheduled, and the job shows
  the scheduler's words.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from finetune_operator.job_status import parse_time

from localcluster import ChartOperator, Cluster, install_chart
from tests.operator import crd
from tests.operator.cluster_jobs import apply, condition, job_manifest, wait_job

CANNOT_RUN_SECONDS = 15  # the job's own limit (the CRD's minimum is lower); the default is minutes
ABSENT = "ghcr.io/paddle-finetune-operator/trainer:0.0.0-not-imported"
UNREACHABLE = "127.0.0.1:9/pfo/trainer:0.1.0"  # nothing listens on port 9 of the loopback
PAUSE = "localhost/pfo/pause:3.10-local"  # imported with the node: no finetune-train in it


def cannot_run_field() -> str:
    """runPolicy's limit on a pod that cannot run: startTimeoutSeconds (with the two kinds of
    waiting), pendingTimeoutSeconds before them."""
    run_policy = crd.schema()["properties"]["spec"]["properties"]["runPolicy"]["properties"]
    return "startTimeoutSeconds" if "startTimeoutSeconds" in run_policy else "pendingTimeoutSeconds"


@dataclass
class Node:
    cluster: Cluster
    namespace: str
    operator: ChartOperator

    def job(
        self, name: str, *, image: str | None = None, pull: str | None = None, data: str = "data"
    ) -> None:
        manifest = job_manifest(
            name,
            {"persistentVolumeClaim": {"claimName": data}},
            output={"volume": {"persistentVolumeClaim": {"claimName": "output"}}},
            template=self.cluster.real_node_pod_spec_extras(),
            runPolicy={"backoffLimit": 2, cannot_run_field(): CANNOT_RUN_SECONDS},
        )
        if image:
            manifest["spec"]["image"] = image
        if pull:
            manifest["spec"]["imagePullPolicy"] = pull
        apply(self.cluster, self.namespace, manifest)

    def status(self, name: str, check: Any, what: str, timeout: float = 90) -> dict[str, Any]:
        return wait_job(self.cluster, self.operator, self.namespace, name, check, what, timeout)

    def pod(self, name: str) -> dict[str, Any]:
        pod = self.cluster.get_pod(self.namespace, f"{name}-attempt-1")
        assert pod is not None, f"no pod {name}-attempt-1"
        return pod


@pytest.fixture(scope="module")
def node(cluster: Cluster, crd_installed: str) -> Iterator[Node]:
    namespace = "t-bad-input-node"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.wait_for(
        "the default ServiceAccount",
        lambda: cluster.kubectl("get", "sa", "default", namespace=namespace, check=False).returncode == 0,
    )
    for claim in ("data", "output"):
        cluster.create_node_pvc(namespace, claim)
    operator = install_chart(
        cluster, namespace, "--set", f"watchNamespaces={{{namespace}}}", release="pfo-bad-input"
    )
    try:
        yield Node(cluster, namespace, operator)
    finally:
        operator.uninstall()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def waiting(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return (statuses[0].get("state") or {}).get("waiting") or {}


@pytest.mark.parametrize(
    ("image", "pull", "reasons"),
    [
        (ABSENT, "Never", {"ErrImageNeverPull"}),
        (UNREACHABLE, "IfNotPresent", {"ErrImagePull", "ImagePullBackOff"}),
    ],
    ids=["not-on-the-node", "registry-unreachable"],
)
def test_an_image_the_node_cannot_get_fails_the_job_after_the_cannot_run_timeout(
    node: Node, image: str, pull: str, reasons: set[str]
) -> None:
    name = "never-pull" if pull == "Never" else "pull-error"
    t0 = time.monotonic()
    node.job(name, image=image, pull=pull)
    pending = node.status(name, lambda s: s.get("reason") in reasons, f"Pending with {reasons}")
    assert pending["phase"] == "Pending"
    pod = node.pod(name)
    kubelet = waiting(pod)
    assert kubelet.get("reason") in reasons and image in kubelet.get("message", ""), kubelet
    assert image in pending["message"], pending

    failed = node.status(
        name, lambda s: s.get("phase") == "Failed", "Failed", timeout=CANNOT_RUN_SECONDS + 60
    )
    waited = time.monotonic() - t0
    assert failed["reason"] in reasons, failed
    assert image in failed["message"], failed
    assert failed.get("attempts") == 1, "an image that cannot be had is not retried"
    assert condition(failed, "Failed")["status"] == "True"
    # Server times (whole seconds): from the pod's creation to the job's failure.
    failed_at = parse_time(condition(failed, "Failed")["lastTransitionTime"])
    assert (
        failed_at - parse_time(pod["metadata"]["creationTimestamp"])
    ).total_seconds() >= CANNOT_RUN_SECONDS
    print(f"\n{name}: Failed with {failed['reason']} {waited:.1f}s after apply: {failed['message']}")


def test_a_command_the_image_lacks_fails_the_job_at_once_with_start_error(node: Node) -> None:
    node.job("no-command", image=PAUSE, pull="Never")
    failed = node.status("no-command", lambda s: s.get("phase") == "Failed", "Failed", timeout=90)
    (cs,) = node.pod("no-command")["status"]["containerStatuses"]
    terminated = cs["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("StartError", 128), terminated
    assert failed["reason"] == "StartError", failed
    assert "finetune-train" in failed["message"] and "not found" in failed["message"], failed
    assert failed.get("attempts") == 1, "a start error is permanent"
    print(f"\nno-command: {failed['reason']}: {failed['message']}")


def test_a_missing_dataset_claim_keeps_the_pod_pending_with_the_schedulers_words(node: Node) -> None:
    node.job("no-claim", data="no-such-claim")
    pending = node.status(
        "no-claim", lambda s: "no-such-claim" in (s.get("message") or ""), "Pending naming the claim", 60
    )
    assert pending["phase"] == "Pending" and pending["reason"] == "Unschedulable", pending
    assert 'persistentvolumeclaim "no-such-claim" not found' in pending["message"], pending
    # Not a wait for capacity: it is timed by startTimeoutSeconds (operator/finetune_operator/waiting.py).
    assert (pending.get("waiting") or {}).get("kind") == "Start", pending
    pod = node.pod("no-claim")
    assert not pod["spec"].get("nodeName"), "a pod whose claim does not exist was placed"
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False" and "no-such-claim" in scheduled["message"]
    events = json.loads(
        node.cluster.kubectl(
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=no-claim-attempt-1",
            "-o",
            "json",
            namespace=node.namespace,
        ).stdout  # fmt: skip
    )["items"]
    assert any(e["reason"] == "FailedScheduling" and "no-such-claim" in e["message"] for e in events), events
