"""What Kueue says about an attempt's pods (pure functions of the pod and its Workload, as the API
server returns them; localcluster/KUEUE.md shows each on a real Kueue).

* Queued: Kueue's webhook gave the pod its admission gate, which Kueue removes when the job's
  LocalQueue admits the attempt's pod group; meanwhile the pod itself only says
  ``SchedulingGated``, and the Workload named after the group says why (its ClusterQueue's words).
* Stopped: Kueue preempts (or otherwise evicts) an admitted attempt by marking its pods with a
  condition and deleting them; the trainer gets SIGTERM and checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import KUEUE_ADMISSION_GATE, KUEUE_MANAGED, Reason
from .job_status import shorten


@dataclass(frozen=True)
class KueueStop:
    """Kueue is stopping the pod (preempted, or evicted for another reason of Kueue's): the
    attempt ends, and it is not a failure of the job."""

    reason: str  # Reason.PREEMPTED or Reason.EVICTED
    kueue_reason: str  # Kueue's own, e.g. WorkloadEvictedDueToPreempted
    message: str  # Kueue's words: who preempted it, in which ClusterQueue


def kueue_gated(pod: dict[str, Any]) -> bool:
    """Kueue holds the pod: its admission gate is still on (removed when the queue admits it)."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(g.get("name") == KUEUE_ADMISSION_GATE for g in gates)


def kueue_managed(pod: dict[str, Any]) -> bool:
    """Kueue manages the pod (its webhook labelled it at creation)."""
    return ((pod.get("metadata") or {}).get("labels") or {}).get(KUEUE_MANAGED) == "true"


def kueue_stop(pod: dict[str, Any]) -> KueueStop | None:
    """Kueue is stopping the pod: it marks it with the condition ``TerminationTarget=True`` (v0.17;
    earlier releases used ``DisruptionTarget``) and a reason ``WorkloadEvictedDueTo<why>``, then
    deletes it with its own grace period (the trainer checkpoints on SIGTERM)."""
    for kind in ("TerminationTarget", "DisruptionTarget"):
        cond = _pod_condition(pod, kind)
        why = cond.get("reason") or ""
        if cond.get("status") != "True" or not why.startswith(_KUEUE_EVICTED):
            continue
        reason = Reason.PREEMPTED if why == f"{_KUEUE_EVICTED}Preempted" else Reason.EVICTED
        message = shorten(cond.get("message") or f"stopped by Kueue ({why})")
        return KueueStop(reason, why, message)
    return None


_KUEUE_EVICTED = "WorkloadEvictedDueTo"


def _pod_condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def workload_words(workload: dict[str, Any] | None) -> tuple[str, str] | None:
    """Why the Workload is not admitted, in Kueue's words: ``(reason, message)`` of its
    ``QuotaReserved=False`` condition (``Pending``: no quota yet, e.g. ``couldn't assign flavors
    to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 4 more needed``;
    ``Inadmissible``: ``LocalQueue team-a doesn't exist``, ``ClusterQueue gpus is inactive``),
    else of ``Admitted=False`` (quota reserved, admission checks pending). None if it says
    nothing yet (Kueue creates the Workload just after the pod)."""
    conditions = ((workload or {}).get("status") or {}).get("conditions") or []
    by_type = {c.get("type"): c for c in conditions}
    for kind in ("QuotaReserved", "Admitted"):
        cond = by_type.get(kind) or {}
        if cond.get("status") == "False" and cond.get("message"):
            return str(cond.get("reason") or ""), shorten(str(cond["message"]))
    return None
