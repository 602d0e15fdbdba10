"""FineTuneJob spec -> TrainerSettings (trainer_settings.py)."""

import pytest
from finetune_contract import SettingsError, TrainerSettings
from finetune_operator.trainer_settings import trainer_settings

from tests.operator.jobs import job


def test_spec_fields_reach_the_trainer_with_the_pods_paths():
    settings = trainer_settings(
        job(
            training={"epochs": 3, "batchSize": 8, "learningRate": 0.002, "warmupEpochs": 1, "seed": 7},
            finetune={"freeze": "stages", "freezeStages": 2, "lrMultList": [0.1, 0.1, 0.2, 0.2, 1.0]},
        )
    )
    assert isinstance(settings, TrainerSettings)
    assert settings.model.architecture == "ResNet50_vd"
    assert settings.model.pretrained.name == "ResNet50_vd_ssld"
    assert settings.dataset.root == "/data"
    assert settings.dataset.numClasses == 102
    assert (settings.dataset.imageSize, settings.dataset.resizeShort) == (224, 256)
    assert settings.training.epochs == 3
    assert settings.training.learningRate == 0.002
    assert settings.training.seed == 7
    assert settings.finetune.freeze == "stages"
    assert settings.finetune.freezeStages == 2
    assert settings.finetune.lrMultList == [0.1, 0.1, 0.2, 0.2, 1.0]
    # The job's own folder in the output volume (its uid: a job created again with the same
    # name starts afresh), whose run it is, and the termination-message file.
    assert settings.output.dir == "/output/team-a/flowers/0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11"
    assert (settings.job.namespace, settings.job.name, settings.job.uid) == (
        "team-a",
        "flowers",
        "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11",
    )
    assert settings.output.resultPath == "/dev/termination-log"
    assert settings.cacheDir == "/cache"


def test_absent_learning_rate_means_the_recipe_default():
    assert trainer_settings(job(training={"epochs": 2, "warmupEpochs": 0})).training.learningRate == 0.0


def test_pretrained_path_is_resolved_inside_the_dataset_mount():
    settings = trainer_settings(
        job(model={"pretrained": {"path": "models/r50.pdparams", "sha256": "a" * 64}})
    )
    assert settings.model.pretrained.path == "/data/models/r50.pdparams"
    assert settings.model.pretrained.sha256 == "a" * 64


def test_url_source_and_small_images():
    url = "https://127.0.0.1:8443/ResNet18_vd_pretrained.pdparams"
    settings = trainer_settings(
        job(
            model={"architecture": "ResNet18_vd", "pretrained": {"url": url, "sha256": "b" * 64}},
            dataset={"volume": {"emptyDir": {}}, "numClasses": 10, "imageSize": 32},
        )
    )
    assert settings.model.pretrained.url == url
    assert (settings.dataset.imageSize, settings.dataset.resizeShort) == (32, 37)


def test_augmentation_and_label_names_reach_the_trainer():
    settings = trainer_settings(
        job(
            dataset={"numClasses": 4, "labelList": "labels.txt", "cropScaleMin": 0.9, "horizontalFlip": False}
        )
    )
    assert settings.dataset.labelList == "labels.txt"
    assert settings.dataset.cropScaleMin == 0.9
    assert settings.dataset.horizontalFlip is False
    # Absent: the recipe's defaults.
    defaults = trainer_settings(job()).dataset
    assert (defaults.labelList, defaults.cropScaleMin, defaults.horizontalFlip) == ("", 0.08, True)


def test_no_pretrained_section_gives_no_source():
    settings = trainer_settings(job(model={"architecture": "ResNet34_vd"}))
    assert (
        settings.model.pretrained.name
        == settings.model.pretrained.url
        == settings.model.pretrained.path
        == ""
    )


def test_contract_rejects_what_the_crd_let_through_naming_the_field():
    with pytest.raises(SettingsError, match=r"^finetune.freezeStages"):
        trainer_settings(job(finetune={"freeze": "stages"}))


@pytest.mark.parametrize(
    ("resources", "world"),
    [
        ({}, (1, 1)),  # the CRD's defaults: one node, one GPU
        ({"gpus": 0}, (1, 1)),  # one CPU process
        ({"gpus": 8}, (1, 8)),
        ({"nodes": 3, "gpus": 8}, (3, 8)),
        ({"nodes": 2, "gpus": 0}, (2, 1)),  # CPU ranks: one process per pod
    ],
)
def test_the_world_is_the_pods_times_their_processes(resources, world):
    w = trainer_settings(job(resources=resources)).world
    assert (w.nodes, w.processesPerNode) == world


def test_every_job_has_a_folder_of_its_own():
    """Jobs whose names join to the same text, and a job created again with its old name, each
    get their own folder; the path's parts stay within a file name's 255 bytes."""
    jobs = [
        {"namespace": "a-b", "name": "c", "uid": "u1"},
        {"namespace": "a", "name": "b-c", "uid": "u2"},
        {"namespace": "a", "name": "b-c", "uid": "u3"},  # deleted and created again
        {"namespace": "n" * 63, "name": "x" * 253, "uid": "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11"},
    ]
    folders = [trainer_settings(job(metadata=meta)).output.dir for meta in jobs]
    assert len(set(folders)) == len(jobs)
    for meta, folder in zip(jobs, folders, strict=True):
        assert folder == f"/output/{meta['namespace']}/{meta['name']}/{meta['uid']}"
        assert all(len(part.encode()) <= 255 for part in folder.split("/"))


def test_a_job_without_a_uid_is_refused():
    with pytest.raises(SettingsError, match=r"^metadata.uid"):
        trainer_settings(job(metadata={"uid": ""}))
