"""The contract between the operator and the trainer.

Both programs (and the tests) import this package; it imports neither kopf nor Paddle, so the
operator image never needs Paddle. It holds:

* ``TrainerSettings`` (settings.py): what the operator hands the trainer (as ``--settings-json``),
  in the same camelCase vocabulary as the FineTuneJob spec;
* the progress line the trainer prints once per epoch, and its parser (progress.py);
* ``TrainerResult`` (result.py): what an attempt did, written to the termination-message file
  (never more than 4096 bytes) and read back by the operator;
* the exit codes, split into permanent and transient failures (exit_codes.py).
"""

from .exit_codes import (
    EXIT_BAD_SETTINGS,
    EXIT_CHECKPOINT_REFUSED,
    EXIT_DATA_ERROR,
    EXIT_DOWNLOAD_ERROR,
    EXIT_INTERRUPTED,
    EXIT_KILLED,
    EXIT_NON_FINITE_LOSS,
    EXIT_OK,
    EXIT_PRETRAINED_ERROR,
    EXIT_TRANSIENT,
    PERMANENT_EXIT_CODES,
    TRANSIENT_EXIT_CODES,
    exit_reason,
    is_transient_exit,
)
from .progress import PROGRESS_PREFIX, format_progress, parse_last_progress
from .result import (
    APPLIED_STRATEGIES,
    FIELD_CHECKS,
    LOAD_LISTS,
    MAX_WORST_CLASSES,
    RESULT_MAX_BYTES,
    ClassScore,
    FreezeDecision,
    LoadSummary,
    TrainerResult,
    decode_result,
    encode_result,
)
from .settings import (
    AMP_MODES,
    ARCHITECTURES,
    CHECKPOINT_SETTINGS,
    CORRUPT_IMAGE_POLICIES,
    DATASET_FORMATS,
    FREEZE_STRATEGIES,
    RUN_ONLY_SETTINGS,
    DatasetSettings,
    FinetuneSettings,
    JobSettings,
    ModelSettings,
    OutputSettings,
    PretrainedSource,
    SettingsError,
    TrainerSettings,
    TrainingSettings,
    WorldSettings,
)

__all__ = [
    "AMP_MODES",
    "APPLIED_STRATEGIES",
    "ARCHITECTURES",
    "CHECKPOINT_SETTINGS",
    "CORRUPT_IMAGE_POLICIES",
    "DATASET_FORMATS",
    "EXIT_BAD_SETTINGS",
    "EXIT_CHECKPOINT_REFUSED",
    "EXIT_DATA_ERROR",
    "EXIT_DOWNLOAD_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_KILLED",
    "EXIT_NON_FINITE_LOSS",
    "EXIT_OK",
    "EXIT_PRETRAINED_ERROR",
    "EXIT_TRANSIENT",
    "FIELD_CHECKS",
    "FREEZE_STRATEGIES",
    "LOAD_LISTS",
    "MAX_WORST_CLASSES",
    "PERMANENT_EXIT_CODES",
    "RUN_ONLY_SETTINGS",
    "PROGRESS_PREFIX",
    "RESULT_MAX_BYTES",
    "TRANSIENT_EXIT_CODES",
    "ClassScore",
    "DatasetSettings",
    "FinetuneSettings",
    "FreezeDecision",
    "JobSettings",
    "LoadSummary",
    "ModelSettings",
    "OutputSettings",
    "PretrainedSource",
    "SettingsError",
    "TrainerResult",
    "TrainerSettings",
    "TrainingSettings",
    "WorldSettings",
    "decode_result",
    "encode_result",
    "exit_reason",
    "format_progress",
    "is_transient_exit",
    "parse_last_progress",
]
