"""Export the best model for inference: ``paddle.jit.save`` plus the label list.

``<output>/inference/inference.json`` (Paddle 3; ``.pdmodel`` on Paddle 2.6) and
``inference.pdiparams`` take a float32 batch ``[N, 3, H, W]`` normalised like the eval transform
(scale 1/255, ImageNet mean/std) and return logits ``[N, num_classes]``; ``labels.txt`` holds one
class name per line, line i naming class i (the same file sits next to ``best_model``).
"""

from __future__ import annotations

from pathlib import Path

import paddle
from paddle.static import InputSpec

INFERENCE_DIR = "inference"
INFERENCE_PREFIX = "inference"
LABELS_FILE = "labels.txt"


def write_labels(path: Path, label_names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in label_names), encoding="utf-8")


def export_inference(
    model: paddle.nn.Layer, output_dir: Path, image_size: int, label_names: list[str]
) -> Path:
    """Save ``model`` (in eval mode) as a static inference model; returns the path prefix."""
    target = Path(output_dir) / INFERENCE_DIR
    target.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = [InputSpec([None, 3, image_size, image_size], "float32", name="x")]
    prefix = target / INFERENCE_PREFIX
    paddle.jit.save(model, str(prefix), input_spec=spec)
    write_labels(target / LABELS_FILE, label_names)
    return prefix
