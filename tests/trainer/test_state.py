"""The run's state: what a checkpoint carries, what an attempt reports, how failures map to exit
codes, and that writing a result needs no Paddle."""

from __future__ import annotations

import json
import subprocess
import sys

from finetune_contract import (
    EXIT_BAD_SETTINGS,
    EXIT_DATA_ERROR,
    EXIT_DOWNLOAD_ERROR,
    EXIT_NON_FINITE_LOSS,
    EXIT_PRETRAINED_ERROR,
    EXIT_TRANSIENT,
    FreezeDecision,
    LoadSummary,
    SettingsError,
    decode_result,
)
from finetune_trainer.data import DataError, DatasetIndex, Sample
from finetune_trainer.pretrained import DownloadError, PretrainedError
from finetune_trainer.state import Attempt, RunState, TrainerFailure, failure_of

# state.json as the trainer wrote it before the result had a type (a resumed attempt reads it).
SAVED = {
    "epoch": 2,
    "stepInEpoch": 1,
    "globalStep": 7,
    "best": {"epoch": 2, "top1": 0.5, "top5": 1.0, "valLoss": 0.9},
    "history": [{"epoch": 1, "top1": 0.25}, {"epoch": 2, "top1": 0.5}],
    "freeze": {
        "strategy": "fc-only",
        "stages": 0,
        "decidedBy": "auto",
        "rule": 1,
        "evidence": {"size": "small", "similarity": 0.7},
        "trainableParameters": 1539,
    },
    "load": {
        "strippedParameters": ["fc.weight", "fc.bias"],
        "missingParameters": [],
        "unexpectedParameters": [],
    },
    "trainImages": 24,
    "trainSeconds": 2.0,
    "corruptImages": {},
    "learningRate": 0.0015625,
    "seed": 0,
    "architecture": "ResNet18_vd",
    "numClasses": 3,
    "scheduler": {"last_epoch": 7},
    "scaler": {},
}


def test_a_checkpoint_state_round_trips_and_older_ones_still_load():
    state = RunState.from_checkpoint(SAVED)
    assert state.freeze == FreezeDecision("fc-only", 0, "auto", 1, {"size": "small", "similarity": 0.7}, 1539)
    assert state.load == LoadSummary(["fc.weight", "fc.bias"])
    saved = state.to_checkpoint()
    assert {k: v for k, v in saved.items() if k in SAVED} == SAVED
    # What older trainers did not record is empty: resume.py refuses such a checkpoint.
    assert (saved["job"], saved["settings"], saved["fingerprint"]) == (None, None, "")
    assert saved["epochTraining"] == {}
    assert saved["bestConfusion"] is None  # older states lack the matrix
    assert RunState.from_checkpoint(saved) == state
    state.bestConfusion = [[0, 0, 3], [1, 2, 1], [2, 2, 2]]  # sparse (true, predicted, count)
    assert RunState.from_checkpoint(state.to_checkpoint()) == state


def test_an_attempt_reports_what_it_established():
    index = DatasetIndex(
        train=[Sample("a.png", 0, "train_list.txt:1")] * 12,
        val=[Sample("b.png", 1, "val_list.txt:1")] * 6,
        num_classes=3,
        label_names=["0", "1", "2"],
    )
    attempt = Attempt(epochs=3, output_dir="/out")
    early = attempt.result(EXIT_DATA_ERROR, "val_list.txt:2: not found", 1.234)
    assert (early.exitCode, early.reason, early.message, early.epochs) == (
        3,
        "DataError",
        "val_list.txt:2: not found",
        3,
    )
    assert (early.durationSeconds, early.outputDir, early.numClasses, early.load, early.freeze) == (
        1.23,
        "/out",
        None,
        None,
        None,
    )
    attempt.index, attempt.state, attempt.resumed_from_epoch = index, RunState.from_checkpoint(SAVED), 2
    result = attempt.result(0, None, 5.0)
    assert (result.numClasses, result.trainImages, result.valImages) == (3, 12, 6)
    assert (result.epochsRun, result.bestEpoch, result.top1, result.top5, result.lastTop1) == (
        2,
        2,
        0.5,
        1.0,
        0.5,
    )
    assert (result.imagesPerSecond, result.learningRate, result.resumedFromEpoch) == (12.0, 0.0015625, 2)
    assert result.freeze.rule == 1 and result.load.strippedParameters == ["fc.weight", "fc.bias"]
    assert result.reason == "Completed" and result.message is None


def test_failures_map_to_the_contracts_exit_codes():
    assert failure_of(DataError("x")) == (EXIT_DATA_ERROR, "x")
    assert failure_of(SettingsError("y")) == (EXIT_BAD_SETTINGS, "y")
    assert failure_of(PretrainedError("z")) == (EXIT_PRETRAINED_ERROR, "z")
    assert failure_of(DownloadError("w")) == (EXIT_DOWNLOAD_ERROR, "w")
    assert failure_of(TrainerFailure(EXIT_NON_FINITE_LOSS, "nan")) == (EXIT_NON_FINITE_LOSS, "nan")
    code, message = failure_of(MemoryError("cannot allocate"))
    assert code == EXIT_TRANSIENT and "try a smaller batchSize" in message
    assert failure_of(RuntimeError("DataLoader worker (pid 7) exited unexpectedly"))[0] == EXIT_TRANSIENT
    assert failure_of(KeyError("a bug")) is None  # exit code 1 and the traceback


def test_the_command_line_reports_bad_settings_without_importing_paddle(tmp_path):
    """The early-failure path writes its result with the same writer as the loop, Paddle-free."""
    result_path = tmp_path / "termination-log"
    code = (
        "import sys\n"
        "from finetune_trainer.cli import main\n"
        f"exit_code = main(['--set', 'training.epochs=0', '--set', 'output.resultPath={result_path}'])\n"
        "assert 'paddle' not in sys.modules, 'paddle was imported'\n"
        "sys.exit(exit_code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == EXIT_BAD_SETTINGS, proc.stderr
    result = decode_result(result_path.read_text())
    assert (result.exitCode, result.reason) == (EXIT_BAD_SETTINGS, "InvalidSettings")
    assert "training.epochs: must be an integer >= 1" in result.message
    assert json.loads(result_path.read_text())["exitCode"] == EXIT_BAD_SETTINGS
