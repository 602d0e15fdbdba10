"""The training loop on tiny data: schedule, result, progress lines, failures, resume after SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import paddle
import pytest
from finetune_contract import (
    EXIT_CHECKPOINT_REFUSED,
    EXIT_DATA_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NON_FINITE_LOSS,
    EXIT_TRANSIENT,
    PROGRESS_PREFIX,
    RESULT_MAX_BYTES,
    decode_result,
)
from finetune_trainer import checkpoint, loop, setup, train
from finetune_trainer.model import build_model
from finetune_trainer.schedule import (
    WarmupCosine,
    build_optimizer,
    default_learning_rate,
    lr_at,
    warmup_steps_for,
)
from finetune_trainer.state import jsonable

from tests.trainer.tiny_data import tiny_settings, write_list_dataset


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------
def test_default_learning_rate_follows_the_recipe():
    assert default_learning_rate(32) == pytest.approx(0.0125)
    assert default_learning_rate(256) == pytest.approx(0.1)  # linear in the global batch
    assert default_learning_rate(32, from_scratch=True) == pytest.approx(0.125)  # 10x the finetune rate


def test_warmup_is_linear_from_zero_then_cosine_per_iteration():
    base, warm, total = 0.1, 10, 50
    assert lr_at(0, base, warm, total) == 0.0
    assert lr_at(5, base, warm, total) == pytest.approx(0.05)
    assert lr_at(9, base, warm, total) == pytest.approx(0.09)
    assert lr_at(10, base, warm, total) == pytest.approx(0.1)  # peak right after the warm-up
    assert lr_at(30, base, warm, total) == pytest.approx(0.05)  # half-way down the cosine
    assert lr_at(20, base, warm, total) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert lr_at(50, base, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, base, 0, total) == pytest.approx(base)  # no warm-up: starts at the peak


def test_warmup_never_takes_more_than_half_the_run():
    assert warmup_steps_for(5, 20, 10) == 50  # the recipe: 5 of 20 epochs
    assert warmup_steps_for(5, 4, 10) == 20
    assert warmup_steps_for(0, 4, 10) == 0


def test_scheduler_steps_per_iteration_and_drives_the_optimizer():
    sched = WarmupCosine(0.1, warmup_steps=4, total_steps=12)
    model = build_model("ResNet18_vd", 2)
    opt = build_optimizer(model.parameters(), sched, momentum=0.9, weight_decay=1e-5)
    seen = []
    for _ in range(13):
        seen.append(opt.get_lr())
        sched.step()
    assert seen == pytest.approx([lr_at(i, 0.1, 4, 12) for i in range(13)])
    # A fresh scheduler restored from the state dict continues at the same position.
    again = WarmupCosine(0.1, 4, 12)
    sched2 = WarmupCosine(0.1, 4, 12)
    for _ in range(6):
        sched2.step()
    again.set_state_dict(sched2.state_dict())
    assert again.get_lr() == pytest.approx(lr_at(6, 0.1, 4, 12))


# ------------------------------------------------------------------------------------------------
# Runs on tiny data
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def dataset(tmp_path):
    return write_list_dataset(tmp_path / "data", classes=3, train_per_class=4, val_per_class=2)


def _progress_lines(text):
    return [
        json.loads(line[len(PROGRESS_PREFIX) :])
        for line in text.splitlines()
        if line.startswith(PROGRESS_PREFIX)
    ]


def test_run_trains_evaluates_checkpoints_and_reports(dataset, tmp_path, capsys):
    settings = tiny_settings(dataset, tmp_path / "out")
    result = train.run(settings)
    assert result.exitCode == 0, result
    assert result.reason == "Completed"
    assert result.epochsRun == result.epochs == 2
    assert 0 <= result.top1 <= result.top5 <= 1
    assert result.bestEpoch in (1, 2)
    assert result.freeze.strategy == "none" and result.freeze.decidedBy == "user"
    model = build_model("ResNet18_vd", 3)
    assert result.freeze.trainableParameters == sum(
        int(np.prod(p.shape)) for n, p in model.named_parameters() if not n.endswith(("_mean", "_variance"))
    )
    assert result.resumedFromEpoch is None
    assert result.imagesPerSecond > 0 and result.durationSeconds > 0
    assert result.learningRate == pytest.approx(0.0125 * 4 / 32)

    # Progress: one line at the start (epoch 0), then one per epoch with the metrics.
    lines = _progress_lines(capsys.readouterr().out)
    assert [p["epoch"] for p in lines] == [0, 1, 2]
    assert all(p["epochs"] == 2 for p in lines)
    for p in lines[1:]:
        assert {"top1", "top5", "loss", "imagesPerSecond"} <= set(p)
    assert max(p["top1"] for p in lines[1:]) == result.top1

    # Result: compact copy at resultPath, full copy in the output directory.
    short = decode_result((tmp_path / "termination-log").read_text())
    assert short.top1 == result.top1 and short.exitCode == 0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["epochsRun"] == 2

    # Checkpoint of the last epoch, best model, exported inference model and labels.
    latest = checkpoint.find_latest(tmp_path / "out")
    assert latest.name == "epoch-0002"
    _, _, state = checkpoint.load_checkpoint(latest)
    assert state["epoch"] == 2 and state["globalStep"] == 2 * 3  # 12 images / batch 4
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert [h["valImages"] for h in state["history"]] == [6, 6]
    assert (tmp_path / "out" / "best_model" / "model.pdparams").is_file()
    assert (tmp_path / "out" / "inference" / "labels.txt").read_text() == "0\n1\n2\n"
    layer = paddle.jit.load(str(tmp_path / "out" / "inference" / "inference"))
    layer.eval()
    logits = layer(paddle.zeros([2, 3, 16, 16]))
    assert logits.shape == [2, 3]


def test_non_finite_loss_stops_the_run(dataset, tmp_path):
    settings = tiny_settings(dataset, tmp_path / "out", training__learningRate=1e30, training__warmupEpochs=0)
    result = train.run(settings)
    assert result.exitCode == EXIT_NON_FINITE_LOSS
    assert result.reason == "NonFiniteLoss"
    assert "at epoch 1, step" in result.message and "lower training.learningRate" in result.message
    saved = decode_result((tmp_path / "termination-log").read_text())
    assert saved.exitCode == EXIT_NON_FINITE_LOSS and saved.message == result.message


def test_data_errors_exit_with_the_data_error_code(dataset, tmp_path):
    (dataset / "val_list.txt").write_text("images/val_c0_0.png 0\nimages/nope.png 1\n")
    result = train.run(tiny_settings(dataset, tmp_path / "out"))
    assert result.exitCode == EXIT_DATA_ERROR and result.reason == "DataError"
    assert "val_list.txt:2: image 'images/nope.png' not found" in result.message
    assert decode_result((tmp_path / "termination-log").read_text()).message == result.message


def test_corrupt_image_policy_in_a_run(dataset, tmp_path):
    (dataset / "images" / "train_c1_0.png").write_bytes(b"garbage")
    failed = train.run(tiny_settings(dataset, tmp_path / "a"))
    assert failed.exitCode == EXIT_DATA_ERROR
    assert "train_c1_0.png: image cannot be decoded" in failed.message
    skipped = train.run(
        tiny_settings(dataset, tmp_path / "b", dataset__corruptImages="skip", training__epochs=1)
    )
    assert skipped.exitCode == 0 and skipped.corruptImagesSkipped == 1


def test_result_stays_under_4096_bytes_with_long_parameter_lists(dataset, tmp_path):
    # A pretrained file with the right backbone, a 1000-class fc and 400 extra long-named tensors.
    state = {k: v.numpy() for k, v in build_model("ResNet18_vd", 1000).state_dict().items()}
    for i in range(400):
        state[f"auxiliary_head.some_long_parameter_name_{i:04d}.weight"] = np.zeros([1], dtype="float32")
    weights = tmp_path / "pre.pdparams"
    paddle.save(state, str(weights))
    settings = tiny_settings(dataset, tmp_path / "out", training__epochs=1)
    settings.model.pretrained.path = str(weights)
    result = train.run(settings)
    assert result.exitCode == 0, result.message
    assert result.load.strippedParameters == ["fc.weight", "fc.bias"]
    assert len(result.load.unexpectedParameters) == 400
    text = (tmp_path / "termination-log").read_text()
    assert len(text.encode()) <= RESULT_MAX_BYTES
    short = decode_result(text)
    assert short.load.truncated == {"unexpectedParameters": 400}
    assert short.load.strippedParameters == ["fc.weight", "fc.bias"]
    assert short.top1 == result.top1
    full = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(full["unexpectedParameters"]) == 400


def test_checkpoint_of_another_model_in_the_output_dir_is_refused(dataset, tmp_path):
    assert train.run(tiny_settings(dataset, tmp_path / "out", training__epochs=1)).exitCode == 0
    other = tiny_settings(dataset, tmp_path / "out", training__epochs=1, model__architecture="ResNet34_vd")
    result = train.run(other)
    assert result.exitCode == EXIT_CHECKPOINT_REFUSED and result.reason == "CheckpointRefused"
    assert 'model.architecture: "ResNet18_vd" in the checkpoint, "ResNet34_vd" now' in result.message


def sigterm_after_step(monkeypatch, n):
    """Send this process SIGTERM right after the n-th training step (1-based, over all epochs)."""
    real_step = loop.train_step
    calls = {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(loop, "train_step", step_then_sigterm)
    return real_step


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    """3 epochs of 3 steps: SIGTERM during epoch 3 (after step 1), restart, finish; compare with a
    run that never stopped: epoch numbering, LR position, history and final weights."""
    reference = train.run(tiny_settings(dataset, tmp_path / "ref", training__epochs=3))
    assert reference.exitCode == 0

    real_step = sigterm_after_step(monkeypatch, 7)  # epoch 3, step 1 done
    out = tmp_path / "resumed"
    first = train.run(tiny_settings(dataset, out, training__epochs=3))
    assert first.exitCode == EXIT_INTERRUPTED and first.reason == "Interrupted"
    assert first.epochsRun == 2
    latest = checkpoint.find_latest(out)
    assert latest.name == "epoch-0002-step00001"
    _, _, state = checkpoint.load_checkpoint(latest)
    assert (state["epoch"], state["stepInEpoch"], state["globalStep"]) == (2, 1, 7)
    assert state["scheduler"]["last_epoch"] == 7

    monkeypatch.setattr(loop, "train_step", real_step)
    second = train.run(tiny_settings(dataset, out, training__epochs=3))
    assert second.exitCode == 0, second.message
    assert second.resumedFromEpoch == 2
    assert second.epochsRun == 3

    _, _, ref_state = checkpoint.load_checkpoint(checkpoint.find_latest(tmp_path / "ref"))
    _, _, res_state = checkpoint.load_checkpoint(checkpoint.find_latest(out))
    assert res_state["globalStep"] == ref_state["globalStep"] == 9
    assert [h["epoch"] for h in res_state["history"]] == [1, 2, 3]
    for ours, theirs in zip(res_state["history"], ref_state["history"], strict=True):
        assert ours["learningRate"] == pytest.approx(theirs["learningRate"])
        assert ours["top1"] == pytest.approx(theirs["top1"], abs=1e-6)
        assert ours["valLoss"] == pytest.approx(theirs["valLoss"], rel=1e-3)
    ref_w, _, _ = checkpoint.load_checkpoint(checkpoint.find_latest(tmp_path / "ref"))
    res_w, _, _ = checkpoint.load_checkpoint(checkpoint.find_latest(out))
    worst = max(float(np.abs(ref_w[k] - res_w[k]).max()) for k in ref_w)
    assert worst < 1e-4


def test_resume_loads_weights_from_the_checkpoint(dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = sigterm_after_step(monkeypatch, 3)  # the last step of epoch 1
    assert train.run(tiny_settings(dataset, out, training__epochs=2)).exitCode == EXIT_INTERRUPTED
    monkeypatch.setattr(loop, "train_step", real)
    assert checkpoint.find_latest(out).name == "epoch-0000-step00003"  # trained, not evaluated
    saved, _, _ = checkpoint.load_checkpoint(checkpoint.find_latest(out))
    seen = {}
    real = loop.train_step

    def capture(model, *args, **kwargs):
        if not seen:
            seen.update({k: v.numpy().copy() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", capture)
    result = train.run(tiny_settings(dataset, out, training__epochs=2))
    assert result.resumedFromEpoch == 0 and result.epochsRun == 2
    for key, value in saved.items():
        np.testing.assert_array_equal(seen[key], value, err_msg=key)


def test_only_rank_zero_writes(dataset, tmp_path, monkeypatch, capsys):
    """The world-size-1 path with the writer role switched off, as on ranks 1..N-1."""

    class NotMain(setup.Distributed):
        @property
        def is_main(self):
            return False

    monkeypatch.setattr(setup, "setup_distributed", lambda world=None: NotMain())
    out = tmp_path / "out"
    result = train.run(tiny_settings(dataset, out, training__epochs=1))
    assert result.exitCode == 0
    assert not (tmp_path / "termination-log").exists()
    assert not out.exists() or not any(out.iterdir())
    assert PROGRESS_PREFIX not in capsys.readouterr().out


def test_amp_only_on_a_gpu():
    assert setup.amp_dtype_for("auto", on_gpu=True) == "float16"
    assert setup.amp_dtype_for("bfloat16", on_gpu=True) == "bfloat16"
    assert setup.amp_dtype_for("off", on_gpu=True) is None
    for mode in ("auto", "float16", "bfloat16", "off"):
        assert setup.amp_dtype_for(mode, on_gpu=False) is None


def test_out_of_memory_is_a_transient_failure(dataset, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 4 GiB")

    monkeypatch.setattr(loop, "train_step", no_memory)
    result = train.run(tiny_settings(dataset, tmp_path / "out", training__epochs=1))
    assert result.exitCode == EXIT_TRANSIENT and result.reason == "TransientError"
    assert "out of memory" in result.message and "batchSize" in result.message


@pytest.mark.parametrize("during_batch", [0, 2, 4])
def test_sigterm_during_evaluation_abandons_it_and_keeps_the_training(tmp_path, monkeypatch, during_batch):
    """SIGTERM while evaluating (18 images, 5 batches): the pass is abandoned at the next batch,
    not finished (the grace period is short), the epoch's training is checkpointed with its
    tally, and the next attempt evaluates it without training it again: history, schedule and
    result as in an uninterrupted run. In the last batch there is nothing left to abandon: the
    epoch ends and its own checkpoint is the position."""
    dataset = write_list_dataset(tmp_path / "data", classes=3, train_per_class=4, val_per_class=6)
    reference = train.run(tiny_settings(dataset, tmp_path / "ref"))
    real_split = loop.split_corrupt
    seen = {"batches": 0}

    def sigterm_during_evaluation(images, labels, indices, dataset_, counter):
        if not dataset_.train:
            if seen["batches"] == during_batch:
                os.kill(os.getpid(), signal.SIGTERM)
            seen["batches"] += 1
        return real_split(images, labels, indices, dataset_, counter)

    monkeypatch.setattr(loop, "split_corrupt", sigterm_during_evaluation)
    out = tmp_path / "out"
    result = train.run(tiny_settings(dataset, out))
    assert result.exitCode == EXIT_INTERRUPTED
    latest = checkpoint.find_latest(out)
    if during_batch < 4:
        assert f"during evaluation (abandoned after {during_batch + 1} of 5 batches)" in result.message
        assert seen["batches"] == during_batch + 1
        assert result.epochsRun == 0
        assert latest.name == "epoch-0000-step00003"
        _, _, state = checkpoint.load_checkpoint(latest)
        assert (state["epoch"], state["stepInEpoch"], state["globalStep"]) == (0, 3, 3)
        assert state["epochTraining"]["images"] == 12 and state["epochTraining"]["loss_sum"] > 0
    else:
        assert "stopped after epoch 1 (checkpoint saved)" in result.message
        assert latest.name == "epoch-0001"

    monkeypatch.setattr(loop, "split_corrupt", real_split)
    resumed = train.run(tiny_settings(dataset, out))
    assert resumed.exitCode == 0 and resumed.epochsRun == 2
    assert resumed.resumedFromEpoch == (0 if during_batch < 4 else 1)
    _, _, ours = checkpoint.load_checkpoint(checkpoint.find_latest(out))
    _, _, theirs = checkpoint.load_checkpoint(checkpoint.find_latest(tmp_path / "ref"))
    assert ours["globalStep"] == theirs["globalStep"] == 6  # no step trained twice
    assert ours["trainImages"] == theirs["trainImages"] == 24
    for mine, ref in zip(ours["history"], theirs["history"], strict=True):
        assert mine["trainLoss"] == pytest.approx(ref["trainLoss"], rel=1e-4)
        assert mine["top1"] == pytest.approx(ref["top1"], abs=1e-6)
        assert mine["learningRate"] == pytest.approx(ref["learningRate"])
    assert resumed.top1 == pytest.approx(reference.top1, abs=1e-6)


def test_auto_freeze_decision_is_reported_and_kept_on_resume(dataset, tmp_path, monkeypatch):
    weights = tmp_path / "pre.pdparams"
    paddle.save(build_model("ResNet18_vd", 10).state_dict(), str(weights))
    out = tmp_path / "out"
    settings = tiny_settings(dataset, out, training__epochs=2, finetune__freeze="auto")
    settings.model.pretrained.path = str(weights)
    real = sigterm_after_step(monkeypatch, 4)  # epoch 2, step 1: epoch 1 is checkpointed
    first = train.run(settings)
    monkeypatch.setattr(loop, "train_step", real)
    assert first.exitCode == EXIT_INTERRUPTED, first.message
    freeze = first.freeze
    assert freeze.decidedBy == "auto" and freeze.rule in (1, 2, 3, 4)
    assert freeze.strategy in ("fc-only", "none", "stages", "from-scratch")
    assert freeze.evidence["totalImages"] == 12 and freeze.evidence["size"] == "small"
    if freeze.strategy == "fc-only":
        assert freeze.trainableParameters == 512 * 3 + 3
    # The next attempt continues with the same decision, from the checkpoint, without re-deciding.
    second = train.run(settings)
    assert second.resumedFromEpoch == 1
    assert second.freeze == freeze
    assert second.load.strippedParameters == ["fc.weight", "fc.bias"]


def test_auto_without_pretrained_weights_trains_from_scratch(dataset, tmp_path):
    result = train.run(tiny_settings(dataset, tmp_path / "out", training__epochs=1, finetune__freeze="auto"))
    assert result.exitCode == 0
    assert result.freeze.strategy == "from-scratch" and result.freeze.decidedBy == "auto"
    assert result.learningRate == pytest.approx(0.125 * 4 / 32)  # the from-scratch default


def test_an_unforeseen_crash_still_leaves_a_result(dataset, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(loop, "train_step", broken)
    with pytest.raises(RuntimeError, match="nobody planned"):
        train.run(tiny_settings(dataset, tmp_path / "out", training__epochs=1))
    result = decode_result((tmp_path / "termination-log").read_text())
    assert result.exitCode == 1 and result.reason == "TrainerError"
    assert result.message == "RuntimeError: something nobody planned for"


def test_amp_scaler_state_survives_the_json_checkpoint():
    # GradScaler is disabled on CPU; this is the shape of its state_dict() on a GPU.
    scaler_state = {
        "scale": np.array([32768.0], dtype="float32"),
        "incr_count": np.int64(3),
        "incr_ratio": 2.0,
    }
    restored = json.loads(json.dumps(scaler_state, default=jsonable))
    assert restored == {"scale": [32768.0], "incr_count": 3, "incr_ratio": 2.0}
    assert restored["scale"][0] == 32768.0  # what GradScaler.load_state_dict reads
