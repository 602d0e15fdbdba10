"""When to read a running trainer's progress: timed by the trainer's own epochs, not a fixed poll.

The trainer prints a progress line at the start and after every epoch. Reading its log every
`--progress-poll-interval` seconds costs a request per running job per interval, however long
its epochs are. Instead, once two lines with different epochs have been seen, the pace is known
(seconds per epoch) and the next read is timed for just after the next epoch should end: about
one read per epoch. The pace leaves out the first interval seen once a later one is known: a
trainer's first epoch also holds its start. The times are the kubelet's own timestamps of the
lines (the log is read with `timestamps=true`), so reads do not drift later epoch by epoch;
without them, the read's time.
A read that finds nothing new (the epoch is late, or the trainer prints nothing, as a pod that is
not our trainer) waits the poll interval, and each further one twice as long as the one before,
up to ten times the interval (and at most an epoch once the pace is known).

Where the trainer also pushes its progress to the operator (progress_push.py), each push counts
as a read, and the log is read only when the pushes stop: a whole epoch late (or ten poll
intervals without a known pace), so a lost push costs one read and a working one none.

Pure: the reconciler keeps one `Pace` per running job in memory; a restart only costs a read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from finetune_contract import PROGRESS_PREFIX

LATE_FACTOR = 1.05  # read a little after the epoch should end
PUSHED_LATE_FACTOR = 2.05  # a trainer that pushes: read its log once a whole epoch's push is missing
MAX_BACKOFF_FACTOR = 10  # reads that find nothing new slow down to 10x the poll interval


@dataclass
class Pace:
    base: float  # the poll interval (--progress-poll-interval), seconds
    last_read: datetime | None = None
    wait: float = 0.0  # the back-off after reads that found nothing new
    first: tuple[int, datetime] | None = None  # the first epoch seen, and when
    latest: tuple[int, datetime] | None = None  # the newest epoch seen, and when it was first seen
    settled: bool = False  # `first` moved past the first interval seen (it may hold the start)
    pushing: bool = False  # the trainer pushes its progress: the log is only the fallback

    def epoch_seconds(self) -> float | None:
        """Seconds per epoch, from the epochs seen so far (None until two differ)."""
        if self.first is None or self.latest is None or self.latest[0] <= self.first[0]:
            return None
        return (self.latest[1] - self.first[1]).total_seconds() / (self.latest[0] - self.first[0])

    def next_read(self) -> datetime | None:
        """When to read next (None: now, nothing read yet)."""
        if self.last_read is None:
            return None
        wait = self.wait or self.base
        pace = self.epoch_seconds()
        if self.pushing:
            wait = max(wait, self.base * MAX_BACKOFF_FACTOR)
        if pace is not None and self.latest is not None:
            late = PUSHED_LATE_FACTOR if self.pushing else LATE_FACTOR
            expected = self.latest[1] + timedelta(seconds=pace * late)
            if expected > self.last_read:
                return max(expected, self.last_read + timedelta(seconds=self.base))
            wait = min(wait, max(self.base, pace))  # late: look again, at most an epoch apart
        return self.last_read + timedelta(seconds=wait)

    def due(self, now: datetime) -> bool:
        when = self.next_read()
        return when is None or now >= when - timedelta(seconds=self.base * 0.1)

    def seconds_to_next(self, now: datetime) -> float:
        when = self.next_read()
        return 0.0 if when is None else max(0.0, (when - now).total_seconds())

    def window(self, now: datetime) -> int:
        """Seconds of log to read: what was written since about the last read."""
        since = self.base if self.last_read is None else (now - self.last_read).total_seconds()
        return int(since * 2) + 10

    def read(self, now: datetime, epoch: int | None, written: datetime | None = None) -> bool:
        """A read at `now` found the trainer at `epoch` (None: no progress line), a line
        `written` then (None: unknown, taken as `now`). True if that is news."""
        self.last_read = now
        if epoch is not None and (self.latest is None or epoch > self.latest[0]):
            self._seen(epoch, min(written, now) if written is not None else now)
            return True
        self.wait = min(self.base * MAX_BACKOFF_FACTOR, self.wait * 2) if self.wait else self.base
        return False

    def pushed(self, at: datetime, epoch: int) -> bool:
        """The trainer pushed `epoch` at `at`: as good as a read then. True if that is news."""
        self.pushing = True
        if self.latest is not None and epoch <= self.latest[0]:
            return False
        self.last_read = at if self.last_read is None else max(self.last_read, at)
        self._seen(epoch, at)
        return True

    def _seen(self, epoch: int, at: datetime) -> None:
        if self.first is None:
            self.first = (epoch, at)
        elif not self.settled and self.latest is not None and self.latest[0] > self.first[0]:
            # A third epoch: measure from the second. The first interval seen may hold the
            # trainer's start (the line at epoch 0 comes before the model and the data are
            # loaded), and averaged in it would time every later read late.
            self.first, self.settled = self.latest, True
        self.latest = (epoch, at)
        self.wait = 0.0


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z ")


def line_time(text: str) -> datetime | None:
    """The kubelet's timestamp of the last progress line of a log read with timestamps
    (`2026-01-01T10:00:00.123456789Z FINETUNE_PROGRESS {...}`); None without one."""
    for line in reversed(text.splitlines()):
        if PROGRESS_PREFIX not in line:
            continue
        match = _STAMP.match(line)
        if match is None:
            return None
        fraction = (match[2] or "0")[:6].ljust(6, "0")
        stamp = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        return stamp + timedelta(microseconds=int(fraction))
    return None
