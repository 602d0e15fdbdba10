"""Checkpoints: written so that a crash at any point leaves a usable one, verified file by file
when read, and a damaged newest one gives way to the one before (checkpoint.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest
from finetune_trainer import checkpoint, statefile
from finetune_trainer.model import build_model
from finetune_trainer.schedule import WarmupCosine, build_optimizer


def _after_one_step(model: paddle.nn.Layer, inputs: paddle.Tensor) -> tuple[Any, Any]:
    """``model`` after one momentum step, so that the optimiser has state to save."""
    optimizer = build_optimizer(model.parameters(), WarmupCosine(0.1, 0, 10), 0.9, 1e-5)
    model(inputs).mean().backward()
    optimizer.step()
    optimizer.clear_grad()
    return model, optimizer


@pytest.fixture(scope="module")
def resnet() -> tuple[paddle.nn.Layer, paddle.optimizer.Optimizer]:
    paddle.seed(0)
    return _after_one_step(build_model("ResNet18_vd", 3), paddle.randn([2, 3, 16, 16]))


@pytest.fixture(scope="module")
def trained() -> tuple[paddle.nn.Layer, paddle.optimizer.Optimizer]:
    """A small network (weights, BatchNorm statistics, momentum state): what a checkpoint
    holds, in kilobytes, so that many crash points stay fast."""
    paddle.seed(0)
    layers = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.BatchNorm1D(16), paddle.nn.Linear(16, 3))
    return _after_one_step(layers, paddle.randn([4, 8]))


def save(out: Path, trained: Any, epoch: int, step: int = 0) -> Path:
    model, optimizer = trained
    state = {"epoch": epoch, "stepInEpoch": step, "mark": epoch}
    return checkpoint.save_checkpoint(out, model, optimizer, state)


def test_a_checkpoint_round_trips_and_records_each_files_size_and_sha256(tmp_path, resnet):
    model, optimizer = resnet
    path = save(tmp_path, resnet, 1)
    found = checkpoint.read_checkpoint(path)
    assert set(found.weights) == set(model.state_dict())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(found.weights[key], value.numpy(), err_msg=key)
    portable = checkpoint.portable_optimizer_state(optimizer.state_dict(), model)
    assert set(found.optimizer) == set(portable)
    assert found.optimizer["LR_Scheduler"] == optimizer.state_dict()["LR_Scheduler"]
    for name in (checkpoint.MODEL, checkpoint.OPTIMIZER):
        data = (path / name).read_bytes()
        recorded = found.state["files"][name]
        assert recorded["bytes"] == len(data)
        assert recorded["sha256"] == hashlib.sha256(data).hexdigest()
    # The files stay readable by Paddle's own loader (for people who load them by hand).
    restored = paddle.load(str(path / checkpoint.MODEL))
    np.testing.assert_array_equal(restored["fc.weight"].numpy(), model.state_dict()["fc.weight"].numpy())


def test_checkpoints_are_ordered_by_position_not_by_name(tmp_path, trained):
    for epoch, step in [(9, 0), (9, 2), (10, 0), (10000, 0), (2, 7)]:
        (tmp_path / "checkpoints" / checkpoint.checkpoint_name(epoch, step)).mkdir(parents=True)
    (tmp_path / "checkpoints" / ".tmp-epoch-0011-123").mkdir()
    (tmp_path / "checkpoints" / "rejected-epoch-0012-1").mkdir()
    names = [p.name for p in checkpoint.checkpoint_dirs(tmp_path)]
    assert names == [
        "epoch-10000",
        "epoch-0010",
        "epoch-0009-step00002",
        "epoch-0009",
        "epoch-0002-step00007",
    ]


def test_only_the_two_newest_are_kept(tmp_path, trained):
    for epoch in range(1, 5):
        save(tmp_path, trained, epoch)
    assert [p.name for p in checkpoint.checkpoint_dirs(tmp_path)] == ["epoch-0004", "epoch-0003"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text()) == {"dir": "epoch-0004"}


# ------------------------------------------------------------------------------------------------
# Damage: every kind falls back to the checkpoint before, naming the file
# ------------------------------------------------------------------------------------------------
def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep >= 0 else data[:-1])


def _flip(path: Path, seed: int) -> None:
    data = bytearray(path.read_bytes())
    position = random.Random(seed).randrange(len(data))
    data[position] ^= 0x5A
    path.write_bytes(bytes(data))


DAMAGE = [
    *(
        (f"{name}-truncated-{keep}", name, lambda p, k=keep: _truncate(p, k), "bytes, but")
        for name in (checkpoint.MODEL, checkpoint.OPTIMIZER)
        for keep in (0.0, 0.001, 0.5, -1)
    ),
    *(
        (f"{name}-bit-flip-{seed}", name, lambda p, s=seed: _flip(p, s), "")
        for name in (checkpoint.MODEL, checkpoint.OPTIMIZER)
        for seed in range(4)
    ),
    *(
        (f"{name}-missing", name, Path.unlink, "is missing")
        for name in (checkpoint.MODEL, checkpoint.OPTIMIZER, checkpoint.STATE)
    ),
    ("state-truncated", checkpoint.STATE, lambda p: _truncate(p, 0.5), "state.json cannot be read"),
    ("state-not-a-state", checkpoint.STATE, lambda p: p.write_text("[1, 2]"), "holds no run state"),
]


@pytest.mark.parametrize(("file", "damage", "words"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_newest_checkpoint_gives_way_to_the_one_before(tmp_path, trained, file, damage, words):
    save(tmp_path, trained, 1)
    newest = save(tmp_path, trained, 2)
    damage(newest / file)
    warnings: list[str] = []
    found, rejected = checkpoint.latest_checkpoint(tmp_path, warnings.append)
    assert found is not None and found.path.name == "epoch-0001" and found.state["mark"] == 1
    assert rejected == [newest]
    (warning,) = warnings
    assert warning.startswith("warning: checkpoint epoch-0002 cannot be used:") and file in warning
    assert words in warning
    assert "trying the one before" in warning
    assert checkpoint.find_latest(tmp_path).name == "epoch-0001"


def test_bit_flips_are_caught_by_the_recorded_sha256(tmp_path, trained):
    path = save(tmp_path, trained, 1)
    for seed in range(8):
        target = path / (checkpoint.MODEL if seed % 2 else checkpoint.OPTIMIZER)
        original = target.read_bytes()
        _flip(target, seed)
        with pytest.raises(checkpoint.CheckpointUnusable, match=r"sha256 differs|not a readable state"):
            checkpoint.read_checkpoint(path)
        target.write_bytes(original)
    checkpoint.read_checkpoint(path)


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.999])
def test_without_a_record_a_cut_file_is_still_found_out(tmp_path, trained, keep):
    """A checkpoint of an older trainer (no sizes and hashes recorded): the unpickler finds the cut."""
    path = save(tmp_path, trained, 1)
    state = json.loads((path / "state.json").read_text())
    del state["files"]
    (path / "state.json").write_text(json.dumps(state))
    checkpoint.read_checkpoint(path)  # intact: readable
    _truncate(path / checkpoint.MODEL, keep)
    with pytest.raises(checkpoint.CheckpointUnusable, match="not a readable state file"):
        checkpoint.read_checkpoint(path)


def test_when_nothing_is_usable_there_is_no_checkpoint(tmp_path, trained):
    first, second = save(tmp_path, trained, 1), save(tmp_path, trained, 2)
    _truncate(first / checkpoint.MODEL, 0.5)
    _truncate(second / checkpoint.OPTIMIZER, 0.5)
    found, rejected = checkpoint.latest_checkpoint(tmp_path)
    assert found is None and rejected == [second, first]
    assert checkpoint.latest_checkpoint(tmp_path / "nothing-here") == (None, [])


def test_a_rejected_checkpoint_is_set_aside_and_never_read_again(tmp_path, trained):
    save(tmp_path, trained, 1)
    newest = save(tmp_path, trained, 2)
    _truncate(newest / checkpoint.MODEL, 0.5)
    moved = checkpoint.set_aside(newest)
    assert moved.name.startswith("rejected-epoch-0002-") and moved.is_dir() and not newest.exists()
    assert [p.name for p in checkpoint.checkpoint_dirs(tmp_path)] == ["epoch-0001"]
    save(tmp_path, trained, 3)
    save(tmp_path, trained, 4)
    assert moved.is_dir()  # pruning leaves it for a person to look at


# ------------------------------------------------------------------------------------------------
# Crash points: the process dies before or after any file operation of a save, or in the middle
# of writing a file; what is left always holds a usable checkpoint, the old one or the new one.
# ------------------------------------------------------------------------------------------------
class Crash(BaseException):
    """The process dies here (a BaseException, so no cleanup code of ours catches it)."""


class _Dying:
    """Counts the file operations of a save and dies at operation ``at`` (``when``: before it,
    after it, or half-way through it, leaving a half-written file or a half-deleted folder)."""

    def __init__(self, at: int, when: str) -> None:
        self.at, self.when, self.count = at, when, 0

    def step(self, do: Any, half: Any = None) -> Any:
        self.count += 1
        if self.count != self.at:
            return do()
        if self.when == "before":
            raise Crash
        if self.when == "half" and half is not None:
            half()
            raise Crash
        do()
        raise Crash


def _instrument(monkeypatch: pytest.MonkeyPatch, dying: _Dying) -> None:
    real_save, real_replace, real_rmtree = statefile.save, os.replace, shutil.rmtree
    real_json = checkpoint._write_json_atomic

    def save(value: Any, path: Any) -> Any:
        def half() -> None:
            real_save(value, path)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])

        return dying.step(lambda: real_save(value, path), half)

    def write_json(path: Path, data: Any) -> None:
        def half() -> None:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data)[:10])

        dying.step(lambda: real_json(path, data), half)

    def rmtree(path: Any, ignore_errors: bool = False) -> None:
        def half() -> None:
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for p in files[: max(1, len(files) // 2)]:
                p.unlink()

        exists = Path(path).exists()
        dying.step(lambda: real_rmtree(path, ignore_errors=ignore_errors), half if exists else None)

    class Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def replace(src: Any, dst: Any) -> None:
            dying.step(lambda: real_replace(src, dst))

    monkeypatch.setattr(checkpoint.statefile, "save", save)
    monkeypatch.setattr(checkpoint, "_write_json_atomic", write_json)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    monkeypatch.setattr(checkpoint, "os", Os())


@pytest.mark.parametrize("when", ["before", "after", "half"])
def test_a_crash_at_any_point_of_a_save_leaves_a_usable_checkpoint(tmp_path, trained, monkeypatch, when):
    points = 0
    for at in range(1, 100):
        out = tmp_path / f"{when}-{at}"
        for epoch in (1, 2, 3):  # two kept, so the save of epoch 4 also prunes epoch 2
            save(out, trained, epoch)
        with monkeypatch.context() as patch:
            dying = _Dying(at, when)
            _instrument(patch, dying)
            try:
                save(out, trained, 4)
            except Crash:
                points += 1
            else:
                assert dying.count < at  # every operation was passed without dying: all covered
                break
        found, _ = checkpoint.latest_checkpoint(out)
        assert found is not None, f"nothing usable after dying {when} operation {at}"
        assert found.path.name in ("epoch-0003", "epoch-0004"), (when, at, found.path.name)
        assert found.state["mark"] == int(found.path.name[-4:])
        if found.path.name == "epoch-0004":
            for key, value in trained[0].state_dict().items():
                np.testing.assert_array_equal(found.weights[key], value.numpy())
        # The next save after such a crash succeeds and is the newest.
        assert checkpoint.read_checkpoint(save(out, trained, 5)).state["mark"] == 5
        assert checkpoint.find_latest(out).name == "epoch-0005"
    assert points >= 7, points  # 2 pickles, state.json, the rename, latest.json, 2 deletions
    how = when.replace("half", "half-way through")
    print(f"\ncheckpoint save: died {how} each of its {points} file operations, usable every time")
