"""A FineTuneJob's spec -> the trainer's settings (finetune_contract.TrainerSettings).

The spec and the contract share the camelCase vocabulary, so this is mostly a copy of the fields
the user set; what the pod decides (mount points, where the result goes) and whose run it is (the
job's namespace, name and uid, which every checkpoint records) are filled in here.
"""

from __future__ import annotations

from typing import Any

from finetune_contract import SettingsError, TrainerSettings

DATA_MOUNT = "/data"  # the dataset volume, read-only (spec.dataset.subPath is mounted here)
OUTPUT_MOUNT = "/output"  # the output volume (spec.output.subPath is mounted here)
CACHE_MOUNT = "/cache"  # pretrained downloads
RESULT_PATH = "/dev/termination-log"  # the container's terminationMessagePath

_DATASET_KEYS = (
    "format",
    "trainList",
    "valList",
    "trainDir",
    "valDir",
    "numClasses",
    "imageSize",
    "corruptImages",
    "maxCorruptImages",
    "labelList",
    "cropScaleMin",
    "horizontalFlip",
)
_FINETUNE_KEYS = ("stripMismatched", "freeze", "freezeStages", "lrMultList")
_TRAINING_KEYS = (
    "epochs",
    "batchSize",
    "learningRate",
    "warmupEpochs",
    "momentum",
    "weightDecay",
    "labelSmoothing",
    "amp",
    "seed",
    "numWorkers",
)


def output_dir(namespace: str, name: str, uid: str) -> str:
    """The job's folder in the output volume, ``/output/<namespace>/<name>/<uid>``: every
    attempt of the job finds the previous attempts' checkpoints there; two jobs sharing a volume
    never meet, not even a job deleted and created again with the same name (a new uid), and a
    person finds a job's folders by namespace and name (``kubectl get ftj NAME -o
    jsonpath={.metadata.uid}`` says which is the current one). One folder level per part, so
    no two jobs map to the same path (``a-b``/``c`` and ``a``/``b-c`` once did) and each part
    stays within a file name's 255 bytes (namespace <= 63, name <= 253, uid 36)."""
    return f"{OUTPUT_MOUNT}/{namespace}/{name}/{uid}"


def _pick(section: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    section = section or {}
    return {k: section[k] for k in keys if section.get(k) is not None}


def trainer_settings(job: dict[str, Any]) -> TrainerSettings:
    """The trainer settings for a FineTuneJob (a dict as the API server returns it).

    Raises finetune_contract.SettingsError naming the field when the spec cannot be run (the CRD
    rejects almost everything earlier; this is the last line).
    """
    spec = job.get("spec") or {}
    meta = job.get("metadata") or {}
    model = spec.get("model") or {}
    pretrained = dict(model.get("pretrained") or {})
    if pretrained.get("path"):
        # Relative to the dataset volume (after its subPath), which is mounted at /data.
        pretrained["path"] = f"{DATA_MOUNT}/{pretrained['path']}"
    dataset = _pick(spec.get("dataset"), _DATASET_KEYS)
    resources = spec.get("resources") or {}
    image_size = dataset.get("imageSize", 224)
    # PaddleClas evaluates with a short-side resize of 256 for 224 crops: keep that ratio.
    dataset["resizeShort"] = max(image_size, round(image_size * 256 / 224))
    dataset["root"] = DATA_MOUNT
    namespace, name, uid = meta.get("namespace", "default"), meta.get("name", "job"), meta.get("uid", "")
    if not uid:
        raise SettingsError("metadata.uid: the job has no uid (not read from the API server?)")
    data = {
        "job": {"namespace": namespace, "name": name, "uid": uid},
        "model": {
            "architecture": model.get("architecture", "ResNet50_vd"),
            "pretrained": {
                k: v for k, v in pretrained.items() if k in ("name", "url", "sha256", "path") and v
            },
        },
        "dataset": dataset,
        "finetune": _pick(spec.get("finetune"), _FINETUNE_KEYS),
        "training": _pick(spec.get("training"), _TRAINING_KEYS),
        "output": {
            "dir": output_dir(namespace, name, uid),
            "resultPath": RESULT_PATH,
        },
        "cacheDir": CACHE_MOUNT,
        # The pods (ranks) of an attempt and the trainer processes in each: one per GPU, one on CPU.
        "world": {"nodes": resources.get("nodes", 1), "processesPerNode": max(resources.get("gpus", 1), 1)},
    }
    return TrainerSettings.from_dict(data)
