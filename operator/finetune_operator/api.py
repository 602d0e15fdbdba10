"""The names the operator shares with its users and the cluster, in one place.

The FineTuneJob's API identity (the CRD in crds/ declares the same), the labels on the pods it
creates, the trainer container's name, the job's phases and condition types, and the reasons its
status and Events carry. Users script against these (``kubectl wait --for=condition=Succeeded``,
label selectors, alerts on a reason), so changing one is an API change. The trainer's own failure
reasons (DataError, NonFiniteLoss, ...) come from its exit code: ``finetune_contract.exit_reason``.
"""

from __future__ import annotations

# The API ---------------------------------------------------------------------------------------
GROUP = "finetune.paddle.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)

# Who writes: the field manager of every object and patch, and the source of every Event.
FIELD_MANAGER = "paddle-finetune-operator"

# The pods ------------------------------------------------------------------------------------
LABEL_JOB = f"{GROUP}/job-name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_RANK = f"{GROUP}/rank"  # 0..nodes-1: one pod per rank (node) of an attempt
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "paddle-finetune-operator"
CONTAINER = "trainer"
# A multi-node job's rendezvous: paddle.distributed.launch on rank 0 serves it on this port of
# its pod IP (Kubeflow's PaddleJob uses the same, port name "master"); the collectives then use
# ephemeral ports between the pods. The other ranks learn rank 0's address from a ConfigMap.
MASTER_PORT = 36543
MASTER_PORT_NAME = "master"
MASTER_KEY = "master"  # the ConfigMap's key: "<rank 0's pod IP>:36543"

# Gang scheduling on real clusters: Kueue pod groups (one group per attempt; see
# localcluster/KUEUE.md and the README's "Shared clusters"), and PodGroups of the
# coscheduling plugin or Volcano.
KUEUE_QUEUE_NAME = "kueue.x-k8s.io/queue-name"  # set by the user on the FineTuneJob
KUEUE_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
KUEUE_POD_GROUP_NAME = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_TOTAL_COUNT = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_IN_GROUP = "kueue.x-k8s.io/retriable-in-group"
COSCHEDULING_POD_GROUP = "scheduling.x-k8s.io/pod-group"  # label (scheduler-plugins >= v0.24)
VOLCANO_GROUP_NAME = "scheduling.k8s.io/group-name"  # annotation

# What Kueue puts on the pods it manages: the gate it removes at admission, and its label.
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"
KUEUE_MANAGED = "kueue.x-k8s.io/managed"


# The job's status ----------------------------------------------------------------------------
class Phase:
    """status.phase."""

    PENDING = "Pending"
    QUEUED = "Queued"  # Kueue holds the pod until the job's queue admits it
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


PHASES = (Phase.PENDING, Phase.QUEUED, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED)
FINISHED = (Phase.SUCCEEDED, Phase.FAILED)
# Standard conditions, one True at a time: `kubectl wait --for=condition=Succeeded` works.
CONDITION_TYPES = (Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED)


class Waiting:
    """status.waiting.kind: why a Pending job's pod is not running yet."""

    CAPACITY = "Capacity"  # no room yet (no node with free GPUs, a full quota): worth waiting for
    START = "Start"  # placed, or placeable, but it cannot run yet (an image, a volume, a config)
    PERMISSION = "Permission"  # the operator may not create the pod: an installation to fix
    ADMISSION = "Admission"  # Queued: Kueue has not admitted the pod yet (no time limit)


class Reason:
    """status.reason, the conditions' reasons and the Events' reasons the operator decides."""

    # The lifecycle
    POD_CREATED = "PodCreated"
    QUEUED = "Queued"  # Kueue holds the pod: no quota for it yet in its ClusterQueue
    INADMISSIBLE = "Inadmissible"  # Kueue cannot admit it as things are (no such LocalQueue, ...)
    NOT_QUEUED = "NotQueued"  # an Event: the job names a queue, and Kueue does not manage its pod
    POD_PENDING = "PodPending"  # created, waiting to start, for no reason Kubernetes names
    RUNNING = "Running"
    RETRYING = "Retrying"  # a transient failure: the next attempt starts after a back-off
    SUSPENDED = "Suspended"
    COMPLETED = "Completed"
    POD_MISSING = "PodMissing"  # the attempt's pod disappeared: a transient failure, retried after back-off
    RECONCILE_ERROR = "ReconcileError"  # an Event: reconciling the job keeps failing (retried with back-off)
    # Failures of the job, and of an attempt's pod
    INVALID_SPEC = "InvalidSpec"
    POD_INVALID = "PodInvalid"  # the API server refused the pod (422)
    POD_FORBIDDEN = "PodForbidden"  # refused by an admission webhook or policy (403): retried
    QUOTA_EXCEEDED = "QuotaExceeded"  # refused by a ResourceQuota: waits for room
    POD_SECURITY_VIOLATION = "PodSecurityViolation"  # refused by the namespace's Pod Security level
    MISSING_PERMISSION = "MissingPermission"  # the operator may not create pods there: a broken install
    POD_EXISTS = "PodExists"  # a pod of the attempt's name that is not this job's is in the way
    CONFIG_MAP_EXISTS = "ConfigMapExists"  # a ConfigMap of the attempt's name that is not its own
    UNSCHEDULABLE = "Unschedulable"
    START_TIMEOUT = "StartTimeout"  # placed on a node, never started, for no reason the kubelet names
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    POD_FAILED = "PodFailed"  # failed with no exit code and no reason of its own
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"
    PREEMPTED = "Preempted"
    NODE_LOST = "NodeLost"
    NODE_SHUTDOWN = "NodeShutdown"
    UNEXPECTED_ADMISSION_ERROR = "UnexpectedAdmissionError"
