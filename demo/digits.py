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
PRETRAIN_CLASSES = (0, 1, 2, 3, 4, 5)  # 6 classes: the finetune's 4-class fc cannot load, it is stripped
FINETUNE_CLASSES = (6, 7, 8, 9)
IMAGE_SIZE = 16  # the digits are 8x8; 16 px gives ResNet18_vd's stages room (stage 3 still 1x1)
# Budgets measured on 2 shared CPU cores (see tests/trainer/test_digits.py): pretraining reaches
# about 0.97 top-1 on digits 0-5; the from-scratch default rate (0.125 at batch 32) is too high
# for these few steps, so the stand-in "ImageNet" run gets a hand-picked 0.05.
PRETRAIN_BUDGET = {"epochs": 5, "batchSize": 32, "learningRate": 0.05, "warmupEpochs": 1}
FINETUNE_EPOCHS = 4


def finetune_budget() -> dict[str, Any]:
    """The training settings of the digits finetune (and of its from-scratch baseline)."""
    return {"epochs": FINETUNE_EPOCHS, "batchSize": 32, "warmupEpochs": 1}


def write_digits_dataset(
    root: Path,
    classes: Sequence[int],
    image_size: int = IMAGE_SIZE,
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
    data_root: Path, output_dir: Path, num_classes: int, image_size: int = IMAGE_SIZE, **training: Any
) -> TrainerSettings:
    """Trainer settings for a digits dataset written by ``write_digits_dataset``."""
    data = {
        "model": {"architecture": "ResNet18_vd"},
        "dataset": {
            "root": str(data_root),
            "numClasses": num_classes,
            "labelList": "labels.txt",  # the digits, so the exported labels say "6", not "0"
            "imageSize": image_size,
            "resizeShort": image_size,  # the images are already that size: no centre crop
            # Digits are small and orientation matters (a mirrored 2 is no digit): mild crops, no flip.
            "cropScaleMin": 1.0,
            "horizontalFlip": False,
        },
        "training": {**finetune_budget(), "numWorkers": 0, **training},
        "output": {"dir": str(output_dir), "resultPath": str(Path(output_dir) / "termination-log")},
        "cacheDir": str(Path(output_dir) / "cache"),
    }
    return TrainerSettings.from_dict(data)


def make_pretrained_weights(
    path: Path,
    work_dir: Path,
    classes: Sequence[int] = PRETRAIN_CLASSES,
    image_size: int = IMAGE_SIZE,
    **training: Any,
) -> dict[str, Any]:
    """Train ResNet18_vd from scratch on ``classes`` and save its best weights to ``path``.

    Returns the trainer's result for that pretraining run.
    """
    from finetune_trainer.train import run

    work_dir = Path(work_dir)
    data_root = work_dir / "pretrain-data"
    info = write_digits_dataset(data_root, classes, image_size)
    budget = {**PRETRAIN_BUDGET, **training}
    settings = digits_settings(
        data_root, work_dir / "pretrain-output", info["numClasses"], image_size, **budget
    )
    settings.finetune.freeze = "from-scratch"
    result = run(settings).to_dict()  # the result JSON, as the callers read it
    if result.get("exitCode") != 0:
        raise RuntimeError(f"pretraining on digits failed: {result.get('message')}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work_dir / "pretrain-output" / "best_model" / "model.pdparams", path)
    return result
