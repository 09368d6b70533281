"""Shared PriorityClasses: created when missing, deleted when the operator made them and
no ModelDeployment uses their tier any more (they are cluster-scoped, so no owner)."""

from __future__ import annotations

import logging
import time

from lightkube import ApiError

from modeldeploy.constants import API_VERSION, KIND, LABEL_MANAGED_BY, MANAGED_BY
from modeldeploy.context import Context
from modeldeploy.kube import error_message, is_status, kind_of
from modeldeploy.render import qos

log = logging.getLogger(__name__)
PRIORITY_CLASS = kind_of("scheduling.k8s.io/v1", "PriorityClass")
MD = kind_of(API_VERSION, KIND)
PREFIX = "modeldeploy-"
RECHECK_SECONDS = 60.0
_forbidden_logged = False


async def ensure(ctx: Context, tier: str) -> bool:
    """Create the tier's PriorityClass when missing; never touch one that exists (the
    Helm chart may own it). True when created. A tier seen recently is not asked about
    again: one GET per tier and minute, not one per reconcile."""
    seen = ctx.priority_seen.get(tier)
    if seen is not None and time.monotonic() - seen < RECHECK_SECONDS:
        return False
    if await ctx.kube.get(PRIORITY_CLASS, qos.name(tier)) is not None:
        ctx.priority_seen[tier] = time.monotonic()
        return False
    try:
        await ctx.kube.create(qos.render(tier))
    except ApiError as exc:
        if not is_status(exc, 409):
            raise
        return False
    ctx.priority_seen[tier] = time.monotonic()
    log.info("created PriorityClass %s", qos.name(tier))
    return True


async def cleanup(ctx: Context) -> list[str]:
    """Delete operator-made PriorityClasses that no ModelDeployment uses any more."""
    global _forbidden_logged
    kube = ctx.kube
    try:
        mds = await kube.list(MD, None)
    except ApiError as exc:
        if not _forbidden_logged:  # a namespaced install may not list cluster-wide
            log.info("not cleaning PriorityClasses (cannot list ModelDeployments in all "
                     "namespaces: %s)", error_message(exc))
            _forbidden_logged = True
        return []
    used = {((md.get("spec") or {}).get("qos") or {}).get("priority", "normal") for md in mds
            if not (md.get("metadata") or {}).get("deletionTimestamp")}
    deleted = []
    for pc in await kube.list(PRIORITY_CLASS, None, {LABEL_MANAGED_BY: MANAGED_BY}):
        name = pc["metadata"]["name"]
        if name.startswith(PREFIX) and name[len(PREFIX):] not in used:
            await kube.delete(PRIORITY_CLASS, name)
            ctx.priority_seen.pop(name[len(PREFIX):], None)
            deleted.append(name)
    return deleted
