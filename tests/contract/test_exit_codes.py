"""Exit codes: each is permanent or transient, never both, and names its reason."""

from __future__ import annotations

import finetune_contract as contract
import pytest


def test_permanent_and_transient_codes_are_disjoint_and_named():
    assert not set(contract.PERMANENT_EXIT_CODES) & set(contract.TRANSIENT_EXIT_CODES)
    reasons = [*contract.PERMANENT_EXIT_CODES.values(), *contract.TRANSIENT_EXIT_CODES.values()]
    assert len(set(reasons)) == len(reasons) and all(r[0].isupper() and " " not in r for r in reasons)
    assert all(0 < code < 256 for code in [*contract.PERMANENT_EXIT_CODES, *contract.TRANSIENT_EXIT_CODES])


@pytest.mark.parametrize(
    ("code", "reason", "transient"),
    [
        (contract.EXIT_OK, "Completed", False),
        (contract.EXIT_BAD_SETTINGS, "InvalidSettings", False),
        (contract.EXIT_DATA_ERROR, "DataError", False),
        (contract.EXIT_PRETRAINED_ERROR, "PretrainedWeightsError", False),
        (contract.EXIT_NON_FINITE_LOSS, "NonFiniteLoss", False),
        (contract.EXIT_CHECKPOINT_REFUSED, "CheckpointRefused", False),
        (contract.EXIT_DOWNLOAD_ERROR, "DownloadFailed", True),
        (contract.EXIT_TRANSIENT, "TransientError", True),
        (contract.EXIT_INTERRUPTED, "Interrupted", True),
        (contract.EXIT_KILLED, "Killed", True),
        (1, "TrainerError", False),  # a traceback: would most likely crash again
        (42, "TrainerError", False),
    ],
)
def test_exit_reason_and_retry(code, reason, transient):
    assert contract.exit_reason(code) == reason
    assert contract.is_transient_exit(code) is transient
