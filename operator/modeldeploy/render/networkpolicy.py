"""NetworkPolicy: deny ingress to the model pods except from who the spec allows.

Allowed: `network.allowFrom` (namespaces, pods, CIDRs; the same namespace when it is
empty), the operator's namespace (health checks) and, with an Ingress, the ingress
controller's namespace. The Prometheus namespaces the operator was given
(--scraper-namespace) get a rule of their own, to the serving port only (where /metrics is).
Egress: DNS, plus HTTPS when the model is downloaded.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.render.meta import metadata, selector_labels
from modeldeploy.spec import Spec

NS_LABEL = "kubernetes.io/metadata.name"


def _ns_peer(names: list[str]) -> dict[str, Any]:
    return {"namespaceSelector": {"matchExpressions": [
        {"key": NS_LABEL, "operator": "In", "values": sorted(set(names))}]}}


def render(spec: Spec, operator_namespace: str,
           scraper_namespaces: tuple[str, ...] = ()) -> dict[str, Any] | None:
    if not spec.network.network_policy:
        return None
    af = spec.network.allow_from
    peers: list[dict[str, Any]] = []
    if af.empty:
        peers.append({"podSelector": {}})  # same namespace
    if af.pod_selector is not None:
        peers.append({"podSelector": af.pod_selector})
    namespaces = list(af.namespaces) + [operator_namespace]
    if spec.network.ingress:
        namespaces.append(spec.network.ingress.controller_namespace)
    peers.append(_ns_peer(namespaces))
    peers.extend({"ipBlock": {"cidr": cidr}} for cidr in af.ip_blocks)
    port = [{"protocol": "TCP", "port": spec.network.port}]
    ingress = [{"from": peers, "ports": port}]
    if scraper_namespaces:
        ingress.append({"from": [_ns_peer(list(scraper_namespaces))], "ports": port})
    egress: list[dict[str, Any]] = [{
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }]
    if spec.model.needs_network:
        egress.append({"ports": [{"protocol": "TCP", "port": 443}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, spec.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
