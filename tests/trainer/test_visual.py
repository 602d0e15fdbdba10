"""What a person looks at in the output folder: VisualDL logs read back with visualdl's own
reader, the curves and confusion-matrix PNGs, the per-class report, and the worst classes in the
result; also after a resume, and never at the cost of the run."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
from finetune_contract import EXIT_INTERRUPTED
from finetune_trainer import checkpoint, curves, loop, train, visual
from finetune_trainer.per_class import confusion_matrix
from finetune_trainer.schedule import lr_at
from PIL import Image

from tests.trainer.tiny_data import tiny_settings, write_list_dataset

VAL_LABELS = [0, 0, 1, 1, 2, 2]  # write_list_dataset(classes=3, val_per_class=2)


@pytest.fixture
def dataset(tmp_path):
    return write_list_dataset(tmp_path / "data", classes=3, train_per_class=4, val_per_class=2)


def read_runs(folder) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run folder name: {tag: [(step, value), ...]}} as VisualDL's server reads the folder."""
    from visualdl import LogReader

    reader = LogReader(logdir=str(folder))
    runs = {}
    for run in reader.runs():
        tags = [
            t.rsplit("/", 1)[1]
            for t, kind in reader.tags().items()
            if kind == "scalar" and t.startswith(run + "/")
        ]
        runs[run.rsplit("/", 1)[1]] = {
            tag: [(int(step), float(value)) for step, _, _, value in reader.get_log_data("scalar", run, tag)]
            for tag in tags
        }
    return runs


def assert_png(path, min_size=(300, 200)) -> np.ndarray:
    """A complete, decodable PNG that is not blank; returns its RGB pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10, f"{path} looks blank"
    return pixels


def state_of(out):
    return checkpoint.load_checkpoint(checkpoint.find_latest(out))[2]


def test_a_run_logs_to_visualdl_draws_its_curves_and_reports_each_class(dataset, tmp_path):
    out = tmp_path / "out"
    result = train.run(tiny_settings(dataset, out, training__epochs=3))
    assert result.exitCode == 0, result.message
    state = state_of(out)
    history = state["history"]
    steps_per_epoch = 3  # 12 images, batch 4

    # VisualDL, as its server reads the folder: one run, PaddleClas's tags.
    runs = read_runs(out / "vdl")
    assert list(runs) == ["from-start"]
    run = runs["from-start"]
    assert {"lr(WarmupCosine)", "train_loss", "train_top1", "train_top5"} <= set(run)
    assert {"eval_acc", "eval_top5", "eval_loss"} <= set(run)
    assert [s for s, _ in run["train_loss"]] == list(range(1, 3 * steps_per_epoch + 1))  # logEverySteps 1
    for step, rate in run["lr(WarmupCosine)"]:  # the rate each step used
        assert rate == pytest.approx(
            lr_at(step - 1, result.learningRate, steps_per_epoch, 9), rel=1e-6, abs=1e-9
        )
    assert [s for s, _ in run["eval_acc"]] == [1, 2, 3]  # by epoch
    for (_, top1), (_, top5), (_, loss), record in zip(
        run["eval_acc"], run["eval_top5"], run["eval_loss"], history, strict=True
    ):
        assert top1 == pytest.approx(record["top1"], abs=1e-6) and top5 == pytest.approx(
            record["top5"], abs=1e-6
        )
        assert loss == pytest.approx(record["valLoss"], rel=1e-5)
    ends = [value for step, value in run["train_top1"] if step % steps_per_epoch == 0]
    assert ends == pytest.approx([r["trainTop1"] for r in history], abs=1e-6)  # the epoch's mean
    for _, value in run["train_top1"] + run["train_top5"]:
        assert 0 <= value <= 1

    # The per-class report is the best epoch's, and its matrix counts the validation set.
    report = json.loads((out / "per_class.json").read_text())
    best = next(r for r in history if r["epoch"] == result.bestEpoch)
    matrix = np.array(report["matrix"])
    assert report["epoch"] == result.bestEpoch and report["valImages"] == best["valImages"] == 6
    assert matrix.sum(axis=1).tolist() == np.bincount(VAL_LABELS).tolist()
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result.top1, abs=1e-6)
    assert [row["correct"] for row in report["classes"]] == np.diag(matrix).tolist()
    assert report["worstClasses"] == [c.to_dict() for c in result.worstClasses]
    assert all(c.accuracy < 1 for c in result.worstClasses)
    assert len(result.worstClasses) == sum(row["correct"] < row["images"] for row in report["classes"])

    assert_png(out / visual.CURVES_FILE)
    assert_png(out / visual.CONFUSION_FILE)


def red_pixels(pixels: np.ndarray) -> int:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return int(((r > 180) & (r - g > 60) & (r - b > 60)).sum())


def test_the_confusion_picture_shows_mistakes_in_red_and_only_mistakes(tmp_path):
    names = [f"class {c}" for c in range(102)]
    labels = np.repeat(np.arange(102), 10)
    rng = np.random.default_rng(0)
    red = {}
    for name, error_rate in (("perfect", 0.0), ("few", 0.01), ("many", 0.2)):
        predicted = np.where(rng.random(1020) < error_rate, rng.integers(0, 102, 1020), labels)
        path = tmp_path / f"{name}.png"
        curves.plot_confusion(confusion_matrix(labels, predicted, 102), names, path)
        red[name] = red_pixels(assert_png(path, min_size=(1000, 900)))  # 102 classes get room
    assert red["perfect"] == 0
    assert red["many"] > red["few"] + 1000 > 1000  # each mistaken cell adds its red square


def test_the_curves_are_redrawn_from_the_history(tmp_path):
    record = {
        "trainLoss": 1.0,
        "valLoss": 1.2,
        "top1": 0.5,
        "top5": 0.9,
        "trainTop1": 0.4,
        "learningRate": 0.01,
    }
    history = [{**record, "epoch": 1}]
    schedule = [(s / 10, lr_at(s, 0.01, 10, 30)) for s in range(31)]
    curves.plot_curves(history, tmp_path / "one.png", schedule, best_epoch=1)
    history.append({**record, "epoch": 2, "trainLoss": 0.5, "top1": 0.8})
    curves.plot_curves(history, tmp_path / "two.png", schedule, best_epoch=2)
    one, two = assert_png(tmp_path / "one.png"), assert_png(tmp_path / "two.png")
    assert one.shape == two.shape and (one != two).any()
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_a_resumed_attempt_logs_its_own_run_and_reports_the_best_epoch(dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    settings = tiny_settings(dataset, out, training__epochs=2, training__warmupEpochs=0)
    real_end_epoch = loop.end_epoch

    def end_epoch_then_sigterm(*args, **kwargs):  # SIGTERM once epoch 1 is evaluated and saved
        real_end_epoch(*args, **kwargs)
        monkeypatch.setattr(loop, "end_epoch", real_end_epoch)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "end_epoch", end_epoch_then_sigterm)
    first = train.run(settings)
    assert first.exitCode == EXIT_INTERRUPTED and first.epochsRun == 1, first.message
    second = train.run(settings)  # the same job and settings: it resumes (resume.py)
    assert second.exitCode == 0 and second.resumedFromEpoch == 1
    runs = read_runs(out / "vdl")
    assert set(runs) == {"from-start", "from-epoch-0001"}
    assert [s for s, _ in runs["from-start"]["eval_acc"]] == [1]
    assert [s for s, _ in runs["from-epoch-0001"]["eval_acc"]] == [2]
    assert [s for s, _ in runs["from-epoch-0001"]["train_loss"]] == [4, 5, 6]  # global steps go on
    # The best epoch's matrix came through the checkpoint whichever attempt had it.
    state = state_of(out)
    assert sum(count for _, _, count in state["bestConfusion"]) == 6
    report = json.loads((out / "per_class.json").read_text())
    assert report["epoch"] == second.bestEpoch
    assert report["worstClasses"] == [c.to_dict() for c in second.worstClasses]


def test_pictures_and_logs_never_cost_the_run(dataset, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(curves, "plot_curves", broken)
    monkeypatch.setattr(curves, "plot_confusion", broken)
    monkeypatch.setitem(sys.modules, "visualdl", None)  # import visualdl fails
    out = tmp_path / "out"
    result = train.run(tiny_settings(dataset, out))
    assert result.exitCode == 0 and result.worstClasses is not None
    log = capsys.readouterr().err
    assert log.count("warning: training curves output skipped: RuntimeError: no fonts today") == 1
    assert "warning: VisualDL output skipped: ModuleNotFoundError" in log
    assert not (out / visual.CURVES_FILE).exists() and not (out / "vdl").exists()
    assert json.loads((out / "per_class.json").read_text())["epoch"] == result.bestEpoch
