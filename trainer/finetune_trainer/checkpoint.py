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
    paddle.save(portable_optimizer_state(optimizer.state_dict(), model), str(tmp / "optimizer.pdopt"))
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
    """(model state dict, portable optimizer state, state) of a checkpoint directory; give the
    optimizer state to ``restore_optimizer_state`` before ``optimizer.set_state_dict``."""
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
            out[key] = {generated.get(k, k): v for k, v in value.items()}
        elif SEPARATOR in key:
            structured, suffix = key.split(SEPARATOR, 1)
            out[f"{generated.get(structured, structured)}_{suffix}"] = value
        else:
            out[key] = value
    return out
