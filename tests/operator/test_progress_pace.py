"""progress_pace: log reads timed by the trainer's epochs. Checked over generated trainers (epoch
lengths, jitter, poll intervals): progress reaches the status within a read of every epoch, and
a running job costs about one read per epoch, whatever the poll interval."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from finetune_operator.progress_pace import MAX_BACKOFF_FACTOR, Pace, line_time

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def simulate(
    epoch_seconds: float, epochs: int, base: float, jitter: float, seed: int, start: float = 0.0
) -> tuple[int, list[tuple[int, float]]]:
    """A trainer that prints epoch 0 at once and epoch k after k (jittered) epochs and its
    `start` (loading what it needs); the operator reads when its pace says. Returns the reads
    and, for each read that saw a newer epoch, that epoch and how long ago its line was printed."""
    rng = random.Random(seed)
    ends = [0.0]
    for k in range(epochs):
        ends.append(
            ends[-1] + (start if k == 0 else 0.0) + epoch_seconds * rng.uniform(1 - jitter, 1 + jitter)
        )
    pace = Pace(base)
    now, reads, seen = 0.0, 0, [(0, 0.0)]
    while now <= ends[-1]:
        at = T0 + timedelta(seconds=now)
        if pace.due(at):
            epoch = max(k for k, end in enumerate(ends) if end <= now)
            pace.read(at, epoch, T0 + timedelta(seconds=ends[epoch]))
            reads += 1
            if epoch > seen[-1][0]:
                seen.append((epoch, now - ends[epoch]))
        now += max(0.5, pace.seconds_to_next(at))
    return reads, seen


@pytest.mark.parametrize("seed", range(20))
def test_about_one_read_per_epoch_and_every_epoch_seen_soon(seed: int) -> None:
    rng = random.Random(seed)
    epoch_seconds = rng.choice([45, 90, 300, 1200])
    base = rng.choice([10, 30, 60])
    epochs = rng.randint(5, 30)
    reads, seen = simulate(epoch_seconds, epochs, base, jitter=0.05, seed=seed)
    first = seen[1][1] if seen[1][0] == 1 else float("inf")
    worst = max((delay for epoch, delay in seen if epoch > 1), default=0.0)
    figures = (reads, first, worst, epochs, epoch_seconds, base)
    # Reads that back off until the first epoch ends, then about one per epoch (a few more for
    # epochs that end late).
    assert reads <= 8 + 1.5 * epochs, figures
    # The first epoch's line is read within ten intervals (the back-off's cap); once the pace is
    # known, every epoch's within a poll interval plus a tenth of an epoch.
    assert first <= base * MAX_BACKOFF_FACTOR, figures
    assert worst <= base + 0.1 * epoch_seconds + 1, figures


@pytest.mark.parametrize("seed", range(20))
def test_a_slow_start_does_not_make_later_reads_late(seed: int) -> None:
    """The first epoch also holds the trainer's start (up to two epochs more): from the third
    newer epoch a read found on (two intervals known: the first may hold the start), each is
    read within a poll interval plus a tenth of an epoch. Averaged into the pace, a start as
    long as an epoch made reads late by up to half an epoch, for many epochs."""
    rng = random.Random(seed)
    epoch_seconds = rng.choice([45, 90, 300, 1200])
    base = rng.choice([10, 30, 60])
    epochs = rng.randint(5, 30)
    start = epoch_seconds * rng.uniform(0.5, 2.0)
    reads, seen = simulate(epoch_seconds, epochs, base, jitter=0.05, seed=seed, start=start)
    worst = max((delay for _, delay in seen[4:]), default=0.0)  # seen[0]: epoch 0 at the start
    figures = (reads, worst, seen, epoch_seconds, base, start)
    assert worst <= base + 0.1 * epoch_seconds + 1, figures
    assert reads <= 10 + 1.5 * epochs, figures


def test_without_progress_reads_slow_down_to_ten_intervals() -> None:
    pace = Pace(30)
    now = T0
    gaps = []
    for _ in range(10):
        assert pace.due(now)
        pace.read(now, None)
        gap = pace.seconds_to_next(now)
        gaps.append(gap)
        now += timedelta(seconds=gap)
    assert gaps[:5] == [30, 60, 120, 240, 300]
    assert max(gaps) == 30 * MAX_BACKOFF_FACTOR
    # Over an hour: about 13 reads instead of 120 at a fixed 30 s.
    assert sum(1 for _ in range(10)) * 300 >= 3000


def test_the_first_read_is_at_once_and_a_read_is_not_repeated_early() -> None:
    pace = Pace(30)
    assert pace.due(T0) and pace.seconds_to_next(T0) == 0
    pace.read(T0, 0)
    assert not pace.due(T0 + timedelta(seconds=10))
    assert pace.due(T0 + timedelta(seconds=30))


def test_a_known_pace_times_the_read_after_the_next_epoch() -> None:
    pace = Pace(30)
    pace.read(T0, 0)
    pace.read(T0 + timedelta(seconds=30), 0)
    pace.read(T0 + timedelta(seconds=600), 1)  # an epoch of ~600 s (seen up to 30 s late)
    assert pace.epoch_seconds() == 600
    next_read = pace.next_read()
    assert next_read is not None
    assert (next_read - T0).total_seconds() == pytest.approx(600 + 600 * 1.05)
    # The epoch is late: look again, backing off, at most an epoch apart.
    late = T0 + timedelta(seconds=1230)
    pace.read(late, 1)
    assert pace.seconds_to_next(late) == 30


def test_the_log_window_covers_the_time_since_the_last_read() -> None:
    pace = Pace(30)
    assert pace.window(T0) == 70
    pace.read(T0, 0)
    assert pace.window(T0 + timedelta(seconds=300)) == 610


def test_the_kubelets_timestamp_of_the_last_progress_line() -> None:
    text = (
        '2026-01-01T10:00:00.123456789Z FINETUNE_PROGRESS {"epoch":1,"epochs":5}\n'
        '2026-01-01T10:05:00Z FINETUNE_PROGRESS {"epoch":2,"epochs":5}\n'
        "2026-01-01T10:05:01.5Z some other line\n"
    )
    assert line_time(text) == datetime(2026, 1, 1, 10, 5, tzinfo=timezone.utc)
    first = line_time(text.splitlines()[0])
    assert first == datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert line_time('FINETUNE_PROGRESS {"epoch":1}') is None  # a log without timestamps
    assert line_time("2026-01-01T10:00:00Z nothing\n") is None


def test_a_line_time_after_the_read_is_taken_as_the_read() -> None:
    pace = Pace(30)
    pace.read(T0, 0, T0 + timedelta(seconds=5))  # a clock ahead of ours
    assert pace.latest == (0, T0)
