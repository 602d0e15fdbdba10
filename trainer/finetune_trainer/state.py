"""The state of a run: what a checkpoint carries (``RunState``), what this attempt has established
(``Attempt``, from which its result is made), and how a failure maps to an exit code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import paddle
from finetune_contract import (
    EXIT_BAD_SETTINGS,
    EXIT_DATA_ERROR,
    EXIT_DOWNLOAD_ERROR,
    EXIT_INTERRUPTED,
    EXIT_PRETRAINED_ERROR,
    EXIT_TRANSIENT,
    LOAD_LISTS,
    FreezeDecision,
    LoadSummary,
    SettingsError,
    TrainerResult,
    exit_reason,
)

from . import per_class
from .data import CorruptImageCounter, DataError, DatasetIndex
from .pretrained import DownloadError, PretrainedError


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------
class TrainerFailure(Exception):
    """Ends the attempt with a contract exit code; the message goes into the result."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(TrainerFailure):
    def __init__(self, message: str = "received SIGTERM") -> None:
        super().__init__(EXIT_INTERRUPTED, message)


_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (DataError, EXIT_DATA_ERROR),
    (SettingsError, EXIT_BAD_SETTINGS),
    (PretrainedError, EXIT_PRETRAINED_ERROR),
    (DownloadError, EXIT_DOWNLOAD_ERROR),
)


def failure_of(exc: Exception) -> tuple[int, str] | None:
    """(exit code, message) of a failure the contract names; None for a bug or an unforeseen
    failure (reported with exit code 1, its traceback left for the log)."""
    if isinstance(exc, TrainerFailure):
        return exc.exit_code, str(exc)
    for kind, code in _EXIT_CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    if is_out_of_memory(exc):
        return EXIT_TRANSIENT, f"out of memory: {str(exc)[-300:]} (try a smaller batchSize)"
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    # A DataLoader worker that "exited unexpectedly" was almost always killed by the OOM killer.
    markers = ("out of memory", "resourceexhausted", "exit unexpectedly", "exited unexpectedly")
    return isinstance(exc, MemoryError) or any(m in text for m in markers)


# --------------------------------------------------------------------------------------------
# What a checkpoint carries besides weights and optimiser (see checkpoint.py)
# --------------------------------------------------------------------------------------------
@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    stepInEpoch: int = 0
    globalStep: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # epoch, top1, top5, valLoss
    history: list[dict[str, Any]] = field(default_factory=list)
    freeze: FreezeDecision | None = None  # decided once, kept by every later attempt
    load: LoadSummary = field(default_factory=LoadSummary)
    trainImages: int = 0  # images trained on (all attempts), for images/s
    trainSeconds: float = 0.0
    corruptImages: dict[str, str] = field(default_factory=dict)
    learningRate: float = 0.0
    seed: int = 0
    architecture: str = ""
    numClasses: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    # The current epoch's training so far (images, lossSum, seconds), when a checkpoint is taken
    # inside it (SIGTERM), so the resumed epoch reports its loss and speed over all its steps.
    epochTraining: dict[str, Any] = field(default_factory=dict)
    # Whose run this is and with which settings (resume.py): a run continues only its own.
    job: dict[str, str] | None = None
    settings: dict[str, Any] | None = None
    fingerprint: str = ""
    # The best epoch's confusion matrix, sparse (per_class.to_sparse); None if not counted.
    bestConfusion: list[list[int]] | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        """``state.json``'s content: plain JSON (numpy and Paddle values converted)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["freeze"] = self.freeze.to_dict() if self.freeze is not None else {}
        data["load"] = {key: list(getattr(self.load, key)) for key in LOAD_LISTS}
        return json.loads(json.dumps(data, default=jsonable))

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RunState:
        known = {f.name for f in fields(cls)} - {"freeze", "load"}
        state = cls(**{k: v for k, v in saved.items() if k in known})
        state.freeze = FreezeDecision.from_dict(saved.get("freeze"))
        state.load = LoadSummary.from_dict(saved.get("load") or {}) or LoadSummary()
        return state


def jsonable(value: Any) -> Any:
    """``json.dumps``' fallback for the values Paddle's state dicts hold."""
    if isinstance(value, np.ndarray):  # e.g. the AMP scaler's "scale"
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, paddle.Tensor):
        return value.numpy().tolist()
    return str(value)


# --------------------------------------------------------------------------------------------
# This attempt, as far as it got
# --------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    """What this attempt has established so far. Set-up fills it in as it goes and the loop
    advances its ``state``, so a result reports as much on failure as on success."""

    epochs: int  # what the job asked for
    output_dir: str
    index: DatasetIndex | None = None
    state: RunState | None = None  # once initialised or resumed
    resumed_from_epoch: int | None = None
    corrupt: CorruptImageCounter | None = None

    def result(self, exit_code: int, message: str | None, duration_seconds: float) -> TrainerResult:
        result = TrainerResult(
            exitCode=exit_code,
            reason=exit_reason(exit_code),
            message=message,
            epochs=self.epochs,
            resumedFromEpoch=self.resumed_from_epoch,
            durationSeconds=round(duration_seconds, 2),
            outputDir=self.output_dir,
        )
        if self.index is not None:
            result.numClasses = self.index.num_classes
            result.trainImages, result.valImages = len(self.index.train), len(self.index.val)
        if self.corrupt is not None:
            result.corruptImagesSkipped = self.corrupt.count
        state = self.state
        if state is None:
            return result
        result.load, result.freeze = state.load, state.freeze
        result.learningRate = state.learningRate or None
        result.epochsRun = state.epoch
        if state.best:
            result.bestEpoch, result.top1, result.top5 = (state.best[k] for k in ("epoch", "top1", "top5"))
        if state.best and state.bestConfusion is not None and self.index is not None:
            matrix = per_class.from_sparse(state.bestConfusion, self.index.num_classes)
            result.worstClasses = per_class.worst_classes(matrix, self.index.label_names)
        if state.history:
            result.lastTop1 = state.history[-1]["top1"]
        if state.trainSeconds > 0:
            result.imagesPerSecond = round(state.trainImages / state.trainSeconds, 2)
        return result
