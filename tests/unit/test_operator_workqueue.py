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
