"""The benchmark's machine readings: how busy the machine is, and the wait for a quiet one that
each side of a round starts after."""

from __future__ import annotations

import os
import time

from bench.proc_sampler import CoreShares, cpu_seconds, machine_busy, wait_quiet


def test_machine_busy_is_a_share_of_the_cores() -> None:
    busy = machine_busy(0.2)
    assert 0.0 <= busy <= (os.cpu_count() or 1)


class FakeMachine:
    """Readings in turn, each taking its window on a clock of its own."""

    def __init__(self, readings: list[float]) -> None:
        self.readings = list(readings)
        self.now = 0.0
        self.windows: list[float] = []

    def busy(self, window: float) -> float:
        self.windows.append(window)
        self.now += window
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    def clock(self) -> float:
        return self.now


def test_wait_quiet_stops_at_the_first_quiet_window() -> None:
    machine = FakeMachine([1.8, 1.2, 0.49, 1.9])
    out = wait_quiet(0.5, window=2.0, limit=90.0, busy=machine.busy, clock=machine.clock)
    assert out == {"waitedSeconds": 6.0, "busyCores": 0.49}
    assert machine.windows == [2.0, 2.0, 2.0]  # the busy reading after it is never taken


def test_wait_quiet_gives_up_at_its_limit_and_says_how_busy() -> None:
    machine = FakeMachine([1.7])
    out = wait_quiet(0.5, window=2.0, limit=9.0, busy=machine.busy, clock=machine.clock)
    assert out == {"waitedSeconds": 10.0, "busyCores": 1.7}  # the window under way ends


def test_wait_quiet_at_the_threshold_is_still_busy() -> None:
    machine = FakeMachine([0.5, 0.5, 0.2])
    assert wait_quiet(0.5, busy=machine.busy, clock=machine.clock)["busyCores"] == 0.2


def test_cpu_seconds_reads_live_processes_and_leaves_out_gone_ones() -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < 0.05:  # some CPU of our own
        pass
    out = cpu_seconds({"me": os.getpid(), "gone": 2**22 + 7})
    assert set(out) == {"me"}
    assert out["me"] >= 0.05


def test_core_shares_are_cpu_seconds_per_second_of_the_window() -> None:
    now = [100.0]
    jiffies = iter([(1_000, 10_000), (1_000 + 3 * 400, 10_000 + 4 * 400)])  # 3 of 4 units busy
    readings = iter([{"api": 10.0, "op": 5.0, "gone": 1.0}, {"api": 22.0, "op": 8.0}])
    shares = CoreShares(
        {"api": 1, "op": 2, "gone": 3},
        clock=lambda: now[0],
        machine=lambda: next(jiffies),
        processes=lambda pids: next(readings),
    )
    now[0] += 10.0
    out = shares.close()
    assert out["seconds"] == 10.0
    assert out["cores"] == {"api": 1.2, "op": 0.3}  # the one that went is left out
    assert out["machineBusyCores"] == round(0.75 * (os.cpu_count() or 1), 2)
