"""The training input pipeline alone, per CPU core: ours against PaddleClas 2.6.0's transforms.

Decode + random resized crop to 224 + horizontal flip + normalise (float32 CHW), one image at a
time in one process with one thread (OpenCV and BLAS held to one), on flowers-sized JPEGs made
here (shorter side 375-500 px, as flowers102's, quality 90, smooth content with noise). Each
pipeline reads the file itself. Measured: CPU seconds per image (process time, which other load
on a shared machine barely moves), as images/s per core; the pipelines alternate over several
rounds on the same files and the medians are reported, with the ratio per round.

* ``ours``: the trainer's own code path, ``ImageDataset.__getitem__`` with ``train=True``
  (``data.train_sample``: the crop drawn from the header, a JPEG decoded at a DCT-domain reduction
  when the crop is at least twice the output, OpenCV's bilinear resize, flip and normalisation in
  one lookup).
* ``paddleclas``: PaddleClas 2.6.0's operators as its flowers102 config chains them (DecodeImage
  with cv2, RandCropImage with cv2.INTER_LINEAR, RandFlipImage, NormalizeImage order hwc,
  ToCHWImage). The ``paddleclas`` wheel on PyPI does not ship ``ppcls/data``, so these are
  reproduced here from their documented behaviour (same draws, same OpenCV calls, same arithmetic);
  see ``paddleclas_transforms`` below.
* ``paddle_vision``: Paddle's own ``paddle.vision.transforms`` (RandomResizedCrop,
  RandomHorizontalFlip, Normalize, Transpose) on cv2-decoded arrays, the closest installed code.
* ``trainer_before``: the trainer's previous pipeline (PIL decode, PIL's antialiased bilinear
  resize of the crop box, float normalisation), for the record.

Also checked: the crop distribution is the same as PaddleClas's (area fraction and aspect ratio of
20,000 boxes from ``data.crop_box`` and from the PaddleClas draw, two-sample Kolmogorov-Smirnov),
and how often the JPEG reduction applies on these images.

    .venv/bin/python bench/input_pipeline.py [--out bench/results/input_pipeline.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: the figure is per core

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from finetune_trainer.data import (  # noqa: E402
    MEAN,
    STD,
    ImageDataset,
    Sample,
    crop_box,
    decode,
    reduction_for,
)
from PIL import Image, ImageFilter  # noqa: E402

cv2.setNumThreads(1)
SIZE = 224
IMAGES = 96
ROUNDS = 5
# flowers102's images have a shorter side of about 500 px; a few are smaller, many are taller.
SHAPES = [(500, 375), (375, 500), (500, 667), (667, 500), (500, 500), (500, 541), (752, 500), (500, 689)]


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(IMAGES):
        w, h = SHAPES[i % len(SHAPES)]
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"image_{i:05d}.jpg"
        Image.fromarray(pixels).filter(ImageFilter.SMOOTH).save(path, quality=90)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# The references
# --------------------------------------------------------------------------------------------
def paddleclas_transforms() -> Callable[[Path], np.ndarray]:
    """PaddleClas 2.6.0's training chain for flowers102 (ppcls/data/preprocess/ops/operators.py),
    reproduced: the dataset reads the file's bytes; DecodeImage(to_rgb=True) is cv2.imdecode(...,
    1) then [:, :, ::-1]; RandCropImage(size=224) draws sqrt(uniform(3/4, 4/3)) for the aspect,
    uniform(scale_min, scale_max) for the area (bounded so the box fits), randint offsets, slices
    and cv2.resize(..., INTER_LINEAR); RandFlipImage(flip_code=1) is cv2.flip with p=0.5 by
    randint(0, 1); NormalizeImage(scale=1/255, order='') is (img.astype('float32') * scale - mean)
    / std in HWC; ToCHWImage transposes. Python's ``random`` drives the draws, as in PaddleClas."""
    mean = MEAN.reshape(1, 1, 3)
    std = STD.reshape(1, 1, 3)
    scale = np.float32(1.0 / 255.0)

    def transform(path: Path) -> np.ndarray:
        with open(path, "rb") as handle:
            data = handle.read()
        img = cv2.imdecode(np.frombuffer(data, dtype="uint8"), 1)[:, :, ::-1]
        aspect = math.sqrt(random.uniform(3.0 / 4.0, 4.0 / 3.0))
        w, h = 1.0 * aspect, 1.0 / aspect
        img_h, img_w = img.shape[:2]
        bound = min((float(img_w) / img_h) / (w**2), (float(img_h) / img_w) / (h**2))
        target = math.sqrt(img_w * img_h * random.uniform(min(0.08, bound), min(1.0, bound)))
        w, h = int(target * w), int(target * h)
        i, j = random.randint(0, img_w - w), random.randint(0, img_h - h)
        img = cv2.resize(img[j : j + h, i : i + w, :], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        if random.randint(0, 1) == 1:
            img = cv2.flip(img, 1)
        img = (img.astype("float32") * scale - mean) / std
        return img.transpose((2, 0, 1))

    return transform


def paddle_vision_transforms() -> Callable[[Path], np.ndarray]:
    """paddle.vision.transforms on cv2-decoded RGB arrays (HWC uint8)."""
    import paddle.vision.transforms as T

    chain = T.Compose(
        [
            T.RandomResizedCrop(SIZE),  # scale (0.08, 1), ratio (3/4, 4/3), bilinear
            T.RandomHorizontalFlip(),
            T.Normalize(mean=(MEAN * 255).tolist(), std=(STD * 255).tolist(), data_format="HWC"),
            T.Transpose(),
        ]
    )

    def transform(path: Path) -> np.ndarray:
        with open(path, "rb") as handle:
            data = handle.read()
        return chain(cv2.imdecode(np.frombuffer(data, dtype="uint8"), 1)[:, :, ::-1])

    return transform


def trainer_before(rng: np.random.Generator) -> Callable[[Path], np.ndarray]:
    """The trainer's pipeline before this benchmark: PIL throughout, antialiased resize."""

    def transform(path: Path) -> np.ndarray:
        image = decode(path)
        x, y, w, h = crop_box(image.size[0], image.size[1], rng)
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        return ((array - MEAN) / STD).transpose(2, 0, 1).copy()

    return transform


def ours(paths: list[Path]) -> Callable[[Path], np.ndarray]:
    dataset = ImageDataset([Sample(p, 0, str(p)) for p in paths], SIZE, 256, train=True, seed=0)
    position = {p: i for i, p in enumerate(paths)}
    epoch = iter(range(10**9))

    def transform(path: Path) -> np.ndarray:
        if position[path] == 0:
            dataset.set_epoch(next(epoch))  # new crops every pass, as every epoch draws
        image, label, _ = dataset[position[path]]
        assert int(label) == 0, f"{path} came back corrupt"
        return image

    return transform


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
def decode_only(path: Path) -> np.ndarray:
    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    return np.empty((3, SIZE, SIZE)) if pixels is not None else pixels


def cpu_per_image(transform: Callable[[Path], np.ndarray], paths: list[Path]) -> float:
    start = time.process_time()
    for path in paths:
        out = transform(path)
        assert out.shape == (3, SIZE, SIZE), out.shape
    return (time.process_time() - start) / len(paths)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical distributions."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def crop_distribution(draws: int = 20_000) -> dict[str, object]:
    """Area fraction and aspect ratio of our boxes and PaddleClas's, on a 500x375 image; D's 5%
    critical value is 1.36 * sqrt(2 / draws)."""
    rng = np.random.default_rng(1)
    random.seed(1)
    width, height = 500, 375
    ours_boxes = np.array([crop_box(width, height, rng)[2:] for _ in range(draws)], dtype=np.float64)
    theirs = []
    for _ in range(draws):
        aspect = math.sqrt(random.uniform(3.0 / 4.0, 4.0 / 3.0))
        w, h = aspect, 1.0 / aspect
        bound = min((width / height) / (w**2), (height / width) / (h**2))
        target = math.sqrt(width * height * random.uniform(min(0.08, bound), min(1.0, bound)))
        theirs.append((int(target * w), int(target * h)))
    theirs_boxes = np.array(theirs, dtype=np.float64)
    area = lambda boxes: boxes[:, 0] * boxes[:, 1] / (width * height)  # noqa: E731
    aspect = lambda boxes: boxes[:, 0] / boxes[:, 1]  # noqa: E731
    critical = 1.36 * math.sqrt(2 / draws)
    d_area = ks_statistic(area(ours_boxes), area(theirs_boxes))
    d_aspect = ks_statistic(aspect(ours_boxes), aspect(theirs_boxes))
    return {
        "draws": draws,
        "image": f"{width}x{height}",
        "ksAreaFraction": round(d_area, 4),
        "ksAspectRatio": round(d_aspect, 4),
        "ksCritical5Percent": round(critical, 4),
        "sameDistribution": d_area < critical and d_aspect < critical,
    }


def reduction_share(paths: list[Path], draws: int = 20) -> dict[str, float]:
    """How often each JPEG reduction applies to these images' crops."""
    rng = np.random.default_rng(2)
    counts: dict[int, int] = {}
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        for _ in range(draws):
            _, _, w, h = crop_box(width, height, rng)
            factor = reduction_for(w, h, SIZE)
            counts[factor] = counts.get(factor, 0) + 1
    total = sum(counts.values())
    return {f"1/{k}": round(v / total, 4) for k, v in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/input_pipeline.json")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="input-pipeline-"))
    try:
        paths = write_images(work / "jpg")
        pipelines = {
            "ours": ours(paths),
            "paddleclas": paddleclas_transforms(),
            "paddle_vision": paddle_vision_transforms(),
            "trainer_before": trainer_before(np.random.default_rng(0)),
        }
        for transform in pipelines.values():  # warm caches, imports and the page cache
            cpu_per_image(transform, paths[:16])
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            rounds.append({name: cpu_per_image(t, paths) for name, t in pipelines.items()})
        decode = statistics.median(cpu_per_image(decode_only, paths) for _ in range(3))
        per_core = {name: statistics.median(1 / r[name] for r in rounds) for name in pipelines}
        ratio = {
            name: round(statistics.median(r[name] / r["ours"] for r in rounds), 3)
            for name in pipelines
            if name != "ours"
        }
        report = {
            "benchmark": "training input pipeline alone (decode, random resized crop 224, flip, normalise)",
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
            "versions": {"opencv": cv2.__version__, "pillow": Image.__version__, "numpy": np.__version__},
            "loadAverageAtStart": round(os.getloadavg()[0], 2),
            "images": IMAGES,
            "shapes": [f"{w}x{h}" for w, h in SHAPES],
            "rounds": args.rounds,
            "imagesPerSecondPerCore": {k: round(v, 1) for k, v in per_core.items()},
            "cpuMillisecondsPerImage": {
                name: [round(r[name] * 1000, 3) for r in rounds] for name in pipelines
            },
            "speedupOfOurs": ratio,  # their CPU time per image / ours, median over rounds
            # The floor: OpenCV decoding the whole JPEG, nothing else (what the reference pays).
            "fullDecodeOnlyMilliseconds": round(decode * 1000, 3),
            "goal": "speedupOfOurs.paddleclas >= 1.5",
            "jpegReductionShare": reduction_share(paths),
            "cropDistribution": crop_distribution(),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
