"""What an attempt's ranks show together (a pure function of its pods, rank by rank).

An attempt is all its ranks (``spec.resources.nodes`` pods; one for a single-node job). It has
failed as soon as one rank failed, and its outcome is that rank's: the first to fail (by the
time its container ended), which is the cause; the others usually fail after it, in the
collectives. It has succeeded when rank 0 succeeded with its result and no rank failed. It is
pending while any rank is, and reports the rank that holds the group back: one waiting for
capacity before one that cannot start, the one waiting longest first. It runs when every rank
does (a rank other than 0 may have finished before rank 0 has).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .api import LABEL_RANK, Reason, Waiting
from .pod_state import PodOutcome, observe_pod

# A pending rank's reasons that only say it is on its way.
_ROUTINE = (Reason.POD_PENDING, "ContainerCreating", "PodInitializing")
# Routine too for ranks 1..: the kubelet holds them until the attempt's ConfigMap (rank 0's
# address) exists.
CONFIG_WAIT = "CreateContainerConfigError"


@dataclass(frozen=True)
class Gang:
    """One attempt's ranks as the pods show them."""

    outcome: PodOutcome | None  # None: a rank is being deleted and has not ended yet
    rank: int = 0  # the rank the outcome is about
    counts: dict[str, int] = field(default_factory=dict)  # pending, running, succeeded, failed
    missing: tuple[int, ...] = ()  # ranks with no pod
    placed: tuple[int, ...] = ()  # ranks on a node (holding its GPUs)


def rank_of(pod: dict[str, Any]) -> int:
    """The pod's rank label (0 for a pod made before ranks existed)."""
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_RANK, 0))
    except ValueError:
        return -1


def _phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _terminating(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp")) and _phase(pod) not in ("Succeeded", "Failed")


def _ended_at(pod: dict[str, Any]) -> str:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        finished = ((cs.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if finished:
            return str(finished)
    return "~"  # after every timestamp: a rank with no end time sorts last


def _on_node(pod: dict[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName")) or _phase(pod) == "Running"


def counts(ranks: dict[int, dict[str, Any]]) -> dict[str, int]:
    """How many ranks are pending, running, succeeded, failed."""
    out = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0}
    for pod in ranks.values():
        out[_phase(pod).lower() if _phase(pod) in ("Running", "Succeeded", "Failed") else "pending"] += 1
    return out


def observe_gang(ranks: dict[int, dict[str, Any]], nodes: int) -> Gang:
    """The attempt's outcome from its ranks' pods (`ranks`: rank -> pod, those that exist)."""
    missing = tuple(r for r in range(nodes) if r not in ranks)
    placed = tuple(sorted(r for r, pod in ranks.items() if _on_node(pod)))
    seen = {"counts": counts(ranks), "missing": missing, "placed": placed}
    outcomes = {r: observe_pod(pod) for r, pod in ranks.items() if not _terminating(pod)}
    failed = sorted((_ended_at(ranks[r]), r) for r, o in outcomes.items() if o.phase == "Failed")
    if failed:
        rank = failed[0][1]
        return Gang(_about(outcomes[rank], rank, nodes), rank, **seen)
    if 0 in outcomes and outcomes[0].phase == "Succeeded":
        return Gang(outcomes[0], 0, **seen)
    if len(outcomes) < len(ranks):
        return Gang(None, next(r for r in sorted(ranks) if r not in outcomes), **seen)
    pending = [(r, o) for r, o in sorted(outcomes.items()) if o.phase == "Pending"]
    if pending:
        rank, outcome = min(pending, key=lambda item: _holds_back(*item))
        return Gang(_about(outcome, rank, nodes), rank, **seen)
    return Gang(outcomes.get(0) or PodOutcome("Running", Reason.RUNNING, ""), 0, **seen)


def _holds_back(rank: int, outcome: PodOutcome) -> tuple[int, int, str, int]:
    """Sort key: capacity before start, a named reason before a routine one, longest first."""
    kind = 0 if outcome.waiting == Waiting.CAPACITY else 1
    routine = 1 if outcome.reason in _ROUTINE or (rank > 0 and outcome.reason == CONFIG_WAIT) else 0
    return (kind, routine, outcome.since or "~", rank)


def _about(outcome: PodOutcome, rank: int, nodes: int) -> PodOutcome:
    """The outcome's message names the rank, in a multi-node attempt."""
    if nodes <= 1:
        return outcome
    message = f"rank {rank}: {outcome.message}" if outcome.message else f"rank {rank}"
    return replace(outcome, message=message)
