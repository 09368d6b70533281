"""A controller-style work queue: each key is reconciled by one worker at a time, and a
key added while it is being reconciled runs once more afterwards (nothing is lost).

Urgent keys (a spec change not reconciled yet) are served before the others, so after a
restart the resources that need work are not stuck behind the no-op resync of the
converged ones. A key queued as normal and added again as urgent moves up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable


class WorkQueue:
    def __init__(self) -> None:
        self._urgent: deque[Hashable] = deque()
        self._normal: deque[Hashable] = deque()
        self._available = asyncio.Semaphore(0)  # one permit per queued key
        self._queued: dict[Hashable, bool] = {}  # key -> urgent
        self._active: set[Hashable] = set()
        self._dirty: dict[Hashable, bool] = {}  # added while active -> urgent

    def add(self, key: Hashable, urgent: bool = False) -> None:
        if key in self._active:
            self._dirty[key] = self._dirty.get(key, False) or urgent
        elif key in self._queued:
            if urgent and not self._queued[key]:
                self._normal.remove(key)
                self._urgent.append(key)
                self._queued[key] = True
        else:
            self._queued[key] = urgent
            (self._urgent if urgent else self._normal).append(key)
            self._available.release()

    def add_after(self, key: Hashable, delay: float, urgent: bool = False) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key, urgent)

    async def get(self) -> Hashable:
        await self._available.acquire()
        key = self._urgent.popleft() if self._urgent else self._normal.popleft()
        del self._queued[key]
        self._active.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self.add(key, self._dirty.pop(key))

    def __len__(self) -> int:
        return len(self._queued)
