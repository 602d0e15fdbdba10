"""Restart the local cluster's kube-controller-manager with other client limits, so the Job
controller can be measured at its defaults (`--kube-api-qps 20 --kube-api-burst 30`, what
localcluster starts) and at production limits in one run, on one cluster.

The new process is the original command line (read from /proc) plus the extra flags (pflag: a
later flag wins), recorded as a companion of the cluster so that stopping the cluster stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from localcluster import Cluster
from localcluster.processes import pid_alive

NAME = "kube-controller-manager"
COMPANION = "kube-controller-manager-restarted"
# Production client limits: what managed control planes run the controller manager with
# (the example); the Job controller's own concurrency (--concurrent-job-syncs 5) stays.
FULL_SPEED = ("--kube-api-qps", "200", "--kube-api-burst", "300")


def _running(cluster: Cluster) -> tuple[int, str] | None:
    """(pid, marker) of the controller manager that runs now."""
    c = cluster.companion(COMPANION)
    if c is not None:
        return c["pid"], c["marker"]
    for p in cluster.state["processes"]:
        if p["name"] == NAME and pid_alive(p["pid"], p["marker"]):
            return p["pid"], p["marker"]
    return None


def _original_argv(cluster: Cluster) -> list[str]:
    record = next(p for p in cluster.state["processes"] if p["name"] == NAME)
    saved = cluster.state_dir / "kube-controller-manager.argv"
    if not saved.exists():  # first restart: the original process still runs
        raw = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
        saved.write_bytes(raw)
    return [a.decode() for a in saved.read_bytes().split(b"\0") if a]


def restart(cluster: Cluster, extra: tuple[str, ...] = (), timeout: float = 60.0) -> float:
    """Stop the controller manager and start it again with `extra` flags; returns the seconds
    until its Job controller has started (read from its log)."""
    t0 = time.monotonic()
    argv = _original_argv(cluster) + list(extra)
    running = _running(cluster)
    if running is not None:
        pid, marker = running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pid_alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    log_path = cluster.state_dir / "logs" / f"{NAME}-{int(time.time())}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    cluster.add_companion(COMPANION, proc.pid, f"{cluster.state_dir}/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{NAME} exited with {proc.returncode}; see {log_path}")
        text = log_path.read_text(errors="replace")
        started = text.find('"Starting job controller"')
        if started >= 0 and '"Caches are synced"' in text[started:]:
            time.sleep(1.0)  # the last informers of the other controllers
            return round(time.monotonic() - t0, 1)
        time.sleep(0.2)
    raise RuntimeError(f"{NAME}'s Job controller did not start within {timeout}s; see {log_path}")
