"""The trainer's input pipeline against its bare train step, on the same batches.

Full loop: ``finetune_trainer.train.run`` on a synthetic JPEG dataset (decode, random resized
crop, flip, normalise in 2 DataLoader workers, the step, the loss check, the progress bar); its
images/s is that of the last training epoch (the first pays for warm-up). Bare step:
``train.train_step`` on the same batches already in memory, before and after the full loop
(their mean, to cancel drift on a shared machine). Overhead = 1 - full / bare.
A cProfile of one more epoch of the full loop says where the main process spends its time.

    .venv/bin/python bench/trainer_pipeline.py [--out bench/results/trainer_pipeline.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle
from finetune_contract import TrainerSettings
from finetune_trainer import train
from finetune_trainer.data import ImageDataset, index_dataset
from finetune_trainer.model import build_model
from finetune_trainer.schedule import WarmupCosine, build_optimizer
from PIL import Image

ARCH, IMAGES, SOURCE_SIZE, IMAGE_SIZE, BATCH, WORKERS, CLASSES = "ResNet18_vd", 256, 96, 64, 32, 2, 4


def write_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, size=(SOURCE_SIZE, SOURCE_SIZE + 16, 3), dtype=np.uint8)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg", quality=90)
        lines.append(f"img/{i}.jpg {i % CLASSES}\n")
    (root / "train_list.txt").write_text("".join(lines))
    (root / "val_list.txt").write_text("".join(lines[:BATCH]))


def settings_for(root: Path, out: Path, epochs: int) -> TrainerSettings:
    return TrainerSettings.from_dict(
        {
            "model": {"architecture": ARCH},
            "dataset": {"root": str(root), "imageSize": IMAGE_SIZE, "resizeShort": IMAGE_SIZE},
            "finetune": {"freeze": "none"},
            "training": {"epochs": epochs, "batchSize": BATCH, "numWorkers": WORKERS, "warmupEpochs": 0},
            "output": {"dir": str(out), "resultPath": ""},
        }
    )


def bare_step_rate(root: Path, steps: int) -> float:
    index = index_dataset(root, "list")
    dataset = ImageDataset(index.train, IMAGE_SIZE, IMAGE_SIZE, train=True)
    batches = []
    for start in range(0, BATCH * steps, BATCH):
        items = [dataset[i % len(dataset)] for i in range(start, start + BATCH)]
        batches.append(
            (
                paddle.to_tensor(np.stack([x[0] for x in items])),
                paddle.to_tensor(np.stack([x[1] for x in items])),
            )
        )
    model = build_model(ARCH, CLASSES)
    scheduler = WarmupCosine(0.01, 0, 10_000)
    optimizer = build_optimizer(model.parameters(), scheduler, 0.9, 1e-5)
    model.train()
    for images, labels in batches[:2]:  # warm-up, like the full loop's first epoch
        float(train.train_step(model, optimizer, None, images, labels, None, 0.0))
    tick = time.perf_counter()
    for images, labels in batches:
        float(train.train_step(model, optimizer, None, images, labels, None, 0.0))
        scheduler.step()
    return BATCH * len(batches) / (time.perf_counter() - tick)


def profile_summary(stats: pstats.Stats, total: float) -> dict[str, float]:
    """Seconds (cumulative) in the functions that matter, as fractions of the epoch."""
    wanted = {
        "train_step": ("train.py", "train_step"),
        "dataloader_next": ("dataloader_iter.py", "__next__"),
        "split_corrupt_check": ("train.py", "_split_corrupt"),
        "progress_bar": ("std.py", "update"),
        "checkpoint_save": ("checkpoint.py", "save_checkpoint"),
        "evaluate": ("train.py", "evaluate"),
        "export": ("export.py", "export_inference"),
    }
    out: dict[str, float] = {}
    for label, (filename, func) in wanted.items():
        cumulative = sum(
            v[3] for (f, _, name), v in stats.stats.items() if f.endswith(filename) and name == func
        )
        out[label] = round(cumulative / total, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/trainer_pipeline.json")
    args = parser.parse_args()
    paddle.set_device("cpu")
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        write_dataset(work / "data")
        steps = IMAGES // BATCH
        bare_before = bare_step_rate(work / "data", steps)
        result = train.run(settings_for(work / "data", work / "out", epochs=2))
        history = json.loads((work / "out" / "result.json").read_text())
        state_dir = (
            work
            / "out"
            / "checkpoints"
            / json.loads((work / "out/checkpoints/latest.json").read_text())["dir"]
        )
        epochs = json.loads((state_dir / "state.json").read_text())["history"]
        full = epochs[-1]["imagesPerSecond"]
        bare_after = bare_step_rate(work / "data", steps)
        bare = (bare_before + bare_after) / 2

        profiler = cProfile.Profile()
        tick = time.perf_counter()
        profiler.enable()
        train.run(settings_for(work / "data", work / "profiled", epochs=1))
        profiler.disable()
        total = time.perf_counter() - tick
        stats = pstats.Stats(profiler)
        report = {
            "benchmark": "trainer input pipeline vs bare train step",
            "machine": {
                "cpus": len(__import__("os").sched_getaffinity(0)),
                "python": platform.python_version(),
            },
            "paddle": paddle.__version__,
            "config": {
                "architecture": ARCH,
                "images": IMAGES,
                "sourceSize": f"{SOURCE_SIZE + 16}x{SOURCE_SIZE} JPEG",
                "imageSize": IMAGE_SIZE,
                "batchSize": BATCH,
                "numWorkers": WORKERS,
            },
            "fullLoopImagesPerSecond": round(full, 2),
            "bareStepImagesPerSecond": round(bare, 2),
            "bareStepRuns": [round(bare_before, 2), round(bare_after, 2)],
            "overheadFraction": round(1 - full / bare, 4),
            "goal": "overheadFraction < 0.10",
            "fullLoopExitCode": result["exitCode"],
            "profiledRunSeconds": round(total, 2),
            "profileFractionOfRun": profile_summary(stats, total),
            "resultBytes": len(json.dumps(history)),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
        stats.sort_stats("cumulative").print_stats(15)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
