"""FineTuneJob dicts for the operator's unit tests (as the API server returns them)."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "apiVersion": "finetune.paddle.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {
        "name": "flowers",
        "namespace": "team-a",
        "uid": "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11",
        "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    },
    "spec": {
        "model": {"architecture": "ResNet50_vd", "pretrained": {"name": "ResNet50_vd_ssld"}},
        "dataset": {
            "volume": {"persistentVolumeClaim": {"claimName": "flowers102"}},
            "format": "list",
            "trainList": "train_list.txt",
            "valList": "val_list.txt",
            "numClasses": 102,
            "imageSize": 224,
        },
        "finetune": {"stripMismatched": True, "freeze": "auto"},
        "training": {"epochs": 20, "batchSize": 32, "warmupEpochs": 5, "amp": "auto"},
        "resources": {"gpus": 1},
        "output": {"volume": {"persistentVolumeClaim": {"claimName": "ft-output"}}},
        "runPolicy": {"backoffLimit": 2},
    },
}


def job(**sections: Any) -> dict[str, Any]:
    """A copy of BASE with spec sections replaced (``metadata=`` replaces metadata keys)."""
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        if key == "metadata":
            data["metadata"].update(value)
        else:
            data["spec"][key] = value
    return data
