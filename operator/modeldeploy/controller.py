"""Workers that drain the work queue, plus the periodic resync and the child informers.

kopf delivers the ModelDeployments' watch events (handlers.py); this module keeps the
latest body of each, queues its key, and runs reconcile() for it — one worker per key at a
time, errors retried with backoff, every key requeued each resync interval. Informers
(one per child kind and namespace) keep ctx.children current and queue the owner of
whatever changed; no reconcile runs before they have all listed once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from modeldeploy import metrics, priorityclasses
from modeldeploy.apihealth import API, unreachable
from modeldeploy.apply import PRUNABLE
from modeldeploy.config import Config
from modeldeploy.constants import LABEL_MANAGED_BY, MANAGED_BY
from modeldeploy.context import Context
from modeldeploy.informer import Informer, all_synced
from modeldeploy.kube import NotLeading, kind_of
from modeldeploy.reconcile import reconcile
from modeldeploy.workqueue import WorkQueue

log = logging.getLogger(__name__)
Key = tuple[str, str]  # namespace, name
MAX_BACKOFF = 60.0
# Watched children: every kind a ModelDeployment may own, plus its pods (for status).
WATCHED = [*PRUNABLE, kind_of("v1", "Pod")]
# cert-manager's and the Prometheus Operator's: may be absent or not allowed.
OPTIONAL_KINDS = {"Certificate", "PodMonitor"}


def needs_work(body: dict[str, Any]) -> bool:
    """A spec change the status does not describe yet (or a resource never reconciled)."""
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed != body["metadata"].get("generation")


class Controller:
    def __init__(self, ctx: Context, config: Config) -> None:
        self.ctx = ctx
        self.config = config
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.queue = WorkQueue()
        self.failures: dict[Key, int] = {}
        self.active = asyncio.Event()  # set while this replica may write (leader)
        self.synced = asyncio.Event()  # set once every informer has listed
        namespaces: list[str | None] = [None] if config.all_namespaces else \
            list(config.namespaces)
        self.informers = [
            Informer(ctx.kube, k, ns, {LABEL_MANAGED_BY: MANAGED_BY}, ctx.children,
                     lambda owner: self.poke(*owner),
                     ctx.missing_kinds if k.kind in OPTIONAL_KINDS else None)
            for k in WATCHED for ns in namespaces]
        self._tasks: list[asyncio.Task[None]] = []

    # --- fed by kopf's watch events ---
    def observe(self, body: dict[str, Any], deleted: bool = False) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if deleted:
            self.bodies.pop(key, None)
            self.failures.pop(key, None)
            metrics.MANAGED.set(len(self.bodies))
            if self.active.is_set():
                self._spawn(self._cleanup())
            return
        self.bodies[key] = body
        metrics.MANAGED.set(len(self.bodies))
        self.queue.add(key, urgent=needs_work(body))

    def poke(self, namespace: str, name: str) -> None:
        """A child changed: reconcile its owner (drift is undone within seconds)."""
        if (namespace, name) in self.bodies:
            self.queue.add((namespace, name))

    # --- lifecycle ---
    def start(self) -> None:
        for informer in self.informers:
            self._spawn(informer.run())
        self._spawn(self._wait_synced())
        for i in range(self.config.workers):
            self._spawn(self._worker(i))
        self._spawn(self._resync())
        if self.config.metrics_api_port:
            # Every replica serves it (informers run on all; reads need no lease).
            from modeldeploy import metricsapi_server

            self._spawn(metricsapi_server.serve(self, self.config.metrics_api_port,
                                                self.config.metrics_api_bind_address))

    async def _wait_synced(self) -> None:
        started = time.monotonic()
        await all_synced(self.informers)
        self.synced.set()
        log.info("watching %d child kind(s) in %d scope(s): %d children listed in %.1fs",
                 len(WATCHED), len(self.informers) // len(WATCHED), len(self.ctx.children),
                 time.monotonic() - started)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _cleanup(self) -> None:
        try:
            deleted = await priorityclasses.cleanup(self.ctx)
            if deleted:
                log.info("deleted unused PriorityClasses: %s", ", ".join(deleted))
        except Exception:  # noqa: BLE001 - best effort, retried on the next deletion
            log.exception("PriorityClass cleanup failed")

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for key in list(self.bodies):
                self.queue.add(key)
            if self.active.is_set():
                # Also here, not only on deletions: a tier still used by a resource that
                # was itself being deleted at that moment is released a little later.
                await self._cleanup()

    async def _worker(self, index: int) -> None:
        while True:
            # Wait before taking a key, so that once writing may start the queue's order
            # (urgent first) decides what runs, not which keys happened to arrive first.
            await self.active.wait()
            await self.synced.wait()
            key = await self.queue.get()
            try:
                body = self.bodies.get(key)
                if body is not None:
                    await self._reconcile(key, body)
            finally:
                self.queue.done(key)

    async def _reconcile(self, key: Key, body: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            result = await reconcile(self.ctx, body)
        except asyncio.CancelledError:
            raise
        except NotLeading:
            # Leadership lapsed mid-reconcile: run it again once leading (workers wait).
            self.queue.add(key, urgent=needs_work(body))
        except Exception as exc:  # noqa: BLE001 - one bad resource must not stop the others
            metrics.RECONCILES.labels(result="error").inc()
            n = self.failures.get(key, 0) + 1
            self.failures[key] = n
            if unreachable(exc):  # an outage, not this resource's fault: logged once
                self.queue.add_after(key, API.failed(exc, n - 1), urgent=needs_work(body))
                return
            delay = min(MAX_BACKOFF, 2.0 ** n)
            # Log the first failures and then every 10th, not every retry of a stuck one.
            if n <= 3 or n % 10 == 0:
                log.warning("reconcile of %s/%s failed (%s: %s); attempt %d, retrying in "
                            "%.0fs", key[0], key[1], type(exc).__name__, exc, n, delay)
            self.queue.add_after(key, delay)
        else:
            self.failures.pop(key, None)
            metrics.RECONCILES.labels(result="ok").inc()
            if result.writes:
                log.info("reconciled %s/%s: phase %s, %d write(s)", key[0], key[1],
                         result.phase, result.writes)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
