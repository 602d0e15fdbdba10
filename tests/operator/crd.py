"""Where the FineTuneJob CRD and the example manifests live, and small helpers to read them.

Shared by the CRD's unit tests and its tests against the API server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CRD_FILE = CRD_DIR / "finetune.paddle.dev_finetunejobs.yaml"
CRD_NAME = "finetunejobs.finetune.paddle.dev"
EXAMPLES_DIR = ROOT / "examples"

GROUP = "finetune.paddle.dev"
VERSION = "v1alpha1"
PLURAL = "finetunejobs"
KIND = "FineTuneJob"


def load_crd() -> dict[str, Any]:
    with CRD_FILE.open() as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    assert len(docs) == 1, f"{CRD_FILE}: expected one document, found {len(docs)}"
    return docs[0]


def schema() -> dict[str, Any]:
    """The v1alpha1 openAPIV3Schema."""
    (version,) = load_crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def node(path: str) -> dict[str, Any]:
    """The schema node at a dotted property path such as 'spec.training.epochs'."""
    current = schema()
    for part in path.split("."):
        current = current["properties"][part]
    return current


def example_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every document of every examples/*.yaml file, with its file."""
    out = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        with path.open() as fh:
            out.extend((path, doc) for doc in yaml.safe_load_all(fh) if doc)
    return out


def minimal_job(name: str) -> dict[str, Any]:
    """The smallest valid FineTuneJob: a dataset in list format and an output volume."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "dataset": {"volume": {"persistentVolumeClaim": {"claimName": "data"}}, "numClasses": 10},
            "output": {"volume": {"persistentVolumeClaim": {"claimName": "out"}}},
        },
    }
