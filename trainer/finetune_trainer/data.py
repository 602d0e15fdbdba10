"""Datasets for the trainer: PaddleClas list files and image-folder trees, the recipe's transforms.

Every data error names the file (and the line, for list files) and what was wrong, and is raised
as ``DataError`` (the trainer exits with ``EXIT_DATA_ERROR``).

Corrupt images (files that exist but do not decode) are not found until an epoch reads them, since
decoding every image up front would cost as much as an epoch. A worker that cannot decode an image
returns it as a *corrupt sample* (label -1); the training loop, in the main process, counts them:
policy ``fail`` stops at the first one, naming the file; policy ``skip`` drops them from their
batches and stops once more than ``maxCorruptImages`` distinct files were corrupt.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle.io import DistributedBatchSampler
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# The ImageNet statistics every PaddleClas recipe normalises with (scale 1/255 first).
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CORRUPT_LABEL = -1


class DataError(Exception):
    """The dataset is wrong in a way that retrying cannot fix; the message names the file."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    origin: str  # where the sample was declared, e.g. "train_list.txt:12", for error messages


@dataclass
class DatasetIndex:
    train: list[Sample]
    val: list[Sample]
    num_classes: int
    label_names: list[str]


# ---------------------------------------------------------------------------------------------
# Reading list files and folder trees
# ---------------------------------------------------------------------------------------------
def _inside_root(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it stays inside root (lexically: no absolute path, no escaping ``..``)."""
    if os.path.isabs(relative) or relative.startswith("~"):
        return None
    joined = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([joined, os.path.normpath(root)]) != os.path.normpath(root):
        return None
    return Path(joined)


def read_list_file(list_path: Path, root: Path, num_classes: int = 0) -> list[Sample]:
    """Parse a PaddleClas list file: one ``relative/path LABEL`` a line, paths relative to root.

    Blank lines and lines starting with ``#`` are ignored; the path may contain spaces (the label
    is the last field). ``num_classes`` 0 means "not known yet" (labels must still be >= 0).
    """
    if not list_path.is_file():
        raise DataError(f"{list_path}: list file not found")
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_path}: cannot read list file: {exc}") from exc
    samples: list[Sample] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_path}:{number}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{where}: malformed line {raw!r}: expected 'relative/path LABEL'")
        relative, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(
                f"{where}: malformed line {raw!r}: label {label_text!r} is not an integer"
            ) from None
        if label < 0 or (num_classes and label >= num_classes):
            limit = f"0..{num_classes - 1} (dataset.numClasses={num_classes})" if num_classes else ">= 0"
            raise DataError(f"{where}: label {label} out of range: must be {limit}")
        path = _inside_root(root, relative)
        if path is None:
            raise DataError(f"{where}: path {relative!r} escapes the dataset root {root} (absolute or '..')")
        if not path.is_file():
            raise DataError(f"{where}: image {relative!r} not found under {root}")
        samples.append(Sample(path, label, where))
    if not samples:
        raise DataError(f"{list_path}: list file has no samples")
    return samples


def scan_folder(folder: Path, class_names: list[str] | None = None) -> tuple[list[Sample], list[str]]:
    """An image-folder tree: one sub-folder per class (sorted names give labels 0..n-1).

    With ``class_names`` (the training classes), a validation tree must use the same names.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{folder}: no class sub-folders (expected one folder of images per class)")
    names = class_names if class_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"{folder / unknown[0]}: class folder not among the training classes")
    label_of = {name: i for i, name in enumerate(names)}
    samples: list[Sample] = []
    for name in found:
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=False):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    path = Path(dirpath) / filename
                    samples.append(Sample(path, label_of[name], str(path)))
    if not samples:
        raise DataError(f"{folder}: no images (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return samples, list(names)


def index_dataset(root: str | Path, fmt: str, num_classes: int = 0, **names: str) -> DatasetIndex:
    """Read the train and validation samples (``names``: trainList/valList or trainDir/valDir)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    if fmt == "folder":
        train, label_names = scan_folder(root / names.get("trainDir", "train"))
        val, _ = scan_folder(root / names.get("valDir", "val"), label_names)
        if num_classes and num_classes != len(label_names):
            raise DataError(
                f"{root / names.get('trainDir', 'train')}: {len(label_names)} class folders but "
                f"dataset.numClasses={num_classes}"
            )
        return DatasetIndex(train, val, len(label_names), label_names)
    label_names = read_label_list(root / names["labelList"]) if names.get("labelList") else None
    if label_names and num_classes and len(label_names) != num_classes:
        raise DataError(
            f"{root / names['labelList']}: {len(label_names)} class names "
            f"but dataset.numClasses={num_classes}"
        )
    num_classes = num_classes or len(label_names or [])
    train = read_list_file(root / names.get("trainList", "train_list.txt"), root, num_classes)
    val = read_list_file(root / names.get("valList", "val_list.txt"), root, num_classes)
    inferred = num_classes or max(s.label for s in train + val) + 1
    return DatasetIndex(train, val, inferred, label_names or [str(i) for i in range(inferred)])


def read_label_list(path: Path) -> list[str]:
    """Class names, one a line: ``name`` or PaddleClas's ``class_id_map_file`` form ``i name``
    (then the ids must run 0, 1, 2, ... in order)."""
    if not path.is_file():
        raise DataError(f"{path}: label list not found")
    names: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, _, rest = line.partition(" ")
        if rest.strip() and head.isdigit():
            if int(head) != len(names):
                raise DataError(f"{path}:{number}: class id {head} out of order: expected {len(names)}")
            line = rest.strip()
        names.append(line)
    if not names:
        raise DataError(f"{path}: label list has no class names")
    return names


# ---------------------------------------------------------------------------------------------
# Transforms (the PaddleClas recipe)
# ---------------------------------------------------------------------------------------------
def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# normalize as a lookup: NORMALIZED[c][v] is exactly what (v * (1/255) - MEAN[c]) / STD[c] gives in
# float32, so the table changes no bit of the result and costs one gather per value.
NORMALIZED = (np.arange(256, dtype=np.float32)[None, :] * (1.0 / 255.0) - MEAN[:, None]) / STD[:, None]
_LUTS = [np.ascontiguousarray(NORMALIZED[c]).reshape(1, 256) for c in range(3)]


def normalize(image: Image.Image | np.ndarray, flip: bool = False, bgr: bool = False) -> np.ndarray:
    """uint8 HWC (RGB, or BGR as OpenCV decodes) -> normalised float32 CHW RGB: scale to [0,1],
    subtract the ImageNet mean, divide by its std; ``flip`` mirrors it left-right on the way.
    One table lookup per plane (OpenCV's LUT), the channel order and layout fixed on the way."""
    cv2 = _cv2()
    array = np.ascontiguousarray(np.asarray(image))
    if flip:
        array = cv2.flip(array, 1)
    planes = cv2.split(array)
    out = np.empty((3, array.shape[0], array.shape[1]), dtype=np.float32)
    for channel in range(3):
        cv2.LUT(planes[2 - channel if bgr else channel], _LUTS[channel], dst=out[channel])
    return out


def crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """PaddleClas's RandCropImage: a random area fraction and aspect ratio; (x, y, w, h)."""
    aspect = math.sqrt(rng.uniform(*ratio))
    w_unit, h_unit = aspect, 1.0 / aspect
    bound = min((width / height) / (w_unit**2), (height / width) / (h_unit**2))
    scale_max, scale_min = min(scale[1], bound), min(scale[0], bound)
    target = math.sqrt(width * height * rng.uniform(scale_min, scale_max))
    w = max(1, min(width, int(target * w_unit)))
    h = max(1, min(height, int(target * h_unit)))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return x, y, w, h


@functools.cache
def _cv2():
    import cv2  # opencv-python-headless (the trainer extra), as PaddleClas's own operators use

    cv2.setNumThreads(1)  # one core per DataLoader worker: parallelism comes from the workers
    return cv2


def _resized(pixels: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The box of an HWC array resized to size x size, bilinear (PaddleClas's cv2.INTER_LINEAR)."""
    x, y, w, h = box
    return _cv2().resize(pixels[y : y + h, x : x + w], (size, size), interpolation=_cv2().INTER_LINEAR)


def reduction_for(w: int, h: int, size: int) -> int:
    """The JPEG DCT-domain reduction (1, 2, 4 or 8) that keeps a w x h crop at least size x size:
    decoding at 1/2 costs about half, and the crop is shrunk to ``size`` afterwards anyway."""
    factor = 1
    while factor < 8 and w >= 2 * factor * size and h >= 2 * factor * size:
        factor *= 2
    return factor


def train_sample(
    path: Path, size: int, rng: np.random.Generator, scale_min: float = 0.08, flip: bool = True
) -> np.ndarray:
    """The training transform read straight from the file, as fast as the CPU allows: the crop is
    drawn from the header's size first (the same draws as ``train_transform``), a JPEG is decoded
    at the largest reduction that keeps the crop at least ``size`` (``reduction_for``), then the
    crop is resized and mirrored and normalised in one lookup. Raises OSError/ValueError for a
    file that is not a complete image (``ImageDataset`` turns that into a corrupt sample)."""
    data = Path(path).read_bytes()
    dims = jpeg_size(data)
    if dims is None:
        with Image.open(io.BytesIO(data)) as header:  # not a JPEG: PIL reads the size
            dims = header.size
    width, height = dims
    is_jpeg = data[:2] == b"\xff\xd8"
    if width * height > 2 * (Image.MAX_IMAGE_PIXELS or math.inf):  # PIL's own limit, as decode has
        raise Image.DecompressionBombError(f"{path}: {width}x{height} pixels")
    box = crop_box(width, height, rng, scale=(scale_min, 1.0))
    mirror = flip and rng.random() < 0.5
    # A truncated JPEG would decode with grey rows in OpenCV; PIL refuses it, as the policy wants.
    if not is_jpeg or not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return normalize(_resized(np.asarray(decode_bytes(data)), box, size), flip=mirror)
    cv2 = _cv2()
    factor = reduction_for(box[2], box[3], size)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        factor, cv2.IMREAD_REDUCED_COLOR_8
    )
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)  # as PIL
    except cv2.error as exc:
        raise OSError(f"{path}: cannot decode the JPEG: {exc}") from exc
    if pixels is None or pixels.ndim != 3:
        raise OSError(f"{path}: cannot decode the JPEG")
    if factor == 1:
        return normalize(_resized(pixels, box, size), flip=mirror, bgr=True)
    # The box in the reduced image is fractional: map each output pixel's centre exactly (reduced
    # pixel i covers original pixels [i*f, (i+1)*f)), so the crop does not shift by up to f - 1.
    x, y, w, h = box
    fx, fy = width / pixels.shape[1], height / pixels.shape[0]
    matrix = np.array(
        [
            [w / (size * fx), 0.0, (x + 0.5 * w / size) / fx - 0.5],
            [0.0, h / (size * fy), (y + 0.5 * h / size) / fy - 0.5],
        ]
    )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # the matrix maps output pixels to input pixels
    out = cv2.warpAffine(pixels, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return normalize(out, flip=mirror, bgr=True)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding; None if it is no JPEG or its
    markers do not lead to a frame header (the caller then asks PIL)."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _SOF:
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            return (width, height) if width and height else None
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def decode_bytes(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def train_transform(
    image: Image.Image, size: int, rng: np.random.Generator, scale_min: float = 0.08, flip: bool = True
) -> np.ndarray:
    """Random resized crop, horizontal flip with p=0.5, normalise (``train_sample`` on an image
    already decoded: the same draws and the same resize)."""
    pixels = np.asarray(image.convert("RGB"))
    box = crop_box(pixels.shape[1], pixels.shape[0], rng, scale=(scale_min, 1.0))
    mirror = flip and rng.random() < 0.5
    return normalize(_resized(pixels, box, size), flip=mirror)


def eval_transform(image: Image.Image, size: int, resize_short: int) -> np.ndarray:
    """Resize the short side to resize_short, centre crop size x size, normalise."""
    width, height = image.size
    factor = resize_short / min(width, height)
    new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return normalize(image.crop((left, top, left + size, top + size)))


class ImageDataset:
    """A map-style dataset of (image CHW float32, label int64, index int64).

    Augmentation randomness comes from (seed, epoch, index), not from process-global state, so
    every worker, every rank and a resumed run draw the same crops for the same sample.
    An image that cannot be decoded comes back as zeros with label ``CORRUPT_LABEL``.
    """

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        resize_short: int,
        train: bool,
        seed: int = 0,
        crop_scale_min: float = 0.08,
        flip: bool = True,
    ) -> None:
        self.samples = samples
        self.crop_scale_min = crop_scale_min
        self.flip = flip
        self.image_size = image_size
        self.resize_short = resize_short
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64, np.int64]:
        sample = self.samples[index]
        try:
            if self.train:
                rng = np.random.default_rng((self.seed & 0xFFFFFFFF, self.epoch, index))
                array = train_sample(sample.path, self.image_size, rng, self.crop_scale_min, self.flip)
            else:
                array = eval_transform(decode(sample.path), self.image_size, self.resize_short)
        except (OSError, ValueError, Image.DecompressionBombError):
            blank = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
            return blank, np.int64(CORRUPT_LABEL), np.int64(index)
        return array, np.int64(sample.label), np.int64(index)


class CorruptImageCounter:
    """Applies the corrupt-image policy in the main process (see the module docstring)."""

    def __init__(self, policy: str, limit: int) -> None:
        self.policy = policy
        self.limit = limit
        self.seen: dict[str, str] = {}  # path -> origin

    def record(self, samples: list[Sample]) -> None:
        for sample in samples:
            if self.policy == "fail":
                raise DataError(
                    f"{sample.path}: image cannot be decoded (corrupt or not an image; declared at "
                    f"{sample.origin}). Fix or remove it, or set dataset.corruptImages=skip"
                )
            self.seen[str(sample.path)] = sample.origin
        if len(self.seen) > self.limit:
            first = ", ".join(sorted(self.seen)[:5])
            raise DataError(
                f"{len(self.seen)} corrupt images exceed dataset.maxCorruptImages={self.limit} "
                f"(for example {first})"
            )

    @property
    def count(self) -> int:
        return len(self.seen)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
class EpochBatchSampler(DistributedBatchSampler):
    """Paddle's DistributedBatchSampler (one shard per rank; world size 1 is the plain case) whose
    shuffle depends on (seed, epoch) and which can start an epoch part-way, for a resumed run."""

    def __init__(
        self, dataset, batch_size: int, rank: int, world_size: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__(dataset, batch_size, num_replicas=world_size, rank=rank, shuffle=shuffle)
        self.seed = seed
        self.start_step = 0
        self.current_epoch = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        # DistributedBatchSampler shuffles with RandomState(self.epoch): mix the seed in.
        super().set_epoch(((self.seed & 0xFFFFFFFF) * 100_003 + epoch) % 2**32)  # RandomState: < 2**32
        self.current_epoch = epoch
        self.start_step = start_step

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start_step, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start_step)

    def steps_per_epoch(self) -> int:
        return super().__len__()


def make_loader(
    dataset: ImageDataset, sampler: paddle.io.BatchSampler, num_workers: int
) -> paddle.io.DataLoader:
    """A DataLoader whose workers (forked per epoch) see the dataset's current epoch."""
    return paddle.io.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, use_shared_memory=num_workers > 0
    )
