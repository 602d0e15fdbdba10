"""What this installation refuses to run although the CRD accepts it (a pure function).

hostPath volumes: the CRD accepts them (single-node and test clusters use them), but a job with
one would mount a folder of whatever node it lands on, which a user who may create FineTuneJobs
but not pods should not be able to do through the operator. So they are refused unless the
installation allows them (`--allow-host-path`, the chart's `operator.allowHostPath`, off by
default); even then the namespace's Pod Security level decides (baseline and restricted refuse
them: refusal.py).
"""

from __future__ import annotations

from typing import Any

from .config import OperatorConfig


def refused(job: dict[str, Any], config: OperatorConfig) -> str | None:
    """Why this installation will not run the job (naming the field), or None."""
    spec = job.get("spec") or {}
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
