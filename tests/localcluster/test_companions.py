"""Processes started beside a cluster (Cluster.add_companion: the demo's operator and HTTPS server)
are stopped with it. No cluster needed: localcluster.stop works from state.json alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import localcluster
from localcluster import Cluster
from localcluster.processes import pid_alive


def test_stopping_the_cluster_stops_its_companions(tmp_path: Path) -> None:
    state = {"bin_dir": "/nonexistent", "server": "https://127.0.0.1:1", "runner_node": "local-runner",
             "runner_root": str(tmp_path / "runner"), "gpu_nodes": [], "cpu_nodes": [], "processes": [],
             "ready": True}  # fmt: skip
    (tmp_path / "state.json").write_text(json.dumps(state))
    cluster = Cluster(tmp_path, state)
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
