"""Whether a failed attempt is retried, and how long to wait first (pure functions).

Transient failures (the trainer's transient exit codes, evicted/preempted/OOM-killed pods) are
retried while failures <= backoffLimit, i.e. at most backoffLimit + 1 attempts that failed or
succeeded; a suspended-and-resumed attempt is not a failure and does not count. Permanent
failures fail the job at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api import Reason
from .pod_state import PodOutcome


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    reason: str  # the job's reason: the attempt's reason, or BackoffLimitExceeded
    message: str


def decide(outcome: PodOutcome, failures: int, backoff_limit: int) -> RetryDecision:
    """``failures`` counts the failed attempts so far, this one included."""
    if outcome.phase != "Failed":
        raise ValueError(f"decide() needs a failed attempt, not {outcome.phase}")
    if not outcome.transient:
        return RetryDecision(False, outcome.reason, outcome.message)
    if failures <= backoff_limit:
        return RetryDecision(True, outcome.reason, outcome.message)
    return RetryDecision(
        False,
        Reason.BACKOFF_LIMIT_EXCEEDED,
        f"{failures} attempts failed (backoffLimit {backoff_limit}); "
        f"the last: {outcome.reason}: {outcome.message}",
    )


def backoff_seconds(failures: int, base: float, maximum: float) -> float:
    """The wait before the attempt that follows the ``failures``-th failure: base * 2^(n-1),
    capped at ``maximum``."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1 (got {failures})")
    # Cap the exponent first so a large failure count cannot overflow a float.
    return min(maximum, base * 2 ** min(failures - 1, 62))
