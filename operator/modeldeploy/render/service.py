"""The ClusterIP Service clients (and Clawdbot) connect to."""

from __future__ import annotations

from typing import Any

from modeldeploy.render.meta import metadata, selector_labels
from modeldeploy.render.workload import PORT_NAME
from modeldeploy.spec import Spec


def render(spec: Spec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, spec.service_name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [{
                "name": spec.scheme,
                "port": spec.network.port,
                "targetPort": PORT_NAME,
                "protocol": "TCP",
                "appProtocol": spec.scheme,
            }],
        },
    }
