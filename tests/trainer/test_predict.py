"""``finetune-predict`` on the model a run exported: on the validation set it gets exactly the best
epoch's top-1 (and confusion matrix) the trainer reported; files, folders, JSON, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from finetune_trainer import predict, train
from finetune_trainer.export import PREPROCESS_FILE
from finetune_trainer.per_class import confusion_matrix

from demo.digits import FINETUNE_CLASSES, digits_settings, write_digits_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Digits 6-9 (scikit-learn's scans, 500 train / 214 validation images at 16 px) trained from
    scratch for 2 epochs: about 0.4 top-1, so right and wrong answers both occur."""
    root = tmp_path_factory.mktemp("predict")
    info = write_digits_dataset(root / "data", FINETUNE_CLASSES)
    settings = digits_settings(root / "data", root / "out", info["numClasses"], epochs=2, warmupEpochs=0)
    settings.finetune.freeze = "from-scratch"
    result = train.run(settings)
    assert result.exitCode == 0, result.message
    assert 0.3 < result.top1 < 0.95  # neither trivial nor perfect: the comparison means something
    return root, result


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_its_top1_on_the_validation_set_is_the_trainers_best_top1(trained, capsys, monkeypatch):
    root, result = trained

    def no_unpickling(*args, **kwargs):
        raise AssertionError("finetune-predict unpickled something")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    code = predict.main([str(root / "out"), "--list", str(root / "data" / "val_list.txt"), "--json", "--cpu"])
    assert code == 0
    captured = capsys.readouterr()
    lines = _json_lines(captured.out)
    assert len(lines) == result.valImages == 214
    truth = {
        str(root / "data" / path): int(label)
        for path, label in (
            line.rsplit(None, 1) for line in (root / "data" / "val_list.txt").read_text().splitlines()
        )
    }
    labels = np.array([truth[line["path"]] for line in lines])
    predicted = np.array([line["top"][0]["label"] for line in lines])
    assert round(float((labels == predicted).mean()), 6) == result.top1
    summary = json.loads(captured.err.rsplit("accuracy on", 1)[1].split(": ", 1)[1])
    assert summary["top1"] == result.top1 and summary["images"] == 214
    # Image by image as the trainer's best epoch saw them: the same confusion matrix.
    report = json.loads((root / "out" / "per_class.json").read_text())
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, 4), np.array(report["matrix"]))
    # Names from labels.txt, probabilities best first, top-5 capped at the 4 classes.
    first = lines[0]["top"]
    assert [t["name"] for t in first] == [str(FINETUNE_CLASSES[t["label"]]) for t in first]
    scores = [t["score"] for t in first]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)


def test_files_and_folders_in_text(trained, capsys):
    root, _ = trained
    folder = root / "data" / "images" / "7"
    one = sorted(folder.iterdir())[0]
    assert (
        predict.main([str(root / "out" / "inference"), str(one), str(folder), "--top-k", "2", "--cpu"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(list(folder.iterdir()))
    path, shown = lines[0].split(": ", 1)
    assert path == str(one)
    names = [part.rsplit(" ", 1)[0] for part in shown.split(", ")]
    assert len(names) == 2 and set(names) <= {"6", "7", "8", "9"}


def test_unreadable_images_are_reported_and_the_rest_classified(trained, tmp_path, capsys):
    root, _ = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = sorted((root / "data" / "images" / "6").iterdir())[0]
    assert predict.main([str(root / "out"), str(broken), str(good), "--cpu"]) == 1
    captured = capsys.readouterr()
    assert f"{broken}: cannot read the image" in captured.err
    assert captured.out.startswith(f"{good}: ")


def test_a_folder_without_a_model_or_its_preprocessing_is_named(trained, tmp_path, capsys):
    root, _ = trained
    image = sorted((root / "data" / "images" / "6").iterdir())[0]
    assert predict.main([str(tmp_path), str(image)]) == 2
    assert "no exported model (expected inference.json or inference.pdmodel" in capsys.readouterr().err
    copy = tmp_path / "inference"
    copy.mkdir()
    for item in (root / "out" / "inference").iterdir():
        if item.name != PREPROCESS_FILE:
            (copy / item.name).symlink_to(item)
    assert predict.main([str(copy), str(image)]) == 2
    assert f"{copy / PREPROCESS_FILE}: missing" in capsys.readouterr().err
    assert predict.main([str(root / "out"), str(tmp_path / "nothing.png")]) == 2
    assert "nothing.png: no such file or folder" in capsys.readouterr().err
