"""Checkpoints in the output directory, written so that a crash never leaves a half-written one
behind, and read so that a damaged or foreign file is never trusted.

Layout::

    <output>/checkpoints/latest.json            {"dir": "epoch-0003"}  (replaced atomically)
    <output>/checkpoints/epoch-0003/            model.pdparams, optimizer.pdopt, state.json
    <output>/checkpoints/epoch-0003-step00017/  a checkpoint taken mid-epoch on SIGTERM
    <output>/checkpoints/rejected-epoch-0004-*/ a checkpoint that failed verification, kept aside
    <output>/best_model/model.pdparams          the weights of the best epoch, and metrics.json

A checkpoint directory is filled under a temporary name and renamed into place; only then does
``latest.json`` point at it. The two newest checkpoint directories are kept.
``state.json`` (written last) holds the run's state (``state.RunState``: the epoch counter, the
position in the epoch, the LR schedule and AMP scaler state, the best metrics, the per-epoch
history, the freeze decision, and whose run it is and with which settings) and the size and
sha256 of each of the two other files, computed while they were written.

Reading (``latest_checkpoint``) verifies every file: ``state.json`` parses, each weights file has
the recorded size and sha256 and holds only plain arrays (``statefile.load``: nothing in it is
run). A checkpoint that fails is reported and the next older one tried, so a truncated or
corrupt newest checkpoint costs the steps since the one before, never the run. Whether the run
may continue a readable checkpoint (its job and settings) is ``resume.py``'s question.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from . import statefile
from .statefile import UnsafeFileError

LATEST = "latest.json"
STATE = "state.json"
MODEL = "model.pdparams"
OPTIMIZER = "optimizer.pdopt"
BEST_DIR = "best_model"
REJECTED = "rejected-"
KEEP = 2
PADDLE_NAME_TABLE = "StructuredToParameterName@@"  # what paddle.save adds to a state dict
_NAME = re.compile(r"epoch-(\d+)(?:-step(\d+))?")


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def checkpoint_name(epoch: int, step_in_epoch: int = 0) -> str:
    return f"epoch-{epoch:04d}" + (f"-step{step_in_epoch:05d}" if step_in_epoch else "")


def position(name: str) -> tuple[int, int] | None:
    """(completed epochs, steps into the next) of a checkpoint directory's name, or None."""
    match = _NAME.fullmatch(name)
    return (int(match[1]), int(match[2] or 0)) if match else None


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
    files = {
        MODEL: statefile.save(model.state_dict(), tmp / MODEL),
        OPTIMIZER: statefile.save(portable_optimizer_state(optimizer.state_dict(), model), tmp / OPTIMIZER),
    }
    _write_json_atomic(tmp / STATE, {**state, "files": files})
    if final.exists():  # left by an attempt that crashed before pointing latest.json at it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json_atomic(root / LATEST, {"dir": name})
    _prune(root, keep={name})
    return final


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """The checkpoint directories, newest position first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(pos, p) for p in root.iterdir() if p.is_dir() and (pos := position(p.name)) is not None]
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


def _prune(root: Path, keep: set[str]) -> None:
    for old in checkpoint_dirs(root.parent)[KEEP:]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


class CheckpointUnusable(Exception):
    """A checkpoint directory that cannot be trusted: the message names the file and why."""


@dataclass
class Checkpoint:
    """A verified checkpoint: weights and optimiser state as numpy, and its ``state.json``."""

    path: Path
    weights: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    state: dict[str, Any]


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint directory (see the module docstring); raises
    CheckpointUnusable naming the file and what is wrong with it."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointUnusable(f"{path / STATE} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointUnusable(f"{path / STATE} cannot be read ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise CheckpointUnusable(f"{path / STATE} holds no run state")
    files = state.get("files")  # absent in checkpoints of older trainers: nothing to compare with
    loaded: dict[str, Any] = {}
    for name in (MODEL, OPTIMIZER):
        expect = files.get(name) if isinstance(files, dict) else None
        if isinstance(files, dict) and not isinstance(expect, dict):
            raise CheckpointUnusable(f"{path / STATE} records no size and sha256 for {name}")
        try:
            loaded[name] = statefile.load(path / name, expect)
        except FileNotFoundError:
            raise CheckpointUnusable(f"{path / name} is missing") from None
        except OSError as exc:
            raise CheckpointUnusable(f"{path / name} cannot be read ({exc})") from None
        except UnsafeFileError as exc:
            raise CheckpointUnusable(str(exc)) from None
    weights, optimizer = loaded[MODEL], loaded[OPTIMIZER]
    if not _is_weights(weights):
        raise CheckpointUnusable(f"{path / MODEL} is not a state dict of arrays")
    if not isinstance(optimizer, dict):
        raise CheckpointUnusable(f"{path / OPTIMIZER} is not an optimiser state dict")
    optimizer.pop(PADDLE_NAME_TABLE, None)
    return Checkpoint(path, weights, optimizer, state)


def latest_checkpoint(
    output_dir: Path, warn: Callable[[str], None] | None = None
) -> tuple[Checkpoint | None, list[Path]]:
    """(the newest checkpoint that verifies or None, the newer ones that did not). Each one
    skipped is reported through ``warn``."""
    rejected: list[Path] = []
    for path in checkpoint_dirs(output_dir):
        try:
            found = read_checkpoint(path)
        except CheckpointUnusable as exc:
            rejected.append(path)
            if warn is not None:
                warn(f"warning: checkpoint {path.name} cannot be used: {exc}; trying the one before")
            continue
        return found, rejected
    return None, rejected


def find_latest(output_dir: Path) -> Path | None:
    """The directory of the newest checkpoint that verifies, or None."""
    found, _ = latest_checkpoint(output_dir)
    return found.path if found is not None else None


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model state dict, portable optimizer state, state) of a checkpoint directory, verified
    (``CheckpointUnusable`` otherwise); give the optimizer state to ``restore_optimizer_state``
    before ``optimizer.set_state_dict``."""
    found = read_checkpoint(path)
    return found.weights, found.optimizer, found.state


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that failed verification out of the way (kept for a person to look
    at, never read again, never pruned)."""
    target = path.with_name(f"{REJECTED}{path.name}-{int(time.time())}")
    os.replace(path, target)
    return target


def save_best(
    output_dir: Path, model: paddle.nn.Layer, metrics: dict[str, Any], job: dict[str, Any] | None = None
) -> Path:
    """Replace ``<output>/best_model`` files atomically (weights first, then their metrics, with
    the job they belong to)."""
    best = Path(output_dir) / BEST_DIR
    best.mkdir(parents=True, exist_ok=True)
    tmp = best / f".{MODEL}.{os.getpid()}.tmp"
    written = statefile.save(model.state_dict(), tmp)
    os.replace(tmp, best / MODEL)
    _write_json_atomic(best / "metrics.json", {**metrics, "job": job or {}, "file": written})
    return best / MODEL


def load_best(output_dir: Path) -> dict[str, np.ndarray] | None:
    """The best model's weights (read by ``statefile.load``), or None when there is none.
    Raises UnsafeFileError when the file is not plain weights."""
    path = Path(output_dir) / BEST_DIR / MODEL
    if not path.is_file():
        return None
    weights = statefile.load(path)
    if not _is_weights(weights):
        raise UnsafeFileError(path, "not a state dict of arrays")
    return weights


def _is_weights(data: Any) -> bool:
    """A model state dict: arrays by name (paddle.save's name table, in files of older trainers,
    is dropped)."""
    if not isinstance(data, dict):
        return False
    data.pop(PADDLE_NAME_TABLE, None)
    return all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in data.items())


# Paddle keys optimiser state by each parameter's generated name ("conv2d_46.w_0_velocity_0"),
# which depends on how many layers the process built before; checkpoints use the state-dict key
# instead ("blocks.3.conv1.conv.weight::velocity_0"), so any process can restore them.
SEPARATOR = "::"


def _name_map(model: paddle.nn.Layer) -> dict[str, str]:
    return {param.name: key for key, param in model.named_parameters()}


def _rename(key: str, names: dict[str, str], ordered: list[str]) -> str:
    for generated in ordered:
        if key.startswith(generated + "_"):
            return names[generated] + SEPARATOR + key[len(generated) + 1 :]
    return key


def portable_optimizer_state(state: dict[str, Any], model: paddle.nn.Layer) -> dict[str, Any]:
    names = _name_map(model)
    ordered = sorted(names, key=len, reverse=True)  # longest first: "fc_0.w_0" before "fc_0.w"
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = {names.get(k, k): v for k, v in value.items()}
        elif key == "LR_Scheduler":
            out[key] = value
        else:
            out[_rename(key, names, ordered)] = value
    return out


def restore_optimizer_state(state: dict[str, Any], model: paddle.nn.Layer) -> dict[str, Any]:
    generated = {key: param.name for key, param in model.named_parameters()}
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            # set_state_dict keeps master weights as given, so they must be tensors (the
            # accumulators are copied with set_value, which takes numpy arrays).
            out[key] = {generated.get(k, k): paddle.to_tensor(v) for k, v in value.items()}
        elif SEPARATOR in key:
            structured, suffix = key.split(SEPARATOR, 1)
            out[f"{generated.get(structured, structured)}_{suffix}"] = value
        else:
            out[key] = value
    return out
