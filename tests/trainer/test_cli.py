"""``finetune-train``: settings layering and validation, and a run end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from finetune_contract import (
    EXIT_BAD_SETTINGS,
    EXIT_DATA_ERROR,
    PROGRESS_PREFIX,
    SettingsError,
    decode_result,
)
from finetune_trainer.cli import load_settings, main

from tests.trainer.tiny_data import write_list_dataset

REPO = Path(__file__).resolve().parents[2]
ENTRY = Path(sys.executable).with_name("finetune-train")
SOURCES = os.pathsep.join(str(REPO / folder) for folder in ("trainer", "contract"))


def test_settings_are_layered_file_then_json_then_set(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "model: {architecture: ResNet18_vd}\n"
        "training:\n  epochs: 7\n  weightDecay: 1e-5\n  batchSize: 8\n"
        "dataset: {root: /data/a}\n"
    )
    settings = load_settings(
        str(path),
        json.dumps({"training": {"epochs": 9}, "dataset": {"numClasses": 4}}),
        ["training.batchSize=16", "finetune.lrMultList=[0.1, 0.1, 0.2, 0.2, 1]", "output.dir=/tmp/x"],
    )
    assert settings.model.architecture == "ResNet18_vd"
    assert settings.training.weightDecay == pytest.approx(1e-5)  # YAML 1.1 would read a string
    assert settings.training.epochs == 9  # --settings-json over the file
    assert settings.training.batchSize == 16  # --set over both
    assert settings.dataset.root == "/data/a" and settings.dataset.numClasses == 4
    assert settings.finetune.lrMultList == [0.1, 0.1, 0.2, 0.2, 1.0]
    assert settings.output.dir == "/tmp/x"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"assignments": ["training.epochs=0"]}, "training.epochs: must be an integer >= 1"),
        ({"assignments": ["training.epochz=3"]}, "training.epochz: unknown field"),
        ({"assignments": ["training.epochs"]}, "expected dotted.key=value"),
        ({"assignments": ["dataset.cropScaleMin=0"]}, "dataset.cropScaleMin: must be in (0, 1]"),
        ({"settings_json": "[1]"}, "--settings-json: must be a JSON object"),
        ({"settings_json": "{"}, "--settings-json: not valid JSON"),
        ({"settings_file": "/nonexistent/job.yaml"}, "--settings /nonexistent/job.yaml: cannot read"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, words):
    with pytest.raises(SettingsError) as err:
        load_settings(**kwargs)
    assert words in str(err.value)


def test_main_rejects_bad_settings_with_the_exit_code_and_a_result(tmp_path, capsys):
    result_path = tmp_path / "termination-log"
    code = main(["--set", "finetune.freeze=sometimes", "--set", f"output.resultPath={result_path}"])
    assert code == EXIT_BAD_SETTINGS
    assert "finetune.freeze: 'sometimes' is not one of" in capsys.readouterr().err
    result = decode_result(result_path.read_text())
    assert result.exitCode == EXIT_BAD_SETTINGS and result.reason == "InvalidSettings"
    assert "finetune.freeze" in result.message


def test_print_settings(capsys):
    assert main(["--set", "training.epochs=3", "--print-settings"]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["epochs"] == 3


def _run_cli(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": SOURCES}
    return subprocess.run(
        [str(ENTRY), *args], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False
    )


def test_cli_run_end_to_end_on_tiny_data(tmp_path):
    data = write_list_dataset(tmp_path / "data", classes=3)
    out = tmp_path / "out"
    settings = tmp_path / "job.yaml"
    settings.write_text(
        f"model: {{architecture: ResNet18_vd}}\n"
        f"dataset: {{root: {data}, imageSize: 16, resizeShort: 16}}\n"
        f"finetune: {{freeze: none}}\n"
        f"training: {{epochs: 1, batchSize: 4, numWorkers: 2, warmupEpochs: 0}}\n"
    )
    proc = _run_cli(
        [
            "--settings",
            str(settings),
            "--set",
            f"output.dir={out}",
            "--set",
            f"output.resultPath={tmp_path / 'tl'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = [
        json.loads(x[len(PROGRESS_PREFIX) :])
        for x in proc.stdout.splitlines()
        if x.startswith(PROGRESS_PREFIX)
    ]
    assert [p["epoch"] for p in progress] == [0, 1]
    assert "epoch 1/1" in proc.stderr  # the progress bar
    result = decode_result((tmp_path / "tl").read_text())
    assert result.exitCode == 0 and result.epochsRun == 1 and 0 <= result.top1 <= 1
    assert json.loads((out / "result.json").read_text())["top1"] == result.top1
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["dir"]
    assert {p.name for p in (out / "checkpoints" / latest).iterdir()} == {
        "model.pdparams",
        "optimizer.pdopt",
        "state.json",
    }
    assert (out / "best_model" / "model.pdparams").is_file()
    assert (out / "best_model" / "labels.txt").read_text() == "0\n1\n2\n"
    assert (out / "inference" / "inference.pdiparams").is_file()
    assert (out / "inference" / "inference.json").is_file() or (
        out / "inference" / "inference.pdmodel"
    ).is_file()
    assert (out / "inference" / "labels.txt").read_text() == "0\n1\n2\n"


def test_cli_data_error_exit_code_and_result(tmp_path):
    data = write_list_dataset(tmp_path / "data", classes=2)
    (data / "train_list.txt").write_text("images/train_c0_0.png 0\nimages/train_c0_1.png 7\n")
    proc = _run_cli(
        [
            "--settings-json",
            json.dumps({"dataset": {"root": str(data), "numClasses": 2}}),
            "--set",
            f"output.dir={tmp_path / 'out'}",
            "--set",
            f"output.resultPath={tmp_path / 'tl'}",
        ],
        tmp_path,
    )
    assert proc.returncode == EXIT_DATA_ERROR, proc.stderr[-2000:]
    result = decode_result((tmp_path / "tl").read_text())
    assert result.reason == "DataError"
    assert "train_list.txt:2: label 7 out of range" in result.message
    assert "train_list.txt:2: label 7 out of range" in proc.stderr


@pytest.mark.slow
def test_two_processes_under_paddle_distributed_launch(tmp_path):
    """The multi-GPU code path, on CPU: init_parallel_env, DataParallel, sharded sampler, eval
    counts summed over ranks, and only rank 0 reporting."""
    import finetune_trainer.__main__ as entry

    data = write_list_dataset(tmp_path / "data", classes=3)  # 12 train, 6 val images
    out = tmp_path / "out"
    args = [
        f"dataset.root={data}",
        "dataset.imageSize=16",
        "dataset.resizeShort=16",
        "model.architecture=ResNet18_vd",
        "finetune.freeze=none",
        "training.epochs=1",
        "training.batchSize=2",
        "training.numWorkers=0",
        f"output.dir={out}",
        f"output.resultPath={tmp_path / 'tl'}",
    ]
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    command += ["--log_dir", str(tmp_path / "logs"), entry.__file__]
    for arg in args:
        command += ["--set", arg]
    env = {**os.environ, "PYTHONPATH": SOURCES}
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False
    )
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("workerlog.*")}
    assert proc.returncode == 0, proc.stdout[-2000:] + "\n".join(v[-2000:] for v in logs.values())
    rank0, rank1 = logs["workerlog.0"], logs["workerlog.1"]
    assert "batch 2 x 2 process(es)" in rank0
    progress = [
        json.loads(x[len(PROGRESS_PREFIX) :]) for x in rank0.splitlines() if x.startswith(PROGRESS_PREFIX)
    ]
    assert progress[0]["stepsPerEpoch"] == 3  # 12 images / (2 per process x 2 processes)
    assert PROGRESS_PREFIX not in rank1 and "[finetune]" not in rank1
    result = decode_result((tmp_path / "tl").read_text())
    assert result.exitCode == 0 and result.epochsRun == 1
    state = json.loads((out / "checkpoints" / "epoch-0001" / "state.json").read_text())
    assert state["history"][0]["valImages"] == 6  # each rank evaluated its half; counts summed
    assert (out / "inference" / "inference.pdiparams").is_file()
    # The confusion matrix is summed over the ranks too: every validation image in its true row.
    matrix = np.array(json.loads((out / "per_class.json").read_text())["matrix"])
    assert matrix.sum(axis=1).tolist() == [2, 2, 2]
    assert np.trace(matrix) / 6 == pytest.approx(result.top1, abs=1e-6)
    assert [p.name for p in (out / "vdl").iterdir()] == ["from-start"]  # rank 0's only
    assert [p.name for p in (out / "vdl" / "from-start").iterdir()][0].startswith("vdlrecords.")


def test_sigterm_to_the_cli_checkpoints_exits_143_and_the_rerun_resumes(tmp_path):
    import signal

    data = write_list_dataset(tmp_path / "data", classes=3)
    out = tmp_path / "out"
    args = [
        "--settings-json",
        json.dumps(
            {
                "model": {"architecture": "ResNet18_vd"},
                "dataset": {"root": str(data), "imageSize": 16, "resizeShort": 16},
                "finetune": {"freeze": "none"},
                "training": {"epochs": 8, "batchSize": 4, "numWorkers": 2, "warmupEpochs": 1},
                "output": {"dir": str(out), "resultPath": str(tmp_path / "tl")},
            }
        ),
    ]
    env = {**os.environ, "PYTHONPATH": SOURCES}
    proc = subprocess.Popen(
        [str(ENTRY), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        for line in proc.stdout:  # wait until the first epoch is done (and checkpointed)
            if line.startswith(PROGRESS_PREFIX) and json.loads(line[len(PROGRESS_PREFIX) :])["epoch"] >= 1:
                proc.send_signal(signal.SIGTERM)
                break
        proc.stdout.read()
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = decode_result((tmp_path / "tl").read_text())
    assert stopped.reason == "Interrupted" and 1 <= stopped.epochsRun < 8
    assert (out / "checkpoints" / "latest.json").is_file()

    rerun = _run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done = decode_result((tmp_path / "tl").read_text())
    assert done.resumedFromEpoch >= stopped.epochsRun and done.epochsRun == 8
