"""controller: one reconcile per key at a time, errors retried, deletions forgotten."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modeldeploy import controller as controller_mod
from modeldeploy.config import Config
from modeldeploy.reconcile import Result

pytestmark = pytest.mark.unit


def body(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": name}}


def test_serialised_per_key_retried_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    active: set[str] = set()
    overlaps: list[str] = []
    failures = {"bad": 1}

    async def fake_reconcile(ctx: Any, b: dict[str, Any]) -> Result:
        name = b["metadata"]["name"]
        if name in active:
            overlaps.append(name)
        active.add(name)
        calls.append(name)
        await asyncio.sleep(0.01)
        active.discard(name)
        if failures.get(name):
            failures[name] -= 1
            raise RuntimeError("transient")
        return Result()

    monkeypatch.setattr(controller_mod, "reconcile", fake_reconcile)
    monkeypatch.setattr(controller_mod, "MAX_BACKOFF", 0.05)

    async def main() -> None:
        c = controller_mod.Controller(ctx=None, config=Config(workers=3,  # type: ignore[arg-type]
                                                              resync_seconds=3600))
        c.active.set()
        c.start()
        for _ in range(5):  # a burst of events for one key
            c.observe(body("a"))
        c.observe(body("bad"))
        await asyncio.sleep(0.3)
        c.observe(body("a"), deleted=True)
        c.poke("ns", "a")  # no longer known: ignored
        await asyncio.sleep(0.05)
        await c.stop()

    asyncio.run(main())
    assert overlaps == []
    assert 1 <= calls.count("a") <= 2  # the burst collapsed
    assert calls.count("bad") == 2  # failed once, retried after backoff


def test_changed_specs_first_after_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued before the informers synced (a restart): the resources whose status does not
    describe their generation run before the converged ones, whatever the arrival order."""
    calls: list[str] = []

    async def fake_reconcile(ctx: Any, b: dict[str, Any]) -> Result:
        calls.append(b["metadata"]["name"])
        return Result()

    monkeypatch.setattr(controller_mod, "reconcile", fake_reconcile)

    def versioned(name: str, generation: int, observed: int | None) -> dict[str, Any]:
        b = body(name)
        b["metadata"]["generation"] = generation
        if observed is not None:
            b["status"] = {"observedGeneration": observed}
        return b

    async def main() -> None:
        c = controller_mod.Controller(ctx=None, config=Config(workers=1,  # type: ignore[arg-type]
                                                              resync_seconds=3600))
        c.start()
        for i in range(5):
            c.observe(versioned(f"done{i}", 2, 2))
        c.observe(versioned("changed", 3, 2))
        c.observe(versioned("new", 1, None))
        c.active.set()
        c.synced.set()
        await asyncio.sleep(0.1)
        await c.stop()

    asyncio.run(main())
    assert calls[:2] == ["changed", "new"] and len(calls) == 7, calls
