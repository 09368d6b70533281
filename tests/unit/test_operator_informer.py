"""The informer loop against a scripted client: list, watch, list again after a failure.

The e2e tests prove drift repair and restarts through real watches; this pins what they
cannot force: a watch that breaks while a child is deleted, and an API that is absent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
from modeldeploy import apihealth, informer
from modeldeploy.children import Children
from modeldeploy.constants import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY
from modeldeploy.informer import Informer
from modeldeploy.kube import Kind, kind_of

pytestmark = pytest.mark.unit
SERVICE = kind_of("v1", "Service")
CERTIFICATE = kind_of("cert-manager.io/v1", "Certificate")


def svc(name: str, rv: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv),
                         "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: name}}}


def cert(name: str, rv: int) -> dict[str, Any]:
    return {**svc(name, rv), "apiVersion": "cert-manager.io/v1", "kind": "Certificate"}


def http_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://api/x")
    return httpx.HTTPStatusError("x", request=request,
                                 response=httpx.Response(code, request=request))


class ScriptedKube:
    """Each list returns the next listing; each watch yields its events, then fails."""

    def __init__(self, listings: list[Any], watches: list[list[tuple[str, dict]]]) -> None:
        self.listings = listings
        self.watches = watches
        self.lists = 0

    async def list_versioned(self, k: Kind, namespace: str | None,
                             labels: dict[str, str]) -> tuple[list[dict], str]:
        listing = self.listings[min(self.lists, len(self.listings) - 1)]
        self.lists += 1
        if isinstance(listing, Exception):
            raise listing
        return listing, "100"

    async def watch(self, k: Kind, namespace: str | None, labels: dict[str, str],
                    resource_version: str) -> AsyncIterator[tuple[str, dict]]:
        events = self.watches.pop(0) if self.watches else []
        for event in events:
            yield event
        if not self.watches and self.lists >= len(self.listings):
            await asyncio.Event().wait()  # the script is over: a quiet, open watch
        raise http_error(410)  # history compacted: list again


async def run_until(inf: Informer, done: Any, timeout: float = 5.0) -> None:
    task = asyncio.create_task(inf.run())
    deadline = asyncio.get_running_loop().time() + timeout
    while not done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_watch_events_then_a_relist_that_drops_what_vanished() -> None:
    # b is deleted while the watch is broken: only the second listing can tell
    kube = ScriptedKube(listings=[[svc("a", 1), svc("b", 2)], [svc("a", 5)]],
                        watches=[[("MODIFIED", svc("a", 5))], []])
    children, poked = Children(), []
    inf = Informer(kube, SERVICE, "ns", {}, children, poked.append)  # type: ignore[arg-type]

    async def main() -> None:
        await run_until(inf, lambda: kube.lists >= 2 and ("ns", "b") in poked[2:])
    asyncio.run(main())
    assert inf.synced.is_set()
    assert kube.lists == 2
    assert children.of("ns", "b", {}) == {}
    assert set(children.of("ns", "a", {})) == {("v1", "Service", "a")}
    # the first listing (both owners), the watched change of a, then the relisting's
    # removal of b; the unchanged a is not poked again
    assert sorted(poked[:2]) == [("ns", "a"), ("ns", "b")]
    assert poked[2:] == [("ns", "a"), ("ns", "b")]


def test_deleted_event_removes_and_pokes() -> None:
    kube = ScriptedKube(listings=[[svc("a", 1)]], watches=[[("DELETED", svc("a", 2))]])
    children, poked = Children(), []
    inf = Informer(kube, SERVICE, "ns", {}, children, poked.append)  # type: ignore[arg-type]
    asyncio.run(run_until(inf, lambda: len(poked) >= 2))
    assert poked == [("ns", "a"), ("ns", "a")]
    assert len(children) == 0


def test_an_absent_optional_api_is_recorded_and_asked_about_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer, "ABSENT_RECHECK_SECONDS", 0.05)
    # absent at start, then installed (the Prometheus Operator's CRDs, cert-manager)
    kube = ScriptedKube(listings=[http_error(404), http_error(404), [cert("c", 1)]],
                        watches=[])
    missing: set[str] = set()
    children = Children()
    inf = Informer(kube, CERTIFICATE, None, {}, children, lambda _: None,  # type: ignore[arg-type]
                   missing_kinds=missing)

    async def main() -> None:
        task = asyncio.create_task(inf.run())
        while not inf.synced.is_set():
            await asyncio.sleep(0.001)
        # synced at once (reconciles need not wait for an API that is not there)
        assert missing == {"Certificate"} and kube.lists == 1
        while len(children) == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(asyncio.wait_for(main(), 5))
    assert missing == set() and kube.lists == 3


def test_a_required_api_failing_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apihealth, "BACKOFF_SECONDS", (0.01,))
    kube = ScriptedKube(listings=[http_error(403), [svc("a", 1)]], watches=[])
    children = Children()
    inf = Informer(kube, SERVICE, "ns", {}, children, lambda _: None)  # type: ignore[arg-type]
    asyncio.run(run_until(inf, lambda: len(children) == 1))
    assert kube.lists == 2 and inf.synced.is_set()


def test_an_unreachable_api_is_retried_for_as_long_as_it_takes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apihealth, "BACKOFF_SECONDS", (0.001, 0.002))
    refused = [httpx2.ConnectError("connection refused") for _ in range(40)]
    kube = ScriptedKube(listings=[*refused, [svc("a", 1)]], watches=[])
    children = Children()
    inf = Informer(kube, SERVICE, "ns", {}, children, lambda _: None)  # type: ignore[arg-type]
    asyncio.run(run_until(inf, lambda: len(children) == 1))
    assert kube.lists == 41 and inf.synced.is_set()
