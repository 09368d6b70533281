"""Server-side apply of a desired set, and pruning of what is no longer wanted.

Children are found by label (managed-by + name) in the watched index (children.py) and
pruned only when this resource owns them. A child already holding everything desired
(compare.up_to_date) is not sent: that is what makes a converged resync free of writes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lightkube import ApiError

from modeldeploy.children import Key, key_of
from modeldeploy.compare import up_to_date
from modeldeploy.constants import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY
from modeldeploy.context import Context
from modeldeploy.kube import Kind, error_message, is_status, kind_of
from modeldeploy.spec import Spec

log = logging.getLogger(__name__)

# Every kind a ModelDeployment may own, listed to observe and to prune.
PRUNABLE: list[Kind] = [
    kind_of("apps/v1", "Deployment"),
    kind_of("v1", "Service"),
    kind_of("v1", "Secret"),
    kind_of("v1", "ConfigMap"),
    kind_of("v1", "PersistentVolumeClaim"),
    kind_of("networking.k8s.io/v1", "Ingress"),
    kind_of("networking.k8s.io/v1", "NetworkPolicy"),
    kind_of("autoscaling/v2", "HorizontalPodAutoscaler"),
    kind_of("policy/v1", "PodDisruptionBudget"),
    kind_of("cert-manager.io/v1", "Certificate"),
    kind_of("monitoring.coreos.com/v1", "PodMonitor"),
]

_PRUNABLE_KEYS = {(k.api_version, k.kind) for k in PRUNABLE}
Observed = dict[Key, dict[str, Any]]


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def observe(ctx: Context, spec: Spec) -> Observed:
    """The live children of one ModelDeployment, by (apiVersion, kind, name)."""
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: spec.name}
    return {key: obj for key, obj in ctx.children.of(spec.namespace, spec.name, labels).items()
            if key[:2] in _PRUNABLE_KEYS}


async def apply_set(ctx: Context, children: list[dict[str, Any]],
                    observed: Observed) -> list[str]:
    """Apply the children that differ from `observed` (updated in place); failures.

    The applies are independent, so they are sent together: one round trip of latency
    per reconcile instead of one per child."""
    async def one(child: dict[str, Any]) -> str | None:
        key = key_of(child)
        if child["kind"] in ctx.missing_kinds:
            return (f"{child['kind']} {key[2]}: the {child['apiVersion']} API is not "
                    "installed in this cluster")
        if up_to_date(child, observed.get(key)):
            return None
        try:
            observed[key] = await ctx.kube.apply(child)
        except ApiError as exc:
            if is_status(exc, 404) and child["kind"] == "Certificate":
                ctx.missing_kinds.add("Certificate")
            # One child refused (e.g. an affinity the API server rejects) must not stop
            # the others; the message goes to the Reconciled condition.
            return f"{child['kind']} {key[2]}: {error_message(exc)}"
        ctx.children.put(observed[key])  # seen before its watch event arrives
        log.info("applied %s %s/%s", child["kind"], child["metadata"]["namespace"], key[2])
        return None

    results = await asyncio.gather(*(one(c) for c in children))
    return [r for r in results if r is not None]


async def prune(ctx: Context, spec: Spec, children: list[dict[str, Any]],
                observed: Observed) -> list[Key]:
    """Delete owned children that the desired set no longer has."""
    wanted = {key_of(c) for c in children}
    pruned = []
    for key, obj in list(observed.items()):
        if key not in wanted and owned_by(obj, spec.uid):
            await ctx.kube.delete(kind_of(key[0], key[1]), key[2], spec.namespace)
            ctx.children.forget((spec.namespace, spec.name), key)
            log.info("pruned %s %s/%s (no longer wanted)", key[1], spec.namespace, key[2])
            del observed[key]
            pruned.append(key)
    return pruned
