"""What the outside sees of a run: log lines, progress lines and the result files.

No Paddle here: the command line reports a settings error through the same writer as the
training loop, before Paddle is imported.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from finetune_contract import TrainerResult, encode_result, format_progress
from tqdm import tqdm

RESULT_FILE = "result.json"


class Log:
    """Human-readable lines on stderr (rank 0 only), kept clear of the progress bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            tqdm.write(f"[finetune] {message}", file=sys.stderr)


def print_progress(enabled: bool, epoch: int, epochs: int, **extra: Any) -> None:
    """One ``FINETUNE_PROGRESS`` line on stdout (rank 0 only), flushed at once for the operator."""
    if enabled:
        print(format_progress(epoch, epochs, **extra), flush=True)


def write_result(result: TrainerResult, output_dir: Path | None, result_path: str) -> None:
    """The full result in ``<output_dir>/result.json`` (when there is one), and its bounded
    encoding (<= 4096 bytes) at ``result_path``, the container's termination-message file."""
    if output_dir is not None:
        with contextlib.suppress(OSError):
            output_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n"
            (output_dir / RESULT_FILE).write_text(text)
    if result_path:
        try:
            Path(result_path).write_text(encode_result(result))
        except OSError as exc:  # e.g. /dev/termination-log outside a pod
            print(f"[finetune] cannot write the result to {result_path}: {exc}", file=sys.stderr)
