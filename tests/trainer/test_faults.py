"""Trainer faults for real: ``finetune-train`` processes on tiny data, killed and damaged as a node
kills and damages them, then run again as the next attempt would be.

* SIGKILL in the middle of an epoch (no chance to save), or while a checkpoint is being written:
  the next attempt resumes from the last complete checkpoint.
* A truncated newest checkpoint: the next attempt falls back to the one before, with a warning.
* A job deleted and created again with the same name (a new uid): it starts afresh, in a folder
  of its own; pointed at the old job's folder it is refused.
* SIGTERM during evaluation: the evaluation is abandoned, the position checkpointed and the
  process gone well within the pod's grace period (the CRD's default), also for the largest
  model; the next attempt resumes from that checkpoint.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from finetune_contract import EXIT_CHECKPOINT_REFUSED, EXIT_INTERRUPTED, decode_result
from finetune_trainer import checkpoint

from tests.operator import crd
from tests.trainer import processes
from tests.trainer.tiny_data import write_list_dataset

GRACE_SECONDS = crd.node("spec.runPolicy.terminationGracePeriodSeconds")["default"]


def _kill_at_epoch(proc: Any, epoch: int, delay: float = 0.0) -> list[str]:
    """Read the process's output until its progress line for ``epoch``, wait ``delay`` seconds,
    SIGKILL it; returns the lines read."""
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if processes.progress_epoch(line) == epoch:
                time.sleep(delay)
                processes.kill_all(proc)
                break
        proc.stdout.read()
        assert proc.wait(timeout=60) == -signal.SIGKILL, "".join(lines[-20:])
    finally:
        processes.kill_all(proc)
    return lines


def _state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def _rerun(settings: str, tmp_path: Path) -> tuple[Any, Any]:
    done = processes.run(settings, tmp_path)
    return done, decode_result((tmp_path / "tl").read_text())


def test_sigkill_mid_epoch_resumes_from_the_last_complete_checkpoint(tmp_path):
    data = write_list_dataset(tmp_path / "data", classes=3, train_per_class=32)  # 24 steps an epoch
    out = tmp_path / "out"
    settings = processes.settings_json(data, out, tmp_path / "tl")
    _kill_at_epoch(processes.start(settings, tmp_path), epoch=1, delay=0.2)
    assert not (tmp_path / "tl").exists()  # it had no chance to say anything
    latest = checkpoint.find_latest(out)
    assert latest.name == "epoch-0001", "the kill came after epoch 2 ended: make the epoch longer"

    done, result = _rerun(settings, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {latest} (epoch 1, step 0 of the next)" in done.stderr
    assert result.resumedFromEpoch == 1 and result.epochsRun == 3
    final = _state(checkpoint.find_latest(out))
    assert final["globalStep"] == 3 * 24 and [h["epoch"] for h in final["history"]] == [1, 2, 3]


def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_one_before(tmp_path):
    data = write_list_dataset(tmp_path / "data", classes=3)
    out = tmp_path / "out"
    settings = processes.settings_json(data, out, tmp_path / "tl")
    proc = processes.start(settings, tmp_path)
    drain = threading.Thread(target=proc.stdout.read, daemon=True)
    drain.start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if list((out / "checkpoints").glob(".tmp-epoch-0002-*")):
                processes.kill_all(proc)
                break
            time.sleep(0.002)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        processes.kill_all(proc)
    drain.join(10)
    (half_written,) = (out / "checkpoints").glob(".tmp-epoch-0002-*")
    assert checkpoint.find_latest(out).name == "epoch-0001"

    done, result = _rerun(settings, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert result.resumedFromEpoch == 1 and result.epochsRun == 3
    assert checkpoint.find_latest(out).name == "epoch-0003"


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    data = write_list_dataset(tmp_path / "data", classes=3)
    out = tmp_path / "out"
    settings = processes.settings_json(data, out, tmp_path / "tl", training={"epochs": 4})
    _kill_at_epoch(processes.start(settings, tmp_path), epoch=2)
    newest = out / "checkpoints" / "epoch-0002"
    assert checkpoint.find_latest(out) == newest
    weights = (newest / "model.pdparams").read_bytes()
    (newest / "model.pdparams").write_bytes(weights[: len(weights) // 2])  # a disk that lost the tail

    done, result = _rerun(settings, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: checkpoint epoch-0002 cannot be used:" in done.stderr
    assert (
        f"{newest / 'model.pdparams'}: {len(weights) // 2} bytes, but {len(weights)} were written"
        in done.stderr
    )
    assert f"resuming from {out / 'checkpoints' / 'epoch-0001'} (epoch 1, step 0 of the next)" in done.stderr
    assert "Traceback" not in done.stderr
    assert result.resumedFromEpoch == 1 and result.epochsRun == 4
    assert len(list((out / "checkpoints").glob("rejected-epoch-0002-*"))) == 1


def test_a_recreated_job_starts_afresh_in_its_own_folder(tmp_path):
    """The settings come from the operator's own mapping of a FineTuneJob, paths moved from the
    pod's mounts to this machine's folders."""
    from finetune_operator.trainer_settings import DATA_MOUNT, OUTPUT_MOUNT, trainer_settings

    data = write_list_dataset(tmp_path / "data", classes=3)

    def settings_of(uid: str, output_dir: str | None = None) -> tuple[str, Path]:
        job = {
            "metadata": {"namespace": "team-a", "name": "digits", "uid": uid},
            "spec": {
                "model": {"architecture": "ResNet18_vd"},
                "dataset": {"numClasses": 3, "imageSize": 16},
                "finetune": {"freeze": "none"},
                "training": {"epochs": 3, "batchSize": 4, "warmupEpochs": 1, "numWorkers": 2},
            },
        }
        s = trainer_settings(job).to_dict()
        out = Path(output_dir or s["output"]["dir"].replace(OUTPUT_MOUNT, str(tmp_path / "output"), 1))
        s["dataset"]["root"] = s["dataset"]["root"].replace(DATA_MOUNT, str(data), 1)
        s["output"] = {"dir": str(out), "resultPath": str(tmp_path / "tl")}
        s["cacheDir"] = str(tmp_path / "cache")
        return json.dumps(s), out

    old_uid, new_uid = "11111111-aaaa-4bbb-8ccc-000000000001", "22222222-aaaa-4bbb-8ccc-000000000002"
    first, old_out = settings_of(old_uid)
    _kill_at_epoch(processes.start(first, tmp_path), epoch=1)
    assert old_out == tmp_path / "output" / "team-a" / "digits" / old_uid
    old_checkpoints = sorted(p.name for p in (old_out / "checkpoints").iterdir())

    again, new_out = settings_of(new_uid)
    assert new_out == tmp_path / "output" / "team-a" / "digits" / new_uid
    done, result = _rerun(again, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" not in done.stderr
    assert result.resumedFromEpoch is None and result.epochsRun == 3
    assert _state(checkpoint.find_latest(new_out))["job"]["uid"] == new_uid
    assert sorted(p.name for p in (old_out / "checkpoints").iterdir()) == old_checkpoints

    # Pointed at the old job's folder (two jobs sharing one): refused, naming both.
    shared, _ = settings_of(new_uid, str(old_out))
    done, result = _rerun(shared, tmp_path)
    assert done.returncode == EXIT_CHECKPOINT_REFUSED, done.stderr[-3000:]
    assert f"of job team-a/digits (uid {old_uid}), not of this one (job team-a/digits (uid {new_uid}))" in (
        result.message
    )
    assert sorted(p.name for p in (old_out / "checkpoints").iterdir()) == old_checkpoints


def _sigterm_during_evaluation(
    settings: str, cwd: Path, timeout: float, delay: float = 0.0
) -> tuple[float, list[str]]:
    """Start the trainer, SIGTERM it ``delay`` seconds into its first evaluation, and give it the
    grace period a kubelet gives (SIGKILL after it); returns (seconds from SIGTERM to exit, lines)."""
    proc = processes.start(settings, cwd)
    lines: list[str] = []
    try:
        sent = None
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"\] epoch 1/\d+: evaluating on \d+ images", line):
                time.sleep(delay)
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                break
        assert sent is not None, "".join(lines[-30:])
        lines += proc.stdout.read().splitlines(keepends=True)
        code = proc.wait(timeout=GRACE_SECONDS)  # past it, a kubelet would SIGKILL: the test fails
        elapsed = time.monotonic() - sent
    finally:
        processes.kill_all(proc)
    assert code == EXIT_INTERRUPTED, "".join(lines[-30:])
    assert elapsed < timeout, f"{elapsed:.1f}s from SIGTERM to exit"
    return elapsed, lines


def test_sigterm_during_evaluation_checkpoints_within_the_grace_period_and_the_next_attempt_resumes(tmp_path):
    data = write_list_dataset(tmp_path / "data", classes=3, train_per_class=4, val_per_class=200)
    out = tmp_path / "out"
    settings = processes.settings_json(
        data, out, tmp_path / "tl", dataset={"imageSize": 32, "resizeShort": 32}, training={"epochs": 2}
    )
    elapsed, lines = _sigterm_during_evaluation(settings, tmp_path, timeout=GRACE_SECONDS, delay=1.0)
    stopped = decode_result((tmp_path / "tl").read_text())
    abandoned = re.search(r"during evaluation \(abandoned after (\d+) of (\d+) batches\)", stopped.message)
    assert abandoned, stopped.message
    assert int(abandoned[1]) < int(abandoned[2]) == 150  # 600 images, batch 4
    latest = checkpoint.find_latest(out)
    assert latest.name == "epoch-0000-step00003"  # the epoch's 3 steps, trained, not evaluated
    assert any("interrupted: saved epoch 1 step 3" in line for line in lines)

    started = time.monotonic()
    done, result = _rerun(settings, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {latest} (epoch 0, step 3 of the next)" in done.stderr
    assert result.resumedFromEpoch == 0 and result.epochsRun == 2
    final = _state(checkpoint.find_latest(out))
    assert final["globalStep"] == 6  # no step trained twice
    assert all(h["trainLoss"] > 0 and h["valImages"] == 600 for h in final["history"])
    print(
        f"\nSIGTERM during evaluation (ResNet18_vd, {abandoned[1]} of 150 batches done): exited 143 "
        f"{elapsed:.1f}s later (grace {GRACE_SECONDS}s); the resumed attempt took "
        f"{time.monotonic() - started:.1f}s"
    )


@pytest.mark.slow
def test_the_largest_models_checkpoint_lands_within_the_default_grace_period(tmp_path):
    """ResNet152_vd with 1000 classes (about 0.5 GB of weights and momentum state): SIGTERM in its
    first evaluation, checkpoint written, process gone, all within the default grace period."""
    data = write_list_dataset(tmp_path / "data", classes=3, train_per_class=1, val_per_class=40)
    out = tmp_path / "out"
    settings = processes.settings_json(
        data,
        out,
        tmp_path / "tl",
        model={"architecture": "ResNet152_vd"},
        dataset={"imageSize": 32, "resizeShort": 32, "numClasses": 1000},
        training={"epochs": 1, "batchSize": 2, "warmupEpochs": 0},
    )
    elapsed, _ = _sigterm_during_evaluation(settings, tmp_path, timeout=GRACE_SECONDS)
    latest = checkpoint.find_latest(out)
    assert latest.name == "epoch-0000-step00002"
    size = sum(p.stat().st_size for p in latest.iterdir())
    assert size > 400e6
    print(f"\nResNet152_vd: SIGTERM during evaluation -> {size / 1e6:.0f} MB checkpoint, exit 143 after "
          f"{elapsed:.1f}s (grace {GRACE_SECONDS}s)")  # fmt: skip
