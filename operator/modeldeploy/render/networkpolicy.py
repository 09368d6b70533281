"""NetworkPolicy: deny ingress to the model pods except from who the spec allows.

Allowed: `network.allowFrom` (namespaces, pods, CIDRs; the same namespace when it is
empty), the operator's namespace (health checks) and, with an Ingress, the ingress
controller's namespace. The Prometheus namespaces the operator was given
(--scraper-namespace) get a rule of their own, to the serving port only (where /metrics is).
Egress: DNS, HTTPS when the model is downloaded, and exactly the peer and port of each
server the pods call: Redis (answerCache) and the overflow upstream. Nothing else opens.
A peer comes from the URL's host: an IP address gives that one address (/32 or /128); a
Service name NAME.NAMESPACE.svc[.cluster.local] gives the pods of that namespace (a policy
sees the packet after the Service's address translation, so the port is the pod's:
egressPort when it is not the URL's); any other host needs egressTo (the CRD refuses it
without), which replaces the derived peer whenever it is given.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.render.meta import metadata, selector_labels
from modeldeploy.spec import Peer, Spec

NS_LABEL = "kubernetes.io/metadata.name"


def _ns_peer(names: list[str]) -> dict[str, Any]:
    return {"namespaceSelector": {"matchExpressions": [
        {"key": NS_LABEL, "operator": "In", "values": sorted(set(names))}]}}


def _peer_rule(field: str, peer: Peer) -> dict[str, Any]:
    """Egress to one server the pods call; ValueError naming the field when its host gives
    no peer (the CRD refuses that; `modeldeploy render -f` reads files it never saw)."""
    if peer.egress_to:
        to = [{"ipBlock": {"cidr": cidr}} for cidr in peer.egress_to]
    elif peer.ip is not None:
        to = [{"ipBlock": {"cidr": f"{peer.ip}/{peer.ip.max_prefixlen}"}}]
    elif peer.service_namespace is not None:
        to = [_ns_peer([peer.service_namespace])]
    else:
        raise ValueError(f"spec.{field}: host {peer.host!r} is neither an IP address nor a "
                         "Service name NAME.NAMESPACE.svc[.cluster.local]; list its "
                         "addresses in egressTo")
    return {"to": to, "ports": [{"protocol": "TCP", "port": peer.policy_port}]}


# The cluster's DNS pods (CoreDNS and kube-dns both carry k8s-app=kube-dns in
# kube-system). A policy sees the port after the Service's translation, and a DNS pod
# that runs unprivileged listens elsewhere (the test bed's CoreDNS on 1053, OpenShift's on
# 5353): port 53 alone would cut name resolution there, so these pods are open on any port.
DNS_PODS = {"namespaceSelector": {"matchLabels": {NS_LABEL: "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def egress_rules(spec: Spec) -> list[dict[str, Any]]:
    # DNS: the cluster's DNS pods, and port 53 anywhere (a node-local cache, a resolver
    # outside the cluster).
    egress: list[dict[str, Any]] = [{"to": [DNS_PODS]}, {"ports": DNS_PORTS}]
    if spec.model.needs_network:
        egress.append({"ports": [{"protocol": "TCP", "port": 443}]})
    if spec.answer_cache is not None:
        egress.append(_peer_rule("answerCache.redisUrl", spec.answer_cache))
    if spec.overflow is not None:
        egress.append(_peer_rule("overflow.url", spec.overflow))
    return egress


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
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, spec.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress_rules(spec),
        },
    }
