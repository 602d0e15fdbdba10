"""Processes started beside a cluster (Cluster.add_companion: the demo's operator and HTTPS server)
are stopped with it. No cluster needed: localcluster.stop works from state.json alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import localcluster
from localcluster import Cluster
from localcluster.processes import pid_alive


def recorded_cluster(folder: Path) -> Cluster:
    """A cluster's state with no process of its own: enough for what companions need."""
    state = {"bin_dir": "/nonexistent", "server": "https://127.0.0.1:1", "gpu_nodes": [], "cpu_nodes": [],
             "processes": [], "ready": True}  # fmt: skip
    (folder / "state.json").write_text(json.dumps(state))
    return Cluster(folder, state)


def test_stopping_the_cluster_stops_its_companions(tmp_path: Path) -> None:
    cluster = recorded_cluster(tmp_path)
    first = subprocess.Popen(["sleep", "301"], start_new_session=True)
    second = subprocess.Popen(["sleep", "302"], start_new_session=True)
    try:
        cluster.add_companion("server", first.pid, "sleep 301")
        cluster.add_companion("server", second.pid, "sleep 302")  # a restart replaces the record
        recorded = json.loads((tmp_path / "state.json").read_text())["companions"]
        assert recorded == [{"name": "server", "pid": second.pid, "marker": "sleep 302"}]
        assert cluster.state["companions"] == recorded

        localcluster.stop(tmp_path, grace=5)
        # localcluster.stop reaps its own children, so ask /proc rather than Popen
        assert not pid_alive(second.pid, "sleep 302"), "the recorded companion still runs"
        assert not tmp_path.exists()
        assert first.poll() is None, "a companion no longer recorded must not be touched"
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_a_companion_is_found_while_it_runs_and_stopped_alone(tmp_path: Path) -> None:
    cluster = recorded_cluster(tmp_path)
    # The shell ignores SIGTERM: stop_companion must fall back to SIGKILL after its grace.
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 303 & wait"], start_new_session=True)
    other = subprocess.Popen(["sleep", "304"], start_new_session=True)
    try:
        assert cluster.companion("server") is None
        cluster.add_companion("server", stubborn.pid, "sleep 303")
        cluster.add_companion("other", other.pid, "sleep 304")
        assert cluster.companion("server") == {"name": "server", "pid": stubborn.pid, "marker": "sleep 303"}
        cluster.add_companion("gone", 2**22 + 1, "no such process")  # a pid beyond pid_max
        assert cluster.companion("gone") is None, "a recorded companion that is not running"

        cluster.stop_companion("server", grace=1)
        assert stubborn.wait(5) == -9, "SIGKILL after the grace period"
        assert cluster.companion("server") is None
        assert cluster.companion("other") is not None, "only the named companion is stopped"
        cluster.stop_companion("gone")  # nothing runs: nothing happens
    finally:
        for proc in (stubborn, other):
            proc.kill()
            proc.wait()
