"""What it means when the API server refuses to create an attempt's pod (pure).

The API server answers with a Status (kube.ApiStatus). A 422 (reason Invalid) is a pod that can
never be created: the job fails at once (`PodInvalid`). A 403 (Forbidden) has three causes that
call for three different answers:

* **a missing permission** (RBAC): the operator's own ServiceAccount may not create pods in that
  namespace. A broken installation, not the job's fault: the job says so at once (Pending,
  `MissingPermission`, naming the rule), the operator logs an error, and it keeps trying with a
  growing back-off and no limit, so fixing the RBAC resumes every job. Asked of the API server
  itself with a SelfSubjectAccessReview rather than read from the message.
* **a ResourceQuota** that is full (`exceeded quota: ...`): room may come free, so the job waits
  like a pod waiting for GPUs (`QuotaExceeded`, bounded by `schedulingTimeoutSeconds`).
* **Pod Security** (`violates PodSecurity "<level>"`): the namespace forbids what the pod needs
  (a hostPath volume: the only thing in the rendered pod that "restricted" refuses). Waiting does
  not change a namespace's level: the job fails at once (`PodSecurityViolation`).

Any other 403 (an admission webhook, a ValidatingAdmissionPolicy) may pass later: the job waits as
a pod that cannot start (`PodForbidden`, bounded by `startTimeoutSeconds`). The quota and Pod
Security causes are told apart by the admission plugins' own wording: the Status carries no
structured cause for either (its details hold only the pod's name and kind).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .api import Reason, Waiting
from .kube import ApiStatus


@dataclass(frozen=True)
class Refusal:
    reason: str
    wait: str | None  # the kind of wait (api.Waiting), or None: the job fails at once
    message: str


def classify(status: ApiStatus, pod: str, namespace: str, may_create: Callable[[], bool]) -> Refusal:
    """`may_create()` asks the API server whether the operator may create pods in `namespace`
    (called only for a 403 that no admission plugin explains)."""
    said = f"the API server refused pod {pod}: {status.message}"
    if status.code == 422 or status.reason == "Invalid":
        return Refusal(Reason.POD_INVALID, None, said)
    if "exceeded quota:" in status.message:
        return Refusal(Reason.QUOTA_EXCEEDED, Waiting.CAPACITY, said)
    if "violates PodSecurity" in status.message:
        return Refusal(
            Reason.POD_SECURITY_VIOLATION,
            None,
            f"{said} (namespace {namespace} enforces a Pod Security level this pod does not meet)",
        )
    if not may_create():
        return Refusal(
            Reason.MISSING_PERMISSION,
            Waiting.PERMISSION,
            f"the operator may not create pods in namespace {namespace}: its RBAC is incomplete "
            f"(see the chart's RBAC table); retried until it is fixed. {status.message}",
        )
    return Refusal(Reason.POD_FORBIDDEN, Waiting.START, said)
