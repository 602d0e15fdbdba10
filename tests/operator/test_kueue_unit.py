"""Kueue without a cluster: the pods a queued job renders, what Kueue's marks on a pod and its
Workload mean (finetune_operator.kueue), and the reconciler's passes against the fake API with a
fake Kueue (gate at creation, Workload words, admission, preemption). The real Kueue's behaviour
is asserted in tests/operator/test_kueue_jobs.py and tests/localcluster/test_kueue.py."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from finetune_operator.api import Phase, Reason, Waiting
from finetune_operator.job_status import now_iso
from finetune_operator.kueue import kueue_gated, kueue_managed, kueue_stop, workload_stop, workload_words
from finetune_operator.pod import render_pod

from tests.operator.fake_kube import T0, kueue_admit, kueue_evicted, kueue_preempt, kueue_says
from tests.operator.jobs import job
from tests.operator.reconcile_kit import CONFIG, NAME, NS, World, pod

QUEUE = "kueue.x-k8s.io/queue-name"
PRIORITY = "kueue.x-k8s.io/priority-class"
GROUP = "kueue.x-k8s.io/pod-group-name"
TOTAL = "kueue.x-k8s.io/pod-group-total-count"
RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
    "flavor gpu, 4 more needed"
)
PREEMPTED = (
    "Preempted to accommodate a workload (UID: 1234, JobUID: 5678) due to prioritization in the "
    "ClusterQueue; preemptor path: /gpus; preemptee path: /gpus"
)


# ------------------------------------------------------------------------------ rendering
@pytest.mark.parametrize(
    ("job_labels", "template_labels"),
    [
        (labels, tmpl)
        for labels, tmpl in itertools.product(
            [{}, {QUEUE: "team-a"}, {QUEUE: "team-a", PRIORITY: "high"}, {PRIORITY: "high"}, {"x": "y"}],
            [{}, {QUEUE: "team-b"}, {"app": "ft"}],
        )
    ],
)
def test_a_queued_job_renders_one_pod_group_per_attempt(job_labels, template_labels):
    spec_job = job(metadata={"labels": job_labels}, template={"labels": template_labels})
    plain = render_pod(job(template={"labels": template_labels}), 3, CONFIG)
    rendered = render_pod(spec_job, 3, CONFIG)
    labels, annotations = rendered["metadata"]["labels"], rendered["metadata"]["annotations"]
    queue = job_labels.get(QUEUE) or template_labels.get(QUEUE)
    if not queue:
        # Nothing Kueue's: the same pod as an unlabelled job's (a priority alone queues nothing).
        assert GROUP not in labels and TOTAL not in annotations and RETRIABLE not in annotations
        assert {k: v for k, v in labels.items() if k != PRIORITY} == plain["metadata"]["labels"]
        return
    assert labels[QUEUE] == queue  # the job's own label wins over the template's
    assert labels[GROUP] == "flowers-attempt-3"  # a new group per attempt (KUEUE.md (e))
    assert annotations[TOTAL] == "1"  # the pods of one attempt
    assert annotations[RETRIABLE] == "false"
    assert labels.get(PRIORITY) == job_labels.get(PRIORITY)
    # The rest of the pod is the unlabelled job's.
    assert rendered["spec"] == plain["spec"]


def test_the_group_name_of_a_long_job_is_a_label_value():
    name = "a" * 70
    rendered = render_pod(job(metadata={"name": name, "labels": {QUEUE: "q"}}), 12, CONFIG)
    group = rendered["metadata"]["labels"][GROUP]
    assert len(group) <= 63 and group.endswith("-attempt-12")
    assert group == rendered["metadata"]["name"]  # the Workload's name is known: the group's


def test_the_group_counts_every_pod_of_the_attempt():
    # spec.resources.nodes comes with multi-node jobs; the count follows it.
    spec_job = job(metadata={"labels": {QUEUE: "q"}}, resources={"gpus": 2, "nodes": 3})
    assert render_pod(spec_job, 1, CONFIG)["metadata"]["annotations"][TOTAL] == "3"


# ------------------------------------------------------------------------------ Kueue's marks
def gated_pod(**extra):
    pod = {
        "metadata": {"name": "p", "labels": {"kueue.x-k8s.io/managed": "true"}},
        "spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]},
        "status": {"phase": "Pending"},
    }
    pod.update(extra)
    return pod


def test_gate_and_managed_label():
    assert kueue_gated(gated_pod()) and kueue_managed(gated_pod())
    assert not kueue_gated({"spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/topology"}]}})
    assert not kueue_gated({"spec": {}}) and not kueue_managed({"metadata": {}})


@pytest.mark.parametrize(
    ("kind", "status", "reason", "expected"),
    [
        ("TerminationTarget", "True", "WorkloadEvictedDueToPreempted", Reason.PREEMPTED),
        ("DisruptionTarget", "True", "WorkloadEvictedDueToPreempted", Reason.PREEMPTED),
        ("TerminationTarget", "True", "WorkloadEvictedDueToPodsReadyTimeout", Reason.EVICTED),
        ("TerminationTarget", "True", "WorkloadEvictedDueToClusterQueueStopped", Reason.EVICTED),
        ("TerminationTarget", "False", "WorkloadEvictedDueToPreempted", None),
        ("DisruptionTarget", "True", "PreemptionByScheduler", None),  # the scheduler's: pod_state's
        ("DisruptionTarget", "True", "EvictionByEvictionAPI", None),
    ],
)
def test_kueue_stop(kind, status, reason, expected):
    cond = {"type": kind, "status": status, "reason": reason, "message": PREEMPTED}
    stop = kueue_stop({"status": {"phase": "Running", "conditions": [cond]}})
    assert (stop.reason if stop else None) == expected
    if stop:
        assert stop.kueue_reason == reason and stop.message == PREEMPTED


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([("Evicted", "True", "Preempted")], Reason.PREEMPTED),
        ([("QuotaReserved", "False", "Pending"), ("Evicted", "True", "Preempted")], Reason.PREEMPTED),
        ([("Evicted", "True", "PodsReadyTimeout")], Reason.EVICTED),
        ([("Evicted", "True", "Deactivated")], Reason.EVICTED),
        ([("Evicted", "False", "QuotaReserved")], None),  # requeued and admitted again
        ([("Preempted", "True", "InClusterQueue")], None),  # Evicted says it; alone it is not enough
        ([("Admitted", "True", "Admitted")], None),
        ([], None),
    ],
)
def test_workload_stop(conditions, expected):
    wl = {
        "status": {
            "conditions": [
                {"type": t, "status": st, "reason": r, "message": PREEMPTED} for t, st, r in conditions
            ]
        }
    }
    stop = workload_stop(wl)
    assert (stop.reason if stop else None) == expected
    if stop:
        why = next(r for t, _, r in conditions if t == "Evicted")
        assert stop.kueue_reason == f"WorkloadEvictedDueTo{why}" and stop.message == PREEMPTED
    assert workload_stop(None) is None


def test_workload_words():
    def wl(*conds):
        keys = ("type", "status", "reason", "message")
        return {"status": {"conditions": [dict(zip(keys, c, strict=True)) for c in conds]}}

    assert workload_words(None) is None
    assert workload_words({}) is None
    assert workload_words(wl(("QuotaReserved", "False", "Pending", NO_QUOTA))) == ("Pending", NO_QUOTA)
    missing = "LocalQueue team-x doesn't exist"
    assert workload_words(wl(("QuotaReserved", "False", "Inadmissible", missing))) == (
        "Inadmissible",
        missing,
    )
    checks = wl(
        ("QuotaReserved", "True", "QuotaReserved", "ok"), ("Admitted", "False", "X", "checks pending")
    )
    assert workload_words(checks) == ("X", "checks pending")
    admitted = wl(("QuotaReserved", "True", "QuotaReserved", "ok"), ("Admitted", "True", "Admitted", "ok"))
    assert workload_words(admitted) is None


# ------------------------------------------------------------------------------ the reconciler
def queued_world(**spec):
    w = World(**spec)
    w.kube.kueue_namespaces.add(NS)
    w.kube.job(NS, NAME)["metadata"]["labels"] = {QUEUE: "team-a"}
    return w


def admitted_and_running():
    """A queued job admitted and Running; backoffLimit 0: a single counted failure ends it."""
    w = queued_world(runPolicy={"backoffLimit": 0})
    w.reconcile()
    kueue_admit(w.kube, NS, pod(1))
    w.run(1)
    w.reconcile()
    assert w.status["phase"] == Phase.RUNNING
    return w


def test_a_gated_pod_is_queued_with_the_cluster_queues_words_and_no_timeout():
    w = queued_world(runPolicy={"backoffLimit": 2, "activeDeadlineSeconds": 60, "startTimeoutSeconds": 30})
    # The creating pass itself asks for a look soon: a gated pod brings no watch event of its own
    # until admission (the watch cache holds what the create answered, so nothing new arrives).
    assert w.reconcile() == pytest.approx(2.0)
    s = w.status
    assert (s["phase"], s["reason"], s["attempts"]) == (Phase.QUEUED, Reason.QUEUED, 1)
    assert "startTime" not in s  # the job's clock starts at admission
    assert s["waiting"]["kind"] == Waiting.ADMISSION and "deadline" not in s["waiting"]
    assert w.reasons() == [Reason.QUEUED]
    # No Workload yet: look again soon. Then Kueue's words.
    assert w.reconcile() == pytest.approx(2.0)
    kueue_says(w.kube, NS, pod(1), "Pending", NO_QUOTA)
    w.clock.advance(3600)  # far beyond every limit of the job
    assert w.reconcile() == pytest.approx(15.0)
    s = w.status
    assert (s["phase"], s["reason"]) == (Phase.QUEUED, Reason.QUEUED)
    assert s["message"] == f"waiting for admission by LocalQueue team-a: {NO_QUOTA}"
    assert s["waiting"]["since"] == now_iso(T0)
    assert w.reasons() == [Reason.QUEUED]  # the words changed, not the state: no second Event
    # Admitted an hour later: the deadline counts from now.
    kueue_admit(w.kube, NS, pod(1))
    w.reconcile()
    assert w.status["startTime"] == now_iso(w.clock())
    w.run(1)
    w.clock.advance(30)
    w.reconcile()
    assert w.status["phase"] == Phase.RUNNING
    w.clock.advance(31)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == (Phase.FAILED, Reason.DEADLINE_EXCEEDED)


def test_an_inadmissible_workload_is_a_warning():
    w = queued_world()
    w.reconcile()
    kueue_says(w.kube, NS, pod(1), "Inadmissible", "LocalQueue team-a doesn't exist")
    w.reconcile()
    s = w.status
    assert (s["phase"], s["reason"]) == (Phase.QUEUED, Reason.INADMISSIBLE)
    assert s["message"].endswith("LocalQueue team-a doesn't exist")
    assert [(e["type"], e["reason"]) for e in w.kube.events][-1] == ("Warning", Reason.INADMISSIBLE)


def test_time_in_the_queue_is_not_time_waiting_for_capacity():
    w = queued_world(runPolicy={"backoffLimit": 2, "schedulingTimeoutSeconds": 100})
    w.reconcile()
    # The pod's PodScheduled condition dates from its creation (gated), and keeps that date when
    # the scheduler finds no room after the admission (the condition stays False).
    w.kube.unschedulable(
        NS, pod(1), "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", "SchedulingGated"
    )
    w.kube.pod(NS, pod(1))["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    w.clock.advance(500)
    w.reconcile()
    assert w.status["phase"] == Phase.QUEUED
    kueue_admit(w.kube, NS, pod(1))
    cond = w.kube.pod(NS, pod(1))["status"]["conditions"][0]
    cond["reason"] = "Unschedulable"
    w.reconcile()
    assert (w.status["phase"], w.status["waiting"]["kind"]) == (Phase.PENDING, Waiting.CAPACITY)
    assert w.status["waiting"]["deadline"] == now_iso(w.clock() + timedelta(seconds=100))
    w.clock.advance(101)
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == (Phase.FAILED, "Unschedulable")


def test_preemption_ends_the_attempt_without_a_failure_and_the_next_resumes_queued():
    w = admitted_and_running()
    kueue_preempt(w.kube, NS, pod(1), PREEMPTED)
    again = w.reconcile()
    s = w.status
    assert (s["phase"], s["reason"]) == (Phase.QUEUED, Reason.PREEMPTED)
    assert PREEMPTED in s["message"]
    assert (s.get("failedAttempts", 0), s["endedAttempts"]) == (0, 1)
    assert "startTime" not in s and "nextAttemptTime" not in s
    assert again == pytest.approx(2.0)
    # The trainer checkpoints; meanwhile no second attempt.
    w.reconcile()
    assert w.kube.created == [pod(1)]
    w.kube.terminate()  # the pod is gone
    w.reconcile()
    s = w.status
    assert w.kube.created == [pod(1), pod(2)]  # at once: no back-off
    assert (s["phase"], s["reason"], s["attempts"]) == (Phase.QUEUED, Reason.QUEUED, 2)
    assert "resumed" in s["message"]
    created = w.kube.pod(NS, pod(2))
    assert created["metadata"]["labels"][GROUP] == pod(2)
    assert kueue_gated(created)
    kueue_admit(w.kube, NS, pod(2))
    w.succeed(2)
    w.settle()
    s = w.status
    assert (s["phase"], s.get("failedAttempts", 0), s["attempts"]) == (Phase.SUCCEEDED, 0, 2)
    assert w.reasons() == [
        Reason.QUEUED,
        Reason.RUNNING,
        Reason.PREEMPTED,
        Reason.QUEUED,
        Reason.COMPLETED,  # it finished before a pass saw it run
    ]


def test_a_preempted_pod_that_already_failed_is_not_a_failure_either():
    w = admitted_and_running()
    # SIGTERM, checkpoint, exit 143 before the operator looked: Failed, with Kueue's condition.
    w.fail(1, 143)
    kueue_preempt(w.kube, NS, pod(1), PREEMPTED)
    w.reconcile()
    assert (w.status["phase"], w.status.get("failedAttempts", 0)) == (Phase.QUEUED, 0)


@pytest.mark.parametrize("workload_left", [True, False], ids=["workload-left", "workload-gone"])
def test_a_preemption_missed_while_the_operator_was_down(workload_left):
    """Kueue preempts the pod and the pod is gone before the operator looks again. With the
    attempt's Workload still there (Evicted) it is a preemption, not counted; with the Workload
    gone too, nothing tells it from a pod that vanished: PodMissing, counted."""
    w = admitted_and_running()
    # The operator is down: Kueue evicts the group, the trainer checkpoints, the pod is removed.
    kueue_preempt(w.kube, NS, pod(1), PREEMPTED)
    w.kube.terminate()
    if workload_left:
        kueue_evicted(w.kube, NS, pod(1), "Preempted", PREEMPTED)
    w.reconcile()
    s = w.status
    if not workload_left:
        assert (s["phase"], s["failedAttempts"]) == (Phase.FAILED, 1)
        assert Reason.POD_MISSING in s["message"]
        return
    assert (s["phase"], s["reason"], s.get("failedAttempts", 0), s["endedAttempts"]) == (
        Phase.QUEUED,
        Reason.PREEMPTED,
        0,
        1,
    )
    assert PREEMPTED in s["message"] and "WorkloadEvictedDueToPreempted" in s["message"]
    w.kube.workloads.clear()  # garbage-collected with its pods
    w.reconcile()
    assert w.kube.created == [pod(1), pod(2)]  # at once, no back-off, queued again
    assert (w.status["phase"], w.status["attempts"]) == (Phase.QUEUED, 2)
    kueue_admit(w.kube, NS, pod(2))
    w.succeed(2)
    w.settle()
    s = w.status
    assert (s["phase"], s.get("failedAttempts", 0), s["attempts"]) == (Phase.SUCCEEDED, 0, 2)
    assert Reason.POD_MISSING not in w.reasons()


def test_a_namespace_kueue_does_not_manage_gets_a_warning_and_the_pod_runs():
    w = World()
    w.kube.job(NS, NAME)["metadata"]["labels"] = {QUEUE: "team-a"}
    w.reconcile()
    assert w.status["phase"] == Phase.PENDING and "startTime" in w.status
    assert w.reasons() == [Reason.POD_CREATED, Reason.NOT_QUEUED]
    assert "does not manage namespace team-a" in w.kube.events[-1]["message"]


def test_suspending_a_queued_job_deletes_its_pod():
    w = queued_world()
    w.reconcile()
    w.kube.update_spec(NS, NAME, runPolicy={"suspend": True})
    w.settle()
    assert w.status["phase"] == Phase.SUSPENDED and w.kube.active_pods(NS, NAME) == []


def test_an_unlabelled_job_reads_no_workload():
    w = World()
    w.kube.kueue_namespaces.add(NS)
    reads = []
    w.kube.get_workload = lambda ns, name: reads.append(name)  # type: ignore[method-assign]
    w.reconcile()
    w.run(1)
    w.reconcile()
    assert w.status["phase"] == Phase.RUNNING and reads == []
    assert "kueue.x-k8s.io/managed" not in w.kube.pod(NS, pod(1))["metadata"]["labels"]
    w.kube.remove_pod(NS, pod(1))  # a vanished pod of an unqueued job: no Workload to ask about
    w.reconcile()
    assert Reason.POD_MISSING in w.reasons() and reads == []
