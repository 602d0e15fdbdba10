"""A keyed, delaying work queue (the controller-runtime pattern) on asyncio, and the per-key
exponential back-off for keys whose processing fails.

A key is processed by one worker at a time; adding a key that is already waiting keeps the
earlier due time; adding a key while it is being processed runs it again afterwards. This is
what serialises the reconciles of one job while different jobs proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: dict[Hashable, float] = {}
        self._active: set[Hashable] = set()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Process ``key`` after ``delay`` seconds (or sooner, if it is already due sooner)."""
        due = self._clock() + max(0.0, delay)
        if key not in self._due or due < self._due[key]:
            self._due[key] = due
            self._changed.set()

    def discard(self, key: Hashable) -> None:
        self._due.pop(key, None)

    async def get(self) -> Hashable:
        """Wait for the next due key that no other worker holds; call done(key) after."""
        while True:
            now = self._clock()
            waiting = [(due, key) for key, due in self._due.items() if key not in self._active]
            ready = [item for item in waiting if item[0] <= now]
            if ready:
                _, key = min(ready, key=lambda item: item[0])
                del self._due[key]
                self._active.add(key)
                return key
            timeout = min(due for due, _ in waiting) - now if waiting else None
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        self._changed.set()  # a key added while it was active may now be taken


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
