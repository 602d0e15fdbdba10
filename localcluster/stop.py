"""Stopping a local cluster from its state directory alone (state.json records every process
with a marker from its command line, so a recycled pid is never signalled), and the watchdog that
stops a cluster once the process that owns it is gone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from localcluster import realnode
from localcluster.processes import pid_alive, proc_start_time, reap

REPO_ROOT = Path(__file__).resolve().parents[1]


def stop(state_dir: Path, *, remove: bool = True, grace: float = 10.0) -> None:
    """Stop every process recorded in state_dir/state.json (newest first), then remove the directory."""
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = {"processes": []}
    # The real node's pods go first, while the API server and kubelet still run (stopping the
    # kubelet would leave them running).
    admin = state_dir / "kubeconfig"
    kubectl = [str(Path(state.get("bin_dir", "")) / "kubectl"), "--kubeconfig", str(admin)]
    realnode.drain(state_dir, state, kubectl if admin.exists() and "bin_dir" in state else None)
    # Companions (Cluster.add_companion) go first: they talk to the API server.
    recorded = state.get("processes", []) + state.get("companions", [])
    procs = [p for p in reversed(recorded) if pid_alive(p["pid"], p["marker"])]
    for p in procs:  # SIGTERM the process group (each was started in its own session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p["pid"], p["marker"]) for p in procs):
        time.sleep(0.1)
    for p in procs:
        if pid_alive(p["pid"], p["marker"]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p["pid"], signal.SIGKILL)
    reap(procs)
    realnode.cleanup_host(state_dir)  # mounts, bridge, nftables table, cgroups, links, sysctls
    if remove and state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)


def start_watchdog(state_dir: Path, owner_pid: int) -> None:
    """A process of its own (`python -m localcluster watch`) that stops the cluster in
    `state_dir` once `owner_pid` is gone, however it ended."""
    argv = [sys.executable, "-m", "localcluster", "watch", "--state-dir", str(state_dir),
            "--owner-pid", str(owner_pid), "--owner-start", str(proc_start_time(owner_pid))]  # fmt: skip
    subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip


def watch(state_dir: Path, owner_pid: int, owner_start: str) -> None:
    """Stop the cluster in `state_dir` once its owner process is gone; end when the state is gone."""
    while state_dir.exists():
        if proc_start_time(owner_pid) != owner_start:
            stop(state_dir)
            return
        time.sleep(1)
