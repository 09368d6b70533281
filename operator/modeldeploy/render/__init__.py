"""Pure renderers: typed spec (+ the few facts read from the cluster) → child manifests.

`desired()` is the whole set one ModelDeployment wants; nothing here does I/O. What it
needs from the cluster is render/facts.py's Inputs.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.render import (
    apikeys,
    autoscaling,
    cache,
    clawdbot,
    ingress,
    networkpolicy,
    podmonitor,
    service,
    tls,
    workload,
)
from modeldeploy.render.facts import Inputs
from modeldeploy.spec import Spec


def desired(spec: Spec, inputs: Inputs) -> list[dict[str, Any]]:
    children: list[dict[str, Any] | None] = [
        cache.render(spec),
        apikeys.render(spec, inputs.api_keys),
    ]
    if spec.tls.mode == "operator" and inputs.tls_leaf and inputs.ca_cert_pem:
        children.append(tls.render_secret(spec, inputs.tls_leaf, inputs.ca_cert_pem,
                                          inputs.tls_not_after))
    elif spec.tls.mode == "certManager":
        children.append(tls.render_certificate(spec))
    children += [
        workload.render(spec),
        service.render(spec),
        ingress.render(spec),
        networkpolicy.render(spec, inputs.operator_namespace, inputs.scraper_namespaces),
        autoscaling.render_hpa(spec),
        autoscaling.render_pdb(spec),
        clawdbot.render(spec, inputs.ca_cert_pem if spec.tls.mode == "operator" else None),
        podmonitor.render(spec, inputs.pod_monitor_labels) if inputs.pod_monitors else None,
    ]
    return [c for c in children if c is not None]
