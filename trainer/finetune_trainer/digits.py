"""Tiny real data for checks and the demo: scikit-learn's handwritten digits (1797 8x8 images).

``write_digits_dataset`` writes a subset of the classes as RGB PNG files (upscaled) with PaddleClas
list files; ``make_pretrained_weights`` trains a small ResNet_vd on some classes with the trainer
itself and saves its weights as a ``.pdparams`` file, so a finetune on the other classes has a
real pretrained model whose fc layer does not fit (and must be stripped).

scikit-learn ships the digits inside its wheel, so nothing is downloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from finetune_contract import TrainerSettings
from PIL import Image

VAL_FRACTION = 0.3


def write_digits_dataset(
    root: Path,
    classes: Sequence[int],
    image_size: int = 32,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
) -> dict[str, Any]:
    """Write digits of ``classes`` (relabelled 0..n-1 in the given order) under ``root``.

    Layout: ``images/<digit>/<index>.png``, ``train_list.txt``, ``val_list.txt``, ``labels.txt``;
    each class is split into train/validation at random with ``val_fraction`` held out.
    """
    from sklearn.datasets import load_digits  # dev/test dependency only

    digits = load_digits()
    root = Path(root)
    rng = np.random.default_rng(seed)
    train_lines: list[str] = []
    val_lines: list[str] = []
    for label, digit in enumerate(classes):
        folder = root / "images" / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        indices = np.flatnonzero(digits.target == digit)
        rng.shuffle(indices)
        n_val = max(1, round(len(indices) * val_fraction))
        for position, i in enumerate(indices):
            pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize(
                (image_size, image_size), Image.Resampling.BILINEAR
            )
            relative = f"images/{digit}/{i}.png"
            image.convert("RGB").save(root / relative)
            (val_lines if position < n_val else train_lines).append(f"{relative} {label}\n")
    (root / "train_list.txt").write_text("".join(sorted(train_lines)))
    (root / "val_list.txt").write_text("".join(sorted(val_lines)))
    (root / "labels.txt").write_text("".join(f"{d}\n" for d in classes))
    return {
        "root": str(root),
        "classes": list(classes),
        "numClasses": len(classes),
        "train": len(train_lines),
        "val": len(val_lines),
        "imageSize": image_size,
    }


def digits_settings(
    data_root: Path, output_dir: Path, num_classes: int, image_size: int = 32, **training: Any
) -> TrainerSettings:
    """Trainer settings for a digits dataset written by ``write_digits_dataset``."""
    data = {
        "model": {"architecture": "ResNet18_vd"},
        "dataset": {
            "root": str(data_root),
            "numClasses": num_classes,
            "imageSize": image_size,
            "resizeShort": image_size,  # the images are already that size: no centre crop
        },
        "training": {"epochs": 10, "batchSize": 32, "numWorkers": 0, "warmupEpochs": 1, **training},
        "output": {"dir": str(output_dir), "resultPath": str(Path(output_dir) / "termination-log")},
        "cacheDir": str(Path(output_dir) / "cache"),
    }
    return TrainerSettings.from_dict(data)


def make_pretrained_weights(
    path: Path,
    work_dir: Path,
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    image_size: int = 32,
    **training: Any,
) -> dict[str, Any]:
    """Train ResNet18_vd from scratch on ``classes`` and save its best weights to ``path``.

    Returns the trainer's result for that pretraining run.
    """
    from .train import run

    work_dir = Path(work_dir)
    data_root = work_dir / "pretrain-data"
    info = write_digits_dataset(data_root, classes, image_size)
    settings = digits_settings(
        data_root, work_dir / "pretrain-output", info["numClasses"], image_size, **training
    )
    settings.finetune.freeze = "from-scratch"
    result = run(settings)
    if result.get("exitCode") != 0:
        raise RuntimeError(f"pretraining on digits failed: {result.get('message')}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work_dir / "pretrain-output" / "best_model" / "model.pdparams", path)
    return result
