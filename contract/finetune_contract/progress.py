"""Progress: one line per epoch (and one at the start), printed to stdout.

The operator reads the tail of the pod's log through the API server, so it needs no network path
to the pod. Where the operator serves a progress endpoint, the trainer also POSTs each record to
it (below); the log stays the fallback.
"""

from __future__ import annotations

import json
from typing import Any

PROGRESS_PREFIX = "FINETUNE_PROGRESS "


def format_progress(epoch: int, epochs: int, **extra: Any) -> str:
    """One machine-readable progress line, e.g. ``FINETUNE_PROGRESS {"epoch":3,"epochs":20,...}``."""
    payload = progress_record(epoch, epochs, **extra)
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
        if check_progress_record(record) is not None:
            return record
    return None


# ------------------------------------------------------------------------------------------------
# Pushed progress: besides printing it, the trainer POSTs each record to the operator, where the
# pod says so. One request per epoch instead of a log read and a status write; the log stays the
# fallback (a trainer that cannot reach the operator still reports through it).
# ------------------------------------------------------------------------------------------------
# Where to POST (the whole URL, this job's path included) and the PEM of the CA that signed the
# operator's certificate: both set by the operator in the pod's environment.
PUSH_URL_ENV = "FINETUNE_PROGRESS_URL"
PUSH_CA_ENV = "FINETUNE_PROGRESS_CA"
# The pod's ServiceAccount token for this job's audience (a projected volume the kubelet renews):
# sent as `Authorization: Bearer`, read afresh for every request.
PUSH_TOKEN_DIR = "/var/run/secrets/finetune.paddle.dev/progress"
PUSH_TOKEN_FILE = "token"
PUSH_BODY_LIMIT = 4096  # bytes: the operator refuses a larger body (413)
_AUDIENCE_PREFIX = "finetune.paddle.dev/progress"


def push_path(namespace: str, job: str) -> str:
    """The URL path one job's pods POST their progress to."""
    return f"/v1/progress/{namespace}/{job}"


def push_audience(namespace: str, job: str) -> str:
    """The token audience of one job: a token made for one job's pods is refused for any other."""
    return f"{_AUDIENCE_PREFIX}/{namespace}/{job}"


def progress_record(epoch: int, epochs: int, **extra: Any) -> dict[str, Any]:
    """The progress record a line carries and a push sends (None values left out)."""
    return {"epoch": epoch, "epochs": epochs, **{k: v for k, v in extra.items() if v is not None}}


def check_progress_record(record: Any) -> dict[str, Any] | None:
    """A record as the operator accepts it (a JSON object with an integer epoch >= 0), or None."""
    if not isinstance(record, dict):
        return None
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None
    return record
