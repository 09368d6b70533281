"""Service, Ingress, NetworkPolicy, TLS, API keys, HPA/PDB, PriorityClass, cache, Clawdbot."""

from __future__ import annotations

import base64
import json

import pytest
from helpers_operator import inputs, make_spec
from modeldeploy.constants import ANNOTATION_ROTATION
from modeldeploy.render import (
    apikeys,
    autoscaling,
    cache,
    clawdbot,
    desired,
    ingress,
    networkpolicy,
    qos,
    service,
    tls,
)
from modeldeploy.render.meta import owner_reference
from modelserver.config import Settings

pytestmark = pytest.mark.unit


def test_every_child_is_owned_and_labelled() -> None:
    spec = make_spec({"network": {"ingress": {"host": "a.b"}},
                      "autoscaling": {"maxReplicas": 3},
                      "model": {"source": "hf://o/m",
                                "cache": {"size": "10Gi", "retain": False}}})
    kinds = []
    for child in desired(spec, inputs()):
        meta = child["metadata"]
        assert meta["ownerReferences"] == [owner_reference(spec)]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"
        assert meta["labels"]["modeldeploy.io/name"] == "m"
        assert meta["namespace"] == "ns"
        kinds.append(child["kind"])
    assert sorted(kinds) == sorted([
        "PersistentVolumeClaim", "Secret", "Secret", "Deployment", "Service", "Ingress",
        "NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"])


def test_minimal_set_without_optional_features() -> None:
    spec = make_spec({"tls": {"mode": "disabled"}, "auth": {"enabled": False},
                      "clawdbot": {"enabled": False}, "network": {"networkPolicy": False}})
    assert [c["kind"] for c in desired(spec, inputs())] == ["Deployment", "Service"]


def test_service() -> None:
    svc = service.render(make_spec({"network": {"port": 9000}}))
    assert svc["spec"]["selector"] == {"modeldeploy.io/name": "m",
                                       "app.kubernetes.io/component": "model-server"}
    assert svc["spec"]["ports"] == [{"name": "https", "port": 9000, "targetPort": "api",
                                     "protocol": "TCP", "appProtocol": "https"}]


def test_ingress_with_tls_and_class() -> None:
    ing = ingress.render(make_spec({"network": {"ingress": {
        "host": "chat.lan", "className": "nginx", "annotations": {"a": "b"}}}}))
    assert ing is not None
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["chat.lan"], "secretName": "m-tls"}]
    assert ing["metadata"]["annotations"]["a"] == "b"
    path = ing["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {"name": "m", "port": {"number": 8080}}
    assert ingress.render(make_spec()) is None


def test_networkpolicy_default_same_namespace_plus_operator() -> None:
    np = networkpolicy.render(make_spec(), "modeldeploy-system")
    assert np is not None
    rule = np["spec"]["ingress"][0]
    assert {"podSelector": {}} in rule["from"]
    ns_peer = [p for p in rule["from"] if "namespaceSelector" in p][0]
    assert ns_peer["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "modeldeploy-system"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = np["spec"]["egress"]
    # DNS: the cluster's DNS pods on any port (they may listen on 1053 or 5353 behind the
    # Service's 53), port 53 anywhere; then the model download.
    assert egress[0] == {"to": [networkpolicy.DNS_PODS]}
    egress_ports = [p["port"] for e in egress[1:] for p in e["ports"]]
    assert egress_ports == [53, 53, 443]


def test_networkpolicy_allow_from() -> None:
    np = networkpolicy.render(make_spec({
        "model": {"source": "pvc://w/m"},
        "network": {"allowFrom": {"namespaces": ["chat"], "ipBlocks": ["192.168.1.0/24"],
                                  "podSelector": {"matchLabels": {"app": "bot"}}},
                    "ingress": {"host": "x.y"}}}), "ops")
    assert np is not None
    peers = np["spec"]["ingress"][0]["from"]
    assert {"podSelector": {}} not in peers
    assert {"podSelector": {"matchLabels": {"app": "bot"}}} in peers
    assert {"ipBlock": {"cidr": "192.168.1.0/24"}} in peers
    ns_peer = [p for p in peers if "namespaceSelector" in p][0]
    assert ns_peer["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "chat", "ingress-nginx", "ops"]
    assert all(p["port"] == 53 for e in np["spec"]["egress"] for p in e.get("ports", []))


def test_tls_secret_and_certificate() -> None:
    spec = make_spec({"network": {"ingress": {"host": "chat.lan"}}})
    assert tls.dns_names(spec) == ["m", "m.ns", "m.ns.svc", "m.ns.svc.cluster.local",
                                   "chat.lan"]
    children = {(c["kind"], c["metadata"]["name"]): c for c in desired(spec, inputs())}
    sec = children[("Secret", "m-tls")]
    assert sec["type"] == "kubernetes.io/tls"
    assert base64.b64decode(sec["data"]["tls.crt"]) == b"CERT"
    assert base64.b64decode(sec["data"]["ca.crt"]) == b"CA"
    cm_spec = make_spec({"tls": {"mode": "certManager",
                                 "issuerRef": {"name": "le", "kind": "ClusterIssuer"}}})
    cert = tls.render_certificate(cm_spec)
    assert cert["spec"]["issuerRef"] == {"name": "le", "kind": "ClusterIssuer",
                                         "group": "cert-manager.io"}
    assert cert["spec"]["secretName"] == "m-tls"
    kinds = [c["kind"] for c in desired(cm_spec, inputs())]
    assert "Certificate" in kinds and kinds.count("Secret") == 1
    user = make_spec({"tls": {"mode": "secret", "secretName": "mine"}})
    assert [c for c in desired(user, inputs()) if c["kind"] == "Secret"][0][
        "metadata"]["name"] == "m-api-keys"


def test_api_keys_kept_rotated_and_shaped() -> None:
    spec = make_spec({"auth": {"apiKeys": {"count": 2}}})
    fresh = apikeys.choose_keys(spec, None, generate=iter(["a", "b", "c"]).__next__)
    assert fresh == ["a", "b"]
    secret = apikeys.render(spec, fresh)
    assert secret is not None
    assert base64.b64decode(secret["data"]["keys"]).decode() == "a\nb\n"
    assert base64.b64decode(secret["data"]["primary"]).decode() == "a"
    # live keys (even edited by hand) are kept while the rotation counter is unchanged
    edited = {**secret, "data": {"keys": base64.b64encode(b"mine\n").decode()}}
    assert apikeys.choose_keys(spec, edited, generate=lambda: "new") == ["mine"]
    rotated = make_spec({"auth": {"apiKeys": {"count": 1, "rotation": 1}}})
    assert apikeys.choose_keys(rotated, edited, generate=lambda: "new") == ["new"]
    assert apikeys.render(rotated, ["new"])["metadata"]["annotations"][
        ANNOTATION_ROTATION] == "1"
    assert apikeys.new_key().startswith("md-") and len(apikeys.new_key()) > 30
    assert apikeys.render(make_spec({"auth": {"enabled": False}}), []) is None


def test_hpa_metrics_per_engine() -> None:
    hpa = autoscaling.render_hpa(make_spec({"autoscaling": {
        "minReplicas": 2, "maxReplicas": 5, "metric": "queueDepth", "target": 3,
        "scaleDownStabilizationSeconds": 120}}))
    assert hpa is not None
    s = hpa["spec"]
    assert (s["minReplicas"], s["maxReplicas"]) == (2, 5)
    assert s["metrics"][0]["pods"] == {"metric": {"name": "modelserver_queue_depth"},
                                       "target": {"type": "AverageValue", "averageValue": "3"}}
    assert s["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    cpu = autoscaling.render_hpa(make_spec({"autoscaling": {"maxReplicas": 2,
                                                            "metric": "cpu"}}))
    assert cpu["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization", "averageUtilization": 70}
    assert autoscaling.render_hpa(make_spec()) is None


def test_pdb_only_with_more_than_one_replica() -> None:
    assert autoscaling.render_pdb(make_spec()) is None
    pdb = autoscaling.render_pdb(make_spec({"replicas": 2}))
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    assert autoscaling.render_pdb(make_spec({"autoscaling": {"maxReplicas": 3}})) is not None


def test_priority_classes() -> None:
    pc = qos.render("critical")
    assert pc["metadata"]["name"] == "modeldeploy-critical" and pc["value"] == 1_000_000
    assert "ownerReferences" not in pc["metadata"]
    assert qos.render("low")["preemptionPolicy"] == "Never"
    values = [qos.render(t)["value"] for t in ("critical", "high", "normal", "low")]
    assert values == sorted(values, reverse=True)


def test_cache_pvc() -> None:
    pvc = cache.render(make_spec({"model": {"source": "hf://o/m", "cache": {
        "size": "20Gi", "storageClassName": "fast", "accessMode": "ReadWriteMany"}}}))
    assert pvc is not None and pvc["spec"] == {
        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast"}
    assert cache.render(make_spec()) is None


def test_cache_pvc_is_retained_unless_asked() -> None:
    """The downloaded model outlives its ModelDeployment by default: no owner reference,
    so neither the garbage collector nor pruning deletes it; labels still find it."""
    kept = cache.render(make_spec({"model": {"source": "hf://o/m", "cache": {}}}))
    assert kept is not None and "ownerReferences" not in kept["metadata"]
    assert kept["metadata"]["labels"]["modeldeploy.io/name"] == "m"
    owned = cache.render(make_spec({"model": {"source": "hf://o/m",
                                              "cache": {"retain": False}}}))
    assert owned is not None and owned["metadata"]["ownerReferences"]


def test_clawdbot_configmap() -> None:
    spec = make_spec({"model": {"source": "hf://o/m", "servedName": "chat",
                                "contextWindow": 32768},
                      "clawdbot": {"providerName": "lan"}})
    cm = clawdbot.render(spec, "CA PEM")
    assert cm is not None and cm["metadata"]["name"] == "m-clawdbot"
    cfg = json.loads(cm["data"]["clawdbot.json"])
    assert cfg["agents"]["defaults"]["model"]["primary"] == "lan/chat"
    provider = cfg["models"]["providers"]["lan"]
    assert provider["baseUrl"] == "https://m.ns.svc:8080/v1"
    assert provider["api"] == "openai-completions"
    assert provider["apiKey"] == "${MODELDEPLOY_API_KEY}"
    assert provider["models"][0] == {"id": "chat", "name": "chat (ns/m)",
                                     "contextWindow": 32768, "maxTokens": 2048}
    assert cfg["models"]["mode"] == "merge"
    guide = json.loads(cm["data"]["clawbot.json"])
    assert guide == {"model_server": {"protocol": "https", "host": "m.ns.svc", "port": 8080,
                                      "timeout": 30000},
                     "inference_params": {"max_tokens": 2048, "temperature": 0.7,
                                          "top_p": 0.9}}
    assert cm["data"]["ca.crt"] == "CA PEM"
    filled = clawdbot.clawdbot_json(spec, api_key="secret")
    assert filled["models"]["providers"]["lan"]["apiKey"] == "secret"
    # OpenClaw: the same provider plus the key its network guard needs for a cluster
    # Service name and the one that makes it ask for usage (Clawdbot 2026.1's strict
    # schema would reject both).
    claw = json.loads(cm["data"]["openclaw.json"])
    claw_provider = claw["models"]["providers"]["lan"]
    assert claw_provider.pop("request") == {"allowPrivateNetwork": True}
    # ...and waits for a turn as long as the server lets a request run (a long prefill)
    assert claw_provider.pop("timeoutSeconds") == Settings().request_timeout == 600
    assert claw_provider["models"][0].pop("compat") == {"supportsUsageInStreaming": True}
    assert claw == cfg
    assert "request" not in provider
    assert sorted(k for k in cm["data"] if k.endswith(".json")) == [
        "clawbot.json", "clawdbot.json", "openclaw.json"]


def test_clawdbot_ingress_url_and_small_context() -> None:
    spec = make_spec({"network": {"ingress": {"host": "chat.lan"}},
                      "model": {"source": "hf://o/m", "contextWindow": 8192}})
    guide = clawdbot.clawbot_json(spec)
    assert guide["model_server"] == {"protocol": "https", "host": "chat.lan", "port": 443,
                                     "timeout": 30000}
    ok, why = clawdbot.compatible(spec)
    assert not ok and "16000" in why
    assert clawdbot.compatible(make_spec())[0]
