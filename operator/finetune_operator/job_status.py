"""What the FineTuneJob's status becomes (pure functions).

Phase, reason, message and the standard conditions, whose lastTransitionTime only moves when a
condition's status flips; ``StatusUpdate``, the merge patch of one reconcile pass (only what
changed is sent); and the trainer's output mapped into the status: its result into
``status.metrics`` and ``status.finetune``, its progress lines and its result into
``status.progress``. The status schema is strict (an out-of-range value makes the API server
reject the whole patch), so only values of the documented type and range get through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from finetune_contract import TrainerResult

from .api import CONDITION_TYPES

MESSAGE_LIMIT = 1024  # status messages stay readable (and the object small)
INT64_MAX = 2**63 - 1


def now_iso(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A status message: stripped, and cut to ``limit`` characters."""
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Phase and conditions
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
        "message": shorten(message),
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
    conditions = old_conditions
    for kind in CONDITION_TYPES:
        if kind == phase:
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
    ) -> StatusUpdate:
        """Set phase, reason, message and conditions (lastTransitionTime moves only on change)."""
        self.fields["phase"] = phase
        self.fields["reason"] = reason
        self.fields["message"] = shorten(message)
        self.fields["observedGeneration"] = gen
        if old_status.get("phase") != phase or old_status.get("reason") != reason:
            self.fields["lastTransitionTime"] = now
        self.fields["conditions"] = phase_conditions(
            old_status.get("conditions"), phase, reason, message, now, gen
        )
        return self

    def changes(self, old_status: dict[str, Any]) -> dict[str, Any]:
        """Only the fields whose value differs from the current status (None deletes a key, also
        a key of an object: the patch is a JSON merge patch)."""
        return {k: v for k, v in self.fields.items() if old_status.get(k) != _set_keys(v)}


def _set_keys(value: Any) -> Any:
    """An object as a merge patch leaves it: without the keys the patch deletes."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


# --------------------------------------------------------------------------------------------
# The trainer's result (decoded by finetune_contract, so typed and in range)
# --------------------------------------------------------------------------------------------
def metrics_from_result(result: TrainerResult) -> dict[str, Any]:
    """status.metrics, with the best epoch's worst classes (at most five, decoded and bounded)."""
    picked = {
        "top1": result.top1,
        "top5": result.top5,
        "bestEpoch": result.bestEpoch,
        "epochsRun": result.epochsRun,
        "durationSeconds": result.durationSeconds,
        "imagesPerSecond": result.imagesPerSecond,
        "worstClasses": [c.to_dict() for c in result.worstClasses] if result.worstClasses else None,
    }
    return {k: v for k, v in picked.items() if v is not None}


def finetune_from_result(result: TrainerResult) -> dict[str, Any]:
    """status.finetune: the stripped, missing and unexpected parameters and the freeze decision."""
    out: dict[str, Any] = {}
    if result.load is not None:
        out["strippedParameters"] = list(result.load.strippedParameters)
        out["missingParameters"] = list(result.load.missingParameters)
        out["unexpectedParameters"] = list(result.load.unexpectedParameters)
    freeze = result.freeze
    if freeze is not None:
        picked = {
            "strategy": freeze.strategy,
            "decidedBy": freeze.decidedBy,
            "rule": freeze.rule,
            "trainableParameters": freeze.trainableParameters,
            "evidence": freeze.evidence,
        }
        out["freeze"] = {k: v for k, v in picked.items() if v is not None}
    return out


def success_message(result: TrainerResult, fallback: str) -> str:
    """The Succeeded condition's (and Event's) message: the top-1, its epoch and the classes it
    got most wrong, e.g. ``top-1 0.9402 (best epoch 18); worst classes: sweet pea 0.50, ...``."""
    if result.top1 is None:
        return fallback or "the trainer finished but reported no result"
    best = f" (best epoch {result.bestEpoch})" if result.bestEpoch is not None else ""
    worst = [c for c in result.worstClasses or [] if c.accuracy < 1.0][:3]
    named = "; worst classes: " + ", ".join(f"{c.name} {c.accuracy:.2f}" for c in worst) if worst else ""
    return shorten(f"top-1 {result.top1:.4f}{best}{named}")


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
def progress_from_record(record: dict[str, Any], now: str) -> dict[str, Any]:
    """status.progress from a trainer progress line (finetune_contract.parse_last_progress)."""
    picked = {
        "epoch": _integer(record.get("epoch"), 0),
        "epochs": _integer(record.get("epochs"), 0),
        "top1": _number(record.get("top1"), 0, 1),
        "top5": _number(record.get("top5"), 0, 1),
        "loss": _number(record.get("loss")),
        "imagesPerSecond": _number(record.get("imagesPerSecond"), 0),
    }
    out: dict[str, Any] = {k: v for k, v in picked.items() if v is not None}
    _display(out)
    out["updateTime"] = now
    return out


def progress_at_success(
    result: TrainerResult, previous: dict[str, Any] | None, now: str
) -> dict[str, Any] | None:
    """status.progress once the trainer succeeded: the epochs it ran out of the epochs it was
    asked for, both from its result (the last progress line's count if the result has none), and
    the best epoch's accuracy. None when the result does not say how many epochs ran."""
    if result.epochsRun is None:
        return None
    progress = dict(previous or {})
    epochs = result.epochs if result.epochs is not None else _integer(progress.get("epochs"), 0)
    progress["epoch"] = result.epochsRun
    progress.pop("epochs", None)
    if epochs:
        progress["epochs"] = epochs
    for key, value in (("top1", result.top1), ("top5", result.top5)):
        if value is not None:
            progress[key] = value
    _display(progress)
    progress["updateTime"] = now
    return progress


def _display(progress: dict[str, Any]) -> None:
    """The EPOCH column: ``7/20``, or ``7`` when the count of epochs is not known."""
    if "epoch" in progress:
        epochs = progress.get("epochs")
        progress["display"] = f"{progress['epoch']}/{epochs}" if epochs else str(progress["epoch"])


def same_progress(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two progress records say the same thing (updateTime aside)."""
    strip = lambda p: {k: v for k, v in (p or {}).items() if k != "updateTime"}  # noqa: E731
    return strip(a) == strip(b)


def _number(value: Any, low: float | None = None, high: float | None = None) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number):
        return None
    if (low is not None and number < low) or (high is not None and number > high):
        return None
    return number


def _integer(value: Any, low: int = 0, high: int = INT64_MAX) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return value if low <= value <= high else None
