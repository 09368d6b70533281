"""leader: client-go's Lease semantics on a fake clock and an in-memory Lease store
(the real API server and two real replicas are in tests/e2e/test_outage.py)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import httpx
import httpx2
import pytest
from lightkube import ApiError
from modeldeploy import leader
from modeldeploy.config import Config
from modeldeploy.kube import Kube, NotLeading

pytestmark = pytest.mark.unit
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
CFG = Config(operator_namespace="ops", lease_name="l", lease_seconds=15)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def conflict() -> ApiError:
    response = httpx.Response(409, json={"kind": "Status", "code": 409, "message": "conflict"},
                              request=httpx.Request("PUT", "http://x"))
    return ApiError(response=response)


class LeaseStore:
    """One Lease with optimistic concurrency; `down` makes every call fail to connect."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise httpx2.ConnectError("connection refused")

    async def get(self, kind: Any, name: str, namespace: str | None = None) -> dict | None:
        self._check()
        return copy.deepcopy(self.lease)

    def _store(self, obj: dict[str, Any]) -> dict:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.lease = obj
        return obj

    async def create(self, obj: dict[str, Any]) -> dict:
        self._check()
        if self.lease is not None:
            raise conflict()
        return self._store(obj)

    async def replace(self, obj: dict[str, Any]) -> dict:
        self._check()
        assert self.lease is not None
        if obj["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise conflict()
        return self._store(obj)


def replica(store: LeaseStore, clock: Clock, identity: str,
            monkeypatch: pytest.MonkeyPatch) -> leader.Leadership:
    ship = leader.Leadership(store, CFG, asyncio.Event(), clock=clock)  # type: ignore[arg-type]
    original = ship.try_acquire

    async def as_identity() -> bool:  # two replicas in one process: swap the identity
        monkeypatch.setattr(leader, "IDENTITY", identity)
        return await original()

    ship.try_acquire = as_identity  # type: ignore[method-assign]
    return ship


def test_one_leader_and_fenced_takeover_after_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    store, clock = LeaseStore(), Clock()
    a = replica(store, clock, "a", monkeypatch)
    b = replica(store, clock, "b", monkeypatch)

    async def main() -> None:
        await a.step()
        await b.step()
        assert a.active.is_set() and a.may_write()
        assert not b.active.is_set() and not b.may_write()
        # The holder keeps renewing: the candidate never sees the record stand still.
        for _ in range(6):
            clock.t += 5
            await a.step()
            await b.step()
        assert a.active.is_set() and not b.active.is_set()

        # Outage longer than the lease: a stops writing at the renew deadline (10 s)...
        store.down = True
        clock.t += 5
        await a.step()
        assert a.may_write()  # 5 s since the last renewal: within the deadline
        clock.t += 6
        await a.step()
        assert not a.may_write() and not a.active.is_set()
        # ...and b, which saw the record last before the outage, may take over only
        # after a whole lease duration from then: later than a's deadline.
        clock.t += 20
        await b.step()
        assert not b.active.is_set()
        store.down = False
        await b.step()
        assert b.active.is_set() and b.may_write()
        await a.step()  # the old holder's renewal loses (the record is b's now)
        assert not a.active.is_set() and not a.may_write()
        assert store.lease is not None
        assert store.lease["spec"]["holderIdentity"] == "b"
        assert store.lease["spec"]["leaseTransitions"] == 1

    asyncio.run(main())


def test_a_fresh_candidate_waits_a_whole_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    store, clock = LeaseStore(), Clock()
    a = replica(store, clock, "a", monkeypatch)

    async def main() -> None:
        await a.step()  # a leads, then dies without releasing the lease
        b = replica(store, clock, "b", monkeypatch)
        clock.t += 14
        await b.step()  # first sight of the record: timed from now, not from renewTime
        clock.t += 14
        await b.step()
        assert not b.active.is_set()
        clock.t += 2
        await b.step()
        assert b.active.is_set()

    asyncio.run(main())


def test_writes_are_fenced_but_the_lease_is_not() -> None:
    allowed = [False]
    kube = Kube(client=None, may_write=lambda: allowed[0])  # type: ignore[arg-type]
    with pytest.raises(NotLeading, match="apply of a Deployment not sent"):
        kube._write("apply", "Deployment")
    kube._write("replace", "Lease")  # how leadership is won: never fenced
    allowed[0] = True
    kube._write("apply", "Deployment")


def test_body_names_this_replica() -> None:
    cfg = Config(operator_namespace="ops", lease_name="l", lease_seconds=9)
    body = leader.lease_body(cfg, NOW, transitions=2, resource_version="7")
    assert body["metadata"] == {"name": "l", "namespace": "ops", "resourceVersion": "7"}
    assert body["spec"]["holderIdentity"] == leader.IDENTITY
    assert body["spec"]["leaseDurationSeconds"] == 9
    assert body["spec"]["leaseTransitions"] == 2
    assert body["spec"]["renewTime"] == leader._fmt(NOW)
