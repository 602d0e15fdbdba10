"""``TrainerResult``: what one attempt of the trainer did.

The trainer writes it twice: in full to ``<output>/result.json``, and bounded by ``encode_result``
to the container's termination-message file, which Kubernetes caps at 4096 bytes; the operator
reads the latter back with ``decode_result`` and maps the typed fields into the job's status.

The wire format is camelCase JSON, as the FineTuneJob status: the load summary's three lists are
top-level keys (``strippedParameters``, ...), the freeze decision is the object ``freeze``, the
best epoch's worst classes the list ``worstClasses`` (at most five, ``ClassScore``).
``decode_result`` is written for hostile input (the file is the pod's to write): wrong types,
non-finite or out-of-range numbers and unknown keys are dropped, strings and lists are bounded,
so every value it yields has the documented type and range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .settings import FREEZE_STRATEGIES

RESULT_MAX_BYTES = 4096  # Kubernetes' cap on a termination message
LOAD_LISTS = ("strippedParameters", "missingParameters", "unexpectedParameters")
APPLIED_STRATEGIES = tuple(s for s in FREEZE_STRATEGIES if s != "auto")  # what "auto" decides between
DECIDED_BY = ("user", "auto")
INT64_MAX = 2**63 - 1  # the status schema's integers are int64
MAX_TEXT = 32768  # characters kept of the message (a condition message's maxLength)
MAX_NAME = 1024  # characters kept of a parameter name, the reason, a string in the evidence
MAX_ITEMS = 10_000  # entries kept of a list or object
MAX_DEPTH = 8  # nesting kept in the freeze evidence
MAX_WORST_CLASSES = 5  # classes named in worstClasses (the status stays small)
MAX_CLASS_NAME = 64  # characters kept of a class name there


@dataclass
class LoadSummary:
    """What loading the pretrained weights did, by state-dict key (``pretrained.LoadReport``)."""

    strippedParameters: list[str] = field(default_factory=list)  # in both, shapes differ: not loaded
    missingParameters: list[str] = field(default_factory=list)  # model keys absent from the file
    unexpectedParameters: list[str] = field(default_factory=list)  # file keys absent from the model
    # Lists that a bounded encoding cut short, with their full length.
    truncated: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: list(getattr(self, key)) for key in LOAD_LISTS}
        for key, full in self.truncated.items():
            out[key + "Count"] = full
            out[key + "Truncated"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSummary | None:
        """The summary in a result's top-level keys; None when it holds none of the lists."""
        if not any(isinstance(data.get(key), list) for key in LOAD_LISTS):
            return None
        summary = cls(**{key: _names(data.get(key)) for key in LOAD_LISTS})
        for key in LOAD_LISTS:
            full = _count(data.get(key + "Count"))
            if data.get(key + "Truncated") is True and full is not None and full > len(getattr(summary, key)):
                summary.truncated[key] = full
        return summary


@dataclass
class FreezeDecision:
    """What to train, who decided it and why (``freeze.py``)."""

    strategy: str  # one of APPLIED_STRATEGIES
    stages: int = 0  # strategy "stages": the stem and this many residual stages are frozen
    decidedBy: str | None = "user"  # user (finetune.freeze) | auto (the four rules)
    rule: int | None = None  # auto: the PaddleClas finetune guide's rule, 1..4
    evidence: dict[str, Any] = field(default_factory=dict)  # what the decision rests on
    trainableParameters: int | None = None  # once applied to the model

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "stages": self.stages,
            "decidedBy": self.decidedBy,
            "rule": self.rule,
            "evidence": _json_value(self.evidence, 0),
            "trainableParameters": self.trainableParameters,
        }
        return {k: v for k, v in out.items() if v is not None or k == "rule"}

    @classmethod
    def from_dict(cls, data: Any) -> FreezeDecision | None:
        """A decision from JSON; None unless it names one of the strategies."""
        if not isinstance(data, dict) or data.get("strategy") not in APPLIED_STRATEGIES:
            return None
        evidence = _json_value(data.get("evidence"), 0)
        return cls(
            strategy=data["strategy"],
            stages=_integer(data.get("stages"), 0, 4) or 0,
            decidedBy=data.get("decidedBy") if data.get("decidedBy") in DECIDED_BY else None,
            rule=_integer(data.get("rule"), 1, 4),
            evidence=evidence if isinstance(evidence, dict) else {},
            trainableParameters=_count(data.get("trainableParameters")),
        )


@dataclass
class ClassScore:
    """How one class fared on the validation set at the best epoch (``per_class.json`` in the
    output folder has every class; the result names the few worst)."""

    name: str  # from dataset.labelList or the folder name; the label number otherwise
    label: int
    accuracy: float  # the share of its validation images predicted as it (its recall), 0..1
    images: int  # its validation images
    precision: float | None = None  # the share of predictions of it that were right; None: never predicted

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "accuracy": self.accuracy,
            "images": self.images,
        }
        if self.precision is not None:
            out["precision"] = self.precision
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ClassScore | None:
        """A class score from JSON; None unless name, label, accuracy and images are all valid."""
        if not isinstance(data, dict):
            return None
        name = _text(data.get("name"), MAX_CLASS_NAME)
        label = _count(data.get("label"))
        accuracy = _number(data.get("accuracy"), 0.0, 1.0)
        images = _count(data.get("images"))
        if name is None or label is None or accuracy is None or images is None:
            return None
        return cls(name, label, accuracy, images, _number(data.get("precision"), 0.0, 1.0))


@dataclass
class TrainerResult:
    """One attempt's outcome. Every field may be None (not known, or not reported): a failure
    reports what the attempt had established before it stopped."""

    exitCode: int | None = None  # the contract's exit code (exit_codes.py)
    reason: str | None = None  # exit_reason(exitCode)
    message: str | None = None  # failures: what went wrong, naming the field, file or step
    epochs: int | None = None  # epochs the job asked for
    epochsRun: int | None = None  # completed epochs, all attempts
    bestEpoch: int | None = None
    top1: float | None = None  # the best epoch's validation accuracy, 0..1
    top5: float | None = None
    lastTop1: float | None = None  # the last epoch's
    numClasses: int | None = None
    trainImages: int | None = None
    valImages: int | None = None
    learningRate: float | None = None  # the peak of the schedule
    resumedFromEpoch: int | None = None  # None: a fresh start
    imagesPerSecond: float | None = None  # training throughput, all attempts
    corruptImagesSkipped: int | None = None
    durationSeconds: float | None = None  # this attempt
    outputDir: str | None = None
    load: LoadSummary | None = None
    freeze: FreezeDecision | None = None
    # The best epoch's worst classes on the validation set, worst first (at most MAX_WORST_CLASSES).
    worstClasses: list[ClassScore] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The full result as JSON-ready data. None fields are left out, and so are values
        outside their type and range (a NaN, say): the JSON stays standard."""
        out: dict[str, Any] = {}
        for name, check in FIELD_CHECKS.items():
            value = getattr(self, name)
            if value is not None and check(value) is not None:
                out[name] = value
        if self.load is not None:
            out.update(self.load.to_dict())
        if self.freeze is not None:
            out["freeze"] = self.freeze.to_dict()
        if self.worstClasses is not None:
            out["worstClasses"] = [c.to_dict() for c in self.worstClasses[:MAX_WORST_CLASSES]]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerResult:
        """Every well-typed, in-range field of ``data``; anything else is left out."""
        scalars = {name: check(data.get(name)) for name, check in FIELD_CHECKS.items()}
        return cls(
            **scalars,
            load=LoadSummary.from_dict(data),
            freeze=FreezeDecision.from_dict(data.get("freeze")),
            worstClasses=_class_scores(data.get("worstClasses")),
        )


def encode_result(result: TrainerResult, limit: int = RESULT_MAX_BYTES) -> str:
    """The result as JSON of at most ``limit`` bytes.

    Long parameter lists are truncated (their full length is kept in ``<key>Count``); if that is
    not enough, the message is shortened, then the freeze evidence dropped, then the worst classes
    halved until they fit, and as a last resort only the numbers are kept, with the reason and the
    message if there is room. ``limit`` should leave room for the numbers (1024 bytes do).
    """
    data = result.to_dict()
    for key in LOAD_LISTS:
        if isinstance(data.get(key), list):
            data.setdefault(key + "Count", len(data[key]))

    keep = max((len(data.get(k) or []) for k in LOAD_LISTS), default=0)
    while _size(data) > limit and keep > 0:
        keep //= 2
        for key in LOAD_LISTS:
            if isinstance(data.get(key), list) and len(data[key]) > keep:
                data[key] = data[key][:keep]
                data[key + "Truncated"] = True
    _shorten_message(data, limit)
    if _size(data) > limit and isinstance(data.get("freeze"), dict):
        data["freeze"].pop("evidence", None)
    while _size(data) > limit and data.get("worstClasses"):
        data["worstClasses"] = data["worstClasses"][: len(data["worstClasses"]) // 2]
    if _size(data) > limit:
        # Last resort (a huge reason or outputDir): the numbers, a bounded set of keys that always
        # fits, then the reason and the message if there is room.
        kept = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key in ("reason", "message"):
            if isinstance(data.get(key), str):
                kept[key] = data[key]
                _shorten_message(kept, limit)
                if _size(kept) > limit:
                    del kept[key]
        data = kept
    return _compact(data)


def decode_result(text: str) -> TrainerResult | None:
    """A termination message (or result.json) read back; None if it is not a result JSON object
    (e.g. the log tail the kubelet falls back to)."""
    if not isinstance(text, str) or not text.strip().startswith("{"):
        return None
    try:
        data = json.loads(text.strip())
    except (ValueError, RecursionError):  # malformed, nested too deep, or an absurdly long integer
        return None
    return TrainerResult.from_dict(data) if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------
# Checks: a value of the documented type and range, or None.
# --------------------------------------------------------------------------------------------
def _number(value: Any, low: float, high: float = math.inf) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def _integer(value: Any, low: int, high: int) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return value if low <= value <= high else None


def _count(value: Any) -> int | None:
    return _integer(value, 0, INT64_MAX)


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _class_scores(value: Any) -> list[ClassScore] | None:
    if not isinstance(value, list):
        return None
    scores = (ClassScore.from_dict(item) for item in value[:MAX_ITEMS])
    return [score for score in scores if score is not None][:MAX_WORST_CLASSES]


def _names(value: Any) -> list[str]:
    items = value if isinstance(value, list) else []
    return [item[:MAX_NAME] for item in items[:MAX_ITEMS] if isinstance(item, str)]


def _json_value(value: Any, depth: int) -> Any:
    """``value`` as plain JSON the API server accepts: finite numbers, int64 integers, bounded
    strings and containers, at most MAX_DEPTH levels; anything else becomes None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -INT64_MAX - 1 <= value <= INT64_MAX else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:MAX_NAME]
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(k)[:MAX_NAME]: _json_value(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_json_value(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return None


# What decode_result accepts for each scalar field (anything else becomes None).
FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "exitCode": lambda v: _integer(v, 0, 255),
    "reason": lambda v: _text(v, MAX_NAME),
    "message": lambda v: _text(v, MAX_TEXT),
    "epochs": _count,
    "epochsRun": _count,
    "bestEpoch": _count,
    "top1": lambda v: _number(v, 0.0, 1.0),
    "top5": lambda v: _number(v, 0.0, 1.0),
    "lastTop1": lambda v: _number(v, 0.0, 1.0),
    "numClasses": _count,
    "trainImages": _count,
    "valImages": _count,
    "learningRate": lambda v: _number(v, 0.0),
    "resumedFromEpoch": _count,
    "imagesPerSecond": lambda v: _number(v, 0.0),
    "corruptImagesSkipped": _count,
    "durationSeconds": lambda v: _number(v, 0.0),
    "outputDir": lambda v: _text(v, MAX_TEXT),
}


def _shorten_message(data: dict[str, Any], limit: int) -> None:
    """Cut the message so that ``data`` fits, if it can (each character cut saves at least a byte)."""
    message = data.get("message")
    if _size(data) > limit and isinstance(message, str):
        data["message"] = message[: max(0, len(message) - (_size(data) - limit) - 3)] + "..."


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _size(data: dict[str, Any]) -> int:
    return len(_compact(data).encode())
