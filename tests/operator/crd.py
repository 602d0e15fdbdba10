"""Where the FineTuneJob CRD and the example manifests live, and small helpers to read them.

Shared by the CRD's unit tests, its tests against the API server and the contract's tests. The
API names (GROUP, VERSION, KIND, PLURAL) are the operator's own, from finetune_operator.api.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from finetune_operator.api import GROUP, KIND, PLURAL, VERSION

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CRD_FILE = CRD_DIR / "finetune.paddle.dev_finetunejobs.yaml"
CRD_NAME = f"{PLURAL}.{GROUP}"  # the API identity the operator uses (api.py), as a CRD's name
EXAMPLES_DIR = ROOT / "examples"


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


def schema_errors(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """What the API server would reject in ``value`` under the structural schema ``node``: wrong
    types, values outside enum/minimum/maximum, int64 overflow, fields it would prune. Covers the
    keywords the status schema uses."""
    kind = node.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63,
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    }
    if kind in checks and not checks[kind](value):
        return [f"{path or '<root>'}: {value!r} is not a valid {kind}"]
    errors = []
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} is not one of {node['enum']}")
    if "minimum" in node and value < node["minimum"]:
        errors.append(f"{path}: {value!r} < {node['minimum']}")
    if "maximum" in node and value > node["maximum"]:
        errors.append(f"{path}: {value!r} > {node['maximum']}")
    if "maxLength" in node and len(value) > node["maxLength"]:
        errors.append(f"{path}: {len(value)} characters > maxLength {node['maxLength']}")
    if "maxItems" in node and len(value) > node["maxItems"]:
        errors.append(f"{path}: {len(value)} items > maxItems {node['maxItems']}")
    if kind == "object":
        errors.extend(f"{path}.{key}: required" for key in node.get("required", []) if key not in value)
    if kind == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        props = node.get("properties", {})
        for key, item in value.items():
            if key not in props:
                errors.append(f"{path}.{key}: unknown field (the API server would prune it)")
            else:
                errors.extend(schema_errors(item, props[key], f"{path}.{key}" if path else key))
    if kind == "array" and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errors.extend(schema_errors(item, node["items"], f"{path}[{i}]"))
    return errors


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
