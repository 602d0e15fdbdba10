"""The reconciler's decision, branch by branch, against the in-memory fake API and a fake clock
(table-driven, in the style of the Kubernetes Job controller's sync tests).

Each case gives the job's status, its pods (and since when they are in their state), the time of
the pass, and what one pass must do: the status fields it leaves, the pods it creates and
deletes, the Events it posts and when it asks to be looked at again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from finetune_contract import TrainerResult, encode_result, format_progress
from finetune_operator.api import FINISHED
from finetune_operator.config import OperatorConfig
from finetune_operator.controller import RESYNC_SECONDS, WAIT_FOR_TERMINATION, Reconciler
from finetune_operator.job_status import now_iso
from finetune_operator.metrics import Metrics
from finetune_operator.pod import render_pod

from tests.operator.fake_kube import T0, FakeKube, api_error, forbidden
from tests.operator.reconcile_kit import CONFIG, NAME, NS, SUCCESS, new_job, pod

ANY = object()  # the requeue does not matter
NOW = 1000.0  # the pass runs this many seconds after T0 (the job's creation)
GPUS = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."
QUOTA = f'pods "{pod(1)}" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1'
PSA = f'pods "{pod(1)}" is forbidden: violates PodSecurity "restricted:latest": restricted volume types'
RBAC = 'pods is forbidden: User "system:serviceaccount:pfo:pfo" cannot create resource "pods" in API group ""'
WEBHOOK = f'admission webhook "gpu-policy.example.com" denied the request: pod {pod(1)} has no team label'
DATA_ERROR = encode_result(
    TrainerResult(exitCode=3, reason="DataError", message="val_list.txt line 2: no image")
)
PodState = Callable[[FakeKube, str], None]


def at(seconds: float) -> str:
    return now_iso(T0 + timedelta(seconds=seconds))


# What a pod shows: functions of the fake API and the pod's name.
def pending(kube: FakeKube, name: str) -> None:
    pass


def unschedulable(message: str = GPUS) -> PodState:
    return lambda kube, name: kube.unschedulable(NS, name, message)


def waiting(reason: str, message: str = "") -> PodState:
    return lambda kube, name: kube.waiting(NS, name, reason, message)


def scheduled(kube: FakeKube, name: str) -> None:
    kube.schedule(NS, name)


def running(kube: FakeKube, name: str) -> None:
    kube.run(NS, name)


def exited(code: int, message: str = "", **pod_status: str) -> PodState:
    return lambda kube, name: kube.finish(NS, name, code, message, **pod_status)


def deleting(kube: FakeKube, name: str) -> None:
    kube.run(NS, name)
    kube.pod(NS, name)["metadata"]["deletionTimestamp"] = now_iso(kube.clock())


@dataclass
class Case:
    name: str
    status: dict[str, Any] = field(default_factory=dict)
    pods: dict[int, tuple[PodState, float]] = field(default_factory=dict)  # attempt: (state, since)
    spec: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    refusal: Any = None  # what pod creation runs into (an ApiException), if anything
    allowed: bool = True  # what a SelfSubjectAccessReview answers
    log: str = ""  # the trainer's log (attempt 1)
    # What the pass does
    expect: dict[str, Any] = field(default_factory=dict)  # status fields after the pass (None: absent)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    events: list[str] | None = None  # None: not checked
    requeue: Any = ANY
    job_deleted: bool = False


RUNNING_1 = {"phase": "Running", "reason": "Running", "attempts": 1, "podName": pod(1), "startTime": at(0)}
ENDED_1 = {"attempts": 1, "endedAttempts": 1, "startTime": at(0)}

CASES = [
    # --- starting
    Case(
        "first attempt",
        expect={
            "phase": "Pending",
            "reason": "PodCreated",
            "attempts": 1,
            "podName": pod(1),
            "startTime": at(NOW),
        },
        created=[pod(1)],
        events=["PodCreated"],
        requeue=RESYNC_SECONDS,
    ),
    Case(
        "adopts a pod created before a crash",
        pods={1: (pending, 990)},
        expect={"attempts": 1, "podName": pod(1), "phase": "Pending", "reason": "PodPending"},
        events=["PodCreated"],  # pending, on its way: no Event of its own
    ),
    Case(
        "adopts the resumed attempt's pod as the resumed attempt",
        status={"phase": "Suspended", "reason": "Suspended", **ENDED_1},
        pods={2: (running, 990)},
        expect={"attempts": 2, "endedAttempts": 1, "phase": "Running", "startTime": at(NOW)},
        events=["PodCreated", "Running"],
    ),
    Case(
        "a pod of an earlier job with the same name is not adopted",
        pods={1: (running, 900)},  # the harness gives it another owner (see test)
        refusal=api_error(409, "AlreadyExists", f'pods "{pod(1)}" already exists'),
        expect={"phase": "Pending", "reason": "PodExists", "attempts": None},
        requeue=WAIT_FOR_TERMINATION,
    ),
    # --- running and finishing
    Case(
        "running",
        status={**RUNNING_1, "phase": "Pending", "reason": "PodCreated"},
        pods={1: (running, 900)},
        expect={"phase": "Running", "reason": "Running"},
        events=["Running"],
        requeue=CONFIG.progress_poll_seconds,
    ),
    Case(
        "progress from the trainer's log",
        status=RUNNING_1,
        pods={1: (running, 900)},
        log="noise\n" + format_progress(3, 20, top1=0.5, loss=1.25) + "\n",
        expect={
            "progress": {
                "epoch": 3,
                "epochs": 20,
                "display": "3/20",
                "top1": 0.5,
                "loss": 1.25,
                "updateTime": at(NOW),
            }
        },
    ),
    Case(
        "success",
        status=RUNNING_1,
        pods={1: (exited(0, SUCCESS), 990)},
        expect={"phase": "Succeeded", "reason": "Completed", "endedAttempts": 1, "completionTime": at(NOW)},
        events=["Completed"],
        requeue=None,
    ),
    Case(
        "success with a TTL",
        status=RUNNING_1,
        pods={1: (exited(0, SUCCESS), 990)},
        spec={"runPolicy": {"ttlSecondsAfterFinished": 60}},
        expect={"phase": "Succeeded"},
        requeue=60,
    ),
    Case(
        "a permanent failure fails the job at once",
        status=RUNNING_1,
        pods={1: (exited(3, DATA_ERROR), 990)},
        expect={"phase": "Failed", "reason": "DataError", "failedAttempts": 1, "endedAttempts": 1},
        events=["DataError"],
        requeue=None,
    ),
    Case(
        "a transient failure is retried after the back-off",
        status=RUNNING_1,
        pods={1: (exited(143), 990)},
        expect={
            "phase": "Pending",
            "reason": "Retrying",
            "failedAttempts": 1,
            "endedAttempts": 1,
            "nextAttemptTime": at(NOW + 10),
        },
        events=["Retrying"],
        requeue=10,
    ),
    Case(
        "the back-off doubles with each failure",
        status={**RUNNING_1, "attempts": 2, "podName": pod(2), "endedAttempts": 1, "failedAttempts": 1},
        pods={1: (exited(143), 100), 2: (exited(143), 990)},
        expect={"failedAttempts": 2, "endedAttempts": 2, "nextAttemptTime": at(NOW + 20)},
        requeue=20,
    ),
    Case(
        "an evicted pod is a transient failure",
        status=RUNNING_1,
        pods={1: (exited(137, pod_reason="Evicted", pod_message="The node was low on memory."), 990)},
        expect={"reason": "Retrying", "failedAttempts": 1},
    ),
    Case(
        "an OOM-killed trainer is a transient failure",
        status=RUNNING_1,
        pods={1: (exited(137, reason="OOMKilled"), 990)},
        expect={"reason": "Retrying", "failedAttempts": 1},
    ),
    Case(
        "the back-off limit",
        status={**RUNNING_1, "attempts": 3, "podName": pod(3), "endedAttempts": 2, "failedAttempts": 2},
        pods={3: (exited(75), 990)},
        spec={"runPolicy": {"backoffLimit": 2}},
        expect={"phase": "Failed", "reason": "BackoffLimitExceeded", "failedAttempts": 3, "endedAttempts": 3},
        events=["BackoffLimitExceeded"],
    ),
    Case(
        "a judged failure is not counted again",
        status={
            **ENDED_1,
            "phase": "Pending",
            "reason": "Retrying",
            "failedAttempts": 1,
            "nextAttemptTime": at(NOW + 5),
        },
        pods={1: (exited(143), 900)},
        expect={"failedAttempts": 1, "endedAttempts": 1},
        requeue=5,
    ),
    Case(
        "the next attempt once the back-off is over",
        status={
            **ENDED_1,
            "phase": "Pending",
            "reason": "Retrying",
            "failedAttempts": 1,
            "nextAttemptTime": at(NOW),
        },
        pods={1: (exited(143), 900)},
        expect={
            "attempts": 2,
            "podName": pod(2),
            "nextAttemptTime": None,
            "reason": "PodCreated",
            "startTime": at(0),
        },
        created=[pod(2)],
        events=["PodCreated"],
    ),
    Case(
        "a judged failure whose pod was deleted is still counted",
        status={
            **ENDED_1,
            "phase": "Pending",
            "reason": "Retrying",
            "failedAttempts": 1,
            "nextAttemptTime": at(NOW),
        },
        expect={"failedAttempts": 1, "attempts": 2},
        created=[pod(2)],
        events=["PodCreated"],
    ),
    Case(
        "a pod that vanished is a transient failure, retried after the back-off",
        status=RUNNING_1,
        expect={"phase": "Pending", "reason": "Retrying", "failedAttempts": 1, "endedAttempts": 1},
        events=["PodMissing", "Retrying"],
        requeue=10,
    ),
    Case(
        "a vanished pod beyond the back-off limit fails the job",
        status=RUNNING_1,
        spec={"runPolicy": {"backoffLimit": 0}},
        expect={"phase": "Failed", "reason": "BackoffLimitExceeded", "failedAttempts": 1},
    ),
    Case(
        "a pod someone deletes is judged once it has terminated",
        status=RUNNING_1,
        pods={1: (deleting, 990)},
        expect={"phase": "Running", "failedAttempts": None},
        requeue=WAIT_FOR_TERMINATION,
    ),
    Case(
        "a pod of an ended attempt is deleted, and the next attempt waits for it to go",
        status={**ENDED_1, "phase": "Suspended", "reason": "Suspended"},
        pods={1: (running, 900)},
        deleted=[pod(1)],
        requeue=WAIT_FOR_TERMINATION,
    ),
    # --- deadlines
    Case(
        "the active deadline fails the job and deletes the pod after saying so",
        status=RUNNING_1,
        pods={1: (running, 900)},
        spec={"runPolicy": {"activeDeadlineSeconds": 600}},
        expect={"phase": "Failed", "reason": "DeadlineExceeded", "endedAttempts": 1, "failedAttempts": None},
        deleted=[pod(1)],
        events=["DeadlineExceeded"],
    ),
    Case(
        "the deadline bounds the next look",
        status={**RUNNING_1, "startTime": at(NOW - 90)},
        pods={1: (running, 900)},
        spec={"runPolicy": {"activeDeadlineSeconds": 100}},
        requeue=10,
    ),
    # --- waiting
    Case(
        "waiting for GPUs has no limit by default",
        status={**RUNNING_1, "phase": "Pending", "reason": "PodCreated"},
        pods={1: (unschedulable(), 10)},
        expect={
            "phase": "Pending",
            "reason": "Unschedulable",
            "message": f"waiting for capacity: {GPUS}",
            "waiting": {"kind": "Capacity", "reason": "Unschedulable", "since": at(10)},
        },
        events=["Unschedulable"],
        requeue=RESYNC_SECONDS,
    ),
    Case(
        "waiting for GPUs within a scheduling timeout",
        status=RUNNING_1,
        pods={1: (unschedulable(), 10)},
        spec={"runPolicy": {"schedulingTimeoutSeconds": 1200}},
        expect={
            "waiting": {"kind": "Capacity", "reason": "Unschedulable", "since": at(10), "deadline": at(1210)}
        },
        requeue=210,
    ),
    Case(
        "past the scheduling timeout",
        status=RUNNING_1,
        pods={1: (unschedulable(), 10)},
        config={"scheduling_timeout_seconds": 900},
        expect={"phase": "Failed", "reason": "Unschedulable", "waiting": None, "endedAttempts": 1},
        deleted=[pod(1)],
    ),
    Case(
        "a missing claim cannot be waited for",
        status=RUNNING_1,
        pods={
            1: (unschedulable('0/5 nodes are available: persistentvolumeclaim "flowers102" not found.'), 700)
        },
        expect={
            "phase": "Pending",
            "waiting": {"kind": "Start", "reason": "Unschedulable", "since": at(700), "deadline": at(1300)},
        },
        requeue=300,
    ),
    Case(
        "an image that cannot be pulled, within the start timeout",
        status=RUNNING_1,
        pods={1: (waiting("ErrImagePull", "manifest unknown"), 900)},
        expect={
            "phase": "Pending",
            "reason": "ErrImagePull",
            "message": f"pod {pod(1)} cannot start (ErrImagePull): manifest unknown",
            "waiting": {"kind": "Start", "reason": "ErrImagePull", "since": at(900), "deadline": at(1500)},
        },
        requeue=500,
    ),
    Case(
        "an image that cannot be pulled, past the start timeout",
        status=RUNNING_1,
        pods={1: (waiting("ImagePullBackOff", 'Back-off pulling image "x"'), 300)},
        expect={"phase": "Failed", "reason": "ImagePullBackOff", "endedAttempts": 1, "failedAttempts": None},
        deleted=[pod(1)],
    ),
    Case(
        "a start that never comes fails as StartTimeout",
        status=RUNNING_1,
        pods={1: (scheduled, 300)},
        expect={"phase": "Failed", "reason": "StartTimeout"},
        deleted=[pod(1)],
    ),
    Case(
        "the job's own start timeout wins",
        status=RUNNING_1,
        pods={1: (scheduled, 300)},
        spec={"runPolicy": {"startTimeoutSeconds": 3600}},
        expect={"phase": "Pending", "reason": "ContainerCreating"},
        requeue=2900,
    ),
    # --- suspension
    Case(
        "suspending deletes the running pod; the attempt ends without a failure",
        status=RUNNING_1,
        pods={1: (running, 900)},
        spec={"runPolicy": {"suspend": True}},
        expect={"phase": "Suspended", "reason": "Suspended", "endedAttempts": 1, "failedAttempts": None},
        deleted=[pod(1)],
        events=["Suspended"],
        requeue=None,
    ),
    Case(
        "created suspended: no pod",
        spec={"runPolicy": {"suspend": True}},
        expect={"phase": "Suspended", "attempts": None},
        events=["Suspended"],
        requeue=None,
    ),
    Case(
        "a failure before the suspension took effect counts",
        status=RUNNING_1,
        pods={1: (exited(143), 990)},
        spec={"runPolicy": {"suspend": True}},
        expect={"phase": "Suspended", "failedAttempts": 1, "endedAttempts": 1},
    ),
    Case(
        "resuming starts a new attempt with a fresh deadline",
        status={**ENDED_1, "phase": "Suspended", "reason": "Suspended"},
        expect={"attempts": 2, "phase": "Pending", "reason": "PodCreated", "startTime": at(NOW)},
        created=[pod(2)],
    ),
    Case(
        "resuming waits for the suspended attempt's pod to go",
        status={**ENDED_1, "phase": "Suspended", "reason": "Suspended"},
        pods={1: (deleting, 990)},
        expect={"attempts": 1},
        requeue=WAIT_FOR_TERMINATION,
    ),
    # --- refused pods
    Case(
        "a full quota is waited for",
        refusal=forbidden(QUOTA, name=pod(1)),
        expect={
            "phase": "Pending",
            "reason": "QuotaExceeded",
            "attempts": None,
            "waiting": {"kind": "Capacity", "reason": "QuotaExceeded", "since": at(NOW)},
        },
        events=["QuotaExceeded"],
        requeue=CONFIG.backoff_base_seconds,
    ),
    Case(
        "a full quota is tried again further apart the longer it lasts",
        status={
            "phase": "Pending",
            "reason": "QuotaExceeded",
            "waiting": {"kind": "Capacity", "reason": "QuotaExceeded", "since": at(NOW - 100)},
        },
        refusal=forbidden(QUOTA, name=pod(1)),
        expect={"waiting": {"kind": "Capacity", "reason": "QuotaExceeded", "since": at(NOW - 100)}},
        events=[],
        requeue=100,
    ),
    Case(
        "a Pod Security refusal fails at once",
        refusal=forbidden(PSA, name=pod(1)),
        expect={"phase": "Failed", "reason": "PodSecurityViolation"},
    ),
    Case(
        "a missing permission says so and has no limit",
        status={
            "phase": "Pending",
            "reason": "MissingPermission",
            "waiting": {"kind": "Permission", "reason": "MissingPermission", "since": at(0)},
        },
        refusal=forbidden(RBAC),
        allowed=False,
        expect={
            "phase": "Pending",
            "reason": "MissingPermission",
            "waiting": {"kind": "Permission", "reason": "MissingPermission", "since": at(0)},
        },
        requeue=CONFIG.backoff_max_seconds,
    ),
    Case(
        "an admission webhook's refusal waits within the start timeout",
        refusal=forbidden(WEBHOOK, name=pod(1)),
        expect={
            "phase": "Pending",
            "reason": "PodForbidden",
            "waiting": {
                "kind": "Start",
                "reason": "PodForbidden",
                "since": at(NOW),
                "deadline": at(NOW + 600),
            },
        },
    ),
    Case(
        "an admission webhook's refusal past the start timeout",
        status={
            "phase": "Pending",
            "reason": "PodForbidden",
            "waiting": {"kind": "Start", "reason": "PodForbidden", "since": at(0)},
        },
        refusal=forbidden(WEBHOOK, name=pod(1)),
        expect={"phase": "Failed", "reason": "PodForbidden"},
    ),
    Case(
        "an invalid pod fails at once",
        refusal=api_error(
            422, "Invalid", f'Pod "{pod(1)}" is invalid: spec.tolerations[0].effect: Invalid value'
        ),
        expect={"phase": "Failed", "reason": "PodInvalid"},
    ),
    # --- specs this installation refuses
    Case(
        "hostPath volumes are refused unless allowed",
        status=RUNNING_1,
        pods={1: (running, 900)},
        spec={"output": {"volume": {"hostPath": {"path": "/srv/out"}}}},
        expect={"phase": "Failed", "reason": "InvalidSpec"},
        deleted=[pod(1)],
    ),
    Case(
        "a multi-node job starts all its ranks at once",
        spec={"resources": {"nodes": 2, "gpus": 8}},
        expect={
            "phase": "Pending",
            "reason": "PodCreated",
            "attempts": 1,
            "podName": f"{pod(1)}-rank-0",
            "ranks": {"attempt": 1, "pending": 2, "running": 0, "succeeded": 0, "failed": 0},
        },
        created=[f"{pod(1)}-rank-0", f"{pod(1)}-rank-1"],
        events=["PodCreated"],
    ),
    Case(
        "hostPath volumes where the installation allows them",
        spec={"output": {"volume": {"hostPath": {"path": "/srv/out"}}}},
        config={"allow_host_path": True},
        created=[pod(1)],
    ),
    # --- finished jobs
    Case(
        "a finished job's leftover pod is deleted",
        status={"phase": "Failed", "reason": "DeadlineExceeded", "completionTime": at(900), **ENDED_1},
        pods={1: (running, 900)},
        deleted=[pod(1)],
        requeue=None,
    ),
    Case(
        "the TTL is over: the job is deleted",
        status={"phase": "Succeeded", "reason": "Completed", "completionTime": at(0), **ENDED_1},
        spec={"runPolicy": {"ttlSecondsAfterFinished": 100}},
        job_deleted=True,
        requeue=None,
    ),
    Case(
        "the TTL is not over yet",
        status={"phase": "Succeeded", "reason": "Completed", "completionTime": at(900), **ENDED_1},
        spec={"runPolicy": {"ttlSecondsAfterFinished": 300}},
        requeue=200,
    ),
]


def build(case: Case) -> tuple[FakeKube, Reconciler]:
    config = OperatorConfig(**{**CONFIG.__dict__, **case.config})
    kube = FakeKube()
    spec = copy.deepcopy(case.spec)
    if "runPolicy" in spec:
        spec["runPolicy"] = {"backoffLimit": 2, **spec["runPolicy"]}
    job = kube.add_job(new_job(**spec))
    if case.status:
        job["status"] = copy.deepcopy(case.status)
    for attempt, (state, since) in sorted(case.pods.items()):
        kube.clock.now = T0 + timedelta(seconds=since)
        manifest = render_pod(job, attempt, OperatorConfig(allow_host_path=True))
        if case.name.startswith("a pod of an earlier job"):
            manifest["metadata"]["ownerReferences"][0]["uid"] = "an-earlier-job"
        kube.create_pod(manifest)
        state(kube, manifest["metadata"]["name"])
    if case.log:
        kube.logs[(NS, pod(1))] = case.log
    kube.admission = (lambda p: case.refusal) if case.refusal is not None else None
    kube.allowed = lambda verb, resource, namespace: case.allowed
    kube.clock.now = T0 + timedelta(seconds=NOW)
    kube.writes.clear()
    kube.created.clear()
    return kube, Reconciler(kube, config, Metrics(), clock=kube.clock)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_pass(case: Case) -> None:
    kube, reconciler = build(case)
    before = copy.deepcopy(kube.job(NS, NAME))
    again = reconciler.reconcile(NS, NAME)
    assert kube.created == case.created
    assert [w.target for w in kube.writes if w.verb == "delete_pod"] == case.deleted
    if case.events is not None:
        assert [w.target for w in kube.writes if w.verb == "event"] == case.events
    if case.job_deleted:
        assert (NS, NAME) not in kube.jobs
        return
    status = kube.status(NS, NAME)
    for key, value in case.expect.items():
        assert status.get(key) == value, f"status.{key}: {status.get(key)!r}, expected {value!r}"
    if case.requeue is not ANY:
        expected = pytest.approx(case.requeue) if case.requeue is not None else None
        assert again == expected, f"asked to be looked at again after {again}s, expected {case.requeue}"
    # Deletions come after the status that says why.
    verbs = [w.verb for w in kube.writes]
    if "delete_pod" in verbs and "patch_status" in verbs:
        assert verbs.index("patch_status") < verbs.index("delete_pod")
    if case.events:
        # Events go first (none lost to a crash), but for the job's last transition, which
        # follows the status (a restart posts it again from the status: test_crash_points.py).
        wrote = verbs.index("patch_status") if "patch_status" in verbs else len(verbs)
        after = [w.target for w in kube.writes[wrote:] if w.verb == "event"]
        finished = (before.get("status") or {}).get("phase") not in FINISHED and status.get(
            "phase"
        ) in FINISHED
        assert after == ([status["reason"]] if finished else []), kube.writes
        if finished and "delete_pod" in verbs:
            assert wrote < verbs.index("event", wrote) < verbs.index("delete_pod")
    assert kube.job(NS, NAME)["metadata"]["uid"] == before["metadata"]["uid"]


def test_a_job_being_deleted_is_left_alone():
    kube, reconciler = build(Case("x", status=RUNNING_1, pods={1: (running, 900)}))
    kube.job(NS, NAME)["metadata"]["deletionTimestamp"] = at(990)
    assert reconciler.reconcile(NS, NAME) is None
    assert kube.writes == []


def test_a_job_that_is_gone_is_forgotten():
    kube, reconciler = build(Case("x"))
    reconciler.reconcile(NS, NAME)
    reconciler.metrics.observe_job(NS, NAME, kube.job(NS, NAME)["metadata"]["uid"], "Pending")
    kube.delete_job_now(NS, NAME)
    assert reconciler.reconcile(NS, NAME) is None
    assert reconciler.metrics.registry.get_sample_value("finetune_jobs", {"phase": "Pending"}) == 0


def test_the_progress_poll_is_throttled_per_job():
    case = next(c for c in CASES if c.name == "progress from the trainer's log")
    kube, reconciler = build(case)
    reads = []
    tail = kube.pod_log_tail
    kube.pod_log_tail = lambda *args: reads.append(args) or tail(*args)
    reconciler.reconcile(NS, NAME)
    reconciler.reconcile(NS, NAME)
    kube.clock.advance(CONFIG.progress_poll_seconds)
    reconciler.reconcile(NS, NAME)
    assert len(reads) == 2
    assert (
        reconciler.metrics.registry.get_sample_value("finetune_job_top1", {"namespace": NS, "name": NAME})
        == 0.5
    )


def test_the_first_log_read_comes_a_poll_interval_after_the_pod_started() -> None:
    """A trainer that has just started has printed no progress yet: a read then would be one
    request per new job (in a burst of 1,000, one of about six each) that finds nothing. The
    first read comes a poll interval after the pod's startTime; a pod that has run longer when
    the operator first sees it (after a restart) is read at once."""
    from tests.operator.reconcile_kit import World

    base = CONFIG.progress_poll_seconds
    w = World()
    reads: list[tuple[Any, ...]] = []
    tail = w.kube.pod_log_tail
    w.kube.pod_log_tail = lambda *args: reads.append(args) or tail(*args)
    w.reconcile()
    w.run(1)
    w.kube.logs[(NS, pod(1))] = format_progress(0, 20) + "\n"
    assert w.reconcile() == pytest.approx(base)
    assert (w.status["phase"], reads, w.status.get("progress")) == ("Running", [], None)
    w.clock.advance(base / 2)
    w.reconcile()
    assert reads == []
    w.clock.advance(base / 2)
    w.reconcile()
    assert len(reads) == 1 and w.status["progress"]["display"] == "0/20"

    w.kube.logs[(NS, pod(1))] += format_progress(1, 20, top1=0.5) + "\n"
    w.restart()  # the pace is lost with the process; the pod started a poll interval ago
    w.reconcile()
    assert len(reads) == 2 and w.status["progress"]["display"] == "1/20"


def test_in_a_burst_the_first_pass_only_creates_the_pod_and_the_next_records_it_with_its_step() -> None:
    """While new jobs pile up (`busy`), a new job's first pass sends one request, the pod's POST,
    and asks to be looked at again; the pass after it (here the pod already runs) writes the
    attempt and the running phase in one status patch, with both Events, and counts the
    attempt once. A quiet queue keeps the usual order: PodCreated written by the creating pass."""
    from tests.operator.reconcile_kit import World

    w = World()
    w.busy = True
    assert w.reconcile() == 0.0
    assert [x.verb for x in w.kube.writes] == ["create_pod"]
    assert w.status.get("attempts") is None and w.reasons() == []
    w.run(1)
    w.kube.writes.clear()
    w.reconcile()
    assert sorted(x.verb for x in w.kube.writes) == ["event", "event", "patch_status"]
    assert w.reasons() == ["PodCreated", "Running"]
    assert (w.status["phase"], w.status["attempts"], w.status["podName"]) == ("Running", 1, pod(1))
    assert w.metrics.registry.get_sample_value("finetune_attempts_total") == 1.0

    quiet = World()
    quiet.reconcile()
    assert [x.verb for x in quiet.kube.writes] == ["create_pod", "event", "patch_status"]
    assert (quiet.status["phase"], quiet.reasons()) == ("Pending", ["PodCreated"])


def test_the_spec_is_checked_once_per_version_and_again_after_an_edit(monkeypatch) -> None:
    """Building the trainer's settings (the last check of a spec) runs once per spec version
    (uid, generation), not on every pass; an edit is checked again, and one this installation
    refuses fails the job; a job deleted and created again under the same name is checked anew."""
    import finetune_operator.controller as controller

    from tests.operator.reconcile_kit import World

    built: list[str] = []
    real = controller.trainer_settings

    def counted(job):
        built.append(job["metadata"]["uid"])
        return real(job)

    monkeypatch.setattr(controller, "trainer_settings", counted)
    w = World()
    w.reconcile()
    w.run(1)
    w.reconcile()
    w.reconcile()
    assert w.status["phase"] == "Running" and len(built) == 1
    w.kube.update_spec(NS, NAME, output={"volume": {"hostPath": {"path": "/srv/out"}}})
    w.reconcile()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.output.volume.hostPath" in w.status["message"]
    assert len(built) == 1  # refused before the settings are built

    w.kube.delete_job_now(NS, NAME)
    w.reconciler.forget(NS, NAME)
    w.kube.add_job(new_job())
    w.reconcile()
    w.reconcile()
    assert len(built) == 2 and built[0] != built[1]
