"""Render the Pods of one attempt of a FineTuneJob (pure functions: job in, manifests out).

An attempt is ``spec.resources.nodes`` pods, one per rank, rendered together
(``render_attempt``). Names are derived from the job, the attempt and the rank, so a restarted
operator finds the pods it created instead of making second ones: ``<job>-attempt-<n>`` for a
single-node job (as before multi-node jobs existed), ``<job>-attempt-<n>-rank-<r>`` otherwise.
The trainer gets its settings as one JSON argument; no shell ever sees a user string.

How the ranks of a multi-node attempt find each other: every pod runs
``paddle.distributed.launch --nnodes N --rank r --nproc_per_node K`` with ``PADDLE_MASTER``,
the address of the rendezvous that rank 0's launcher serves on its pod IP, port 36543. Rank 0
knows its own IP (downward API). The other ranks read it from a ConfigMap named after the
attempt (``render_master_config``), which the operator creates once rank 0 has an IP; until
then the kubelet holds their containers (CreateContainerConfigError) and starts them when it
exists. All pods are created at once, so a gang scheduler (Kueue, coscheduling, Volcano) can
place them together; no cluster DNS and no Service is needed, only pod-to-pod networking
between the nodes, which the collectives need anyway.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from finetune_contract import (
    PUSH_CA_ENV,
    PUSH_TOKEN_DIR,
    PUSH_TOKEN_FILE,
    PUSH_URL_ENV,
    push_audience,
    push_path,
)

from .api import (
    API_VERSION,
    CONTAINER,
    COSCHEDULING_POD_GROUP,
    KIND,
    KUEUE_POD_GROUP_NAME,
    KUEUE_POD_GROUP_TOTAL_COUNT,
    KUEUE_PRIORITY_CLASS,
    KUEUE_QUEUE_NAME,
    KUEUE_RETRIABLE_IN_GROUP,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_RANK,
    MANAGED_BY,
    MASTER_KEY,
    MASTER_PORT,
    MASTER_PORT_NAME,
    VOLCANO_GROUP_NAME,
)
from .config import OperatorConfig
from .trainer_settings import CACHE_MOUNT, DATA_MOUNT, OUTPUT_MOUNT, RESULT_PATH, trainer_settings

MAX_NAME = 63  # a DNS label: pod names become hostnames, and label values have the same limit
# The CRD's default for spec.runPolicy.terminationGracePeriodSeconds (a job stored before the field
# existed gets it too): time for the largest model's checkpoint on a slow network disk, see
# trainer/finetune_trainer/README.md ("Grace on SIGTERM").
DEFAULT_TERMINATION_GRACE_SECONDS = 120

PUSH_VOLUME = "progress-token"
PUSH_TOKEN_SECONDS = 3600  # the kubelet renews it at 80%: a TokenReview per job about every 48 min

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
    """``<job>-attempt-<n>``, at most 63 characters: a single-node attempt's pod, and a
    multi-node attempt's ConfigMap, Kueue pod group and PodGroup."""
    return _bounded(job_name, f"-attempt-{attempt}")


def queue_name(job: dict[str, Any]) -> str:
    """The Kueue LocalQueue the job asks for: its label, or one in ``spec.template.labels``
    ("" without one: the job is not queued by Kueue)."""
    meta_labels = (job.get("metadata") or {}).get("labels") or {}
    template_labels = ((job.get("spec") or {}).get("template") or {}).get("labels") or {}
    return meta_labels.get(KUEUE_QUEUE_NAME) or template_labels.get(KUEUE_QUEUE_NAME) or ""


def pod_name(job_name: str, attempt: int, rank: int = 0, nodes: int = 1) -> str:
    """The pod of ``rank`` in ``attempt``: ``<job>-attempt-<n>`` for a single-node job,
    ``<job>-attempt-<n>-rank-<r>`` otherwise; at most 63 characters."""
    if nodes <= 1:
        return attempt_name(job_name, attempt)
    return _bounded(job_name, f"-attempt-{attempt}-rank-{rank}")


def nodes_of(job: dict[str, Any]) -> int:
    """``spec.resources.nodes`` (1 when unset, as the CRD defaults it)."""
    return int(((job.get("spec") or {}).get("resources") or {}).get("nodes") or 1)


def gpus_of(job: dict[str, Any]) -> int:
    """``spec.resources.gpus``: GPUs per pod (1 when unset, as the CRD defaults it)."""
    resources = (job.get("spec") or {}).get("resources") or {}
    return int(resources.get("gpus", 1) or 0)


def job_label_value(job_name: str) -> str:
    """The job-name label's value (label values are limited to 63 characters too)."""
    return _bounded(job_name, "")


def pod_selector(job_name: str) -> str:
    """The label selector that lists a job's pods."""
    return f"{LABEL_JOB}={job_label_value(job_name)},{LABEL_MANAGED_BY}={MANAGED_BY}"


def trainer_command(
    settings_json: str, gpus: int, log_dir: str, nodes: int = 1, rank: int = 0, job_id: str = ""
) -> list[str]:
    """The container command. More than one GPU or node: paddle.distributed.launch starts one
    trainer per GPU (one on CPU) of this node; it runs a non-``.py`` script as a program, so
    the console script is given by name (the launcher has no ``-m``). Its per-process logs go
    to ``log_dir``. Several nodes: ``--nnodes``, this pod's ``--rank`` and the attempt as
    ``--job_id`` (the rendezvous' key); the master's address comes from ``PADDLE_MASTER``.

    The process count is ``--nproc_per_node``, never ``--devices``: the container sees only the
    GPUs allocated to it (numbered from 0), which the launcher finds and hands out one per
    process, and a CPU build of Paddle (the local cluster's trainer image, on a node that
    advertises GPUs it does not have) refuses any ``--devices`` but runs that many gloo ranks."""
    trainer = ["finetune-train", "--settings-json", settings_json]
    if gpus <= 1 and nodes <= 1:
        return trainer
    launch = ["python", "-m", "paddle.distributed.launch"]
    if nodes > 1:
        launch += ["--nnodes", str(nodes), "--rank", str(rank), "--job_id", job_id]
    launch += ["--nproc_per_node", str(max(gpus, 1))]
    return [*launch, "--log_dir", log_dir, *trainer]


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


def render_attempt(job: dict[str, Any], attempt: int, config: OperatorConfig) -> list[dict[str, Any]]:
    """Every pod of ``attempt``, rank 0 first."""
    return [render_pod(job, attempt, config, rank) for rank in range(nodes_of(job))]


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


def _push_env(config: OperatorConfig, namespace: str, name: str) -> list[dict[str, Any]]:
    """Where rank 0 pushes its progress, and the CA it checks the endpoint's certificate with."""
    return [
        {"name": PUSH_URL_ENV, "value": config.progress_url.rstrip("/") + push_path(namespace, name)},
        {"name": PUSH_CA_ENV, "value": config.progress_ca_pem},
    ]


def _push_token_volume(namespace: str, name: str) -> dict[str, Any]:
    """The pod's ServiceAccount token for this job's audience alone, bound to the pod (the kubelet
    renews it; it stops working once the pod is deleted). Nothing else of the API is mounted."""
    token = {"audience": push_audience(namespace, name), "expirationSeconds": PUSH_TOKEN_SECONDS}
    return {
        "name": PUSH_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {**token, "path": PUSH_TOKEN_FILE}}]},
    }


def _master_env(job: dict[str, Any], attempt: int, rank: int) -> list[dict[str, Any]]:
    """``POD_IP`` (the launcher's own address: it reads this variable) and ``PADDLE_MASTER``:
    rank 0's own IP, or, on the other ranks, the value of the attempt's ConfigMap."""
    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    if rank == 0:
        return [pod_ip, {"name": "PADDLE_MASTER", "value": f"$(POD_IP):{MASTER_PORT}"}]
    source = {"name": attempt_name(job["metadata"]["name"], attempt), "key": MASTER_KEY}
    return [pod_ip, {"name": "PADDLE_MASTER", "valueFrom": {"configMapKeyRef": source}}]


def render_pod(job: dict[str, Any], attempt: int, config: OperatorConfig, rank: int = 0) -> dict[str, Any]:
    """The Pod manifest of ``rank`` in ``attempt`` (1-based) of ``job`` (a FineTuneJob as a
    dict). Rank 0 mounts the output volume and the pretrained cache; the other ranks of a
    multi-node job take their start from rank 0 over the process group and write nothing, so
    they mount only the dataset (a ReadWriteOnce output claim works across nodes)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (got {attempt})")
    nodes = nodes_of(job)
    if not 0 <= rank < nodes:
        raise ValueError(f"rank must be in 0..{nodes - 1} (got {rank})")
    meta = job["metadata"]
    spec = job.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    template = copy.deepcopy(spec.get("template") or {})
    resources = spec.get("resources") or {}
    gpus = gpus_of(job)
    dataset = spec.get("dataset") or {}
    output = spec.get("output") or {}
    settings = trainer_settings(job)
    settings_json = settings.to_json()
    writes = rank == 0  # rank 0 alone reads and writes the output volume and the cache

    labels = dict(template.get("labels") or {})
    labels.update(
        {
            LABEL_JOB: job_label_value(name),
            LABEL_ATTEMPT: str(attempt),
            LABEL_RANK: str(rank),
            LABEL_MANAGED_BY: MANAGED_BY,
        }
    )
    annotations = dict(template.get("annotations") or {})
    annotations.update(_kueue_hooks(job, labels, attempt))
    env: list[dict[str, Any]] = [
        # Progress lines must reach the log (and the operator) when printed, not at exit.
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The uid has no passwd entry in most images: give libraries a writable home.
        {"name": "HOME", "value": "/tmp"},
        *({"name": k, "value": v} for k, v in config.trainer_env),
    ]
    log_dir = f"{settings.output.dir}/launch-logs"  # the job's own folder, as the trainer's
    if writes and config.progress_port:
        env += _push_env(config, namespace, name)
    if nodes > 1:
        env += _master_env(job, attempt, rank)
        # Rank 0 keeps the launcher's per-process logs with the job's output; the others in
        # the container (kubectl logs shows each pod's first process).
        log_dir = f"{log_dir}/attempt-{attempt}-rank-0" if writes else "/tmp/launch-logs"
    mounts = [_mount("dataset", DATA_MOUNT, dataset.get("subPath"), read_only=True)]
    if writes:
        mounts += [
            _mount("output", OUTPUT_MOUNT, output.get("subPath"), read_only=False),
            _mount("cache", CACHE_MOUNT, None, read_only=False),
        ]
    mounts.append(_mount("dshm", "/dev/shm", None, read_only=False))
    mounts.append(_mount("tmp", "/tmp", None, read_only=False))
    if writes and config.progress_port:
        mounts.append(_mount(PUSH_VOLUME, PUSH_TOKEN_DIR, None, read_only=True))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.get("image") or config.trainer_image,
        "command": trainer_command(
            settings_json, gpus, log_dir, nodes=nodes, rank=rank, job_id=attempt_name(name, attempt)
        ),
        "env": env,
        "resources": _resources(resources),
        "volumeMounts": mounts,
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
    if nodes > 1 and rank == 0:
        container["ports"] = [{"name": MASTER_PORT_NAME, "containerPort": MASTER_PORT, "protocol": "TCP"}]
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
        "volumes": [{"name": "dataset", **copy.deepcopy(dataset.get("volume") or {})}],
    }
    if writes:
        pod_spec["volumes"] += [
            {"name": "output", **copy.deepcopy(output.get("volume") or {})},
            {"name": "cache", **cache_volume},
        ]
    # DataLoader workers share batches through /dev/shm, which is 64 MiB by default.
    pod_spec["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    # HOME=/tmp (Paddle writes ~/.cache at import) on a read-only root file system.
    pod_spec["volumes"].append({"name": "tmp", "emptyDir": {}})
    if writes and config.progress_port:
        pod_spec["volumes"].append(_push_token_volume(namespace, name))
    for key in _PASS_THROUGH:
        if template.get(key):
            pod_spec[key] = template[key]
    _gang_hooks(config, job, attempt, labels, annotations, pod_spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, attempt, rank, nodes),
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


# ------------------------------------------------------------------------------------------------
# What an attempt needs besides its pods
# ------------------------------------------------------------------------------------------------
def render_master_config(job: dict[str, Any], attempt: int, rank0: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap that tells the other ranks of a multi-node ``attempt`` where rank 0's
    rendezvous is: ``master: <rank 0's pod IP>:36543``. Owned by rank 0's pod (its uid), so it
    goes when that pod goes, and immutable: an attempt's rank 0 never changes its IP."""
    ip = (rank0.get("status") or {}).get("podIP")
    if not ip:
        raise ValueError(f"pod {rank0['metadata']['name']} has no IP yet")
    meta = job["metadata"]
    name = attempt_name(meta["name"], attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                LABEL_JOB: job_label_value(meta["name"]),
                LABEL_ATTEMPT: str(attempt),
                LABEL_MANAGED_BY: MANAGED_BY,
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": rank0["metadata"]["name"],
                    "uid": rank0["metadata"]["uid"],
                }
            ],
        },
        "immutable": True,
        "data": {MASTER_KEY: _address(ip, MASTER_PORT)},
    }


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _gang_hooks(
    config: OperatorConfig,
    job: dict[str, Any],
    attempt: int,
    labels: dict[str, str],
    annotations: dict[str, str],
    pod_spec: dict[str, Any],
) -> None:
    """The pod's membership in the attempt's PodGroup (``render_pod_group``), and the
    scheduler that honours it."""
    group = attempt_name(job["metadata"]["name"], attempt)
    if config.gang_scheduler == "coscheduling":
        labels[COSCHEDULING_POD_GROUP] = group
    elif config.gang_scheduler == "volcano":
        annotations[VOLCANO_GROUP_NAME] = group
    scheduler = config.scheduler_name or ("volcano" if config.gang_scheduler == "volcano" else "")
    if scheduler:
        pod_spec["schedulerName"] = scheduler


def render_pod_group(job: dict[str, Any], attempt: int, config: OperatorConfig) -> dict[str, Any] | None:
    """The attempt's PodGroup for the configured gang scheduler (None without one): all
    ``nodes`` pods are placed together or not at all. Owned by the job; named after the attempt
    (the pods name it: ``_gang_hooks``)."""
    meta = job["metadata"]
    nodes = nodes_of(job)
    if config.gang_scheduler == "coscheduling":
        api_version, spec = "scheduling.x-k8s.io/v1alpha1", {"minMember": nodes}
    elif config.gang_scheduler == "volcano":
        api_version, spec = "scheduling.volcano.sh/v1beta1", {"minMember": nodes}
    else:
        return None
    return {
        "apiVersion": api_version,
        "kind": "PodGroup",
        "metadata": {
            "name": attempt_name(meta["name"], attempt),
            "namespace": meta["namespace"],
            "labels": {
                LABEL_JOB: job_label_value(meta["name"]),
                LABEL_ATTEMPT: str(attempt),
                LABEL_MANAGED_BY: MANAGED_BY,
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }
