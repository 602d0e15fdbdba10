"""The contract imports neither kopf nor Paddle (nor the Kubernetes client): the operator image
never needs Paddle, the trainer image never needs kopf."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_contract_loads_no_framework():
    code = (
        "import sys, finetune_contract; "
        "print(sorted(m for m in ('paddle', 'kopf', 'kubernetes', 'yaml', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
