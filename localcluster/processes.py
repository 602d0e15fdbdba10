"""Small process utilities shared by the cluster and the processes started beside it:
free ports, telling our own processes from recycled pids, and collecting children."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_given: set[int] = set()  # every port this process has handed out
_given_lock = threading.Lock()
_pick = random.SystemRandom()  # not the `random` module's state, which a test may seed


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, picked below the ephemeral range:
    a port from that range (what binding port 0 gives) can be taken as the source port of any
    outgoing connection before the process it is meant for binds it. Never one this process handed
    out before: two ports asked for one after the other (a metrics and a health port) are free
    together only until the first is bound, so a repeat would be a clash."""
    low, _ = _ephemeral_ports()
    first = 20000 if low > 21000 else 1024
    with _given_lock:
        if len(_given) > (low - first) // 2:  # half the range handed out: start over
            _given.clear()
        for _ in range(200):
            port = _pick.randrange(first, low)
            if port in _given:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given.add(port)
            return port
    with socket.socket() as s:  # all tried were taken: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line mentions `marker` (so a recycled pid is never killed)."""
    for attempt in range(5):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # Empty: a zombie, a kernel thread, or a read the kernel gave up on while the process's
        # memory map was busy (our guess for a live Kueue once taken for gone): look again.
        if raw or _state(pid) in ("Z", None):
            return marker in raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.05 * (attempt + 1))
    return False


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


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
