"""Stopping and starting one process of a running cluster (kube-apiserver, etcd, ...), and
compacting etcd: what chaos tests do to a control plane.

A component is restarted with the command line it runs with now (read from /proc), its output
appended to its log, and its new pid recorded in state.json, so `stop()` still finds it.
Compaction goes through etcd's JSON gateway on its client URL (`POST /v3/kv/compaction`): a
watch that resumes from a resourceVersion older than the compacted revision then ends with
410 Gone, as on a real cluster some minutes after a watch was cut.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from localcluster.errors import ClusterError
from localcluster.processes import pid_alive, reap


def _state(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "state.json").read_text())


def _save(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / "state.json")


def _record(state_dir: Path, name: str) -> dict[str, Any]:
    for proc in _state(state_dir)["processes"]:
        if proc["name"] == name:
            return proc
    raise ClusterError(f"no process {name!r} in {state_dir}/state.json")


def stop_component(state_dir: Path, name: str, sig: int = signal.SIGTERM, grace: float = 15.0) -> list[str]:
    """Stop the cluster's process `name` (SIGKILL after `grace` seconds); returns its command line."""
    proc = _record(state_dir, name)
    pid = proc["pid"]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError as exc:
        raise ClusterError(f"{name} (pid {pid}) is not running") from exc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + grace
    while pid_alive(pid, proc["marker"]) and time.monotonic() < deadline:
        reap([proc])
        time.sleep(0.1)
    if pid_alive(pid, proc["marker"]):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    reap([proc])
    return [a.decode() for a in argv]


def start_component(state_dir: Path, name: str, argv: list[str]) -> int:
    """Start `name` again with `argv`, its output appended to its log; returns the new pid."""
    with open(state_dir / "logs" / f"{name}.log", "ab") as log:
        log.write(f"==== restarted {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    state = _state(state_dir)
    for proc in state["processes"]:
        if proc["name"] == name:
            proc["pid"] = child.pid
    _save(state_dir, state)
    return child.pid


def etcd_url(state_dir: Path) -> str:
    return f"http://127.0.0.1:{_state(state_dir)['ports']['etcd']}"


def _etcd(state_dir: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        etcd_url(state_dir) + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def etcd_compact(state_dir: Path, bump: int = 1) -> int:
    """Write `bump` throw-away keys (so the revision moves past every resourceVersion handed out
    so far), then compact etcd's history up to the current revision; returns that revision."""
    for i in range(bump):
        key = base64.b64encode(f"/pfo-chaos/bump-{i}".encode()).decode()
        _etcd(state_dir, "/v3/kv/put", {"key": key, "value": base64.b64encode(b"x").decode()})
    revision = int(
        _etcd(state_dir, "/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    )
    _etcd(state_dir, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision
