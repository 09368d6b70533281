"""List-then-watch of one child kind, feeding the Children index (children.py).

The loop is the one client-go's informers run: list (its resourceVersion), watch from
there, and on any error list again, for as long as it takes (apihealth.py). The fresh
listing replaces what was held, so a deletion missed while the watch was down is not
remembered forever. Every change pokes the owner's reconcile (drift is undone within
seconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modeldeploy.apihealth import API, unreachable
from modeldeploy.children import Children, Owner
from modeldeploy.kube import Kind, Kube, error_message, is_status

log = logging.getLogger(__name__)
# How often an optional API found absent is asked about again.
ABSENT_RECHECK_SECONDS = 60.0


class Informer:
    def __init__(self, kube: Kube, kind: Kind, namespace: str | None, labels: dict[str, str],
                 children: Children, poke: Callable[[Owner], None],
                 missing_kinds: set[str] | None = None) -> None:
        self.kube = kube
        self.kind = kind
        self.namespace = namespace  # None: every namespace
        self.labels = labels
        self.children = children
        self.poke = poke
        self.synced = asyncio.Event()  # set after the first listing (or when the API is absent)
        # Optional APIs (cert-manager's Certificate, the PodMonitor) found absent or not
        # allowed are added here, the set reconcile consults before rendering or applying
        # that kind; removed again once a listing succeeds.
        self.missing_kinds = missing_kinds

    def __repr__(self) -> str:
        return f"{self.kind.kind} in {self.namespace or 'all namespaces'}"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                failures = 0
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: list again after a pause
                if self._absent(exc):
                    # Installed later (cert-manager, the Prometheus Operator) is noticed
                    # without a restart; the resync then reconciles every resource.
                    await asyncio.sleep(ABSENT_RECHECK_SECONDS)
                    continue
                if is_status(exc, 410):  # history compacted: a normal re-list, at once
                    continue
                delay = API.failed(exc, failures)  # logs an outage once per step
                failures += 1
                if not unreachable(exc):
                    log.warning("watch of %s failed (%s); listing again in %ss", self,
                                error_message(exc), delay)
                await asyncio.sleep(delay)

    def _absent(self, exc: Exception) -> bool:
        """An optional API (cert-manager's Certificate) that is not installed, or that the
        operator may not read: nothing of that kind can exist or be pruned."""
        if self.missing_kinds is None or not is_status(exc, 403, 404):
            return False
        if self.kind.kind not in self.missing_kinds or not self.synced.is_set():
            log.info("not watching %s: %s; checking again every %.0fs", self,
                     error_message(exc), ABSENT_RECHECK_SECONDS)
        self.missing_kinds.add(self.kind.kind)
        self.synced.set()
        return True

    async def _list(self) -> str:
        objs, version = await self.kube.list_versioned(self.kind, self.namespace, self.labels)
        API.succeeded()
        if self.missing_kinds is not None and self.kind.kind in self.missing_kinds:
            self.missing_kinds.discard(self.kind.kind)
            if self.synced.is_set():  # not news at start: PodMonitor is presumed absent
                log.info("watching %s: its API is served now", self)
        for owner in self.children.replace(self.kind.api_version, self.kind.kind,
                                           self.namespace, objs):
            self.poke(owner)
        self.synced.set()
        return version

    async def _watch(self, version: str) -> None:
        async for event, obj in self.kube.watch(self.kind, self.namespace, self.labels,
                                                version):
            owner = self.children.remove(obj) if event == "DELETED" else self.children.put(obj)
            if owner is not None:
                self.poke(owner)


async def all_synced(informers: list[Informer]) -> None:
    await asyncio.gather(*(i.synced.wait() for i in informers))
