"""A keyed, delaying work queue (the controller-runtime pattern) on asyncio.

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
