"""What a pod's state means for its attempt (a pure function of the pod as the API server
returns it): still pending and why, running, succeeded with the trainer's result, or failed with
a reason, a message and whether a new attempt may help.

A pending pod either waits for capacity (the scheduler finds no node with room: worth waiting
for) or has a place but cannot start (the kubelet pulls or fails to pull its image, cannot
mount a volume, or a claim does not exist): `PodOutcome.waiting` says which, and `since` when
the pod entered that state, from the pod's own conditions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from finetune_contract import TrainerResult, decode_result, exit_reason, is_transient_exit

from .api import CONTAINER, Reason, Waiting
from .job_status import shorten

# Pod-level reasons (status.reason, or a DisruptionTarget condition) that mean the pod was
# taken away from a healthy trainer: a new attempt may well succeed.
TRANSIENT_POD_REASONS = {
    "Evicted": Reason.EVICTED,
    "Preempting": Reason.PREEMPTED,
    "Preempted": Reason.PREEMPTED,
    "PreemptionByScheduler": Reason.PREEMPTED,
    "PreemptionByKubeScheduler": Reason.PREEMPTED,
    "EvictionByEvictionAPI": Reason.EVICTED,
    "DeletionByTaintManager": Reason.EVICTED,
    "DeletionByPodGC": Reason.NODE_LOST,
    "TerminationByKubelet": Reason.EVICTED,
    "NodeLost": Reason.NODE_LOST,
    "NodeShutdown": Reason.NODE_SHUTDOWN,
    "Shutdown": Reason.NODE_SHUTDOWN,
    "Terminated": Reason.NODE_SHUTDOWN,
    "UnexpectedAdmissionError": Reason.UNEXPECTED_ADMISSION_ERROR,
}


@dataclass(frozen=True)
class PodOutcome:
    """What one attempt's pod shows."""

    phase: str  # the pod's phase: Pending | Running | Succeeded | Failed
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    transient: bool = False  # Failed only: a new attempt may succeed
    result: TrainerResult | None = None  # the trainer's result, when it wrote one
    waiting: str = ""  # Pending: Waiting.CAPACITY or Waiting.START
    since: str = ""  # Pending: when the pod entered that kind of waiting


# Container terminations the kubelet reports when the runtime could not start the program.
CANNOT_START = ("StartError", "ContainerCannotRun")


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER:
            return cs
    return statuses[0] if statuses else {}


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def observe_pod(pod: dict[str, Any]) -> PodOutcome:
    """Classify a pod (as the API server returns it, camelCase dict)."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    container = _trainer_status(pod)
    terminated = (container.get("state") or {}).get("terminated") or {}
    if phase == "Succeeded":
        result = decode_result(terminated.get("message", ""))
        message = (result.message if result else None) or ""
        return PodOutcome("Succeeded", Reason.COMPLETED, shorten(message), 0, result=result)
    if phase == "Failed":
        return _failed(pod, status, terminated)
    if phase == "Running" or (container.get("state") or {}).get("running"):
        return PodOutcome("Running", Reason.RUNNING, "")
    # Pending: say why, in the words of the scheduler or the kubelet.
    created = (pod.get("metadata") or {}).get("creationTimestamp", "")
    scheduled = _condition(pod, "PodScheduled")
    # Placed: the scheduler says so, or a node (its kubelet reports the container) has it.
    placed = scheduled.get("status") == "True" or bool((pod.get("spec") or {}).get("nodeName") or container)
    if not placed:
        reason = scheduled.get("reason") or Reason.UNSCHEDULABLE
        message = shorten(scheduled.get("message", ""))
        # A claim that does not exist will not appear by waiting for capacity.
        kind = Waiting.START if _CLAIM_MISSING.search(message) else Waiting.CAPACITY
        if not scheduled:
            reason, message = Reason.POD_PENDING, "waiting for the scheduler"
        return PodOutcome("Pending", reason, message, waiting=kind, since=_since(scheduled, created))
    since = _since(scheduled, created) if scheduled.get("status") == "True" else created
    waiting = (container.get("state") or {}).get("waiting") or {}
    if waiting.get("reason"):
        message = shorten(waiting.get("message", ""))
        return PodOutcome("Pending", waiting["reason"], message, waiting=Waiting.START, since=since)
    return PodOutcome(
        "Pending", Reason.POD_PENDING, "waiting for the pod to start", waiting=Waiting.START, since=since
    )


# The scheduler's words for a PersistentVolumeClaim that does not exist (its VolumeBinding plugin
# quotes the API's NotFound error); the pod condition carries no structured detail.
_CLAIM_MISSING = re.compile(r'persistentvolumeclaim "[^"]*" not found')


def _since(condition: dict[str, Any], fallback: str) -> str:
    return condition.get("lastTransitionTime") or fallback


def _failed(pod: dict[str, Any], status: dict[str, Any], terminated: dict[str, Any]) -> PodOutcome:
    code = terminated.get("exitCode")
    text = terminated.get("message", "")
    result = decode_result(text)
    # The trainer's own message (from its result JSON) beats the log tail of FallbackToLogsOnError.
    message = (result.message if result else None) or text or status.get("message") or ""
    disruption = _condition(pod, "DisruptionTarget")
    pod_reason = status.get("reason") or ""
    if pod_reason in TRANSIENT_POD_REASONS or (
        disruption.get("status") == "True" and disruption.get("reason") in TRANSIENT_POD_REASONS
    ):
        reason = TRANSIENT_POD_REASONS.get(pod_reason) or TRANSIENT_POD_REASONS[disruption["reason"]]
        message = status.get("message") or disruption.get("message") or message
        return PodOutcome("Failed", reason, shorten(message), code, transient=True, result=result)
    if pod_reason == "DeadlineExceeded":
        return PodOutcome("Failed", Reason.DEADLINE_EXCEEDED, shorten(status.get("message", "")), code)
    if terminated.get("reason") == "OOMKilled":
        return PodOutcome(
            "Failed",
            Reason.OOM_KILLED,
            shorten(message or "the trainer ran out of memory"),
            code,
            True,
            result,
        )
    if terminated.get("reason") in CANNOT_START:
        # The runtime could not start the container (a command the image lacks): the trainer
        # never ran, and the same pod would fail the same way. The kubelet's reason and words.
        return PodOutcome("Failed", terminated["reason"], shorten(message), code)
    if result is not None and result.exitCode:
        # The trainer's own exit code: with several GPUs the container's code is
        # paddle.distributed.launch's, which does not keep the trainer's meaning.
        code = result.exitCode
    if code is None:
        return PodOutcome(
            "Failed", pod_reason or Reason.POD_FAILED, shorten(message or "the pod failed"), None
        )
    if not message:
        message = f"the trainer exited with code {code}"
    return PodOutcome("Failed", exit_reason(code), shorten(message), code, is_transient_exit(code), result)
