"""Shared, cluster-scoped PriorityClasses `modeldeploy-<tier>`.

Never owned by one ModelDeployment: created when missing, left alone when they exist
(the Helm chart may own them), deleted only when the operator made them and no
ModelDeployment uses them any more.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import LABEL_MANAGED_BY, MANAGED_BY, PRIORITY_TIERS


def name(tier: str) -> str:
    return f"modeldeploy-{tier}"


def render(tier: str) -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name(tier), "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "value": PRIORITY_TIERS[tier],
        "globalDefault": False,
        # Low-priority models wait for room instead of evicting others.
        "preemptionPolicy": "Never" if tier == "low" else "PreemptLowerPriority",
        "description": f"modeldeploy {tier} tier for model servers",
    }
