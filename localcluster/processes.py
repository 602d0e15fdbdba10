"""Small process utilities shared by the cluster and the processes started beside it:
free ports, telling our own processes from recycled pids, and collecting children."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line mentions `marker` (so a recycled pid is never killed)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def proc_start_time(pid: int) -> str | None:
    """The process's start time (/proc/PID/stat field 22): with the pid, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def reap(procs: list[dict[str, Any]]) -> None:
    """Collect the exit status of those that are our own children, so none lingers as a zombie."""
    deadline = time.monotonic() + 5
    pending = {p["pid"] for p in procs}
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (another process started it) or reaped
                done = pid
            if done == pid:
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
