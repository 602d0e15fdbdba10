"""TrainerSettings: built from JSON with unknown keys and wrong types refused, validated with an
error naming the field, and the same settings after a round trip through JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest
from finetune_contract import CHECKPOINT_SETTINGS, RUN_ONLY_SETTINGS, SettingsError, TrainerSettings


def test_defaults_are_valid_and_round_trip_through_json():
    settings = TrainerSettings()
    settings.validate()
    assert TrainerSettings.from_json(settings.to_json()) == settings


def test_a_full_settings_object_round_trips_through_json():
    settings = TrainerSettings.from_dict(
        {
            "model": {
                "architecture": "ResNet18_vd",
                "pretrained": {"path": "/data/r18.pdparams", "sha256": "a" * 64},
            },
            "dataset": {
                "root": "/data",
                "numClasses": 4,
                "imageSize": 32,
                "resizeShort": 37,
                "horizontalFlip": False,
            },
            "finetune": {"freeze": "stages", "freezeStages": 2, "lrMultList": [0.1, 0.1, 0.2, 0.2, 1]},
            "training": {"epochs": 3, "batchSize": 8, "learningRate": 0.002, "seed": 7},
            "output": {"dir": "/output/ns/job/0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11"},
            "job": {"namespace": "ns", "name": "job", "uid": "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11"},
        }
    )
    assert TrainerSettings.from_json(settings.to_json()) == settings
    assert settings.finetune.lrMultList == [0.1, 0.1, 0.2, 0.2, 1.0]  # numbers become floats
    assert json.loads(settings.to_json())["dataset"]["horizontalFlip"] is False


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"training": {"epochz": 3}}, "training.epochz: unknown field"),
        ({"training": {"epochs": "3"}}, "training.epochs: must be an integer"),
        ({"training": {"epochs": True}}, "training.epochs: must be an integer"),
        ({"training": {"learningRate": float("nan")}}, "training.learningRate: must be a finite number"),
        ({"dataset": {"horizontalFlip": "yes"}}, "dataset.horizontalFlip: must be true or false"),
        ({"dataset": {"root": 5}}, "dataset.root: must be a string"),
        ({"finetune": {"lrMultList": [1, "x"]}}, "finetune.lrMultList: must be a list of numbers"),
        ({"model": "ResNet50_vd"}, "model: must be an object"),
        ({"model": {"architecture": "ResNet50"}}, "model.architecture: 'ResNet50' is not one of"),
        (
            {"model": {"pretrained": {"name": "ResNet50_vd", "path": "/x"}}},
            "model.pretrained: give exactly one of name, url, path",
        ),
        ({"model": {"pretrained": {"url": "ftp://x"}}}, "model.pretrained.url: must be an http(s) URL"),
        ({"model": {"pretrained": {"sha256": "xyz"}}}, "model.pretrained.sha256: must be 64 hexadecimal"),
        ({"dataset": {"format": "tfrecord"}}, "dataset.format: 'tfrecord' is not one of"),
        ({"dataset": {"corruptImages": "ignore"}}, "dataset.corruptImages: 'ignore' is not one of"),
        ({"dataset": {"numClasses": -1}}, "dataset.numClasses: must be an integer >= 0"),
        ({"dataset": {"numClasses": 1}}, "dataset.numClasses: a classifier needs at least 2 classes"),
        ({"dataset": {"imageSize": 4}}, "dataset.imageSize: must be an integer >= 8"),
        (
            {"dataset": {"imageSize": 224, "resizeShort": 200}},
            "dataset.resizeShort: must be an integer >= 224",
        ),
        ({"dataset": {"cropScaleMin": 0.0}}, "dataset.cropScaleMin: must be in (0, 1]"),
        ({"finetune": {"freeze": "sometimes"}}, "finetune.freeze: 'sometimes' is not one of"),
        ({"finetune": {"freeze": "stages"}}, "finetune.freezeStages: must be 1..4"),
        ({"finetune": {"lrMultList": [1, 1, 1, 1]}}, "finetune.lrMultList: must be 5 non-negative numbers"),
        (
            {"finetune": {"freeze": "from-scratch"}, "model": {"pretrained": {"name": "ResNet50_vd"}}},
            "finetune.freeze: 'from-scratch' uses no pretrained weights",
        ),
        ({"training": {"epochs": 0}}, "training.epochs: must be an integer >= 1"),
        ({"training": {"batchSize": 0}}, "training.batchSize: must be an integer >= 1"),
        ({"training": {"warmupEpochs": -1}}, "training.warmupEpochs: must be an integer >= 0"),
        ({"training": {"seed": -1}}, "training.seed: must be an integer >= 0"),
        ({"training": {"momentum": -0.1}}, "training.momentum: must be a finite number >= 0"),
        ({"training": {"labelSmoothing": 1.0}}, "training.labelSmoothing: must be < 1"),
        ({"training": {"amp": "fp8"}}, "training.amp: 'fp8' is not one of"),
        ({"world": {"nodes": -1, "processesPerNode": 1}}, "world.nodes: must be an integer >= 0"),
        ({"world": {"nodes": 2, "processesPerNode": "8"}}, "world.processesPerNode: must be an integer"),
        ({"world": {"nodes": 2}}, "world: set both nodes and processesPerNode (or neither)"),
        ({"world": {"processesPerNode": 8}}, "world: set both nodes and processesPerNode (or neither)"),
        ({"world": {"ranks": 2}}, "world.ranks: unknown field"),
        (
            {"job": {"namespace": "ns", "name": "a"}},
            "job: give namespace, name and uid together (missing uid)",
        ),
        ({"job": {"uid": "u"}}, "job: give namespace, name and uid together (missing name, namespace)"),
        ({"job": {"namespace": "Team_A", "name": "a", "uid": "u"}}, "job.namespace: 'Team_A' is not a"),
        ({"job": {"namespace": "n" * 64, "name": "a", "uid": "u"}}, "job.namespace:"),
        ({"job": {"namespace": "ns", "name": "a/b", "uid": "u"}}, "job.name: 'a/b' is not a Kubernetes"),
        ({"job": {"namespace": "ns", "name": "x" * 254, "uid": "u"}}, "job.name:"),
        ({"job": {"namespace": "ns", "name": "a", "uid": ".."}}, "job.uid: '..' is not a Kubernetes uid"),
        ({"job": {"namespace": "ns", "name": "a", "uid": "u/../v"}}, "job.uid:"),
        ({"job": {"namespace": "ns", "name": "a", "uid": 5}}, "job.uid: must be a string"),
    ],
)
def test_wrong_settings_name_the_field(data, words):
    with pytest.raises(SettingsError) as err:
        TrainerSettings.from_dict(data)
    assert words in str(err.value)


def test_settings_json_must_be_json():
    with pytest.raises(SettingsError, match="settings: not valid JSON"):
        TrainerSettings.from_json("{")


def test_the_world_is_nodes_times_processes_and_unset_by_default():
    assert TrainerSettings().world.size == 0  # a trainer run by hand: the launcher decides
    world = TrainerSettings.from_dict({"world": {"nodes": 3, "processesPerNode": 8}}).world
    assert (world.nodes, world.processesPerNode, world.size) == (3, 8, 24)


def test_a_job_identity_is_whole_or_absent():
    """A run outside Kubernetes has none; the operator's runs name the job, which may be as long
    as Kubernetes allows (a namespace of 63, a name of 253 characters)."""
    assert TrainerSettings().job.uid == ""
    settings = TrainerSettings.from_dict(
        {
            "job": {
                "namespace": "n" * 63,
                "name": "a." + "b" * 251,
                "uid": "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11",
            }
        }
    )
    assert len(settings.job.name) == 253


def _settings_units() -> list[str]:
    """Every setting as the checkpoint tables name it: `section.field` for the fields of a
    section (a nested object such as model.pretrained is one setting), `field` at the top."""
    units = []
    for f in dataclasses.fields(TrainerSettings):
        default = getattr(TrainerSettings(), f.name)
        if dataclasses.is_dataclass(default):
            units += [f"{f.name}.{g.name}" for g in dataclasses.fields(default)]
        else:
            units.append(f.name)
    return units


def test_every_setting_is_decided_for_checkpoints_once():
    """A new setting must be put in CHECKPOINT_SETTINGS (a checkpoint depends on it) or in
    RUN_ONLY_SETTINGS (it may change between a checkpoint and the run continuing it)."""
    recorded = [f"{section}.{key}" for section, keys in CHECKPOINT_SETTINGS.items() for key in keys]
    decided = recorded + list(RUN_ONLY_SETTINGS)
    assert sorted(decided) == sorted(set(decided)), "a setting is named twice"
    assert set(decided) == set(_settings_units()), (
        f"undecided: {sorted(set(_settings_units()) - set(decided))}; "
        f"not settings: {sorted(set(decided) - set(_settings_units()))}"
    )
