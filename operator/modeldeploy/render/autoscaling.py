"""HorizontalPodAutoscaler (autoscaling/v2) and PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from modeldeploy.render import engines
from modeldeploy.render.meta import metadata, selector_labels
from modeldeploy.spec import Spec


def render_hpa(spec: Spec) -> dict[str, Any] | None:
    a = spec.autoscaling
    if a is None:
        return None
    if a.metric == "cpu":
        metric: dict[str, Any] = {"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target}}}
    else:
        # Per-pod gauges exported by the engine at /metrics, served by a metrics adapter.
        name = engines.plan(spec).metrics[a.metric]
        metric = {"type": "Pods", "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": str(a.target)}}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(spec, spec.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [metric],
            "behavior": {"scaleDown": {
                "stabilizationWindowSeconds": a.scale_down_stabilization_seconds}},
        },
    }


def render_pdb(spec: Spec) -> dict[str, Any] | None:
    # One replica cannot tolerate a disruption; a PDB would only block node drains.
    if spec.desired_replicas <= 1 and (spec.autoscaling is None
                                       or spec.autoscaling.max_replicas <= 1):
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, spec.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }
