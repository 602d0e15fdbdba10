"""Progress: one line per epoch (and one at the start), printed to stdout.

The operator reads the tail of the pod's log through the API server, so it needs no network path
to the pod.
"""

from __future__ import annotations

import json
from typing import Any

PROGRESS_PREFIX = "FINETUNE_PROGRESS "


def format_progress(epoch: int, epochs: int, **extra: Any) -> str:
    """One machine-readable progress line, e.g. ``FINETUNE_PROGRESS {"epoch":3,"epochs":20,...}``."""
    payload = {"epoch": epoch, "epochs": epochs, **{k: v for k, v in extra.items() if v is not None}}
    return PROGRESS_PREFIX + json.dumps(payload, separators=(",", ":"), sort_keys=True)


def parse_last_progress(log_text: str) -> dict[str, Any] | None:
    """The last well-formed progress record in a log excerpt, or None."""
    for line in reversed(log_text.splitlines()):
        idx = line.find(PROGRESS_PREFIX)
        if idx < 0:
            continue
        try:
            record = json.loads(line[idx + len(PROGRESS_PREFIX) :])
        except (ValueError, RecursionError):
            continue  # a line cut by the tail window, or one no trainer wrote
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            return record
    return None
