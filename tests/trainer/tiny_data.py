"""Tiny synthetic image datasets for the trainer's tests (a few 16-24 px images per class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from finetune_contract import TrainerSettings
from PIL import Image

# One base colour per class, so a few steps can learn something and predictions are checkable.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40), (200, 60, 210)]


def write_image(path: Path, colour: tuple[int, int, int], size: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-30, 30, size=(size, size + 4, 3))
    pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_list_dataset(
    root: Path, classes: int = 3, train_per_class: int = 4, val_per_class: int = 2
) -> Path:
    """``images/c<k>_<i>.png`` with ``train_list.txt`` / ``val_list.txt``."""
    lines: dict[str, list[str]] = {"train": [], "val": []}
    seed = 0
    for label in range(classes):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for i in range(count):
                relative = f"images/{split}_c{label}_{i}.png"
                write_image(root / relative, COLOURS[label % len(COLOURS)], seed=seed)
                seed += 1
                lines[split].append(f"{relative} {label}\n")
    (root / "train_list.txt").write_text("".join(lines["train"]))
    (root / "val_list.txt").write_text("".join(lines["val"]))
    return root


def write_folder_dataset(root: Path, names: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for label, name in enumerate(names):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.jpg", COLOURS[label], seed=i)
    return root


def tiny_settings(data_root: Path, output_dir: Path, **overrides: Any) -> TrainerSettings:
    """ResNet18_vd at 16 px, 2 epochs, batch 4, no workers: a few seconds on CPU."""
    data: dict[str, Any] = {
        "model": {"architecture": "ResNet18_vd"},
        "dataset": {"root": str(data_root), "imageSize": 16, "resizeShort": 16},
        "finetune": {"freeze": "none"},
        "training": {"epochs": 2, "batchSize": 4, "numWorkers": 0, "warmupEpochs": 1, "logEverySteps": 1},
        "output": {"dir": str(output_dir), "resultPath": str(output_dir.parent / "termination-log")},
        "cacheDir": str(output_dir.parent / "cache"),
    }
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        data.setdefault(section, {})[key] = value
    return TrainerSettings.from_dict(data)
