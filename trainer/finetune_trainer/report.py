"""What the outside sees of a run: log lines, progress lines and the result files.

No Paddle here: the command line reports a settings error through the same writer as the
training loop, before Paddle is imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from finetune_contract import TrainerResult, encode_result, format_progress, progress_record
from tqdm import tqdm

from .push import ProgressPush

RESULT_FILE = "result.json"


class Log:
    """Human-readable lines on stderr (rank 0 only), kept clear of the progress bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            tqdm.write(f"[finetune] {message}", file=sys.stderr)


def print_progress(enabled: bool, epoch: int, epochs: int, **extra: Any) -> None:
    """One ``FINETUNE_PROGRESS`` line on stdout (rank 0 only), flushed at once for the operator,
    and the same record POSTed to it where the pod's environment says so (the line stays the
    fallback: a push that fails is logged, never fatal)."""
    if enabled:
        print(format_progress(epoch, epochs, **extra), flush=True)
        pusher = progress_pusher()
        if pusher is not None:
            pusher.send(progress_record(epoch, epochs, **extra))


@functools.cache
def progress_pusher() -> ProgressPush | None:
    """The process's pusher, built from the environment on first use (so only rank 0 builds one,
    and a refused configuration is reported once). Tests call ``progress_pusher.cache_clear()``."""
    return ProgressPush.from_env(os.environ)


def write_result(
    result: TrainerResult, output_dir: Path | None, result_path: str, first_failure_since: float | None = None
) -> None:
    """The full result in ``<output_dir>/result.json`` (when there is one), and its bounded
    encoding (<= 4096 bytes) at ``result_path``, the container's termination-message file.

    ``first_failure_since`` (a failure of one of several processes sharing that file): leave a
    message there that another process wrote at or after that time, since the first failure
    is the cause."""
    if output_dir is not None:
        with contextlib.suppress(OSError):
            output_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n"
            (output_dir / RESULT_FILE).write_text(text)
    if result_path:
        try:
            _write_message(Path(result_path), encode_result(result), first_failure_since)
        except OSError as exc:  # e.g. /dev/termination-log outside a pod
            print(f"[finetune] cannot write the result to {result_path}: {exc}", file=sys.stderr)


def _write_message(path: Path, text: str, keep_since: float | None) -> None:
    if keep_since is None:
        path.write_text(text)
        return
    with path.open("a+") as fh:  # created if missing, not truncated before the lock is held
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        if fh.read(1) and os.fstat(fh.fileno()).st_mtime >= keep_since:
            return  # another process of this run failed first
        fh.truncate(0)
        fh.write(text)
