"""Whose a checkpoint is, and whether this run may continue it.

Every checkpoint records the job it belongs to (``settings.job``: namespace, name, uid; all empty
for a run outside Kubernetes) and the settings that shape the run (``resume_settings``: the model
and its pretrained source, the data, the finetune choices, the training schedule; not how many
loader workers there are, or where the output goes), with their fingerprint (sha256). A run
continues only a checkpoint of its own job made with the same settings; any other is refused
with ``EXIT_CHECKPOINT_REFUSED`` and a message naming what differs, because continuing it
would silently train (or report) another run: a job deleted and created again with the same
name, a changed spec, two jobs pointed at one folder.

Checkpoints of trainers that did not record their job (before this module) are refused too:
nothing shows whose they are. The operator gives every job its own folder, named with its uid,
so it never meets one; a run outside Kubernetes that does is told to move it away.

A setting that a checkpoint does not record (one added to the trainer after it was written)
counts as unchanged when this run uses its default, which is what the older trainer did.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from finetune_contract import EXIT_CHECKPOINT_REFUSED, TrainerSettings

from .state import TrainerFailure

# The settings a checkpoint must share with the run that continues it, by section.
RESUME_SETTINGS: dict[str, tuple[str, ...]] = {
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


def job_identity(settings: TrainerSettings) -> dict[str, str]:
    job = settings.job
    return {"namespace": job.namespace, "name": job.name, "uid": job.uid}


def resume_settings(settings: TrainerSettings) -> dict[str, Any]:
    """The settings a continuing run must share (``RESUME_SETTINGS``), as plain JSON."""
    data = settings.to_dict()
    return {section: {key: data[section][key] for key in keys} for section, keys in RESUME_SETTINGS.items()}


def fingerprint(record: dict[str, Any]) -> str:
    """sha256 of the record's canonical JSON."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field: X in the checkpoint, Y now"`` for each setting that differs (see the module
    docstring for settings the checkpoint does not record)."""
    defaults = _flat(resume_settings(TrainerSettings()))
    ours, theirs = _flat(current), _flat(saved)
    out = []
    for key, value in ours.items():
        before = theirs.get(key, defaults.get(key))
        if before != value:
            out.append(f"{key}: {json.dumps(before)} in the checkpoint, {json.dumps(value)} now")
    return out


def _describe(job: dict[str, Any]) -> str:
    if not any(job.values()):
        return "a run outside Kubernetes"
    return f"job {job.get('namespace')}/{job.get('name')} (uid {job.get('uid')})"


def check_resumable(saved: dict[str, Any], settings: TrainerSettings, num_classes: int, path: Path) -> None:
    """Raise TrainerFailure(EXIT_CHECKPOINT_REFUSED) unless the checkpoint at ``path`` (its
    ``state.json`` as ``saved``) belongs to this job and was made with these settings."""
    where = f"output.dir {path.parent.parent} holds checkpoint {path.name}"
    advice = "move its checkpoints folder away or use another output.dir to start afresh"
    job, record = saved.get("job"), saved.get("settings")
    if not isinstance(job, dict) or not isinstance(record, dict):
        raise TrainerFailure(
            EXIT_CHECKPOINT_REFUSED,
            f"{where}, written by an older trainer that did not record its job and settings, so it "
            f"may be another run's and is not resumed: {advice}",
        )
    ours = job_identity(settings)
    if {k: job.get(k, "") for k in ours} != ours:
        raise TrainerFailure(
            EXIT_CHECKPOINT_REFUSED,
            f"{where} of {_describe(job)}, not of this one ({_describe(ours)}): a run never "
            f"continues another's checkpoints; {advice}",
        )
    changed = differences(record, resume_settings(settings))
    if saved.get("numClasses") != num_classes:  # dataset.numClasses 0 infers it from the data
        changed.append(f"classes: {saved.get('numClasses')} in the checkpoint, {num_classes} in the data now")
    if changed:
        raise TrainerFailure(
            EXIT_CHECKPOINT_REFUSED,
            f"{where} of this job made with other settings ({'; '.join(changed)}): a run continues "
            f"only a checkpoint of the same settings; {advice}",
        )
