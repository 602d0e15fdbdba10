"""The trainer's exit codes, split into permanent and transient failures.

Permanent: retrying cannot help (the user must change the spec or the data). Transient: a new
attempt, resumed from the last checkpoint, may succeed.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_SETTINGS = 2  # permanent: settings failed validation
EXIT_DATA_ERROR = 3  # permanent: missing/malformed list file, missing or corrupt image, bad label
EXIT_PRETRAINED_ERROR = 4  # permanent: checksum mismatch, file that does not fit the architecture
EXIT_NON_FINITE_LOSS = 5  # permanent: the loss became NaN/inf (lower the learning rate)
# permanent: the output folder holds a checkpoint this run must not use: another job's, one made
# with other settings (or by a trainer that did not record them), or a file that is unsafe to read
EXIT_CHECKPOINT_REFUSED = 6
EXIT_DOWNLOAD_ERROR = 69  # transient: the pretrained weights could not be fetched (EX_UNAVAILABLE)
EXIT_TRANSIENT = 75  # transient: anything else worth retrying, e.g. out of memory (EX_TEMPFAIL)
EXIT_INTERRUPTED = 143  # transient: SIGTERM (eviction, preemption, node drain)
EXIT_KILLED = 137  # transient: SIGKILL, usually the OOM killer

PERMANENT_EXIT_CODES = {
    EXIT_BAD_SETTINGS: "InvalidSettings",
    EXIT_DATA_ERROR: "DataError",
    EXIT_PRETRAINED_ERROR: "PretrainedWeightsError",
    EXIT_NON_FINITE_LOSS: "NonFiniteLoss",
    EXIT_CHECKPOINT_REFUSED: "CheckpointRefused",
}
TRANSIENT_EXIT_CODES = {
    EXIT_DOWNLOAD_ERROR: "DownloadFailed",
    EXIT_TRANSIENT: "TransientError",
    EXIT_INTERRUPTED: "Interrupted",
    EXIT_KILLED: "Killed",
}


def exit_reason(code: int) -> str:
    """A CamelCase reason for a trainer exit code (``TrainerError`` for unknown codes)."""
    if code == EXIT_OK:
        return "Completed"
    return PERMANENT_EXIT_CODES.get(code) or TRANSIENT_EXIT_CODES.get(code) or "TrainerError"


def is_transient_exit(code: int) -> bool:
    """Whether a failed attempt with this exit code is worth retrying.

    Unknown non-zero codes (a Python traceback exits 1) count as permanent: a crash that is
    not one of the documented transient kinds would most likely crash again.
    """
    return code in TRANSIENT_EXIT_CODES
