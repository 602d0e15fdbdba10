"""The CRD and the contract agree: the enums the API server enforces are the values the trainer
accepts, and a job that leaves a field out trains exactly as the trainer's own default would."""

from __future__ import annotations

from typing import Any

import finetune_contract as contract
import pytest

from tests.operator import crd


def test_enums_agree_with_the_trainer_contract() -> None:
    assert tuple(crd.node("spec.model.architecture")["enum"]) == contract.ARCHITECTURES
    assert tuple(crd.node("spec.finetune.freeze")["enum"]) == contract.FREEZE_STRATEGIES
    assert tuple(crd.node("spec.dataset.format")["enum"]) == contract.DATASET_FORMATS
    assert tuple(crd.node("spec.dataset.corruptImages")["enum"]) == contract.CORRUPT_IMAGE_POLICIES
    assert tuple(crd.node("spec.training.amp")["enum"]) == contract.AMP_MODES
    # Every official pretrained name belongs to one of the architectures.
    for name in crd.node("spec.model.pretrained.name")["enum"]:
        assert any(name == a or name.startswith(a + "_") for a in contract.ARCHITECTURES), name


@pytest.mark.parametrize(
    ("section", "settings"),
    [
        ("dataset", contract.DatasetSettings()),
        ("finetune", contract.FinetuneSettings()),
        ("training", contract.TrainingSettings()),
        ("model", contract.ModelSettings()),
    ],
    ids=["dataset", "finetune", "training", "model"],
)
def test_defaults_agree_with_the_trainer_contract(section: str, settings: Any) -> None:
    props = crd.node(f"spec.{section}")["properties"]
    defaulted = {name: p["default"] for name, p in props.items() if "default" in p}
    assert defaulted, f"spec.{section}: no defaults"
    for name, value in defaulted.items():
        assert getattr(settings, name) == value, f"spec.{section}.{name}: CRD default {value!r}"


def test_the_result_and_the_status_schema_agree() -> None:
    """The result's freeze decisions and decided-by values are the ones status.finetune allows."""
    freeze = crd.node("status.finetune.freeze")["properties"]
    assert tuple(freeze["decidedBy"]["enum"]) == ("user", "auto")
    assert (freeze["rule"]["minimum"], freeze["rule"]["maximum"]) == (1, 4)
    assert set(contract.APPLIED_STRATEGIES) == set(contract.FREEZE_STRATEGIES) - {"auto"}
    for name in ("top1", "top5"):
        node = crd.node(f"status.metrics.{name}")
        assert (node["minimum"], node["maximum"]) == (0, 1)
