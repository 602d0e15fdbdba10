"""Pod state -> the attempt's outcome, and the FineTuneJob status built from it (pure functions).

The outcome says what one pod did (still pending and why, running, succeeded with its result,
failed with a reason, message and whether a retry may help). The rest of the module builds the
job's status: phase, reason, message and the standard conditions, whose lastTransitionTime only
moves when a condition's status flips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from finetune_contract import decode_result, exit_reason, is_transient_exit

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
CONDITION_TYPES = ("Running", "Succeeded", "Failed", "Suspended")
MESSAGE_LIMIT = 1024  # status messages stay readable (and the object small)

# Pod-level reasons (status.reason, or a DisruptionTarget condition) that mean the pod was
# taken away from a healthy trainer: a new attempt may well succeed.
TRANSIENT_POD_REASONS = {
    "Evicted": "Evicted",
    "Preempting": "Preempted",
    "Preempted": "Preempted",
    "PreemptionByScheduler": "Preempted",
    "PreemptionByKubeScheduler": "Preempted",
    "EvictionByEvictionAPI": "Evicted",
    "DeletionByTaintManager": "Evicted",
    "DeletionByPodGC": "NodeLost",
    "TerminationByKubelet": "Evicted",
    "NodeLost": "NodeLost",
    "NodeShutdown": "NodeShutdown",
    "Shutdown": "NodeShutdown",
    "Terminated": "NodeShutdown",
    "UnexpectedAdmissionError": "UnexpectedAdmissionError",
}
# Container waiting reasons that will not fix themselves soon: the pending timeout applies.
STUCK_WAITING_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)


@dataclass(frozen=True)
class PodOutcome:
    """What one attempt's pod shows."""

    phase: str  # Pending | Running | Succeeded | Failed
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    transient: bool = False  # Failed only: a new attempt may succeed
    result: dict[str, Any] | None = None  # the trainer's result JSON, when it wrote one
    since: str = ""  # Pending: when the pod started waiting (its creation time)


def now_iso(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == "trainer":
            return cs
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
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
        return PodOutcome(
            "Succeeded", "Completed", _short((result or {}).get("message", "")), 0, result=result
        )
    if phase == "Failed":
        return _failed(pod, status, terminated)
    if phase == "Running" or (container.get("state") or {}).get("running"):
        return PodOutcome("Running", "Running", "")
    # Pending: say why, in the words of the scheduler or the kubelet.
    since = (pod.get("metadata") or {}).get("creationTimestamp", "")
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False":
        return PodOutcome(
            "Pending",
            scheduled.get("reason") or "Unschedulable",
            _short(scheduled.get("message", "")),
            since=since,
        )
    waiting = (container.get("state") or {}).get("waiting") or {}
    if waiting.get("reason"):
        return PodOutcome("Pending", waiting["reason"], _short(waiting.get("message", "")), since=since)
    return PodOutcome("Pending", "PodPending", "waiting for the pod to start", since=since)


def _failed(pod: dict[str, Any], status: dict[str, Any], terminated: dict[str, Any]) -> PodOutcome:
    code = terminated.get("exitCode")
    text = terminated.get("message", "")
    result = decode_result(text)
    # The trainer's own message (from its result JSON) beats the log tail of FallbackToLogsOnError.
    message = (result or {}).get("message") or text or status.get("message") or ""
    disruption = _condition(pod, "DisruptionTarget")
    pod_reason = status.get("reason") or ""
    if pod_reason in TRANSIENT_POD_REASONS or (
        disruption.get("status") == "True" and disruption.get("reason") in TRANSIENT_POD_REASONS
    ):
        reason = TRANSIENT_POD_REASONS.get(pod_reason) or TRANSIENT_POD_REASONS[disruption["reason"]]
        message = status.get("message") or disruption.get("message") or message
        return PodOutcome("Failed", reason, _short(message), code, transient=True, result=result)
    if pod_reason == "DeadlineExceeded":
        return PodOutcome("Failed", "DeadlineExceeded", _short(status.get("message", "")), code)
    if terminated.get("reason") == "OOMKilled":
        return PodOutcome(
            "Failed", "OOMKilled", _short(message or "the trainer ran out of memory"), code, True, result
        )
    reported = (result or {}).get("exitCode")
    if isinstance(reported, int) and not isinstance(reported, bool) and reported != 0:
        # The trainer's own exit code: with several GPUs the container's code is
        # paddle.distributed.launch's, which does not keep the trainer's meaning.
        code = reported
    if code is None:
        return PodOutcome("Failed", pod_reason or "PodFailed", _short(message or "the pod failed"), None)
    if not message:
        message = f"the trainer exited with code {code}"
    return PodOutcome("Failed", exit_reason(code), _short(message), code, is_transient_exit(code), result)


# --------------------------------------------------------------------------------------------
# Job status
# --------------------------------------------------------------------------------------------
def set_condition(
    conditions: list[dict[str, Any]] | None,
    kind: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new conditions list with ``kind`` set; lastTransitionTime changes only on a flip."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions or [] if c.get("type") != kind]
    old = next((c for c in conditions or [] if c.get("type") == kind), None)
    since = (
        old["lastTransitionTime"]
        if old and old.get("status") == value and old.get("lastTransitionTime")
        else now
    )
    cond = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": _short(message),
        "lastTransitionTime": since,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    out.sort(key=lambda c: order.get(c.get("type"), len(order)))
    return out


def phase_conditions(
    old_conditions: list[dict[str, Any]] | None,
    phase: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The four standard conditions for a phase: the one that holds is True, the others False."""
    holds = {
        "Running": phase == "Running",
        "Succeeded": phase == "Succeeded",
        "Failed": phase == "Failed",
        "Suspended": phase == "Suspended",
    }
    conditions = old_conditions
    for kind in CONDITION_TYPES:
        if holds[kind]:
            conditions = set_condition(conditions, kind, True, reason, message, now, generation)
        else:
            old = next((c for c in conditions or [] if c.get("type") == kind), None)
            # A False condition keeps the reason it had; one never set says why it is False.
            off_reason = reason if old is None or old.get("status") == "True" else old.get("reason", reason)
            off_message = message if old is None or old.get("status") == "True" else old.get("message", "")
            conditions = set_condition(conditions, kind, False, off_reason, off_message, now, generation)
    return conditions or []


@dataclass
class StatusUpdate:
    """A merge patch for the job's status, built from what one reconcile observed."""

    fields: dict[str, Any] = field(default_factory=dict)

    def transition(
        self, old_status: dict[str, Any], phase: str, reason: str, message: str, now: str, gen: int | None
    ):
        """Set phase, reason, message and conditions (lastTransitionTime moves only on change)."""
        self.fields["phase"] = phase
        self.fields["reason"] = reason
        self.fields["message"] = _short(message)
        self.fields["observedGeneration"] = gen
        if old_status.get("phase") != phase or old_status.get("reason") != reason:
            self.fields["lastTransitionTime"] = now
        self.fields["conditions"] = phase_conditions(
            old_status.get("conditions"), phase, reason, message, now, gen
        )
        return self

    def changes(self, old_status: dict[str, Any]) -> dict[str, Any]:
        """Only the fields whose value differs from the current status (None deletes a key)."""
        return {k: v for k, v in self.fields.items() if old_status.get(k) != v}


def _number(value: Any, low: float | None = None, high: float | None = None) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        return None
    return float(value)


def _integer(value: Any, low: int | None = None, high: int | None = None) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        return None
    return value


# The status schema is strict (an out-of-range value makes the API server reject the whole status
# patch), so only values of the documented type and range pass from the trainer's result.
def metrics_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """status.metrics from the trainer's result JSON (flat, or nested under "metrics")."""
    source = {**result, **(result.get("metrics") or {})}
    checks = {
        "top1": lambda v: _number(v, 0, 1),
        "top5": lambda v: _number(v, 0, 1),
        "durationSeconds": lambda v: _number(v, 0),
        "imagesPerSecond": lambda v: _number(v, 0),
        "bestEpoch": lambda v: _integer(v, 0),
        "epochsRun": lambda v: _integer(v, 0),
    }
    out = {key: check(source.get(key)) for key, check in checks.items()}
    return {k: v for k, v in out.items() if v is not None}


def finetune_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """status.finetune (stripped/missing/unexpected parameters, freeze decision) from the result."""
    source = {**result, **(result.get("finetune") or {})}
    out: dict[str, Any] = {}
    for key in ("strippedParameters", "missingParameters", "unexpectedParameters"):
        if isinstance(source.get(key), list):
            out[key] = [str(v) for v in source[key]]
    freeze = source.get("freeze")
    if isinstance(freeze, dict):
        picked = {
            "strategy": freeze.get("strategy") if isinstance(freeze.get("strategy"), str) else None,
            "decidedBy": freeze.get("decidedBy") if freeze.get("decidedBy") in ("user", "auto") else None,
            "rule": _integer(freeze.get("rule"), 1, 4),
            "trainableParameters": _integer(freeze.get("trainableParameters"), 0),
            "evidence": freeze.get("evidence") if isinstance(freeze.get("evidence"), dict) else None,
        }
        out["freeze"] = {k: v for k, v in picked.items() if v is not None}
    return out


def progress_from_record(record: dict[str, Any], now: str) -> dict[str, Any]:
    """status.progress from a trainer progress record (finetune_contract.parse_last_progress)."""
    picked = {
        "epoch": _integer(record.get("epoch"), 0),
        "epochs": _integer(record.get("epochs"), 0),
        "top1": _number(record.get("top1"), 0, 1),
        "top5": _number(record.get("top5"), 0, 1),
        "loss": _number(record.get("loss")),
        "imagesPerSecond": _number(record.get("imagesPerSecond"), 0),
    }
    out: dict[str, Any] = {k: v for k, v in picked.items() if v is not None}
    if "epoch" in out:
        out["display"] = f"{out['epoch']}/{out['epochs']}" if "epochs" in out else str(out["epoch"])
    out["updateTime"] = now
    return out


def same_progress(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two progress records say the same thing (updateTime aside)."""
    strip = lambda p: {k: v for k, v in (p or {}).items() if k != "updateTime"}  # noqa: E731
    return strip(a) == strip(b)
