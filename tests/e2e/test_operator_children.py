"""Every child, created with the right content and accepted by the real API server."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
from cryptography import x509
from operator_helpers import (
    ROOT,
    apply,
    b64,
    condition,
    crd,  # noqa: F401 - fixture
    get,
    items,
    manifest,
    operator_args,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.e2e

FULL = {
    "model": {"servedName": "team-chat", "contextWindow": 32768},
    "engine": {"maxBatchSize": 4, "toolCallParser": "hermes"},
    "defaults": {"maxTokens": 1024, "temperature": 0.5, "topP": 0.8},
    "resources": {"gpus": 1, "gpuProduct": "NVIDIA-L4", "gpuMemory": "20Gi", "cpu": "1",
                  "memory": "2Gi"},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "queueDepth", "target": 5,
                    "scaleDownStabilizationSeconds": 120},
    "qos": {"priority": "high"},
    "network": {"allowFrom": {"ipBlocks": ["192.168.1.0/24"], "namespaces": ["bots"]},
                "ingress": {"host": "chat.lan.example", "className": "nginx"}},
    "auth": {"apiKeys": {"count": 2}},
    "clawdbot": {"providerName": "lan"},
}


def test_full_set_of_children(kubectl, namespace, run_operator, crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("chat", FULL))
    md = wait_phase(kubectl, namespace, "chat", timeout=90)
    st = md["status"]
    assert st["url"] == "https://chat.lan.example/v1"
    assert (st["apiKeySecret"], st["tlsSecret"], st["clawdbotConfigMap"]) == (
        "chat-api-keys", "chat-tls", "chat-clawdbot")
    assert st["gpuMemory"] == "20Gi"
    assert condition(md, "TLSReady")["status"] == "True"
    assert condition(md, "ClawdbotCompatible")["status"] == "True"

    # Deployment → a pod on the L4 node, with priority and Guaranteed QoS
    pod = items(kubectl, namespace, "pods", "modeldeploy.io/name=chat")[0]
    assert pod["spec"]["nodeName"] == "gpu-b"
    assert pod["spec"]["priorityClassName"] == "modeldeploy-high"
    assert pod["spec"]["priority"] == 100000
    assert pod["status"]["qosClass"] == "Guaranteed"
    args = pod["spec"]["containers"][0]["args"]
    # allowFrom lists namespaces and a CIDR: the NetworkPolicy enforces both, and the
    # server's address list stays off (it would refuse the listed namespaces' pods).
    assert "--allow-cidr" not in args
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert args[args.index("--default-temperature") + 1] == "0.5"

    pc = json.loads(kubectl("get", "priorityclass", "modeldeploy-high", "-o", "json").stdout)
    assert pc["value"] == 100000 and "ownerReferences" not in pc["metadata"]

    svc = get(kubectl, namespace, "service", "chat")
    assert svc["spec"]["ports"][0]["name"] == "https"
    assert svc["spec"]["selector"]["modeldeploy.io/name"] == "chat"

    ing = get(kubectl, namespace, "ingress", "chat")
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["chat.lan.example"], "secretName": "chat-tls"}]
    nginx = {k.removeprefix("nginx.ingress.kubernetes.io/"): v
             for k, v in ing["metadata"]["annotations"].items()}
    assert (nginx["proxy-buffering"], nginx["backend-protocol"]) == ("off", "HTTPS")

    np = get(kubectl, namespace, "networkpolicy", "chat")
    peers = np["spec"]["ingress"][0]["from"]
    assert {"ipBlock": {"cidr": "192.168.1.0/24"}} in peers
    allowed_ns = [p for p in peers if "namespaceSelector" in p][0]["namespaceSelector"][
        "matchExpressions"][0]["values"]
    assert sorted(allowed_ns) == sorted(["bots", "ingress-nginx", namespace])

    hpa = get(kubectl, namespace, "hpa", "chat")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "modelserver_queue_depth"
    pdb = get(kubectl, namespace, "pdb", "chat")
    assert pdb["spec"]["maxUnavailable"] == 1

    # TLS: issued by the operator's CA for the Service names and the Ingress host
    tls = get(kubectl, namespace, "secret", "chat-tls")
    ca_secret = get(kubectl, namespace, "secret", "modeldeploy-ca")
    cert = x509.load_pem_x509_certificate(b64(tls, "tls.crt").encode())
    ca = x509.load_pem_x509_certificate(b64(ca_secret, "tls.crt").encode())
    cert.verify_directly_issued_by(ca)
    assert b64(tls, "ca.crt") == b64(ca_secret, "tls.crt")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        "chat", f"chat.{namespace}.svc", f"chat.{namespace}.svc.cluster.local",
        "chat.lan.example"}
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=80)

    # API keys: two, never in status or events
    keys_secret = get(kubectl, namespace, "secret", "chat-api-keys")
    keys = b64(keys_secret, "keys").split()
    assert len(keys) == 2 and len(set(keys)) == 2 and b64(keys_secret, "primary") == keys[0]
    md_text = json.dumps(get(kubectl, namespace, "modeldeployment", "chat"))
    events_text = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert all(k not in md_text and k not in events_text for k in keys)

    # Clawdbot config
    cm = get(kubectl, namespace, "configmap", "chat-clawdbot")
    cfg = json.loads(cm["data"]["clawdbot.json"])
    provider = cfg["models"]["providers"]["lan"]
    assert provider["baseUrl"] == "https://chat.lan.example/v1"
    assert provider["apiKey"] == "${MODELDEPLOY_API_KEY}"
    assert provider["models"][0]["contextWindow"] == 32768
    assert provider["models"][0]["maxTokens"] == 1024
    assert cfg["agents"]["defaults"]["model"]["primary"] == "lan/team-chat"
    guide = json.loads(cm["data"]["clawbot.json"])
    assert guide["model_server"] == {"protocol": "https", "host": "chat.lan.example",
                                     "port": 443, "timeout": 30000}
    assert guide["inference_params"] == {"max_tokens": 1024, "temperature": 0.5,
                                         "top_p": 0.8}
    assert cm["data"]["ca.crt"] == b64(ca_secret, "tls.crt")

    # `modeldeploy clawdbot-config` fills the key in
    out = subprocess.run(
        [sys.executable, "-m", "modeldeploy", "clawdbot-config", "chat", "-n", namespace],
        capture_output=True, text=True, check=True, cwd=ROOT)
    printed = json.loads(out.stdout)
    assert printed["models"]["providers"]["lan"]["apiKey"] == keys[0]


def test_tls_modes_report_what_is_missing(kubectl, namespace, run_operator,
                                          crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("cm", {"tls": {
        "mode": "certManager", "issuerRef": {"name": "lan-ca", "kind": "ClusterIssuer"}}}))
    apply(kubectl, namespace, manifest("own", {"tls": {"mode": "secret",
                                                       "secretName": "my-cert"}}))

    def tls_cond(name: str) -> dict:
        return condition(get(kubectl, namespace, "modeldeployment", name), "TLSReady")

    # no cert-manager in this cluster: said so, and the rest is still built
    c = wait_for(lambda: tls_cond("cm").get("status") == "False" and tls_cond("cm"), 60,
                 what="TLSReady=False on cm")
    assert c["reason"] == "CertManagerUnavailable" and "Certificate" in c["message"]
    assert get(kubectl, namespace, "deployment", "cm") is not None
    o = wait_for(lambda: tls_cond("own").get("reason") == "SecretMissing" and tls_cond("own"),
                 60, what="TLSReady SecretMissing")
    assert "my-cert" in o["message"]
    assert get(kubectl, namespace, "secret", "own-tls") is None
    # the user's Secret appears: TLS becomes ready, and the operator never manages it
    kubectl("create", "secret", "generic", "my-cert", "-n", namespace,
            "--from-literal=tls.crt=x", "--from-literal=tls.key=y")
    wait_for(lambda: tls_cond("own").get("status") == "True", 60, what="TLSReady=True")
    sec = get(kubectl, namespace, "secret", "my-cert")
    assert "ownerReferences" not in sec["metadata"]
    vols = get(kubectl, namespace, "deployment", "own")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-cert", "defaultMode": 288}} in vols


def test_vllm_and_model_cache(kubectl, namespace, run_operator, crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("v", {
        "engine": {"kind": "vllm", "toolCallParser": "llama3_json", "quantization": "fp8"},
        "model": {"checksums": {"model.safetensors": "sha256:" + "ab" * 32},
                  "cache": {"size": "5Gi"}}}))
    dep = wait_for(lambda: get(kubectl, namespace, "deployment", "v"), 60, what="deployment")
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--enable-auto-tool-choice") + 1:][:2] == [
        "--tool-call-parser", "llama3_json"]
    assert args[args.index("--quantization") + 1] == "fp8"
    assert pod["containers"][0]["image"].startswith("vllm/vllm-openai")
    # vLLM on loopback, the gateway in front of it with the TLS and API key mounts
    assert args[args.index("--host") + 1] == "127.0.0.1"
    gateway = pod["containers"][1]
    assert gateway["name"] == "gateway" and gateway["args"][:3] == [
        "gateway", "--upstream", "http://127.0.0.1:8001"]
    assert {"tls", "api-keys"} <= {m["name"] for m in gateway["volumeMounts"]}
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    init = pod["initContainers"][0]
    assert init["args"][:2] == ["fetch", "--model"]
    assert "model.safetensors=sha256:" + "ab" * 32 in init["args"]
    pvc = get(kubectl, namespace, "pvc", "v-model-cache")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    # no storage provisioner here: the scheduler's reason is surfaced, not hidden
    md = wait_for(lambda: condition(get(kubectl, namespace, "modeldeployment", "v"),
                                    "Scheduled").get("status") == "False"
                  and get(kubectl, namespace, "modeldeployment", "v"), 60,
                  what="Scheduled=False (unbound PVC)")
    assert "PersistentVolumeClaim" in condition(md, "Scheduled")["message"]
    assert md["status"]["phase"] == "Pending"


def test_certificate_follows_the_ingress_host(kubectl, namespace, run_operator,
                                              crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("t"))
    wait_phase(kubectl, namespace, "t")

    def cert() -> x509.Certificate:
        return x509.load_pem_x509_certificate(
            b64(get(kubectl, namespace, "secret", "t-tls"), "tls.crt").encode())

    first = cert()
    template = get(kubectl, namespace, "deployment", "t")["spec"]["template"]
    apply(kubectl, namespace, manifest("t", {"network": {"ingress": {"host": "t.lan"}}}))
    renewed = wait_for(lambda: (c := cert()).serial_number != first.serial_number and c, 30,
                       what="a certificate re-issued for the new host")
    sans = renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "t.lan" in sans.get_values_for_type(x509.DNSName)
    # the pods read the renewed files from the mounted Secret: no restart needed
    assert get(kubectl, namespace, "deployment", "t")["spec"]["template"] == template
