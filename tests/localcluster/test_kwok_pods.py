"""Fake nodes under kwok: the real scheduler places GPU pods, and tests drive pods to any outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster import GPU_RESOURCE, Cluster, drive_annotations


def pod(name: str, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    resources = {"limits": {GPU_RESOURCE: str(gpus)}} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "fake", "resources": resources}], **spec},
    }


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body), namespace=namespace)


def scheduled_condition(p: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in p.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"), {})


def test_the_fake_nodes(cluster: Cluster) -> None:
    nodes = {
        n["metadata"]["name"]: n
        for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    }
    assert len(cluster.gpu_nodes) == 4 and len(cluster.cpu_nodes) == 1
    for name in cluster.gpu_nodes:
        assert nodes[name]["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert not nodes[name]["spec"].get("taints")
    assert GPU_RESOURCE not in nodes[cluster.cpu_nodes[0]]["status"]["allocatable"]
    real = nodes[cluster.real_node]
    assert real["metadata"]["labels"]["pfo.dev/real-node"] == "true"
    assert {"key": "pfo.dev/real-node", "value": "true", "effect": "NoSchedule"} in real["spec"]["taints"]


def test_the_scheduler_places_a_gpu_pod_on_a_gpu_node(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, pod("gpu", gpus=2), pod("plain"))
    gpu = cluster.wait_pod_phase(namespace, "gpu", "Running")
    assert gpu["spec"]["nodeName"] in cluster.gpu_nodes
    plain = cluster.wait_pod_phase(namespace, "plain", "Running")
    assert plain["spec"]["nodeName"] != cluster.real_node  # tainted: only pods that tolerate it go there


def test_a_gpu_pod_never_lands_on_the_cpu_node(cluster: Cluster, namespace: str) -> None:
    only_cpu = {"nodeSelector": {"kubernetes.io/hostname": cluster.cpu_nodes[0]}}
    apply(cluster, namespace, pod("wants-gpu-on-cpu", gpus=1, **only_cpu), pod("cpu-ok", **only_cpu))
    assert cluster.wait_pod_phase(namespace, "cpu-ok", "Running")["spec"]["nodeName"] == cluster.cpu_nodes[0]
    stuck = cluster.wait_pod(
        namespace, "wants-gpu-on-cpu", lambda p: scheduled_condition(p).get("reason") == "Unschedulable",
        "Unschedulable",
    )  # fmt: skip
    assert f"Insufficient {GPU_RESOURCE}" in scheduled_condition(stuck)["message"]
    assert stuck["status"]["phase"] == "Pending" and not stuck["spec"].get("nodeName")


@pytest.fixture
def gpu_pool(cluster: Cluster, namespace: str) -> Iterator[list[str]]:
    """Two fake 8-GPU nodes only this test's pods may use (a taint keeps everything else off), so
    filling them does not depend on what other tests run."""
    names = [f"{namespace}-gpu-{i}" for i in range(2)]
    nodes = []
    for name in names:
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", GPU_RESOURCE: "8"}
        nodes.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"pool": namespace, "kubernetes.io/hostname": name},
                         "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"taints": [{"key": "pool", "value": namespace, "effect": "NoSchedule"}]},
            "status": {"capacity": capacity, "allocatable": capacity},
        })  # fmt: skip
    apply(cluster, namespace, *nodes)

    def ready() -> bool:
        out = cluster.kubectl("get", "nodes", "-l", f"pool={namespace}", "-o", "json").stdout
        items = json.loads(out)["items"]
        return len(items) == 2 and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            and not any(t["key"] == "node.kubernetes.io/not-ready" for t in n["spec"].get("taints", []))
            for n in items
        )

    cluster.wait_for("the test's GPU pool to be Ready", ready, timeout=60)
    yield names
    cluster.kubectl("delete", "nodes", *names, "--wait=false", check=False)


def test_pods_stay_pending_once_the_gpus_are_used_up(
    cluster: Cluster, namespace: str, gpu_pool: list[str]
) -> None:
    in_pool = {
        "nodeSelector": {"pool": namespace},
        "tolerations": [{"key": "pool", "operator": "Equal", "value": namespace, "effect": "NoSchedule"}],
    }
    # 16 GPUs in the pool: 8 + 4 + 4 fill it exactly, whatever node each lands on.
    apply(
        cluster,
        namespace,
        pod("a", gpus=8, **in_pool),
        pod("b", gpus=4, **in_pool),
        pod("c", gpus=4, **in_pool),
    )
    placed = [cluster.wait_pod_phase(namespace, n, "Running")["spec"]["nodeName"] for n in "abc"]
    assert set(placed) == set(gpu_pool)

    apply(cluster, namespace, pod("one-too-many", gpus=1, **in_pool))
    stuck = cluster.wait_pod(
        namespace,
        "one-too-many",
        lambda p: scheduled_condition(p).get("reason") == "Unschedulable",
        "Unschedulable",
    )
    cond = scheduled_condition(stuck)
    assert cond["status"] == "False"
    assert f"2 Insufficient {GPU_RESOURCE}" in cond["message"]
    assert stuck["status"]["phase"] == "Pending"

    # Freeing GPUs lets it in: the scheduler really accounts for them.
    cluster.kubectl("delete", "pod", "b", "--wait=true", "--timeout=30s", namespace=namespace)
    assert cluster.wait_pod_phase(namespace, "one-too-many", "Running")["spec"]["nodeName"] in gpu_pool


def terminated(p: dict[str, Any]) -> dict[str, Any]:
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


def test_a_pod_driven_to_failed_carries_the_chosen_exit_code_reason_and_message(
    cluster: Cluster, namespace: str
) -> None:
    apply(cluster, namespace, pod("worker", gpus=1))
    cluster.wait_pod_phase(namespace, "worker", "Running")
    message = 'CUDA error: out of memory\n{"retryable": true, "quote": "\\"x\\""}'
    cluster.drive_pod(namespace, "worker", phase="Failed", exit_code=137, reason="OOMKilled", message=message)
    got = cluster.wait_pod_phase(namespace, "worker", "Failed")
    term = terminated(got)
    assert (term["exitCode"], term["reason"], term["message"]) == (137, "OOMKilled", message)
    ready = next(c for c in got["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def test_a_pod_driven_to_succeeded_carries_its_result(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, pod("worker", gpus=1))
    cluster.wait_pod_phase(namespace, "worker", "Running")
    result = json.dumps({"top1": 0.9402, "top5": 0.9912, "bestEpoch": 18})
    cluster.drive_pod(namespace, "worker", message=result)
    term = terminated(cluster.wait_pod_phase(namespace, "worker", "Succeeded"))
    assert (term["exitCode"], term["reason"], json.loads(term["message"])) == (
        0,
        "Completed",
        json.loads(result),
    )


def test_a_pod_driven_to_an_eviction(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, pod("worker"))
    cluster.wait_pod_phase(namespace, "worker", "Running")
    cluster.drive_pod(
        namespace, "worker", phase="Failed", exit_code=143, reason="Error",
        pod_reason="Evicted", pod_message="The node was low on resource: memory.",
    )  # fmt: skip
    got = cluster.wait_pod_phase(namespace, "worker", "Failed")
    assert got["status"]["reason"] == "Evicted"
    assert got["status"]["message"] == "The node was low on resource: memory."
    assert terminated(got)["exitCode"] == 143


def test_drive_annotations_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="phase"):
        drive_annotations(phase="Running")
    with pytest.raises(ValueError, match="exit code"):
        drive_annotations(phase="Succeeded", exit_code=1)
    assert drive_annotations("Failed", 2)["pfo.dev/drive-reason"] == "Error"


def test_a_fake_pod_log_is_read_through_the_api_server(cluster: Cluster, namespace: str) -> None:
    from kubernetes import client

    apply(cluster, namespace, pod("worker", gpus=1))
    cluster.wait_pod_phase(namespace, "worker", "Running")
    cluster.fake_pod_log(namespace, "worker", "epoch 1/3 loss=2.1\nepoch 2/3 loss=1.7")
    cluster.fake_pod_log(namespace, "worker", "epoch 3/3 loss=1.2")
    core = client.CoreV1Api(cluster.api_client())
    assert core.read_namespaced_pod_log("worker", namespace, tail_lines=1) == "epoch 3/3 loss=1.2\n"
    assert cluster.kubectl("logs", "worker", namespace=namespace).stdout.splitlines() == [
        "epoch 1/3 loss=2.1", "epoch 2/3 loss=1.7", "epoch 3/3 loss=1.2",
    ]  # fmt: skip


def test_one_log_file_is_served_for_every_pod_a_cluster_logs_object_selects(
    cluster: Cluster, namespace: str
) -> None:
    """serve_fake_logs: the benchmark's progress lines for thousands of fake pods, one object."""
    import time

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from localcluster.kwok import append_log_lines

    apply(cluster, namespace, pod("first"), pod("other"))
    path = cluster.fake_log_dir() / f"{namespace}-shared.log"
    append_log_lines(path, ["old line"], at=time.time() - 120)
    append_log_lines(path, ["epoch 1", "epoch 2"])
    name = f"test-{namespace}"
    cluster.serve_fake_logs(name, path, namespaces=[namespace], pods=["first", "second"])
    try:
        apply(cluster, namespace, pod("second"))  # created after the object: selected by name
        for p in ("first", "second", "other"):
            cluster.wait_pod_phase(namespace, p, "Running")
        core = client.CoreV1Api(cluster.api_client())
        for p in ("first", "second"):
            assert core.read_namespaced_pod_log(p, namespace) == "old line\nepoch 1\nepoch 2\n"
            # sinceSeconds and timestamps read the lines' own stamps, as on a kubelet
            recent = core.read_namespaced_pod_log(p, namespace, since_seconds=60, timestamps=True)
            assert [line.split(" ", 1)[1] for line in recent.splitlines()] == ["epoch 1", "epoch 2"]
            assert recent.startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
        with pytest.raises(ApiException):  # not selected: no log
            core.read_namespaced_pod_log("other", namespace)
        append_log_lines(path, ["epoch 3"])  # appended later: read at once
        assert core.read_namespaced_pod_log("second", namespace, tail_lines=1) == "epoch 3\n"
    finally:
        cluster.stop_fake_logs(name)


def test_a_job_completes_on_fake_nodes(cluster: Cluster, namespace: str) -> None:
    """The Job controller runs and kwok finishes Job-owned pods (the Job benchmark relies on it)."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "bench"},
        "spec": {
            "completions": 3,
            "parallelism": 3,
            "template": {
                "metadata": {"annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "200ms"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "fake"}]},
            },
        },
    }
    apply(cluster, namespace, job)
    cluster.kubectl("wait", "--for=condition=Complete", "job/bench", "--timeout=60s", namespace=namespace)
    status = json.loads(cluster.kubectl("get", "job", "bench", "-o", "json", namespace=namespace).stdout)[
        "status"
    ]
    assert status["succeeded"] == 3
