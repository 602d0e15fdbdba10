"""Retry decisions and exponential back-off."""

import pytest
from finetune_operator.pod_state import PodOutcome
from finetune_operator.retry import backoff_seconds, decide

TRANSIENT = PodOutcome("Failed", "Interrupted", "SIGTERM", 143, transient=True)
PERMANENT = PodOutcome("Failed", "DataError", "bad list file", 3, transient=False)


def test_permanent_failure_fails_at_once():
    decision = decide(PERMANENT, failures=1, backoff_limit=5)
    assert (decision.retry, decision.reason, decision.message) == (False, "DataError", "bad list file")


@pytest.mark.parametrize(
    ("failures", "limit", "retry"), [(1, 2, True), (2, 2, True), (3, 2, False), (1, 0, False)]
)
def test_transient_failures_retry_up_to_the_backoff_limit(failures, limit, retry):
    decision = decide(TRANSIENT, failures=failures, backoff_limit=limit)
    assert decision.retry is retry
    if retry:
        assert decision.reason == "Interrupted"
    else:
        assert decision.reason == "BackoffLimitExceeded"
        assert f"{failures} attempts failed (backoffLimit {limit})" in decision.message
        assert "Interrupted: SIGTERM" in decision.message


def test_decide_needs_a_failure():
    with pytest.raises(ValueError, match="Running"):
        decide(PodOutcome("Running"), 1, 2)


def test_backoff_doubles_and_is_capped():
    assert [backoff_seconds(n, 10, 300) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert backoff_seconds(10_000, 0.5, 60) == 60  # no overflow
    with pytest.raises(ValueError):
        backoff_seconds(0, 10, 300)
