"""The optional Ingress, with TLS on the same Secret as the pods when TLS is on."""

from __future__ import annotations

from typing import Any

from modeldeploy.render.meta import metadata
from modeldeploy.spec import Spec


def render(spec: Spec) -> dict[str, Any] | None:
    ing = spec.network.ingress
    if ing is None:
        return None
    annotations = dict(ing.annotations)
    if spec.tls.enabled:
        # The pods speak HTTPS: tell the common controllers to re-encrypt to the backend.
        annotations.setdefault("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS")
    body: dict[str, Any] = {
        "rules": [{
            "host": ing.host,
            "http": {"paths": [{
                "path": ing.path,
                "pathType": "Prefix",
                "backend": {"service": {"name": spec.service_name,
                                        "port": {"number": spec.network.port}}},
            }]},
        }],
    }
    if ing.class_name:
        body["ingressClassName"] = ing.class_name
    if spec.tls.enabled:
        body["tls"] = [{"hosts": [ing.host], "secretName": spec.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(spec, spec.name, annotations=annotations or None),
        "spec": body,
    }
