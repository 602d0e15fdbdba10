"""What this installation refuses to run although the CRD accepts it (a pure function).

hostPath volumes: the CRD accepts them (single-node and test clusters use them), but a job with
one would mount a folder of whatever node it lands on, which a user who may create FineTuneJobs
but not pods should not be able to do through the operator. So they are refused unless the
installation allows them (`--allow-host-path`, the chart's `operator.allowHostPath`, off by
default); even then the namespace's Pod Security level decides (baseline and restricted refuse
them: refusal.py).

Multi-node jobs (spec.resources.nodes > 1): the CRD accepts them and pod.py renders every rank of
an attempt, but the reconciler creates, watches and retries one pod per attempt; started that
way, rank 0 would wait for ranks that never come while holding its GPUs. So they are refused
until the reconciler runs an attempt's ranks as a gang (issue 13, phase B).
"""

from __future__ import annotations

from typing import Any

from .config import OperatorConfig


def refused(job: dict[str, Any], config: OperatorConfig) -> str | None:
    """Why this installation will not run the job (naming the field), or None."""
    spec = job.get("spec") or {}
    nodes = int((spec.get("resources") or {}).get("nodes") or 1)
    if nodes > 1:
        return (
            f"spec.resources.nodes: {nodes} nodes: this operator version does not run multi-node "
            "jobs yet (the reconciler starts one pod per attempt; a multi-node attempt needs all of "
            "its ranks started and judged together); use nodes: 1 (up to 16 GPUs of one node)"
        )
    if config.allow_host_path:
        return None
    for section in ("dataset", "output"):
        if "hostPath" in ((spec.get(section) or {}).get("volume") or {}):
            return (
                f"spec.{section}.volume.hostPath: hostPath volumes are disabled in this installation "
                "(they would give the pod a folder of whatever node it runs on): use a "
                "persistentVolumeClaim, nfs or csi volume, or ask the cluster's administrators to "
                "set the chart's operator.allowHostPath (--allow-host-path)"
            )
    return None
