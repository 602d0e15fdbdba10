"""Checkpoints in the output directory, written so that a crash never leaves a half-written one.

Layout::

    <output>/checkpoints/latest.json            {"dir": "epoch-0003"}  (replaced atomically)
    <output>/checkpoints/epoch-0003/            model.pdparams, optimizer.pdopt, state.json
    <output>/checkpoints/epoch-0003-step00017/  a checkpoint taken mid-epoch on SIGTERM
    <output>/best_model/model.pdparams          the weights of the best epoch, and metrics.json

A checkpoint directory is filled under a temporary name and renamed into place; only then does
``latest.json`` point at it. The two newest checkpoint directories are kept.
``state.json`` holds the epoch counter, the position in the epoch, the LR schedule and AMP scaler
state, the best metrics, the per-epoch history, the seed and the freeze decision, so a resumed run
continues the same schedule with the same choices (it does not re-decide ``auto``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import paddle

LATEST = "latest.json"
KEEP = 2


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def checkpoint_name(epoch: int, step_in_epoch: int = 0) -> str:
    return f"epoch-{epoch:04d}" + (f"-step{step_in_epoch:05d}" if step_in_epoch else "")


def save_checkpoint(
    output_dir: Path,
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint for ``state['epoch']`` completed epochs (+ ``state['stepInEpoch']``)."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(state["epoch"], state.get("stepInEpoch", 0))
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    paddle.save(model.state_dict(), str(tmp / "model.pdparams"))
    paddle.save(optimizer.state_dict(), str(tmp / "optimizer.pdopt"))
    _write_json_atomic(tmp / "state.json", state)
    if final.exists():  # left by an attempt that crashed before pointing latest.json at it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json_atomic(root / LATEST, {"dir": name})
    _prune(root, keep={name})
    return final


def _prune(root: Path, keep: set[str]) -> None:
    dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch-")), key=lambda p: p.name
    )
    for old in dirs[:-KEEP]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def find_latest(output_dir: Path) -> Path | None:
    """The directory of the newest complete checkpoint, or None."""
    pointer = Path(output_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError, TypeError):
        return None
    path = pointer.parent / name
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model state dict, optimizer state dict, state) of a checkpoint directory."""
    state = json.loads((path / "state.json").read_text())
    return paddle.load(str(path / "model.pdparams")), paddle.load(str(path / "optimizer.pdopt")), state


def save_best(output_dir: Path, model: paddle.nn.Layer, metrics: dict[str, Any]) -> Path:
    """Replace ``<output>/best_model`` files atomically (weights first, then their metrics)."""
    best = Path(output_dir) / "best_model"
    best.mkdir(parents=True, exist_ok=True)
    tmp = best / f".model.pdparams.{os.getpid()}.tmp"
    paddle.save(model.state_dict(), str(tmp))
    os.replace(tmp, best / "model.pdparams")
    _write_json_atomic(best / "metrics.json", metrics)
    return best / "model.pdparams"
