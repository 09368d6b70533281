"""PodMonitor (Prometheus Operator, monitoring.coreos.com/v1): scrape every model pod's
/metrics on the serving port. Rendered only when the cluster serves the PodMonitor API
(reconcile knows from the informer that lists them; see inputs.py).

TLS: with the operator's own certificates (tls.mode operator) the scrape verifies the
server against the CA in the pod's TLS Secret (`ca.crt`, always written there) under the
Service's name, which the certificate carries. With certManager or secret the Secret may
hold no CA (an ACME issuer, a user's own Secret), so the scrape skips verification: the
scrape sends no credential and /metrics holds no secret, so TLS there protects only the
counters' confidentiality in transit, which unverified TLS still gives against a passive
listener.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeldeploy.render.meta import metadata, selector_labels
from modeldeploy.render.workload import PORT_NAME
from modeldeploy.spec import Spec

API_VERSION = "monitoring.coreos.com/v1"
KIND = "PodMonitor"
# The route every engine serves its Prometheus metrics on (the bundled server, vLLM, TGI).
METRICS_PATH = "/metrics"


def tls_config(spec: Spec) -> dict[str, Any] | None:
    if spec.tls.mode == "operator":
        return {"ca": {"secret": {"name": spec.tls_secret_name, "key": "ca.crt"}},
                "serverName": f"{spec.name}.{spec.namespace}.svc"}
    if spec.tls.enabled:
        return {"insecureSkipVerify": True}
    return None


def render(spec: Spec, extra_labels: Mapping[str, str]) -> dict[str, Any]:
    meta = metadata(spec, spec.name)
    # The operator's own labels win: they are how it finds and prunes its children.
    meta["labels"] = {**extra_labels, **meta["labels"]}
    endpoint: dict[str, Any] = {"port": PORT_NAME, "path": METRICS_PATH,
                                "scheme": spec.scheme}
    tls = tls_config(spec)
    if tls is not None:
        endpoint["tlsConfig"] = tls
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(spec)},
            "podMetricsEndpoints": [endpoint],
        },
    }
