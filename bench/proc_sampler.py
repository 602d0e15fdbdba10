"""Readings from /proc (Linux): resident memory and CPU seconds of one process, sampled in the
background so that the peak during a burst is caught, not only the value at its end; how busy
the whole machine is; and how a window's cores were split between named processes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


@dataclass
class Reading:
    cpu_seconds: float  # user + system, all threads
    rss_bytes: int


def read(pid: int) -> Reading:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    with open(f"/proc/{pid}/statm") as f:
        rss_pages = int(f.read().split()[1])
    return Reading((utime + stime) / _TICKS, rss_pages * _PAGE)


class Sampler:
    """Samples `pid` every `interval` seconds; `window()` starts a measurement, `close(start)`
    returns CPU seconds spent and the peak and final RSS since."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sample {pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = read(self.pid).rss_bytes
            except OSError:
                return
            with self._lock:
                self._peak = max(self._peak, rss)

    def stop(self) -> None:
        self._stop.set()

    def window(self) -> tuple[float, Reading]:
        """Start a window: (monotonic time, reading); resets the peak."""
        now = read(self.pid)
        with self._lock:
            self._peak = now.rss_bytes
        return time.monotonic(), now

    def close(self, start: tuple[float, Reading]) -> dict[str, float]:
        t0, r0 = start
        r1 = read(self.pid)
        with self._lock:
            peak = max(self._peak, r1.rss_bytes)
        seconds = time.monotonic() - t0
        cpu = r1.cpu_seconds - r0.cpu_seconds
        return {
            "seconds": round(seconds, 2),
            "cpuSeconds": round(cpu, 2),
            "cpuFraction": round(cpu / seconds, 3) if seconds > 0 else 0.0,
            "rssPeakMiB": round(peak / 2**20, 1),
            "rssEndMiB": round(r1.rss_bytes / 2**20, 1),
        }


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def machine_busy(seconds: float) -> float:
    """How many cores the whole machine kept busy over the next `seconds` (0 .. CPU count)."""
    b0, t0 = _busy_jiffies()
    time.sleep(seconds)
    b1, t1 = _busy_jiffies()
    cores = os.cpu_count() or 1
    return round(cores * (b1 - b0) / max(1, t1 - t0), 2)


def wait_quiet(
    cores: float,
    window: float = 2.0,
    limit: float = 90.0,
    busy: Callable[[float], float] = machine_busy,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, float]:
    """Wait (at most `limit` s) until the machine keeps fewer than `cores` cores `busy` over a
    `window`: a side starts once the tail of the one before (a namespace's deletion, the
    scheduler, compaction) is over, not on top of it. Returns the seconds waited and the last
    reading."""
    t0 = clock()
    reading = busy(window)
    while reading >= cores and clock() - t0 < limit:
        reading = busy(window)
    return {"waitedSeconds": round(clock() - t0, 1), "busyCores": reading}


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far (user + system, all threads) of each named process; a process that
    is gone is left out."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = read(pid).cpu_seconds
        except (OSError, ValueError, IndexError):
            continue
    return out


class CoreShares:
    """Who kept the cores busy over a window: the machine as a whole (/proc/stat) and each named
    process (/proc/PID/stat), in cores (CPU seconds per second). On a saturated machine a
    latency is the share a side got, so every burst says how the cores were split."""

    def __init__(
        self,
        pids: Mapping[str, int],
        clock: Callable[[], float] = time.monotonic,
        machine: Callable[[], tuple[int, int]] | None = None,
        processes: Callable[[Mapping[str, int]], dict[str, float]] = cpu_seconds,
    ) -> None:
        self._pids = dict(pids)
        self._clock = clock
        self._machine = machine or _busy_jiffies
        self._processes = processes
        self._t0 = clock()
        self._m0 = self._machine()
        self._p0 = processes(self._pids)

    def close(self) -> dict[str, Any]:
        seconds = self._clock() - self._t0
        b1, t1 = self._machine()
        p1 = self._processes(self._pids)
        b0, t0 = self._m0
        cores = os.cpu_count() or 1
        per = {
            name: round((p1[name] - self._p0[name]) / seconds, 2) if seconds > 0 else 0.0
            for name in self._pids
            if name in p1 and name in self._p0
        }
        return {
            "seconds": round(seconds, 2),
            "machineBusyCores": round(cores * (b1 - b0) / max(1, t1 - t0), 2),
            "cores": per,
        }
