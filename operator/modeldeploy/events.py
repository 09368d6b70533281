"""Events on a ModelDeployment (core/v1), posted by reconcile only on a change."""

from __future__ import annotations

import socket
from typing import Any

from modeldeploy.constants import API_VERSION, KIND, MANAGED_BY
from modeldeploy.context import Context, now_utc, rfc3339


async def post(ctx: Context, body: dict[str, Any], type_: str, reason: str,
               message: str) -> None:
    meta = body["metadata"]
    t = rfc3339(now_utc())
    await ctx.kube.create({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"],
                           "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message[:1024], "type": type_,
        "source": {"component": MANAGED_BY}, "reportingComponent": MANAGED_BY,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": t, "lastTimestamp": t, "count": 1,
    })
