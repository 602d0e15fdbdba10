"""A keyed, delaying work queue (the controller-runtime pattern) on asyncio, and the per-key
exponential back-off for keys whose processing fails.

A key is processed by one worker at a time; adding a key that is already waiting keeps the
earlier due time; adding a key while it is being processed runs it again afterwards. This is
what serialises the reconciles of one job while different jobs proceed in parallel.

Of the keys that are due, the most urgent goes first (`priority`: 0 for a change a watch event
reported, such as a new job or a finished pod; higher for a timed look such as a progress read),
then the one due longest: a backlog of timed looks never delays new work.

New work comes in bursts (a thousand jobs applied at once, a node's pods all ending). While one
lasts (two urgent adds less than `quiet` seconds apart), the other priorities run on at most
`share` workers at a time: their passes write statuses and Events, whose requests would
otherwise compete with the burst's own at the API server. Keys of priority `hold_from` or
higher (timed looks: progress reads, deadlines, retries) wait the burst out, at most `hold`
seconds past their due time: a burst of new jobs is never slowed by progress work. They are
never starved, only slowed, and take every worker again once the burst is over.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import time
from collections.abc import Callable, Hashable

URGENT = 0  # the priority of new work


class WorkQueue:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        quiet: float = 0.5,
        share: int = 1,
        hold_from: int | None = None,
        hold: float = 0.0,
    ) -> None:
        self._clock = clock
        self.quiet = quiet
        self.share = max(1, share)
        self.hold_from = hold_from
        self.hold = hold
        self._due: dict[Hashable, float] = {}
        self._priority: dict[Hashable, int] = {}
        self._active: dict[Hashable, int] = {}  # held key -> the priority it was taken at
        self._active_later = 0  # held keys that were not urgent
        # The last two urgent adds: floats, so that `in_burst` may be read from other threads.
        self._urgent_last = self._urgent_prev = -float("inf")
        # Two heaps, so that taking a key costs O(log n) with thousands of running jobs each
        # holding a timed look (a scan of every key per take made a burst quadratic). Entries
        # are never removed in place: one whose due time or priority no longer matches the
        # key's is skipped when it comes up.
        self._timers: list[tuple[float, int, Hashable]] = []  # (due, seq, key)
        self._ready: list[tuple[int, float, int, Hashable]] = []  # (priority, due, seq, key)
        self._seq = itertools.count()
        self._waiting: collections.Counter[int] = collections.Counter()  # keys per priority
        # Waiting workers, first come first woken. A change wakes one of them, and a worker that
        # takes a key wakes the next (more may be due): waking every worker on every add (an
        # asyncio.Event) cost 16 wake-ups per watch event in a burst, most of them finding nothing.
        self._sleepers: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._due)

    def waiting(self, priority: int) -> int:
        """How many keys of `priority` wait (due or not), held ones aside."""
        return self._waiting[priority]

    def _set_priority(self, key: Hashable, priority: int | None) -> None:
        old = self._priority.pop(key, None)
        if old is not None:
            self._waiting[old] -= 1
        if priority is not None:
            self._priority[key] = priority
            self._waiting[priority] += 1

    def add(self, key: Hashable, delay: float = 0.0, priority: int = 0) -> None:
        """Process ``key`` after ``delay`` seconds (or sooner, if it is already due sooner), with
        the more urgent (lower) of its priorities."""
        now = self._clock()
        if priority <= URGENT:
            self._urgent_prev, self._urgent_last = self._urgent_last, now
        due = now + max(0.0, delay)
        old_due, old_priority = self._due.get(key), self._priority.get(key)
        if old_due is None or due < old_due:
            self._due[key] = due
        if old_priority is None or priority < old_priority:
            self._set_priority(key, priority)
        if (self._due[key], self._priority[key]) != (old_due, old_priority):
            self._push(key)
            self._wake()

    def in_burst(self) -> bool:
        """Whether new work is arriving in a burst: the last two urgent adds were less than
        `quiet` seconds apart, the later one less than `quiet` seconds ago."""
        return self._clock() - self._urgent_prev < self.quiet

    def discard(self, key: Hashable) -> None:
        self._due.pop(key, None)
        self._set_priority(key, None)

    def _push(self, key: Hashable) -> None:
        heapq.heappush(self._timers, (self._due[key], next(self._seq), key))

    def take(self) -> Hashable | None:
        """The next due key that no worker holds (now held), or None."""
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            due, seq, key = heapq.heappop(self._timers)
            if self._due.get(key) == due and key not in self._active:
                heapq.heappush(self._ready, (self._priority[key], due, seq, key))
        while self._ready:
            priority, due, seq, key = self._ready[0]
            if self._due.get(key) != due or self._priority.get(key) != priority or key in self._active:
                heapq.heappop(self._ready)
                continue  # superseded, taken, or held (done() puts a held key back)
            if priority > URGENT and self.in_burst():
                if self._active_later >= self.share:
                    return None  # the most urgent is not new work, and a burst is on: later
                if self._held(priority, due, now):
                    # The longest due of the most urgent priority left waits the burst out: so
                    # does every other (the heap orders them after it).
                    return None
            heapq.heappop(self._ready)
            del self._due[key]
            self._set_priority(key, None)
            self._active[key] = priority
            self._active_later += priority > URGENT
            return key
        return None

    def _held(self, priority: int, due: float, now: float) -> bool:
        return self.hold_from is not None and priority >= self.hold_from and now - due < self.hold

    async def get(self) -> Hashable:
        """Wait for the next due key that no other worker holds; call done(key) after."""
        loop = asyncio.get_running_loop()
        while True:
            key = self.take()
            if key is not None:
                self._wake()  # another key may be due: the next waiting worker looks
                return key
            now = self._clock()
            timeout = max(0.0, self._timers[0][0] - now) if self._timers else None
            if self._ready and self.in_burst():
                # Held back by the burst: look again when it may have ended (a held key's hold
                # ends at most `quiet` before that look).
                end = max(0.0, self._urgent_prev + self.quiet - now)
                timeout = end if timeout is None else min(timeout, end)
            waiter: asyncio.Future[None] = loop.create_future()
            self._sleepers.append(waiter)
            timer = None if timeout is None else loop.call_later(timeout, _release, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()

    def _wake(self) -> None:
        """Wake the worker that has waited longest (those woken by their timers are skipped)."""
        while self._sleepers:
            waiter = self._sleepers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def done(self, key: Hashable) -> None:
        priority = self._active.pop(key, None)
        self._active_later -= priority is not None and priority > URGENT
        if key in self._due:  # added while it was held: it may be taken now
            self._push(key)
        self._wake()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ExponentialBackoff:
    """Per-key exponential back-off for keys whose processing fails (client-go's
    ItemExponentialFailureRateLimiter): the n-th failure in a row waits base * 2^(n-1) seconds,
    at most `maximum`; a success forgets the key."""

    def __init__(self, base: float = 1.0, maximum: float = 300.0) -> None:
        self.base = base
        self.maximum = maximum
        self._failures: dict[Hashable, int] = {}

    def failed(self, key: Hashable) -> tuple[int, float]:
        """Count a failure of `key`; returns (failures in a row, seconds to wait)."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        return n, min(self.maximum, self.base * 2 ** min(n - 1, 62))

    def forget(self, key: Hashable) -> bool:
        """A success (or the key is gone): start again from `base`. True if it had failed."""
        return self._failures.pop(key, None) is not None

    def failing(self) -> int:
        """How many keys failed last time."""
        return len(self._failures)
