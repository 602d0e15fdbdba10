"""Export the best model for inference: ``paddle.jit.save`` plus the label list.

``<output>/inference/inference.json`` (Paddle 3; ``.pdmodel`` on Paddle 2.6) and
``inference.pdiparams`` take a float32 batch ``[N, 3, H, W]`` normalised like the eval transform
(scale 1/255, ImageNet mean/std) and return logits ``[N, num_classes]``; ``labels.txt`` holds one
class name per line, line i naming class i (the same file sits next to ``best_model``);
``preprocess.json`` says how to prepare an image for it (the eval transform's sizes and
statistics), which is what ``finetune-predict`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import paddle
from paddle.static import InputSpec

INFERENCE_DIR = "inference"
INFERENCE_PREFIX = "inference"
LABELS_FILE = "labels.txt"
PREPROCESS_FILE = "preprocess.json"


def write_labels(path: Path, label_names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in label_names), encoding="utf-8")


def preprocess_config(image_size: int, resize_short: int) -> dict[str, object]:
    """The eval transform (data.eval_transform) as data, for whoever feeds the exported model."""
    from .data import MEAN, STD

    return {
        "resizeShort": resize_short,
        "imageSize": image_size,
        "channels": "RGB",
        "scale": 1 / 255,
        "mean": [round(float(v), 6) for v in MEAN],
        "std": [round(float(v), 6) for v in STD],
        "layout": "NCHW",
        "output": "logits",
    }


def export_inference(
    model: paddle.nn.Layer,
    output_dir: Path,
    image_size: int,
    label_names: list[str],
    resize_short: int | None = None,
) -> Path:
    """Save ``model`` (in eval mode) as a static inference model; returns the path prefix."""
    target = Path(output_dir) / INFERENCE_DIR
    target.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = [InputSpec([None, 3, image_size, image_size], "float32", name="x")]
    prefix = target / INFERENCE_PREFIX
    paddle.jit.save(model, str(prefix), input_spec=spec)
    write_labels(target / LABELS_FILE, label_names)
    config = preprocess_config(image_size, resize_short or image_size)
    (target / PREPROCESS_FILE).write_text(json.dumps(config, indent=1) + "\n")
    return prefix
