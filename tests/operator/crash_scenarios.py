"""Job lives for the crash-point tests: what the world does (pods scheduled, running, finishing,
vanishing; a user suspending or resuming; time passing), step by step, and where each should end.

After every step the harness reconciles until a pass writes nothing, so every step finds the
pods the previous ones made. Steps name pods by attempt number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_contract import TrainerResult, encode_result

from tests.operator.fake_kube import checkpointed, forbidden, kueue_admit, kueue_preempt, kueue_says
from tests.operator.reconcile_kit import NAME, NS, SUCCESS, World, pod

Step = Callable[[World], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    phase: str | None  # where the job ends (None: it is deleted)
    reason: str = ""
    failed: int = 0  # failedAttempts at the end
    spec: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the operator's settings (OperatorConfig)


def run(attempt: int) -> Step:
    return lambda w: w.run(attempt)


def succeed(attempt: int) -> Step:
    return lambda w: w.succeed(attempt)


def fail(attempt: int, code: int = 143) -> Step:
    return lambda w: w.fail(attempt, code)


def data_error(attempt: int) -> Step:
    message = encode_result(TrainerResult(exitCode=3, reason="DataError", message="train_list.txt line 9"))
    return lambda w: w.fail(attempt, 3, message)


def evict(attempt: int) -> Step:
    return lambda w: w.kube.finish(NS, pod(attempt), 137, pod_reason="Evicted", pod_message="node pressure")


def vanish(attempt: int) -> Step:
    return lambda w: w.kube.remove_pod(NS, pod(attempt))


GPUS = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."


def unschedulable(attempt: int) -> Step:
    return lambda w: w.kube.unschedulable(NS, pod(attempt), GPUS)


def image_pull_error(attempt: int) -> Step:
    return lambda w: w.kube.waiting(NS, pod(attempt), "ImagePullBackOff", 'Back-off pulling image "x"')


def wait(seconds: float) -> Step:
    return lambda w: w.clock.advance(seconds)


def suspend(value: bool) -> Step:
    return lambda w: w.kube.update_spec(NS, NAME, runPolicy={"suspend": value})


def refuse(message: str | None, allowed: bool = True) -> Step:
    def step(w: World) -> None:
        w.kube.admission = (lambda p: forbidden(message, name=p["metadata"]["name"])) if message else None
        w.kube.allowed = lambda verb, resource, namespace: allowed

    return step


def queued(w: World) -> None:
    """The job names a Kueue LocalQueue, and Kueue manages the namespace (fake_kube's webhook)."""
    w.kube.kueue_namespaces.add(NS)
    w.kube.job(NS, NAME)["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}


NO_QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu"


def kueue_waits(attempt: int) -> Step:
    return lambda w: kueue_says(w.kube, NS, pod(attempt), "Pending", NO_QUOTA)


def admit(attempt: int) -> Step:
    return lambda w: kueue_admit(w.kube, NS, pod(attempt))


def preempt(attempt: int) -> Step:
    return lambda w: kueue_preempt(w.kube, NS, pod(attempt), "Preempted to accommodate a workload", hold=True)


def stopped(attempt: int) -> Step:
    return lambda w: checkpointed(w.kube, NS, pod(attempt))


# Multi-node lives (GANG: 2 ranks x 8 GPUs): steps that name the ranks' pods.
GANG = {"resources": {"nodes": 2, "gpus": 8}}


def rank(attempt: int, r: int) -> str:
    return f"{pod(attempt)}-rank-{r}"


def ranks_run(attempt: int, nodes: int = 2) -> Step:
    return lambda w: [w.kube.run(NS, rank(attempt, r)) for r in range(nodes)] and None


def rank_runs(attempt: int, r: int) -> Step:
    return lambda w: w.kube.run(NS, rank(attempt, r))


def rank_exits(attempt: int, r: int, code: int, message: str = "") -> Step:
    """Rank r's container ends (rank 0 succeeding writes the trainer's result)."""
    text = message or (SUCCESS if code == 0 and r == 0 else "")
    return lambda w: w.kube.finish(NS, rank(attempt, r), code, text)


def ranks_exit(attempt: int, code: int, nodes: int = 2) -> Step:
    """Every rank ends with `code` at the same moment (a collective failure seen by all)."""
    return lambda w: [rank_exits(attempt, r, code)(w) for r in range(nodes)] and None


def rank_vanishes(attempt: int, r: int) -> Step:
    return lambda w: w.kube.remove_pod(NS, rank(attempt, r))


def rank_unschedulable(attempt: int, r: int) -> Step:
    return lambda w: w.kube.unschedulable(NS, rank(attempt, r), GPUS)


def ranks_admit(attempt: int, nodes: int = 2) -> Step:
    return lambda w: [kueue_admit(w.kube, NS, rank(attempt, r)) for r in range(nodes)] and None


def ranks_preempt(attempt: int, nodes: int = 2) -> Step:
    message = "Preempted to accommodate a workload"
    return lambda w: (
        [kueue_preempt(w.kube, NS, rank(attempt, r), message, hold=True) for r in range(nodes)] and None
    )


def ranks_stopped(attempt: int, nodes: int = 2) -> Step:
    return lambda w: [checkpointed(w.kube, NS, rank(attempt, r)) for r in range(nodes)] and None


def nothing(w: World) -> None:
    """Just reconcile (the job's creation)."""


QUOTA = 'pods "x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, used: 8'
RBAC = 'pods is forbidden: User "system:serviceaccount:pfo:pfo" cannot create resource "pods" in API group ""'
PSA = 'pods "x" is forbidden: violates PodSecurity "restricted:latest": restricted volume types'

SCENARIOS = (
    Scenario("success", (nothing, run(1), succeed(1)), "Succeeded", "Completed"),
    Scenario(
        "transient-failure-then-success",
        (nothing, run(1), fail(1), wait(10), run(2), succeed(2)),
        "Succeeded",
        "Completed",
        failed=1,
    ),
    Scenario(
        "backoff-limit-exceeded",
        (nothing, run(1), fail(1, 75), wait(10), run(2), fail(2, 75)),
        "Failed",
        "BackoffLimitExceeded",
        failed=2,
        spec={"runPolicy": {"backoffLimit": 1}},
    ),
    Scenario("permanent-failure", (nothing, run(1), data_error(1)), "Failed", "DataError", failed=1),
    Scenario(
        "evicted-then-success",
        (nothing, run(1), evict(1), wait(10), succeed(2)),
        "Succeeded",
        "Completed",
        failed=1,
    ),
    Scenario(
        "pod-vanishes-then-success",
        (nothing, run(1), vanish(1), wait(10), run(2), succeed(2)),
        "Succeeded",
        "Completed",
        failed=1,
    ),
    Scenario(
        "failed-pod-deleted-still-counts",
        (nothing, fail(1), vanish(1), wait(10), fail(2)),
        "Failed",
        "BackoffLimitExceeded",
        failed=2,
        spec={"runPolicy": {"backoffLimit": 1}},
    ),
    Scenario(
        "suspend-while-running-then-resume",
        (nothing, run(1), suspend(True), wait(60), suspend(False), run(2), succeed(2)),
        "Succeeded",
        "Completed",
    ),
    Scenario(
        "created-suspended-then-resumed",
        (nothing, wait(60), suspend(False), run(1), succeed(1)),
        "Succeeded",
        "Completed",
        spec={"runPolicy": {"backoffLimit": 2, "suspend": True}},
    ),
    Scenario(
        "suspend-during-back-off",
        (nothing, fail(1), suspend(True), wait(60), suspend(False), run(2), succeed(2)),
        "Succeeded",
        "Completed",
        failed=1,
    ),
    Scenario(
        "suspend-while-waiting-for-gpus",
        (nothing, unschedulable(1), suspend(True), suspend(False), run(2), succeed(2)),
        "Succeeded",
        "Completed",
    ),
    Scenario(
        "deadline-exceeded",
        (nothing, run(1), wait(120)),
        "Failed",
        "DeadlineExceeded",
        spec={"runPolicy": {"backoffLimit": 2, "activeDeadlineSeconds": 100}},
    ),
    Scenario(
        "waits-for-gpus-then-runs",
        (nothing, unschedulable(1), wait(7200), run(1), succeed(1)),
        "Succeeded",
        "Completed",
    ),
    Scenario(
        "cannot-start",
        (nothing, unschedulable(1), wait(300), image_pull_error(1), wait(300), wait(301)),
        "Failed",
        "ImagePullBackOff",
    ),
    Scenario(
        "quota-full-then-room",
        (refuse(QUOTA), nothing, wait(900), refuse(None), wait(300), run(1), succeed(1)),
        "Succeeded",
        "Completed",
    ),
    Scenario(
        "missing-permission-then-fixed",
        (refuse(RBAC, allowed=False), nothing, wait(3600), refuse(None), wait(300), run(1), succeed(1)),
        "Succeeded",
        "Completed",
    ),
    Scenario(
        "kueue-queued-then-admitted",
        (queued, nothing, kueue_waits(1), wait(3600), admit(1), run(1), succeed(1)),
        "Succeeded",
        "Completed",
        spec={"runPolicy": {"backoffLimit": 0, "activeDeadlineSeconds": 600}},
    ),
    Scenario(
        "kueue-preempted-then-resumed",
        (queued, admit(1), run(1), preempt(1), wait(5), stopped(1), kueue_waits(2), admit(2), succeed(2)),
        "Succeeded",
        "Completed",
        spec={"runPolicy": {"backoffLimit": 0}},
    ),
    Scenario(
        "kueue-suspended-while-queued",
        (queued, kueue_waits(1), suspend(True), suspend(False), admit(2), run(2), succeed(2)),
        "Succeeded",
        "Completed",
    ),
    Scenario("pod-security-refusal", (refuse(PSA), nothing), "Failed", "PodSecurityViolation"),
    Scenario(
        "host-path-refused",
        (nothing,),
        "Failed",
        "InvalidSpec",
        spec={"dataset": {"volume": {"hostPath": {"path": "/srv/data"}}, "numClasses": 10}},
    ),
    # --- multi-node jobs: an attempt is all its ranks
    Scenario(
        "gang-success",
        (nothing, ranks_run(1), rank_exits(1, 1, 0), rank_exits(1, 0, 0)),
        "Succeeded",
        "Completed",
        spec=GANG,
    ),
    Scenario(
        "gang-coscheduled-success",
        (nothing, ranks_run(1), ranks_exit(1, 0)),
        "Succeeded",
        "Completed",
        spec=GANG,
        config={"gang_scheduler": "coscheduling"},
    ),
    Scenario(
        "gang-rank-0-succeeds-first",
        (nothing, ranks_run(1), rank_exits(1, 0, 0)),
        "Succeeded",
        "Completed",
        spec=GANG,
    ),
    Scenario(
        "gang-rank-1-killed-then-success",
        (nothing, ranks_run(1), rank_exits(1, 1, 137), wait(10), ranks_run(2), ranks_exit(2, 0)),
        "Succeeded",
        "Completed",
        failed=1,
        spec=GANG,
    ),
    Scenario(
        "gang-all-ranks-fail-counted-once",
        (nothing, ranks_run(1), ranks_exit(1, 143), wait(10), ranks_run(2), ranks_exit(2, 143)),
        "Failed",
        "BackoffLimitExceeded",
        failed=2,
        spec={**GANG, "runPolicy": {"backoffLimit": 1}},
    ),
    Scenario(
        "gang-permanent-failure-of-rank-1",
        (nothing, ranks_run(1), rank_exits(1, 1, 3)),
        "Failed",
        "DataError",
        failed=1,
        spec=GANG,
    ),
    Scenario(
        "gang-rank-vanishes-then-success",
        (nothing, ranks_run(1), rank_vanishes(1, 1), wait(10), ranks_run(2), ranks_exit(2, 0)),
        "Succeeded",
        "Completed",
        failed=1,
        spec=GANG,
    ),
    Scenario(
        "gang-cannot-be-placed-whole",
        (nothing, rank_runs(1, 0), rank_unschedulable(1, 1), wait(200), wait(101)),
        "Failed",
        "Unschedulable",
        spec={
            **GANG,
            "runPolicy": {"backoffLimit": 2, "schedulingTimeoutSeconds": 0, "startTimeoutSeconds": 300},
        },
    ),
    Scenario(
        "gang-suspended-while-running-then-resumed",
        (nothing, ranks_run(1), suspend(True), wait(60), suspend(False), ranks_run(2), ranks_exit(2, 0)),
        "Succeeded",
        "Completed",
        spec=GANG,
    ),
    Scenario(
        "gang-kueue-queued-then-admitted",
        (queued, nothing, kueue_waits(1), wait(600), ranks_admit(1), ranks_run(1), ranks_exit(1, 0)),
        "Succeeded",
        "Completed",
        spec=GANG,
    ),
    Scenario(
        "gang-kueue-preempted-then-resumed",
        (
            queued,
            ranks_admit(1),
            ranks_run(1),
            ranks_preempt(1),
            wait(5),
            ranks_stopped(1),
            ranks_admit(2),
            ranks_exit(2, 0),
        ),
        "Succeeded",
        "Completed",
        spec={**GANG, "runPolicy": {"backoffLimit": 0}},
    ),
    Scenario(
        "ttl-after-success",
        (nothing, run(1), succeed(1), wait(30)),
        None,
        spec={"runPolicy": {"backoffLimit": 2, "ttlSecondsAfterFinished": 30}},
    ),
    Scenario(
        "ttl-zero",
        (nothing, data_error(1)),
        None,
        spec={"runPolicy": {"backoffLimit": 2, "ttlSecondsAfterFinished": 0}},
    ),
)
