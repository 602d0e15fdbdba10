"""How the runner resolves a container's environment (no cluster needed)."""

from __future__ import annotations

import pytest

from localcluster.runner.pod_inputs import SetupError, expand, field_value

POD = {
    "metadata": {"name": "job-attempt-1", "namespace": "team", "uid": "u-1", "labels": {"app": "ft"}},
    "spec": {"nodeName": "local-runner", "serviceAccountName": "trainer"},
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),  # $$ escapes
        ("$(MISSING)", "$(MISSING)"),  # unknown references stay as written
        ("plain $A", "plain $A"),  # only the $(...) form expands
    ],
)
def test_expand_follows_kubernetes_rules(value: str, expected: str) -> None:
    assert expand(value, {"A": "1", "B": "two"}) == expected


def test_field_references() -> None:
    assert field_value(POD, "metadata.name") == "job-attempt-1"
    assert field_value(POD, "metadata.labels['app']") == "ft"
    assert field_value(POD, "spec.serviceAccountName") == "trainer"
    with pytest.raises(SetupError, match="status.podIPs"):
        field_value(POD, "status.podIPs")
