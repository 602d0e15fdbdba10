"""A multi-node attempt is all its ranks: the reconciler's gang decisions against the in-memory
fake API (tests/operator/fake_kube.py), pass by pass, and `observe_gang` over generated rank
states. The crash-point suite (test_crash_points.py, the gang-* scenarios) checks the same lives
through a crash before and after every write."""

from __future__ import annotations

import itertools

import pytest
from finetune_contract import TrainerResult, encode_result, format_progress
from finetune_operator.api import (
    KUEUE_POD_GROUP_NAME,
    KUEUE_POD_GROUP_TOTAL_COUNT,
    LABEL_RANK,
    MASTER_KEY,
    Phase,
    Reason,
)
from finetune_operator.gang import observe_gang
from finetune_operator.pod import render_pod

from tests.contract.sample import SAMPLE_RESULT
from tests.operator.fake_kube import Crash, kueue_admit
from tests.operator.reconcile_kit import CONFIG, NAME, NS, SUCCESS, World, pod

GANG = {"resources": {"nodes": 3, "gpus": 8}}
GPUS = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."


def rank(attempt: int, r: int) -> str:
    return f"{pod(attempt)}-rank-{r}"


def started(nodes: int = 3, **spec) -> World:
    """A multi-node job whose first attempt's ranks all run."""
    w = World(**{**GANG, "resources": {"nodes": nodes, "gpus": 8}, **spec})
    w.settle()
    for r in range(nodes):
        w.kube.run(NS, rank(1, r))
    w.settle()
    return w


def test_all_ranks_are_created_in_one_pass_with_stable_names_and_rank_labels():
    w = World(**GANG)
    w.reconcile()
    assert w.kube.created == [rank(1, r) for r in range(3)]
    for r in range(3):
        assert w.kube.pod(NS, rank(1, r))["metadata"]["labels"][LABEL_RANK] == str(r)
    assert w.status["ranks"] == {"attempt": 1, "pending": 3, "running": 0, "succeeded": 0, "failed": 0}
    assert w.status["podName"] == rank(1, 0)
    w.settle()
    assert w.kube.created == [rank(1, r) for r in range(3)], "a second pass created more"


def test_a_crash_between_two_ranks_creates_the_rest_and_never_twice():
    w = World(**GANG)
    w.kube.crash_at(1, "after")  # dies right after creating rank 1
    with pytest.raises(Crash):
        w.reconcile()
    assert w.kube.created == [rank(1, 0), rank(1, 1)]
    assert "attempts" not in w.status
    w.restart()
    w.settle()
    assert w.kube.created == [rank(1, r) for r in range(3)]
    assert w.status["attempts"] == 1 and w.status["ranks"]["attempt"] == 1
    assert w.status.get("failedAttempts") is None, "the missing rank was not a failure"


def test_the_master_config_map_is_created_once_rank_0_has_an_ip():
    w = World(**GANG)
    w.settle()
    assert w.kube.config_maps == {}, "no address before rank 0 has an IP"
    w.kube.run(NS, rank(1, 0))
    w.settle()
    (config_map,) = w.kube.config_maps.values()
    ip = w.kube.pod(NS, rank(1, 0))["status"]["podIP"]
    assert config_map["metadata"]["name"] == pod(1)
    assert config_map["data"] == {MASTER_KEY: f"{ip}:36543"}
    assert (
        config_map["metadata"]["ownerReferences"][0]["uid"] == w.kube.pod(NS, rank(1, 0))["metadata"]["uid"]
    )
    assert w.status["ranks"]["master"] == f"{ip}:36543"
    creates = [x for x in w.kube.writes if x.verb == "create_configmap"]
    w.kube.run(NS, rank(1, 1))
    w.settle()
    assert [x for x in w.kube.writes if x.verb == "create_configmap"] == creates, "created again"


def test_a_stale_config_map_of_the_same_name_is_waited_out():
    """A deleted job of the same name left its attempt's ConfigMap (the garbage collector has not
    removed it yet): the operator, which may not delete ConfigMaps, says so and waits."""
    w = World(**GANG)
    w.settle()
    w.kube.config_maps[(NS, pod(1))] = {
        "metadata": {"name": pod(1), "uid": "old-cm", "ownerReferences": [{"uid": "old-pod"}]},
        "data": {MASTER_KEY: "10.9.9.9:36543"},
    }
    w.kube.run(NS, rank(1, 0))
    again = w.reconcile()
    assert (w.status["phase"], w.status["reason"]) == (Phase.PENDING, Reason.CONFIG_MAP_EXISTS)
    assert again is not None and again <= 2
    assert "master" not in w.status["ranks"]
    w.kube.collect_garbage()  # its owner is gone
    w.settle()
    ip = w.kube.pod(NS, rank(1, 0))["status"]["podIP"]
    assert w.kube.config_maps[(NS, pod(1))]["data"][MASTER_KEY] == f"{ip}:36543"
    assert w.status["ranks"]["master"] == f"{ip}:36543"


def test_one_rank_failing_ends_the_attempt_once_and_deletes_the_others():
    w = started()
    w.kube.finish(NS, rank(1, 1), 137)  # rank 1 killed
    w.reconcile()
    status = w.status
    assert (status["phase"], status["reason"]) == (Phase.PENDING, Reason.RETRYING)
    assert "rank 1" in status["message"] and "Killed" in status["message"]
    assert status["failedAttempts"] == 1 and status["endedAttempts"] == 1
    assert status["ranks"]["failedRank"] == 1 and status["ranks"]["failedReason"] == "Killed"
    deleted = [x.target for x in w.kube.writes[-3:] if x.verb == "delete_pod"]
    assert deleted == [rank(1, 0), rank(1, 2)], "the other ranks are deleted in the same pass"
    # The survivors fail in turn (their collectives break, then SIGTERM): still one failure.
    w.kube.finish(NS, rank(1, 0), 143)
    w.kube.finish(NS, rank(1, 2), 1)
    w.settle()
    assert w.status["failedAttempts"] == 1
    w.kube.terminate()
    w.clock.advance(10)
    w.settle()
    assert w.kube.created[-3:] == [rank(2, r) for r in range(3)], "attempt 2 starts all ranks"
    assert w.status["ranks"] == {"attempt": 2, "pending": 3, "running": 0, "succeeded": 0, "failed": 0}


def test_the_first_rank_to_fail_is_the_cause():
    w = started()
    w.kube.finish(
        NS, rank(1, 2), 3, encode_result(TrainerResult(exitCode=3, reason="DataError", message="bad"))
    )
    w.clock.advance(1)
    w.kube.finish(NS, rank(1, 0), 1)  # rank 0's collective broke afterwards
    w.reconcile()
    assert (w.status["phase"], w.status["reason"]) == (Phase.FAILED, "DataError")
    assert w.status["ranks"]["failedRank"] == 2
    assert w.status["message"].startswith("rank 2: bad")
    assert [x.target for x in w.kube.writes if x.verb == "delete_pod"] == [rank(1, 1)]


def test_success_is_rank_0_with_its_result_not_another_rank():
    w = started(nodes=2)
    w.kube.finish(NS, rank(1, 1), 0)  # rank 1 done first: the attempt runs on
    w.reconcile()
    assert w.status["phase"] == Phase.RUNNING
    assert w.status["ranks"]["succeeded"] == 1
    w.kube.finish(NS, rank(1, 0), 0, SUCCESS)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == (Phase.SUCCEEDED, Reason.COMPLETED)
    assert w.status["metrics"]["top1"] == SAMPLE_RESULT.top1
    assert w.status["ranks"]["succeeded"] == 2


def test_rank_0_succeeding_while_others_run_finishes_the_job_and_deletes_them():
    w = started()
    w.kube.finish(NS, rank(1, 0), 0, SUCCESS)
    w.settle()
    assert w.status["phase"] == Phase.SUCCEEDED
    assert w.kube.active_pods(NS, NAME) == []


def test_a_group_that_cannot_be_placed_whole_is_failed_whole_after_the_start_timeout():
    """Two ranks hold their nodes, the third finds no room: whatever the scheduling limit (none
    here), a partly placed group waits no longer than a start, then every rank is deleted."""
    w = World(**GANG, runPolicy={"backoffLimit": 2, "startTimeoutSeconds": 300})
    w.settle()
    w.kube.run(NS, rank(1, 0))
    w.kube.schedule(NS, rank(1, 1))
    w.kube.unschedulable(NS, rank(1, 2), GPUS)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == (Phase.PENDING, "Unschedulable")
    assert w.status["waiting"]["kind"] == "Capacity" and "deadline" in w.status["waiting"]
    w.clock.advance(301)
    w.settle()
    status = w.status
    assert (status["phase"], status["reason"]) == (Phase.FAILED, "Unschedulable")
    assert "ranks 0, 1 held their nodes" in status["message"] and f"rank 2: {GPUS}" in status["message"]
    assert w.kube.active_pods(NS, NAME) == []


def test_a_group_nowhere_placed_waits_under_the_scheduling_limit():
    w = World(
        **GANG, runPolicy={"backoffLimit": 2, "schedulingTimeoutSeconds": 3600, "startTimeoutSeconds": 60}
    )
    w.settle()
    for r in range(3):
        w.kube.unschedulable(NS, rank(1, r), GPUS)
    w.clock.advance(600)
    w.settle()
    assert w.status["phase"] == Phase.PENDING, "nothing held: the scheduling limit applies"
    w.clock.advance(3001)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == (Phase.FAILED, "Unschedulable")
    assert w.kube.active_pods(NS, NAME) == []


def test_ranks_waiting_for_rank_0s_address_are_routine():
    w = World(**GANG)
    w.settle()
    w.kube.run(NS, rank(1, 0))
    for r in (1, 2):
        w.kube.waiting(NS, rank(1, r), "CreateContainerConfigError", f'configmap "{pod(1)}" not found')
    before = len(w.kube.events)
    w.reconcile()
    assert w.status["phase"] == Phase.PENDING
    assert "waits for rank 0's address" in w.status["message"]
    assert all(e["type"] == "Normal" for e in w.kube.events[before:])


def test_a_vanished_rank_is_a_transient_failure_of_the_attempt():
    w = started()
    w.kube.remove_pod(NS, rank(1, 2))
    w.reconcile()
    assert (w.status["reason"], w.status["failedAttempts"]) == (Reason.RETRYING, 1)
    assert w.status["ranks"]["failedRank"] == 2 and w.status["ranks"]["failedReason"] == Reason.POD_MISSING


def test_progress_comes_from_rank_0():
    w = started(nodes=2)
    w.kube.logs[(NS, rank(1, 1))] = format_progress(9, 10, top1=0.1)
    w.kube.logs[(NS, rank(1, 0))] = format_progress(3, 10, top1=0.5)
    w.clock.advance(CONFIG.progress_poll_seconds)
    w.reconcile()
    assert w.status["progress"]["epoch"] == 3


def test_suspending_deletes_every_rank():
    w = started()
    w.kube.update_spec(NS, NAME, runPolicy={"suspend": True})
    w.settle()
    assert w.status["phase"] == Phase.SUSPENDED
    assert w.kube.active_pods(NS, NAME) == []
    assert w.status.get("failedAttempts") is None


def test_kueue_admits_the_attempt_as_one_pod_group_of_all_ranks():
    w = World(**GANG)
    w.kube.kueue_namespaces.add(NS)
    w.kube.job(NS, NAME)["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    w.settle()
    assert w.status["phase"] == Phase.QUEUED
    for r in range(3):
        meta = w.kube.pod(NS, rank(1, r))["metadata"]
        assert meta["labels"][KUEUE_POD_GROUP_NAME] == pod(1)
        assert meta["annotations"][KUEUE_POD_GROUP_TOTAL_COUNT] == "3"
    for r in range(3):
        kueue_admit(w.kube, NS, rank(1, r))
        w.kube.run(NS, rank(1, r))
    w.settle()
    assert w.status["phase"] == Phase.RUNNING


@pytest.mark.parametrize(
    "scheduler,api", [("coscheduling", "scheduling.x-k8s.io"), ("volcano", "scheduling.volcano.sh")]
)
def test_a_pod_group_is_created_before_the_ranks(scheduler, api):
    w = World(**GANG)
    w.configure(gang_scheduler=scheduler)
    w.reconcile()
    verbs = [x.verb for x in w.kube.writes]
    assert verbs[:4] == ["create_podgroup", "create_pod", "create_pod", "create_pod"]
    (group,) = w.kube.pod_groups.values()
    assert group["apiVersion"].startswith(api) and group["spec"]["minMember"] == 3


def test_a_single_node_job_has_no_rank_record():
    w = World()
    w.settle()
    w.run(1)
    w.settle()
    assert "ranks" not in w.status and w.kube.config_maps == {}
    assert w.kube.created == [pod(1)]


# --------------------------------------------------------------------------------------------
# observe_gang over every combination of rank states (3 ranks)
# --------------------------------------------------------------------------------------------
STATES = ("pending", "unschedulable", "running", "succeeded", "failed", "deleting")


def _pods(states: tuple[str, ...]) -> dict[int, dict]:
    w = World(**GANG)
    job = w.kube.job(NS, NAME)
    out = {}
    for r, state in enumerate(states):
        manifest = render_pod(job, 1, CONFIG, r)
        w.kube.create_pod(manifest)
        name = manifest["metadata"]["name"]
        if state == "unschedulable":
            w.kube.unschedulable(NS, name, GPUS)
        elif state == "running":
            w.kube.run(NS, name)
        elif state == "succeeded":
            w.kube.finish(NS, name, 0, SUCCESS if r == 0 else "")
        elif state == "failed":
            w.kube.finish(NS, name, 1)
        elif state == "deleting":
            w.kube.run(NS, name)
            w.kube.pod(NS, name)["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        out[r] = w.kube.pod(NS, name)
    return out


@pytest.mark.parametrize("states", list(itertools.product(STATES, repeat=3)), ids="-".join)
def test_observe_gang_invariants(states):
    gang = observe_gang(_pods(states), 3)
    counts = gang.counts
    assert sum(counts.values()) == 3
    assert counts["failed"] == states.count("failed")
    if "failed" in states:
        assert gang.outcome is not None and gang.outcome.phase == "Failed"
        assert states[gang.rank] == "failed" and gang.outcome.message.startswith(f"rank {gang.rank}")
    elif states[0] == "succeeded":
        assert gang.outcome is not None and gang.outcome.phase == "Succeeded" and gang.rank == 0
    elif "deleting" in states:
        assert gang.outcome is None
    elif "pending" in states or "unschedulable" in states:
        assert gang.outcome is not None and gang.outcome.phase == "Pending"
        if "unschedulable" in states:
            assert states[gang.rank] == "unschedulable", "capacity holds the group back first"
    else:
        assert gang.outcome is not None and gang.outcome.phase == "Running"
    assert gang.placed == tuple(
        r for r, s in enumerate(states) if s in ("running", "succeeded", "failed", "deleting")
    )
