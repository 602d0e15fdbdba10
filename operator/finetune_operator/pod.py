"""Render the Pod of one attempt of a FineTuneJob (a pure function: job in, manifest out).

The pod name is derived from the job and the attempt number, so a restarted operator finds the
pod it created instead of making a second one. The trainer gets its settings as one JSON
argument; no shell ever sees a user string.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from .api import (
    API_VERSION,
    CONTAINER,
    KIND,
    KUEUE_POD_GROUP_NAME,
    KUEUE_POD_GROUP_TOTAL_COUNT,
    KUEUE_PRIORITY_CLASS,
    KUEUE_QUEUE_NAME,
    KUEUE_RETRIABLE_IN_GROUP,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from .config import OperatorConfig
from .trainer_settings import CACHE_MOUNT, DATA_MOUNT, OUTPUT_MOUNT, RESULT_PATH, trainer_settings

MAX_NAME = 63  # a DNS label: pod names become hostnames, and label values have the same limit
# The CRD's default for spec.runPolicy.terminationGracePeriodSeconds (a job stored before the field
# existed gets it too): time for the largest model's checkpoint on a slow network disk, see
# trainer/finetune_trainer/README.md ("Grace on SIGTERM").
DEFAULT_TERMINATION_GRACE_SECONDS = 120

# What the template may pass through to the pod spec, unchanged.
_PASS_THROUGH = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "serviceAccountName",
    "imagePullSecrets",
)


def _bounded(base: str, suffix: str) -> str:
    """``base + suffix`` if it fits in 63 characters, else base cut short plus a hash of all of
    base (so two long names that share a prefix still differ)."""
    if len(base) + len(suffix) <= MAX_NAME:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-.')}-{digest}{suffix}"


def attempt_name(job_name: str, attempt: int) -> str:
    """``<job>-attempt-<n>``, at most 63 characters: a single-node attempt's pod, and the
    attempt's Kueue pod group (whose Workload Kueue names after the group)."""
    return _bounded(job_name, f"-attempt-{attempt}")


def pod_name(job_name: str, attempt: int) -> str:
    """``<job>-attempt-<n>``, at most 63 characters."""
    return attempt_name(job_name, attempt)


def nodes_of(job: dict[str, Any]) -> int:
    """The pods of one attempt: ``spec.resources.nodes`` (1 when unset, as the CRD defaults it)."""
    return int(((job.get("spec") or {}).get("resources") or {}).get("nodes") or 1)


def queue_name(job: dict[str, Any]) -> str:
    """The Kueue LocalQueue the job asks for: its label, or one in ``spec.template.labels``
    ("" without one: the job is not queued by Kueue)."""
    meta_labels = (job.get("metadata") or {}).get("labels") or {}
    template_labels = ((job.get("spec") or {}).get("template") or {}).get("labels") or {}
    return meta_labels.get(KUEUE_QUEUE_NAME) or template_labels.get(KUEUE_QUEUE_NAME) or ""


def job_label_value(job_name: str) -> str:
    """The job-name label's value (label values are limited to 63 characters too)."""
    return _bounded(job_name, "")


def pod_selector(job_name: str) -> str:
    """The label selector that lists a job's pods."""
    return f"{LABEL_JOB}={job_label_value(job_name)},{LABEL_MANAGED_BY}={MANAGED_BY}"


def trainer_command(settings_json: str, gpus: int, log_dir: str) -> list[str]:
    """The container command. More than one GPU: paddle.distributed.launch starts one trainer
    per GPU; it runs a non-``.py`` script as a program, so the console script is given by name
    (the launcher has no ``-m``). Its per-rank logs go to the output volume."""
    trainer = ["finetune-train", "--settings-json", settings_json]
    if gpus <= 1:
        return trainer
    devices = ",".join(str(i) for i in range(gpus))
    return ["python", "-m", "paddle.distributed.launch", "--devices", devices, "--log_dir", log_dir, *trainer]


def _resources(spec_resources: dict[str, Any]) -> dict[str, Any]:
    # CPU is a request only (a limit would throttle the data loaders); memory is requested and
    # limited alike so the pod is never the first to be OOM-killed for exceeding its request.
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    gpus = int(spec_resources.get("gpus", 1) or 0)
    if gpus > 0:
        limits["nvidia.com/gpu"] = gpus
    if spec_resources.get("cpu"):
        requests["cpu"] = str(spec_resources["cpu"])
    if spec_resources.get("memory"):
        requests["memory"] = limits["memory"] = str(spec_resources["memory"])
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _mount(name: str, path: str, sub_path: str | None, read_only: bool) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if sub_path:
        mount["subPath"] = sub_path
    if read_only:
        mount["readOnly"] = True
    return mount


def _kueue_hooks(job: dict[str, Any], labels: dict[str, str], attempt: int) -> dict[str, str]:
    """Kueue's labels on the pod (``labels`` is updated); returns its annotations. Only for a job
    that names a queue (its own label, or one in ``spec.template.labels``): every attempt is a
    pod group of its own, admitted whole, whose pods Kueue never waits to see replaced
    (localcluster/KUEUE.md: why a new group per attempt and ``retriable-in-group: "false"``)."""
    job_labels = (job.get("metadata") or {}).get("labels") or {}
    for key in (KUEUE_QUEUE_NAME, KUEUE_PRIORITY_CLASS):
        if job_labels.get(key):
            labels[key] = job_labels[key]
    if not labels.get(KUEUE_QUEUE_NAME):
        return {}
    labels[KUEUE_POD_GROUP_NAME] = attempt_name(job["metadata"]["name"], attempt)
    return {KUEUE_POD_GROUP_TOTAL_COUNT: str(nodes_of(job)), KUEUE_RETRIABLE_IN_GROUP: "false"}


def render_pod(job: dict[str, Any], attempt: int, config: OperatorConfig) -> dict[str, Any]:
    """The Pod manifest for ``attempt`` (1-based) of ``job`` (a FineTuneJob as a dict)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (got {attempt})")
    meta = job["metadata"]
    spec = job.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    template = copy.deepcopy(spec.get("template") or {})
    resources = spec.get("resources") or {}
    gpus = int(resources.get("gpus", 1) or 0)
    dataset = spec.get("dataset") or {}
    output = spec.get("output") or {}
    settings = trainer_settings(job)
    settings_json = settings.to_json()
    launch_logs = f"{settings.output.dir}/launch-logs"  # the job's own folder, as the trainer's

    labels = dict(template.get("labels") or {})
    labels.update(
        {
            LABEL_JOB: job_label_value(name),
            LABEL_ATTEMPT: str(attempt),
            LABEL_MANAGED_BY: MANAGED_BY,
        }
    )
    annotations = dict(template.get("annotations") or {})
    annotations.update(_kueue_hooks(job, labels, attempt))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.get("image") or config.trainer_image,
        "command": trainer_command(settings_json, gpus, launch_logs),
        "env": [
            # Progress lines must reach the log (and the operator) when printed, not at exit.
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # The uid has no passwd entry in most images: give libraries a writable home.
            {"name": "HOME", "value": "/tmp"},
            *({"name": k, "value": v} for k, v in config.trainer_env),
        ],
        "resources": _resources(resources),
        "volumeMounts": [
            _mount("dataset", DATA_MOUNT, dataset.get("subPath"), read_only=True),
            _mount("output", OUTPUT_MOUNT, output.get("subPath"), read_only=False),
            _mount("cache", CACHE_MOUNT, None, read_only=False),
            _mount("dshm", "/dev/shm", None, read_only=False),
            _mount("tmp", "/tmp", None, read_only=False),
        ],
        "terminationMessagePath": RESULT_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            # The trainer writes only to its volumes: /output, /cache, /tmp and /dev/shm.
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.get("imagePullPolicy"):
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    cache_volume: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": config.cache_claim}}
        if config.cache_claim
        else {"emptyDir": {}}
    )
    run_policy = spec.get("runPolicy") or {}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM -> the trainer checkpoints at the next step or evaluation batch -> SIGKILL after this.
        "terminationGracePeriodSeconds": int(
            run_policy.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS)
        ),
        # The trainer never talks to the API server.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            # Change the volumes' group only when their root is not the job's group already:
            # without it the kubelet walks (chowns) a whole dataset on every attempt.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "dataset", **copy.deepcopy(dataset.get("volume") or {})},
            {"name": "output", **copy.deepcopy(output.get("volume") or {})},
            {"name": "cache", **cache_volume},
            # DataLoader workers share batches through /dev/shm, which is 64 MiB by default.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            # HOME=/tmp (Paddle writes ~/.cache at import) on a read-only root file system.
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    for key in _PASS_THROUGH:
        if template.get(key):
            pod_spec[key] = template[key]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, attempt),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": name,
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }
