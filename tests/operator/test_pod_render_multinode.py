"""Rendering a multi-node attempt: all its ranks together (pure functions, job in, manifests out).

The invariants are checked over generated jobs (names up to the API's 253 characters, 1..64
nodes, 0..16 GPUs, attempts up to 10,000): what every rank shares, what only rank 0 has, how the
other ranks find rank 0, the names' bounds, and that a single-node job renders as it always did.
"""

from __future__ import annotations

import json

import pytest
from finetune_operator.api import MASTER_PORT
from finetune_operator.config import OperatorConfig
from finetune_operator.pod import (
    attempt_name,
    pod_name,
    render_attempt,
    render_master_config,
    render_pod,
    render_pod_group,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.operator.jobs import job

CONFIG = OperatorConfig(trainer_image="registry.local/trainer:7")
NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,251}[a-z0-9])?", fullmatch=True)


def container(pod):
    (only,) = pod["spec"]["containers"]
    return only


def env_of(pod):
    return {e["name"]: e for e in container(pod)["env"]}


def args_after(command, flag):
    return command[command.index(flag) + 1]


def multi(nodes=2, gpus=8, **sections):
    return job(resources={"nodes": nodes, "gpus": gpus}, **sections)


@settings(max_examples=60, deadline=None)
@given(
    name=NAMES,
    nodes=st.integers(2, 64),
    gpus=st.integers(0, 16),
    attempt=st.integers(1, 10_000),
)
def test_every_rank_of_an_attempt(name, nodes, gpus, attempt):
    pods = render_attempt(multi(nodes, gpus, metadata={"name": name}), attempt, CONFIG)
    assert len(pods) == nodes
    names = [p["metadata"]["name"] for p in pods]
    assert len(set(names)) == nodes and all(len(n) <= 63 for n in names)
    assert names == [pod_name(name, attempt, r, nodes) for r in range(nodes)]  # derived, stable
    group = attempt_name(name, attempt)
    assert len(group) <= 63
    settings_json = {args_after(container(p)["command"], "--settings-json") for p in pods}
    assert len(settings_json) == 1  # every rank runs the same training
    for rank, pod in enumerate(pods):
        labels = pod["metadata"]["labels"]
        assert labels["finetune.paddle.dev/rank"] == str(rank)
        assert labels["finetune.paddle.dev/attempt"] == str(attempt)
        c = container(pod)
        command = c["command"]
        assert command[:3] == ["python", "-m", "paddle.distributed.launch"]
        assert args_after(command, "--nnodes") == str(nodes)
        assert args_after(command, "--rank") == str(rank)
        assert args_after(command, "--nproc_per_node") == str(max(gpus, 1))
        assert args_after(command, "--job_id") == group
        assert "--devices" not in command  # a CPU build of Paddle refuses it; the container sees its GPUs
        if gpus:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        else:
            assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
        assert command[command.index("--settings-json") - 1] == "finetune-train"
        env = env_of(pod)
        assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        volumes = {v["name"] for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        if rank == 0:
            assert env["PADDLE_MASTER"] == {"name": "PADDLE_MASTER", "value": f"$(POD_IP):{MASTER_PORT}"}
            assert c["ports"] == [{"name": "master", "containerPort": MASTER_PORT, "protocol": "TCP"}]
            assert volumes == {"dataset", "output", "cache", "dshm", "tmp"}
            assert args_after(command, "--log_dir").endswith(f"/launch-logs/attempt-{attempt}-rank-0")
        else:
            ref = env["PADDLE_MASTER"]["valueFrom"]["configMapKeyRef"]
            assert ref == {"name": group, "key": "master"}  # required: the kubelet waits for it
            assert "ports" not in c
            assert volumes == {"dataset", "dshm", "tmp"} and mounts == {"/data", "/dev/shm", "/tmp"}
            assert args_after(command, "--log_dir") == "/tmp/launch-logs"
        # What Pod Security "restricted" asks, on every rank.
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True  # /tmp is an emptyDir
        # The job's grace on every rank: SIGTERM to any rank stops all at one step, rank 0 saves it.
        assert pod["spec"]["terminationGracePeriodSeconds"] == 120


@settings(max_examples=40, deadline=None)
@given(name=NAMES, gpus=st.integers(0, 16), attempt=st.integers(1, 10_000))
def test_a_single_node_job_renders_as_before(name, gpus, attempt):
    one = job(resources={"gpus": gpus}, metadata={"name": name})
    explicit = job(resources={"gpus": gpus, "nodes": 1}, metadata={"name": name})
    (pod,) = render_attempt(explicit, attempt, CONFIG)
    assert pod == render_pod(one, attempt, CONFIG)
    assert pod["metadata"]["name"] == attempt_name(name, attempt) == pod_name(name, attempt)
    c = container(pod)
    assert "POD_IP" not in env_of(pod) and "PADDLE_MASTER" not in env_of(pod)
    assert "--nnodes" not in c["command"] and "ports" not in c
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"dataset", "output", "cache", "dshm", "tmp"}


def test_rank_out_of_range():
    with pytest.raises(ValueError, match="rank"):
        render_pod(multi(2), 1, CONFIG, rank=2)


def test_the_master_config_carries_rank_0s_address():
    rank0 = render_pod(multi(3), 4, CONFIG)
    rank0["metadata"]["uid"] = "u-1"
    with pytest.raises(ValueError, match="no IP yet"):
        render_master_config(multi(3), 4, rank0)
    rank0["status"] = {"podIP": "10.88.0.7"}
    config_map = render_master_config(multi(3), 4, rank0)
    assert config_map["metadata"]["name"] == "flowers-attempt-4"
    assert config_map["data"] == {"master": f"10.88.0.7:{MASTER_PORT}"}
    assert config_map["immutable"] is True
    assert config_map["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "flowers-attempt-4-rank-0", "uid": "u-1"}
    ]
    # The name the other ranks read it under.
    rank2 = render_pod(multi(3), 4, CONFIG, rank=2)
    assert env_of(rank2)["PADDLE_MASTER"]["valueFrom"]["configMapKeyRef"]["name"] == "flowers-attempt-4"
    rank0["status"]["podIP"] = "fd00::7"
    assert render_master_config(multi(3), 4, rank0)["data"]["master"] == f"[fd00::7]:{MASTER_PORT}"


@pytest.mark.parametrize("nodes", [1, 3])
def test_kueue_pod_group_per_attempt(nodes):
    labels = {"kueue.x-k8s.io/queue-name": "gpus", "kueue.x-k8s.io/priority-class": "low"}
    queued = multi(nodes, metadata={"labels": labels})
    for attempt in (1, 2):
        for pod in render_attempt(queued, attempt, CONFIG):
            labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
            assert labels["kueue.x-k8s.io/queue-name"] == "gpus"
            assert labels["kueue.x-k8s.io/priority-class"] == "low"
            assert labels["kueue.x-k8s.io/pod-group-name"] == f"flowers-attempt-{attempt}"  # new per attempt
            assert annotations["kueue.x-k8s.io/pod-group-total-count"] == str(nodes)
            assert annotations["kueue.x-k8s.io/retriable-in-group"] == "false"
    # A queue named in the pod template works the same; no queue: nothing of Kueue's.
    templated = multi(2, template={"labels": {"kueue.x-k8s.io/queue-name": "gpus"}})
    for pod in render_attempt(templated, 1, CONFIG):
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "flowers-attempt-1"
    for pod in render_attempt(multi(2), 1, CONFIG):
        keys = set(pod["metadata"]["labels"]) | set(pod["metadata"]["annotations"])
        assert not any(k.startswith("kueue.x-k8s.io/") for k in keys)


def test_pod_groups_for_coscheduling_and_volcano():
    assert render_pod_group(multi(3), 2, CONFIG) is None
    cosched = OperatorConfig(gang_scheduler="coscheduling", scheduler_name="scheduler-plugins-scheduler")
    group = render_pod_group(multi(3), 2, cosched)
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "flowers-attempt-2" and group["spec"] == {"minMember": 3}
    assert group["metadata"]["ownerReferences"][0]["uid"] == job()["metadata"]["uid"]
    for pod in render_attempt(multi(3), 2, cosched):
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "flowers-attempt-2"
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    volcano = OperatorConfig(gang_scheduler="volcano")
    group = render_pod_group(multi(3), 2, volcano)
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1" and group["spec"] == {"minMember": 3}
    for pod in render_attempt(multi(3), 2, volcano):
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "flowers-attempt-2"
        assert pod["spec"]["schedulerName"] == "volcano"
    assert "schedulerName" not in render_pod(multi(3), 2, CONFIG)["spec"]


def test_settings_differ_from_a_single_node_jobs_only_in_the_world():
    """The trainer is told the world it belongs to (to check the launcher started as many
    processes); its rank comes from the launcher, so every rank gets the same settings."""
    single = json.loads(args_after(container(render_pod(job(), 1, CONFIG))["command"], "--settings-json"))
    ranks = render_attempt(multi(4, 8), 1, CONFIG)
    ours = json.loads(args_after(container(ranks[3])["command"], "--settings-json"))
    assert ours["world"] == {"nodes": 4, "processesPerNode": 8}
    assert single["world"] == {"nodes": 1, "processesPerNode": 1}
    assert {k: v for k, v in ours.items() if k != "world"} == {
        k: v for k, v in single.items() if k != "world"
    }


def test_multi_node_jobs_are_refused_until_the_reconciler_runs_gangs():
    """The reconciler still starts one pod per attempt: a lone rank 0 would wait for its peers
    holding GPUs, so the operator refuses the job with the field named instead."""
    from finetune_operator.spec_checks import refused

    why = refused(multi(3, 8), OperatorConfig(allow_host_path=True))
    assert why is not None and why.startswith("spec.resources.nodes: 3 nodes: ")
    assert "use nodes: 1" in why
    assert refused(job(resources={"nodes": 1, "gpus": 8}), CONFIG) is None
