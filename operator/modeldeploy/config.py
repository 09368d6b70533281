"""Operator settings, filled by the CLI before kopf starts (one typed object)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_operator_namespace() -> str:
    """The namespace the operator runs in: env, then the in-cluster file, then default."""
    env = os.environ.get("MODELDEPLOY_NAMESPACE") or os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        with open(SA_NAMESPACE_FILE) as f:
            return f.read().strip()
    except OSError:
        return "default"


@dataclass
class Config:
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    operator_namespace: str = "default"
    resync_seconds: float = 60.0
    workers: int = 4
    leader_election: bool = False
    lease_name: str = "modeldeploy-operator"
    lease_seconds: float = 15.0
    # tier -> the namespaces that may use it (tierpolicy.py); a tier not listed: all.
    priority_tier_namespaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Where the Prometheus that scrapes the model pods runs: admitted by their
    # NetworkPolicies to the serving port (render/networkpolicy.py).
    scraper_namespaces: tuple[str, ...] = ()
    # Extra labels on every PodMonitor, e.g. what a Prometheus' podMonitorSelector matches.
    pod_monitor_labels: dict[str, str] = field(default_factory=dict)
    # The custom metrics API for the HPA (metricsapi_server.py): 0 = not served.
    metrics_api_port: int = 0
    metrics_api_bind_address: str = "0.0.0.0"


CONFIG = Config()
