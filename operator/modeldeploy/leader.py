"""Leader election on a coordination.k8s.io Lease, for running several replicas.

Only the holder reconciles (the controller's `active` flag). A replica that loses the
lease exits, so a stale leader can never keep writing; its Deployment restarts it.
Note: renewals are writes, so the zero-write resync guarantee holds per ModelDeployment,
not for the Lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import uuid
from typing import Any

from lightkube import ApiError

from modeldeploy.config import Config
from modeldeploy.kube import Kube, is_status, kind_of

log = logging.getLogger(__name__)
LEASE = kind_of("coordination.k8s.io/v1", "Lease")
IDENTITY = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
_task: asyncio.Task[None] | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def expired(lease: dict[str, Any], now: dt.datetime) -> bool:
    spec = lease.get("spec") or {}
    renew = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    if renew is None or not spec.get("holderIdentity"):
        return True
    return now - renew > dt.timedelta(seconds=spec.get("leaseDurationSeconds") or 15)


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


async def try_acquire(kube: Kube, config: Config) -> bool:
    now = _now()
    lease = await kube.get(LEASE, config.lease_name, config.operator_namespace)
    if lease is None:
        try:
            await kube.create(lease_body(config, now))
            return True
        except ApiError as exc:
            if is_status(exc, 409):
                return False
            raise
    spec = lease.get("spec") or {}
    mine = spec.get("holderIdentity") == IDENTITY
    if not mine and not expired(lease, now):
        return False
    body = lease_body(
        config, now, acquired=spec.get("acquireTime") if mine else None,
        transitions=int(spec.get("leaseTransitions") or 0) + (0 if mine else 1),
        resource_version=lease["metadata"]["resourceVersion"])
    try:
        await kube.replace(body)  # optimistic: fails with 409 if someone else renewed
    except ApiError as exc:
        if is_status(exc, 409):
            return False
        raise
    return True


async def _run(kube: Kube, config: Config, active: asyncio.Event) -> None:
    period = max(1.0, config.lease_seconds / 3)
    while True:
        try:
            ok = await try_acquire(kube, config)
        except Exception as exc:  # noqa: BLE001 - treat an unreachable API as not renewed
            log.warning("lease renewal failed: %s", exc)
            ok = False
        if ok and not active.is_set():
            log.info("became leader (%s)", IDENTITY)
            active.set()
        elif not ok and active.is_set():
            log.error("lost the leader lease; exiting so a stale leader never writes")
            os._exit(1)
        await asyncio.sleep(period)


def start(kube: Kube, config: Config, active: asyncio.Event) -> None:
    global _task
    _task = asyncio.get_running_loop().create_task(_run(kube, config, active))


async def stop() -> None:
    if _task is not None:
        _task.cancel()
        await asyncio.gather(_task, return_exceptions=True)
