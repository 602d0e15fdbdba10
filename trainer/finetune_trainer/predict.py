"""``finetune-predict``: classify images with the model a FineTuneJob exported.

    finetune-predict <output>/inference photo.jpg more/*.jpg     # top-5 labels with scores
    finetune-predict <output>/inference photos/ --top-k 3         # every image under a folder
    finetune-predict <output>/inference --list val_list.txt --root /data   # + top-1/top-5 accuracy
    finetune-predict <output> ... --json                          # one JSON object per image

The model folder is the job's ``inference/`` (or the output folder that holds it): the static
program (``inference.json``, Paddle 3; ``inference.pdmodel``, Paddle 2.6) and its weights
(``inference.pdiparams``), run by Paddle Inference (``paddle.inference``, the deployment runtime
PaddleClas's own predictor uses: no Python objects are unpickled), ``labels.txt`` for the class
names and ``preprocess.json`` for the eval transform (resize the short side, centre crop, ImageNet
normalisation: ``data.eval_transform``, the very function the trainer evaluates with). Scores are
softmax probabilities. Images that cannot be read are reported on stderr and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import IMAGE_EXTENSIONS, DataError, decode, eval_transform, read_list_file
from .export import INFERENCE_PREFIX, LABELS_FILE, PREPROCESS_FILE

PROGRAM_SUFFIXES = (".json", ".pdmodel")  # Paddle 3 (PIR), Paddle 2.6


class ModelError(Exception):
    """The model folder is incomplete; the message names what is missing."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[int, str, float]]  # (label, name, probability), best first

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "top": [{"label": i, "name": n, "score": round(p, 6)} for i, n, p in self.top],
        }


def model_files(folder: Path) -> tuple[Path, Path]:
    """(program, weights) in an ``inference/`` folder, or in the ``inference/`` under ``folder``."""
    for candidate in (folder, folder / INFERENCE_PREFIX):
        weights = candidate / f"{INFERENCE_PREFIX}.pdiparams"
        for suffix in PROGRAM_SUFFIXES:
            program = candidate / f"{INFERENCE_PREFIX}{suffix}"
            if program.is_file() and weights.is_file():
                return program, weights
    raise ModelError(
        f"{folder}: no exported model (expected {INFERENCE_PREFIX}.json or {INFERENCE_PREFIX}.pdmodel "
        f"with {INFERENCE_PREFIX}.pdiparams, as the trainer writes to <output>/inference)"
    )


class Classifier:
    """An exported model, ready to classify image files."""

    def __init__(
        self, folder: str | Path, labels: str | Path | None = None, use_gpu: bool | None = None
    ) -> None:
        import paddle
        from paddle import inference

        program, weights = model_files(Path(folder))
        self.folder = program.parent
        labels_path = Path(labels) if labels else self.folder / LABELS_FILE
        self.names = labels_path.read_text(encoding="utf-8").splitlines() if labels_path.is_file() else []
        preprocess = self.folder / PREPROCESS_FILE
        if not preprocess.is_file():
            raise ModelError(
                f"{preprocess}: missing (the eval transform's sizes; written by the trainer's export)"
            )
        config = json.loads(preprocess.read_text())
        self.image_size, self.resize_short = int(config["imageSize"]), int(config["resizeShort"])

        settings = inference.Config(str(program), str(weights))
        if use_gpu is None:
            use_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        if use_gpu:
            settings.enable_use_gpu(256, 0)
        else:
            settings.disable_gpu()
        settings.disable_glog_info()
        self.predictor = inference.create_predictor(settings)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def name(self, label: int) -> str:
        return self.names[label] if label < len(self.names) else str(label)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax over the model's logits for a normalised ``[N, 3, H, W]`` float32 batch."""
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self.predictor.run()
        logits = self.output.copy_to_cpu().astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def classify(
        self, paths: Sequence[Path], top_k: int = 5, batch_size: int = 32
    ) -> Iterator[Prediction | Exception]:
        """A Prediction per path, in order, or the exception that kept the image from being read."""
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            arrays: list[np.ndarray] = []
            read: list[Path | Exception] = []
            for path in chunk:
                try:
                    arrays.append(eval_transform(decode(path), self.image_size, self.resize_short))
                    read.append(path)
                except Exception as exc:  # noqa: BLE001 - reported per image, the others go on
                    read.append(exc)
            probs = iter(self.probabilities(np.stack(arrays)) if arrays else [])
            for path, item in zip(chunk, read, strict=True):
                if isinstance(item, Exception):
                    yield ValueError(f"{path}: cannot read the image: {item}")
                    continue
                row = next(probs)
                best = np.argsort(-row, kind="stable")[: max(1, top_k)]
                yield Prediction(str(path), [(int(i), self.name(int(i)), float(row[i])) for i in best])


def image_paths(targets: Sequence[str]) -> list[Path]:
    """Files as given; folders walked (sorted) for image files."""
    paths: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{path}: no images (extensions {', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-predict",
        description="Classify images with the model a FineTuneJob exported (<output>/inference).",
    )
    parser.add_argument("model", help="the inference/ folder (or the job's output folder holding it)")
    parser.add_argument("images", nargs="*", help="image files or folders (searched recursively)")
    parser.add_argument(
        "--list", metavar="FILE", help="a PaddleClas list file ('path LABEL' lines): also report accuracy"
    )
    parser.add_argument(
        "--root", metavar="DIR", help="the folder the list file's paths are relative to (default: its folder)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels shown per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--labels", metavar="FILE", help="class names, one a line (default: the model's labels.txt)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="never use a GPU")
    device.add_argument("--gpu", action="store_true", help="use GPU 0 (default: when Paddle has one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        print("finetune-predict: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = image_paths(args.images)
        truth: dict[str, int] = {}
        if args.list:
            listing = Path(args.list)
            samples = read_list_file(listing, (Path(args.root) if args.root else listing.parent).resolve())
            truth = {str(s.path): s.label for s in samples}
            paths += [s.path for s in samples]
        if not paths:
            print("finetune-predict: no images given (files, folders or --list)", file=sys.stderr)
            return 2
        classifier = Classifier(
            args.model, args.labels, use_gpu=True if args.gpu else False if args.cpu else None
        )
    except (DataError, ModelError, OSError, ValueError) as exc:
        print(f"finetune-predict: {exc}", file=sys.stderr)
        return 2
    failed, scored, top1, topk = 0, 0, 0, 0
    for item in classifier.classify(paths, args.top_k, args.batch_size):
        if isinstance(item, Exception):
            failed += 1
            print(f"finetune-predict: {item}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(item.to_dict()), flush=False)
        else:
            shown = ", ".join(f"{name} {score:.4f}" for _, name, score in item.top)
            print(f"{item.path}: {shown}")
        if item.path in truth:
            labels = [label for label, _, _ in item.top]
            scored += 1
            top1 += labels[0] == truth[item.path]
            topk += truth[item.path] in labels
    if scored:
        summary = {
            "images": scored,
            "top1": round(top1 / scored, 6),
            f"top{args.top_k}": round(topk / scored, 6),
        }
        print(f"finetune-predict: accuracy on {args.list}: {json.dumps(summary)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
