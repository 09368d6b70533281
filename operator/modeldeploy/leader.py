"""Leader election on a coordination.k8s.io Lease, for running several replicas.

The semantics are client-go's:
- a candidate takes the lease only when its record has not changed for a whole
  `leaseDurationSeconds`, timed on the candidate's own clock from when it saw the record
  (no trust in other machines' clocks);
- the holder renews every lease/3 and may write only while its last successful renewal,
  timed from when that request was sent, is younger than the renew deadline (2/3 of the
  lease). Every write is fenced on that (`Kube.may_write`), so a leader cut off from the
  API server stops writing before any other replica may take over, even mid-reconcile.

A replica that loses the lease stays alive as a candidate and campaigns again: an outage
of the API server never makes the operator exit. Renewals are writes, so the zero-write
resync guarantee holds per ModelDeployment, not for the Lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from lightkube import ApiError

from modeldeploy import metrics
from modeldeploy.apihealth import API
from modeldeploy.config import Config
from modeldeploy.kube import Kube, is_status, kind_of

log = logging.getLogger(__name__)
LEASE = kind_of("coordination.k8s.io/v1", "Lease")
IDENTITY = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
RENEW_DEADLINE_FRACTION = 2 / 3  # client-go's defaults: lease 15 s, renew deadline 10 s


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(config: Config, now: dt.datetime, acquired: str | None = None,
               transitions: int = 0, resource_version: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": config.lease_name, "namespace": config.operator_namespace}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
        "spec": {"holderIdentity": IDENTITY,
                 "leaseDurationSeconds": int(config.lease_seconds),
                 "acquireTime": acquired or _fmt(now), "renewTime": _fmt(now),
                 "leaseTransitions": transitions},
    }


class Leadership:
    def __init__(self, kube: Kube, config: Config, active: asyncio.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.config = config
        self.active = active  # the controller's: set while this replica leads
        self._clock = clock
        self.renew_deadline = config.lease_seconds * RENEW_DEADLINE_FRACTION
        self.renewed_at: float | None = None  # when the last successful renewal was sent
        self._record: tuple[Any, ...] | None = None  # the lease record last seen
        self._record_seen_at = 0.0  # and when it was first seen unchanged
        self._task: asyncio.Task[None] | None = None

    def may_write(self) -> bool:
        """The write fence: true only within the renew deadline of the last renewal."""
        return self.renewed_at is not None and \
            self._clock() - self.renewed_at < self.renew_deadline

    def expired(self, lease: dict[str, Any]) -> bool:
        """Whether another holder's record has stood still for a whole lease duration."""
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        record = (spec.get("holderIdentity"), spec.get("renewTime"),
                  lease.get("metadata", {}).get("resourceVersion"))
        now = self._clock()
        if record != self._record:
            self._record, self._record_seen_at = record, now
        return now - self._record_seen_at > float(spec.get("leaseDurationSeconds") or 15)

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when this replica holds it."""
        cfg = self.config
        lease = await self.kube.get(LEASE, cfg.lease_name, cfg.operator_namespace)
        now = dt.datetime.now(dt.UTC)
        try:
            if lease is None:
                await self.kube.create(lease_body(cfg, now))
                return True
            spec = lease.get("spec") or {}
            mine = spec.get("holderIdentity") == IDENTITY
            if not mine and not self.expired(lease):
                return False
            await self.kube.replace(lease_body(  # optimistic: 409 if someone else wrote
                cfg, now, acquired=spec.get("acquireTime") if mine else None,
                transitions=int(spec.get("leaseTransitions") or 0) + (0 if mine else 1),
                resource_version=lease["metadata"]["resourceVersion"]))
            return True
        except ApiError as exc:
            if is_status(exc, 409):
                return False
            raise

    async def step(self) -> None:
        """One renewal round: renew (or campaign), then lead or step down."""
        sent = self._clock()
        period = self.config.lease_seconds / 3
        try:
            held = await asyncio.wait_for(self.try_acquire(), timeout=period)
        except Exception as exc:  # noqa: BLE001 - unreachable or refused: not renewed
            API.failed(exc, 0)
            if not isinstance(exc, TimeoutError):
                log.debug("lease renewal failed: %s", exc)
            held = None  # unknown: still leading until the deadline passes
        else:
            API.succeeded()
        if held:
            self.renewed_at = sent
            if not self.active.is_set():
                log.info("became leader (%s)", IDENTITY)
                self.active.set()
                metrics.LEADER.set(1)
        elif held is False:
            self.renewed_at = None  # another replica holds it: stop at once
        if self.active.is_set() and not self.may_write():
            log.warning("stopped leading (%s): lease not renewed within %.0fs; writes "
                        "are fenced until it is won again", IDENTITY, self.renew_deadline)
            self.active.clear()
            metrics.LEADER.set(0)

    async def _run(self) -> None:
        period = max(1.0, self.config.lease_seconds / 3)
        while True:
            started = self._clock()
            await self.step()
            await asyncio.sleep(max(0.0, period - (self._clock() - started)))

    def start(self) -> None:
        metrics.LEADER.set(0)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
