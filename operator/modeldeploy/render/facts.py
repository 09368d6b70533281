"""Inputs: the facts the renderers take besides the Spec (API keys, TLS material).

Only the type lives here; modeldeploy/inputs.py is what gathers these facts from the
cluster (or generates them) during a reconcile, and `modeldeploy render` fakes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modeldeploy.pki import KeyPair


@dataclass(frozen=True)
class Inputs:
    """Facts reconcile gathered from the cluster (or generated) for the renderers."""

    operator_namespace: str
    api_keys: list[str]
    tls_leaf: KeyPair | None = None
    tls_not_after: str = ""
    ca_cert_pem: str | None = None
    # Namespaces whose Prometheus may scrape the pods (the operator's --scraper-namespace).
    scraper_namespaces: tuple[str, ...] = ()
    # Whether the cluster serves the PodMonitor API (and the operator may use it).
    pod_monitors: bool = False
    pod_monitor_labels: dict[str, str] = field(default_factory=dict)
