"""workqueue: one worker per key, re-run when dirtied while active."""

from __future__ import annotations

import asyncio

import pytest
from modeldeploy.workqueue import WorkQueue

pytestmark = pytest.mark.unit


def test_dedupe_and_dirty_requeue() -> None:
    async def main() -> list[str]:
        q = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert len(q) == 2
        seen = [await q.get()]
        q.add("a")  # while active: marked dirty, not queued twice
        assert len(q) == 1
        q.done("a")
        seen += [await q.get(), await q.get()]
        assert len(q) == 0
        return seen

    assert asyncio.run(main()) == ["a", "b", "a"]


def test_add_after() -> None:
    async def main() -> str:
        q = WorkQueue()
        q.add_after("x", 0.01)
        return str(await asyncio.wait_for(q.get(), 1))

    assert asyncio.run(main()) == "x"


def test_urgent_keys_first_and_promoted() -> None:
    async def main() -> list[str]:
        q = WorkQueue()
        for key in ("n1", "n2", "n3"):
            q.add(key)
        q.add("u1", urgent=True)
        q.add("n3", urgent=True)  # queued as normal, now urgent: moves up, not duplicated
        q.add("u1")  # normal add of an urgent key: stays urgent
        assert len(q) == 4
        return [str(await q.get()) for _ in range(4)]

    assert asyncio.run(main()) == ["u1", "n3", "n1", "n2"]


def test_dirty_keeps_the_strongest_priority() -> None:
    async def main() -> list[str]:
        q = WorkQueue()
        q.add("a")
        q.add("b")
        assert await q.get() == "a"
        q.add("a", urgent=True)  # while active
        q.add("a")
        q.done("a")  # re-queued as urgent: ahead of b
        return [str(await q.get()), str(await q.get())]

    assert asyncio.run(main()) == ["a", "b"]
