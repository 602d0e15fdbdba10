"""How long a checkpoint takes to save, against writing the same number of bytes raw: the basis
of spec.runPolicy.terminationGracePeriodSeconds' default.

For each architecture (1000 classes, every layer trainable, one optimiser step taken so that the
momentum state exists): the trainer's own ``checkpoint.save_checkpoint`` (model + optimiser,
pickled, hashed, renamed into place) and ``checkpoint.save_best``, then, as the reference measured
in the same run on the same disk, a raw write of the same number of bytes (one buffer, one
``write``), both without and with ``fsync`` (the latter is what reaching the device costs; a
network disk behaves like that, or slower). Also the verified read of the checkpoint
(``latest_checkpoint``: sha256 and the safe unpickler). Three rounds, medians.

    .venv/bin/python bench/checkpoint_save.py [--dir FOLDER_ON_THE_DISK] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import paddle
from finetune_trainer import checkpoint
from finetune_trainer.model import build_model
from finetune_trainer.schedule import WarmupCosine, build_optimizer

ARCHITECTURES = ("ResNet50_vd", "ResNet152_vd")
CLASSES = 1000
ROUNDS = 3


def _timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _raw_seconds(path: Path, size: int, sync: bool) -> float:
    """Seconds to write ``size`` random bytes in one call (and fsync them)."""
    data = os.urandom(size)
    start = time.perf_counter()
    with open(path, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    return time.perf_counter() - start


def _sync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def measure(arch: str, root: Path) -> dict[str, Any]:
    model = build_model(arch, CLASSES)
    scheduler = WarmupCosine(0.1, 0, 10)
    optimizer = build_optimizer(model.parameters(), scheduler, 0.9, 1e-5)
    loss = model(paddle.randn([1, 3, 32, 32])).mean()
    loss.backward()
    optimizer.step()  # creates the momentum ("velocity") state of every parameter
    optimizer.clear_grad()
    state = {"epoch": 1, "stepInEpoch": 17}

    out = root / arch
    kinds = ("save", "save_fsync", "best", "read", "raw", "raw_fsync")
    rounds: dict[str, list[float]] = {k: [] for k in kinds}
    size = 0
    for _ in range(ROUNDS):
        shutil.rmtree(out, ignore_errors=True)
        rounds["save"].append(_timed(lambda: checkpoint.save_checkpoint(out, model, optimizer, state)))
        size = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file())
        shutil.rmtree(out, ignore_errors=True)
        rounds["save_fsync"].append(
            _timed(lambda: (checkpoint.save_checkpoint(out, model, optimizer, state), _sync_tree(out)))
        )
        rounds["best"].append(_timed(lambda: checkpoint.save_best(out, model, {"epoch": 1})))
        rounds["read"].append(_timed(lambda: checkpoint.latest_checkpoint(out)))
        rounds["raw"].append(_raw_seconds(root / "raw.bin", size, sync=False))
        rounds["raw_fsync"].append(_raw_seconds(root / "raw.bin", size, sync=True))
    shutil.rmtree(out, ignore_errors=True)
    (root / "raw.bin").unlink(missing_ok=True)
    med = {k: round(statistics.median(v), 3) for k, v in rounds.items()}
    return {
        "architecture": arch,
        "parameters": sum(int(p.size) for p in model.parameters()),
        "checkpointBytes": size,
        "seconds": med,
        "rounds": rounds,
        "saveOverRaw": round(med["save"] / med["raw"], 2),
        "saveFsyncOverRawFsync": round(med["save_fsync"] / med["raw_fsync"], 2),
        "rawFsyncMBps": round(size / med["raw_fsync"] / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="a folder on the disk to measure (default: /tmp)")
    parser.add_argument("--out", default="bench/results/checkpoint_save.json")
    args = parser.parse_args()
    paddle.set_device("cpu")
    root = Path(tempfile.mkdtemp(prefix="pfo-ckpt-", dir=args.dir))
    try:
        results = [measure(arch, root) for arch in ARCHITECTURES]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "disk": str(root.parent), "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    columns = ("save", "save_fsync", "best", "read", "raw", "raw_fsync")
    print(
        f"{'architecture':<14}{'MB':>6}" + "".join(f"{c + ' s':>13}" for c in columns) + f"{'save/raw':>10}"
    )
    for r in results:
        times = "".join(f"{r['seconds'][c]:>13.2f}" for c in columns)
        print(f"{r['architecture']:<14}{r['checkpointBytes'] / 1e6:>6.0f}{times}{r['saveOverRaw']:>10.2f}")


if __name__ == "__main__":
    main()
