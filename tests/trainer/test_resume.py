"""Whose checkpoint a run continues (resume.py): only its own job's, made with the same settings;
any other is refused with CheckpointRefused naming what differs. And a damaged newest
checkpoint, in a run: the one before, with a warning."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from finetune_contract import EXIT_CHECKPOINT_REFUSED, EXIT_INTERRUPTED, TrainerSettings
from finetune_trainer import checkpoint, loop, resume, train

from tests.trainer.tiny_data import tiny_settings, write_list_dataset

JOB = {"namespace": "team-a", "name": "flowers", "uid": "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11"}
OTHER_UID = "7d1e9c2a-1111-4c4c-8e8e-0123456789ab"


def settings_for(data, out, job=JOB, **overrides):
    settings = tiny_settings(data, out, **overrides)
    return TrainerSettings.from_dict({**settings.to_dict(), "job": dict(job)})


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """(data, output folder) of JOB's run stopped by SIGTERM in epoch 2 (checkpoints of epoch 1
    and of epoch 2 step 1); each test works on a copy."""
    root = tmp_path_factory.mktemp("interrupted")
    data = write_list_dataset(root / "data", classes=3)
    real = loop.train_step
    calls = {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    loop.train_step = step_then_sigterm
    try:
        result = train.run(settings_for(data, root / "out"))
    finally:
        loop.train_step = real
    assert result.exitCode == EXIT_INTERRUPTED
    names = [p.name for p in checkpoint.checkpoint_dirs(root / "out")]
    assert names == ["epoch-0001-step00001", "epoch-0001"]
    return data, root / "out"


@pytest.fixture
def output(interrupted, tmp_path):
    shutil.copytree(interrupted[1], tmp_path / "out")
    return tmp_path / "out"


def test_the_same_job_with_the_same_settings_resumes(interrupted, output):
    result = train.run(settings_for(interrupted[0], output))
    assert result.exitCode == 0, result.message
    assert result.resumedFromEpoch == 1 and result.epochsRun == 2
    state = json.loads((checkpoint.find_latest(output) / "state.json").read_text())
    assert state["job"] == JOB
    assert state["settings"] == resume.resume_settings(settings_for(interrupted[0], output))
    assert state["fingerprint"] == resume.fingerprint(state["settings"])
    metrics = json.loads((output / "best_model" / "metrics.json").read_text())
    assert metrics["job"] == JOB


@pytest.mark.parametrize(
    ("job", "words"),
    [
        (
            {**JOB, "uid": OTHER_UID},  # deleted and created again with the same name
            f"not of this one (job team-a/flowers (uid {OTHER_UID}))",
        ),
        ({**JOB, "namespace": "team-b"}, "not of this one (job team-b/flowers"),
        ({"namespace": "", "name": "", "uid": ""}, "not of this one (a run outside Kubernetes)"),
    ],
    ids=["recreated", "other-namespace", "outside-kubernetes"],
)
def test_another_jobs_checkpoint_is_refused(interrupted, output, job, words):
    before = sorted(p.name for p in (output / "checkpoints").iterdir())
    result = train.run(settings_for(interrupted[0], output, job=job))
    assert result.exitCode == EXIT_CHECKPOINT_REFUSED and result.reason == "CheckpointRefused"
    owner = f"holds checkpoint epoch-0001-step00001 of job team-a/flowers (uid {JOB['uid']}), "
    assert owner + words in result.message, result.message
    assert "never continues another's checkpoints" in result.message
    assert "use another output.dir" in result.message
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == before  # untouched


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"training__epochs": 3}, "training.epochs: 2 in the checkpoint, 3 now"),
        ({"training__learningRate": 0.5}, "training.learningRate: 0.0 in the checkpoint, 0.5 now"),
        ({"training__seed": 7}, "training.seed: 0 in the checkpoint, 7 now"),
        ({"training__batchSize": 2}, "training.batchSize: 4 in the checkpoint, 2 now"),
        ({"finetune__freeze": "fc-only"}, 'finetune.freeze: "none" in the checkpoint, "fc-only" now'),
        ({"dataset__imageSize": 24, "dataset__resizeShort": 24}, "dataset.imageSize: 16 in the checkpoint"),
        ({"dataset__horizontalFlip": False}, "dataset.horizontalFlip: true in the checkpoint, false now"),
        ({"model__architecture": "ResNet34_vd"}, 'model.architecture: "ResNet18_vd" in the checkpoint'),
    ],
)
def test_a_checkpoint_made_with_other_settings_is_refused(interrupted, output, overrides, words):
    result = train.run(settings_for(interrupted[0], output, **overrides))
    assert result.exitCode == EXIT_CHECKPOINT_REFUSED
    assert "of this job made with other settings (" in result.message
    assert words in result.message, result.message


def test_settings_that_do_not_shape_the_run_may_change(interrupted, output, tmp_path):
    settings = settings_for(
        interrupted[0],
        output,
        training__numWorkers=2,
        training__logEverySteps=5,
        training__amp="off",
        output__resultPath=str(tmp_path / "elsewhere"),
    )
    settings.cacheDir = str(tmp_path / "other-cache")
    result = train.run(settings)
    assert result.exitCode == 0, result.message
    assert result.resumedFromEpoch == 1


def test_changed_class_count_in_the_data_is_refused(interrupted, output, tmp_path):
    data = write_list_dataset(tmp_path / "four", classes=4)
    result = train.run(settings_for(data, output))
    assert result.exitCode == EXIT_CHECKPOINT_REFUSED
    assert "classes: 3 in the checkpoint, 4 in the data now" in result.message


def _edit_state(path, change):
    state = json.loads((path / "state.json").read_text())
    change(state)
    (path / "state.json").write_text(json.dumps(state))


def test_a_checkpoint_that_does_not_say_whose_it_is_is_refused(interrupted, output):
    """Written by a trainer before checkpoints recorded their job and settings."""
    for path in checkpoint.checkpoint_dirs(output):
        _edit_state(path, lambda s: [s.pop(k) for k in ("job", "settings", "fingerprint", "files")])
    result = train.run(settings_for(interrupted[0], output))
    assert result.exitCode == EXIT_CHECKPOINT_REFUSED
    assert "written by an older trainer that did not record its job and settings" in result.message
    assert "move its checkpoints folder away or use another output.dir" in result.message


def test_a_setting_the_checkpoint_does_not_record_counts_as_its_default(interrupted, output):
    """A setting added to the trainer after the checkpoint was written: unchanged if this run
    uses its default (which is what the older trainer did), a difference otherwise."""
    latest = checkpoint.find_latest(output)
    _edit_state(latest, lambda s: s["settings"]["training"].pop("labelSmoothing"))
    refused = train.run(settings_for(interrupted[0], output, training__labelSmoothing=0.1))
    assert refused.exitCode == EXIT_CHECKPOINT_REFUSED
    assert "training.labelSmoothing: 0.0 in the checkpoint, 0.1 now" in refused.message
    resumed = train.run(settings_for(interrupted[0], output))
    assert resumed.exitCode == 0 and resumed.resumedFromEpoch == 1


def test_a_damaged_newest_checkpoint_in_a_run_gives_way_to_the_one_before(interrupted, output, capsys):
    newest = checkpoint.find_latest(output)
    data = (newest / "model.pdparams").read_bytes()
    (newest / "model.pdparams").write_bytes(data[: len(data) // 3])
    result = train.run(settings_for(interrupted[0], output))
    assert result.exitCode == 0, result.message
    assert result.resumedFromEpoch == 1
    log = capsys.readouterr().err
    assert "warning: checkpoint epoch-0001-step00001 cannot be used:" in log
    assert "model.pdparams:" in log and "bytes, but" in log
    assert f"resuming from {output / 'checkpoints' / 'epoch-0001'} (epoch 1, step 0" in log
    (rejected,) = (output / "checkpoints").glob("rejected-epoch-0001-step00001-*")
    assert (rejected / "model.pdparams").stat().st_size == len(data) // 3  # kept as found


def test_when_no_checkpoint_is_usable_the_run_starts_afresh(interrupted, output, capsys):
    for path in checkpoint.checkpoint_dirs(output):
        (path / "optimizer.pdopt").write_bytes(b"")
    result = train.run(settings_for(interrupted[0], output))
    assert result.exitCode == 0, result.message
    assert result.resumedFromEpoch is None and result.epochsRun == 2
    log = capsys.readouterr().err
    assert log.count("cannot be used") == 2
    assert "warning: no checkpoint could be used: starting afresh" in log
