"""Real data: finetuning a digits-pretrained ResNet18_vd beats training from scratch.

scikit-learn's handwritten digits (1797 real 8x8 scans): ResNet18_vd is pretrained from scratch on
digits 0-5 and saved as .pdparams; then, through ``finetune-train``'s code path, it is finetuned on
the unseen digits 6-9 with its 6-class fc stripped, and compared with training from scratch at
the same budget (same epochs, batch, data; each with its default learning rate).
Measured on 2 shared CPU cores (2-4 minutes), 2026-12-02, Intel Xeon: pretraining 0.969 top-1,
finetune 0.944, from scratch 0.477 (the figures move with the CPU's MKL code path; README.md).
"""

from __future__ import annotations

import json

import pytest
from finetune_trainer.cli import main as cli_main
from finetune_trainer.predict import main as predict_main

from demo.digits import (
    FINETUNE_CLASSES,
    digits_settings,
    finetune_budget,
    make_pretrained_weights,
    write_digits_dataset,
)

pytestmark = pytest.mark.slow


def test_finetuning_beats_training_from_scratch_on_real_digits(tmp_path, capsys):
    weights = tmp_path / "digits0-5.pdparams"
    pretrain = make_pretrained_weights(weights, tmp_path / "pretrain")
    assert pretrain["exitCode"] == 0 and pretrain["top1"] >= 0.8, pretrain

    data = tmp_path / "data"
    info = write_digits_dataset(data, FINETUNE_CLASSES)
    assert info["train"] + info["val"] == 714  # every digit 6-9 of the 1797-image set

    results = {}
    for mode in ("finetune", "scratch"):
        settings = digits_settings(data, tmp_path / mode, info["numClasses"], **finetune_budget())
        if mode == "finetune":
            settings.model.pretrained.path = str(weights)
            settings.finetune.freeze = "none"
        else:
            settings.finetune.freeze = "from-scratch"
        assert cli_main(["--settings-json", settings.to_json()]) == 0
        results[mode] = json.loads((tmp_path / mode / "result.json").read_text())

    finetune, scratch = results["finetune"], results["scratch"]
    report = {
        m: {k: r[k] for k in ("top1", "top5", "bestEpoch", "durationSeconds")} for m, r in results.items()
    }
    with capsys.disabled():
        print(f"\n[digits] pretrain top1 {pretrain['top1']:.3f}; {json.dumps(report)}")
    assert finetune["strippedParameters"] == ["fc.weight", "fc.bias"]
    assert (tmp_path / "finetune" / "inference" / "labels.txt").read_text() == "6\n7\n8\n9\n"
    assert finetune["missingParameters"] == [] and finetune["unexpectedParameters"] == []
    assert scratch["freeze"]["strategy"] == "from-scratch"
    assert finetune["epochsRun"] == scratch["epochsRun"] == finetune_budget()["epochs"]
    assert finetune["top1"] >= 0.9
    assert finetune["top1"] > scratch["top1"] + 0.05

    # finetune-predict on the exported model gets the same top-1 over the 214 validation scans.
    assert predict_main([str(tmp_path / "finetune"), "--list", str(data / "val_list.txt"), "--cpu"]) == 0
    summary = json.loads(capsys.readouterr().err.rsplit("val_list.txt: ", 1)[1])
    assert (summary["images"], summary["top1"]) == (info["val"], finetune["top1"])
    worst = json.loads((tmp_path / "finetune" / "per_class.json").read_text())["worstClasses"]
    assert worst == finetune["worstClasses"] and {w["name"] for w in worst} <= {"6", "7", "8", "9"}
