"""The optional Ingress, with TLS on the same Secret as the pods when TLS is on.

For ingress-nginx (className nginx, or none) it carries the annotations an LLM API needs;
the user's own annotations win. Other controllers' equivalents: README, "Ingress
annotations"."""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import SERVER_MAX_BODY_BYTES, SERVER_REQUEST_TIMEOUT_SECONDS
from modeldeploy.render.meta import metadata
from modeldeploy.spec import Spec

NGINX = "nginx.ingress.kubernetes.io/"
# nginx's own defaults (60 s between two reads, 1 MiB bodies, buffered responses) cut a
# long prefill, refuse a long conversation and hold back every streamed token. The
# timeouts leave the server's own 504 (at its request timeout) time to get through.
PROXY_TIMEOUT_SECONDS = SERVER_REQUEST_TIMEOUT_SECONDS + 30
MIB = 1024 * 1024


def nginx_annotations(spec: Spec) -> dict[str, str]:
    annotations = {
        NGINX + "proxy-read-timeout": str(PROXY_TIMEOUT_SECONDS),
        NGINX + "proxy-send-timeout": str(PROXY_TIMEOUT_SECONDS),
        # nginx sizes: "4m" is 4 MiB; round up so the proxy never refuses what the server takes
        NGINX + "proxy-body-size": f"{-(-SERVER_MAX_BODY_BYTES // MIB)}m",
        NGINX + "proxy-buffering": "off",  # SSE: each token as it is generated
    }
    if spec.tls.enabled:
        # The pods speak HTTPS: re-encrypt to the backend.
        annotations[NGINX + "backend-protocol"] = "HTTPS"
    return annotations


def render(spec: Spec) -> dict[str, Any] | None:
    ing = spec.network.ingress
    if ing is None:
        return None
    annotations = {**(nginx_annotations(spec) if ing.nginx else {}), **ing.annotations}
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
