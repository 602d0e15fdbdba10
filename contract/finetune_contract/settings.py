"""``TrainerSettings``: what the operator hands the trainer (as ``--settings-json``).

The same camelCase vocabulary as the FineTuneJob spec; ``from_dict`` rejects unknown keys and
wrong types, and ``validate`` names the first wrong field (``SettingsError``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ARCHITECTURES = ("ResNet18_vd", "ResNet34_vd", "ResNet50_vd", "ResNet101_vd", "ResNet152_vd")
FREEZE_STRATEGIES = ("none", "fc-only", "stages", "from-scratch", "auto")
DATASET_FORMATS = ("list", "folder")
CORRUPT_IMAGE_POLICIES = ("fail", "skip")
AMP_MODES = ("auto", "off", "float16", "bfloat16")


class SettingsError(ValueError):
    """A settings value is wrong; the message names the field."""


@dataclass
class PretrainedSource:
    """Exactly one of name, url or path; all empty means no pretrained weights."""

    name: str = ""
    url: str = ""
    sha256: str = ""
    path: str = ""


@dataclass
class ModelSettings:
    architecture: str = "ResNet50_vd"
    pretrained: PretrainedSource = field(default_factory=PretrainedSource)


@dataclass
class DatasetSettings:
    root: str = "/data"  # the dataset volume's mount point; list paths are relative to it
    format: str = "list"
    trainList: str = "train_list.txt"  # format=list: files relative to root
    valList: str = "val_list.txt"
    labelList: str = ""  # format=list, optional: class names, line i (or "i name") naming class i
    trainDir: str = "train"  # format=folder: one sub-folder per class
    valDir: str = "val"
    numClasses: int = 0  # 0: infer from the data
    imageSize: int = 224
    resizeShort: int = 256
    corruptImages: str = "fail"  # fail | skip (skipped images are counted, up to maxCorruptImages)
    maxCorruptImages: int = 10
    # Training augmentation, as PaddleClas's RandCropImage (scale) and RandFlipImage; the defaults
    # are the recipe's. Tiny or orientation-sensitive images (digits, text) want a larger crop and
    # no flip.
    cropScaleMin: float = 0.08  # the random crop keeps at least this fraction of the image area
    horizontalFlip: bool = True


@dataclass
class FinetuneSettings:
    stripMismatched: bool = True
    freeze: str = "auto"
    freezeStages: int = 0  # freeze=stages: the stem and this many stages are frozen
    lrMultList: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0])


@dataclass
class TrainingSettings:
    epochs: int = 20
    batchSize: int = 32
    learningRate: float = 0.0  # 0: the recipe's default (0.0125 at batch 32, scaled linearly)
    warmupEpochs: int = 5
    momentum: float = 0.9
    weightDecay: float = 1e-5
    labelSmoothing: float = 0.0
    amp: str = "auto"  # auto: float16 on a GPU, off on a CPU
    seed: int = 0
    numWorkers: int = 2
    logEverySteps: int = 10


@dataclass
class OutputSettings:
    dir: str = "/output"
    resultPath: str = "/dev/termination-log"


@dataclass
class WorldSettings:
    """The processes the job asked for: ``nodes`` pods of ``processesPerNode`` trainer processes
    (one per GPU, or one on CPU), all of one data-parallel run. 0 and 0: whatever started the
    trainer decides (run by hand). Each process's rank is not a setting: the pod's
    ``paddle.distributed.launch`` assigns it (node rank from ``--rank``), so every rank of an
    attempt gets the same settings."""

    nodes: int = 0
    processesPerNode: int = 0

    @property
    def size(self) -> int:
        """The number of processes (0: not set)."""
        return self.nodes * self.processesPerNode


@dataclass
class JobSettings:
    """Whose run this is: the FineTuneJob's namespace, name and uid (all empty for a run outside
    Kubernetes). Every checkpoint records it, and a run never resumes another job's checkpoint:
    a job deleted and created again with the same name has a new uid, so it starts afresh."""

    namespace: str = ""
    name: str = ""
    uid: str = ""


# What a checkpoint depends on: a run continues only a checkpoint made with the same values of
# these (the trainer records them in every checkpoint, with their sha256, and compares; the
# sections and order are that record's). Every setting is in exactly one of the two tables
# (tests/contract/test_settings.py checks it), so a new setting cannot go in undecided.
CHECKPOINT_SETTINGS: dict[str, tuple[str, ...]] = {
    "model": ("architecture", "pretrained"),
    "dataset": (
        "format",
        "trainList",
        "valList",
        "labelList",
        "trainDir",
        "valDir",
        "numClasses",
        "imageSize",
        "resizeShort",
        "cropScaleMin",
        "horizontalFlip",
    ),
    "finetune": ("stripMismatched", "freeze", "freezeStages", "lrMultList"),
    "training": (
        "epochs",
        "batchSize",
        "learningRate",
        "warmupEpochs",
        "momentum",
        "weightDecay",
        "labelSmoothing",
        "seed",
    ),
}
# Settings a checkpoint may be continued with other values of: where things are mounted, how
# the run is executed and logged, not what it learns. The job's identity is recorded apart
# (a checkpoint is never continued by another job).
RUN_ONLY_SETTINGS: tuple[str, ...] = (
    "job.namespace",
    "job.name",
    "job.uid",
    "dataset.root",
    "dataset.corruptImages",
    "dataset.maxCorruptImages",
    "training.amp",
    "training.numWorkers",
    "training.logEverySteps",
    "output.dir",
    "output.resultPath",
    "cacheDir",
    # The split over processes: fixed by the job's immutable spec, and a checkpoint holds the
    # whole model and optimiser, which every split reads alike (rank 0 sends it to the others).
    "world.nodes",
    "world.processesPerNode",
)


@dataclass
class TrainerSettings:
    job: JobSettings = field(default_factory=JobSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    world: WorldSettings = field(default_factory=WorldSettings)
    cacheDir: str = "/cache"  # downloaded pretrained weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerSettings:
        settings = _build(cls, data, "")
        settings.validate()
        return settings

    @classmethod
    def from_json(cls, text: str) -> TrainerSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings: not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise SettingsError naming the first wrong field."""
        m, d, f, t = self.model, self.dataset, self.finetune, self.training
        _validate_job(self.job)
        _one_of("model.architecture", m.architecture, ARCHITECTURES)
        sources = [k for k in ("name", "url", "path") if getattr(m.pretrained, k)]
        if len(sources) > 1:
            raise SettingsError(f"model.pretrained: give exactly one of name, url, path (got {sources})")
        if m.pretrained.url and not m.pretrained.url.startswith(("https://", "http://")):
            raise SettingsError("model.pretrained.url: must be an http(s) URL")
        sha = m.pretrained.sha256
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise SettingsError("model.pretrained.sha256: must be 64 hexadecimal characters")
        _one_of("dataset.format", d.format, DATASET_FORMATS)
        _one_of("dataset.corruptImages", d.corruptImages, CORRUPT_IMAGE_POLICIES)
        _at_least("dataset.numClasses", d.numClasses, 0)
        if d.numClasses == 1:  # 0: counted from the class folders
            raise SettingsError("dataset.numClasses: a classifier needs at least 2 classes (got 1)")
        _at_least("dataset.imageSize", d.imageSize, 8)
        _at_least("dataset.resizeShort", d.resizeShort, d.imageSize)
        _at_least("dataset.maxCorruptImages", d.maxCorruptImages, 0)
        if not 0 < d.cropScaleMin <= 1:
            raise SettingsError(f"dataset.cropScaleMin: must be in (0, 1] (got {d.cropScaleMin!r})")
        _one_of("finetune.freeze", f.freeze, FREEZE_STRATEGIES)
        if f.freeze == "stages" and not 1 <= f.freezeStages <= 4:
            raise SettingsError("finetune.freezeStages: must be 1..4 when finetune.freeze is 'stages'")
        if len(f.lrMultList) != 5 or any(not _finite(v) or v < 0 for v in f.lrMultList):
            raise SettingsError("finetune.lrMultList: must be 5 non-negative numbers (stem, stage1..4)")
        if f.freeze == "from-scratch" and any(sources):
            raise SettingsError(
                "finetune.freeze: 'from-scratch' uses no pretrained weights; remove model.pretrained"
            )
        _at_least("training.epochs", t.epochs, 1)
        _at_least("training.batchSize", t.batchSize, 1)
        _at_least("training.warmupEpochs", t.warmupEpochs, 0)
        _at_least("training.numWorkers", t.numWorkers, 0)
        _at_least("training.logEverySteps", t.logEverySteps, 1)
        _at_least("training.seed", t.seed, 0)
        for name in ("learningRate", "momentum", "weightDecay", "labelSmoothing"):
            value = getattr(t, name)
            if not _finite(value) or value < 0:
                raise SettingsError(f"training.{name}: must be a finite number >= 0 (got {value!r})")
        if t.labelSmoothing >= 1:
            raise SettingsError("training.labelSmoothing: must be < 1")
        _one_of("training.amp", t.amp, AMP_MODES)
        w = self.world
        _at_least("world.nodes", w.nodes, 0)
        _at_least("world.processesPerNode", w.processesPerNode, 0)
        if (w.nodes == 0) != (w.processesPerNode == 0):
            raise SettingsError(
                "world: set both nodes and processesPerNode (or neither) "
                f"(got nodes {w.nodes}, processesPerNode {w.processesPerNode})"
            )


# Kubernetes' own rules: a namespace is a DNS label, a custom resource's name a DNS subdomain.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A uid is a UUID in practice (the API types it as a string): one path segment, no dots first.
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _validate_job(job: JobSettings) -> None:
    given = [k for k in ("namespace", "name", "uid") if getattr(job, k)]
    if not given:
        return  # a run outside Kubernetes
    if len(given) < 3:
        missing = sorted({"namespace", "name", "uid"} - set(given))
        raise SettingsError(f"job: give namespace, name and uid together (missing {', '.join(missing)})")
    if len(job.namespace) > 63 or not _DNS_LABEL.fullmatch(job.namespace):
        raise SettingsError(f"job.namespace: {job.namespace!r} is not a Kubernetes namespace name")
    if len(job.name) > 253 or not _DNS_SUBDOMAIN.fullmatch(job.name):
        raise SettingsError(f"job.name: {job.name!r} is not a Kubernetes object name")
    if len(job.uid) > 128 or not _UID.fullmatch(job.uid):
        raise SettingsError(f"job.uid: {job.uid!r} is not a Kubernetes uid")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SettingsError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _at_least(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SettingsError(f"{name}: must be an integer >= {low} (got {value!r})")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build a settings dataclass from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'}: must be an object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SettingsError(f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        path = f"{prefix}{name}"
        default = getattr(defaults, name)
        if hasattr(default, "__dataclass_fields__"):
            kwargs[name] = _build(type(default), value, path + ".")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SettingsError(f"{path}: must be true or false (got {value!r})")
            kwargs[name] = value
        elif isinstance(default, float):
            if not _finite(value):
                raise SettingsError(f"{path}: must be a finite number (got {value!r})")
            kwargs[name] = float(value)
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise SettingsError(f"{path}: must be an integer (got {value!r})")
            kwargs[name] = value
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise SettingsError(f"{path}: must be a string (got {value!r})")
            kwargs[name] = value
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(_finite(v) for v in value):
                raise SettingsError(f"{path}: must be a list of numbers (got {value!r})")
            kwargs[name] = [float(v) for v in value]
        else:  # pragma: no cover - every field type is handled above
            kwargs[name] = value
    return cls(**kwargs)
