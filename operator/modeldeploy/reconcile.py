"""One level-based reconcile: spec → desired children → apply what differs → prune → status.

The same call creates, updates, fixes drift and resumes after a restart. It writes only
what differs from the live objects, so a resync of a converged resource sends no write.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError

from modeldeploy import apply, events, inputs, priorityclasses, status, tierpolicy
from modeldeploy.apply import PRUNABLE
from modeldeploy.compare import stamp
from modeldeploy.constants import API_VERSION, KIND
from modeldeploy.context import Context, now_utc, rfc3339
from modeldeploy.kube import WRITES, error_message, kind_of
from modeldeploy.render import desired, qos
from modeldeploy.render.meta import selector_labels
from modeldeploy.spec import Spec, parse

log = logging.getLogger(__name__)
MD = kind_of(API_VERSION, KIND)

# PRUNABLE is re-exported: the chart's RBAC test reads it from here.
__all__ = ["PRUNABLE", "Context", "Result", "reconcile"]


@dataclass
class Result:
    writes: int = 0
    phase: str = ""
    problems: list[status.Cond] = field(default_factory=list)


async def reconcile(ctx: Context, body: dict[str, Any]) -> Result:
    meta = body["metadata"]
    result = Result()
    if meta.get("deletionTimestamp"):
        return result  # owner references let the garbage collector remove the children
    spec = parse(meta["name"], meta["namespace"], meta["uid"], body.get("spec") or {})
    writes: list[str] = []
    token = WRITES.set(writes)  # counts this reconcile's own writes
    try:
        await _reconcile(ctx, body, spec, now_utc(), result)
    finally:
        WRITES.reset(token)
    result.writes = len(writes)
    return result


async def _reconcile(ctx: Context, body: dict[str, Any], spec: Spec, now: dt.datetime,
                     result: Result) -> None:
    problems: list[status.Cond] = []
    observed = apply.observe(ctx, spec)
    facts = await inputs.gather(ctx, spec, now, problems, observed)
    children = [stamp(c) for c in desired(spec, facts)]
    refused = tierpolicy.refusal(spec.qos.priority, spec.namespace,
                                 ctx.priority_tier_namespaces)
    if refused:
        # No pod may run at a tier its namespace may not use, also one made before the
        # rule was set: the pod-making children are pruned, the rest stays.
        problems.append(status.Cond("PriorityAllowed", "False", "TierNotAllowed", refused))
        children = [c for c in children if c["kind"] not in tierpolicy.WITHHELD_KINDS]
    else:
        try:
            await priorityclasses.ensure(ctx, spec.qos.priority)
        except ApiError as exc:
            problems.append(status.Cond("Reconciled", "False", "PriorityClassFailed",
                                        f"PriorityClass {qos.name(spec.qos.priority)}: "
                                        f"{error_message(exc)}"))
    failures = await apply.apply_set(ctx, children, observed)
    cert_failure = next((f for f in failures if f.startswith("Certificate ")), None)
    if cert_failure:
        problems.append(status.Cond("TLSReady", "False", "CertManagerUnavailable",
                                    f"cannot create the cert-manager Certificate: "
                                    f"{cert_failure}"))
    if failures:
        problems.append(status.Cond("Reconciled", "False", "ApplyFailed", "; ".join(failures)))
    await apply.prune(ctx, spec, children, observed)

    pods = [o for (_, kind, _), o in
            ctx.children.of(spec.namespace, spec.name, selector_labels(spec)).items()
            if kind == "Pod"]
    obs = status.Observed(
        generation=body["metadata"].get("generation", 0),
        deployment=observed.get(("apps/v1", "Deployment", spec.name)),
        pods=pods, problems=problems,
        hpa=observed.get(("autoscaling/v2", "HorizontalPodAutoscaler", spec.name)))
    await write_status(ctx, body, spec, obs, now, result)


async def write_status(ctx: Context, body: dict[str, Any], spec: Spec, obs: status.Observed,
                       now: dt.datetime, result: Result) -> None:
    old = body.get("status") or {}
    new = status.build(spec, obs, old, rfc3339(now))
    patch = status.merge_patch(old, new)
    if patch is not None:
        await ctx.kube.patch_status(MD, spec.name, spec.namespace, patch)
        # Keep the cached body current, so a reconcile that runs before the watch event
        # arrives neither writes the same status again nor repeats an Event.
        body["status"] = new
    for cond in status.new_warnings(old, new):
        await events.post(ctx, body, "Warning", cond["reason"], cond["message"])
    old_ready = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {})
    if new["phase"] == "Ready" and old_ready.get("status") != "True":
        await events.post(ctx, body, "Normal", "Ready", new["conditions"][0]["message"])
    result.phase = new["phase"]
    result.problems = obs.problems
