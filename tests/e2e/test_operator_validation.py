"""The bad-manifest corpus: each is refused at apply time by the CRD's schema or CEL
rules, with a message naming the field, and nothing is created."""

from __future__ import annotations

from typing import Any

import pytest
from operator_helpers import apply, crd, items, manifest  # noqa: F401

pytestmark = pytest.mark.e2e

GPU = {"resources": {"gpus": 1}}
# (case id, spec overrides merged into a valid small spec, text expected in the error)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("source-scheme", {"model": {"source": "s3://bucket/model"}}, "spec.model.source"),
    ("source-hf-no-name", {"model": {"source": "hf://onlyorg"}}, "spec.model.source"),
    ("source-http", {"model": {"source": "http://plain.example/m"}}, "spec.model.source"),
    ("context-window-zero", {"model": {"contextWindow": 0}}, "spec.model.contextWindow"),
    ("checksum-sha1", {"model": {"checksums": {"a.bin": "sha1:abc"}}}, "spec.model.checksums"),
    ("parameters-bytes", {"model": {"parameters": "80GB"}}, "spec.model.parameters"),
    ("parameters-no-unit", {"model": {"parameters": "80"}}, "spec.model.parameters"),
    ("parameters-zero", {"model": {"parameters": "0B"}}, "spec.model.parameters"),
    ("kv-bytes-zero", {"model": {"kvCacheBytesPerToken": 0}},
     "spec.model.kvCacheBytesPerToken"),
    ("cache-access-mode", {"model": {"cache": {"accessMode": "Everyone"}}},
     "spec.model.cache.accessMode"),
    ("cache-of-a-volume", {"model": {"source": "pvc://weights/m", "cache": {}}},
     "spec.model.cache"),
    ("gpus-negative", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ("gpu-resource", {"resources": {"gpuResource": "foo.com/gpu"}},
     "spec.resources.gpuResource"),
    ("gpu-product-without-gpus", {"resources": {"gpuProduct": "NVIDIA-L4"}},
     "spec.resources.gpuProduct"),
    ("memory-not-quantity", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ("port-zero", {"network": {"port": 0}}, "spec.network.port"),
    ("port-too-big", {"network": {"port": 70000}}, "spec.network.port"),
    ("cidr-bad-prefix", {"network": {"allowFrom": {"ipBlocks": ["192.168.1.0/33"]}}},
     "spec.network.allowFrom.ipBlocks"),
    ("cidr-garbage", {"network": {"allowFrom": {"ipBlocks": ["office"]}}},
     "spec.network.allowFrom.ipBlocks"),
    ("namespace-name", {"network": {"allowFrom": {"namespaces": ["Bad_NS"]}}},
     "spec.network.allowFrom.namespaces"),
    ("ingress-no-host", {"network": {"ingress": {"className": "nginx"}}},
     "spec.network.ingress.host"),
    ("ingress-allow-list-without-trusted-proxies",
     {"network": {"allowFrom": {"ipBlocks": ["192.168.1.0/24"]},
                  "ingress": {"host": "chat.lan.example"}}},
     "spec.network.ingress.trustedProxies"),
    ("trusted-proxy-garbage",
     {"network": {"ingress": {"host": "chat.lan.example", "trustedProxies": ["nginx"]}}},
     "spec.network.ingress.trustedProxies"),
    ("temperature", {"defaults": {"temperature": 2.5}}, "spec.defaults.temperature"),
    ("top-p-zero", {"defaults": {"topP": 0}}, "spec.defaults.topP"),
    ("top-p-above-one", {"defaults": {"topP": 1.5}}, "spec.defaults.topP"),
    ("batch-size-zero", {"engine": {"maxBatchSize": 0}}, "spec.engine.maxBatchSize"),
    ("engine-kind", {"engine": {"kind": "llamacpp"}}, "spec.engine.kind"),
    ("quantization-enum", {"engine": {"quantization": "int4"}}, "spec.engine.quantization"),
    ("builtin-fp8", {"engine": {"quantization": "fp8"}}, "spec.engine.quantization"),
    ("vllm-int8", {"engine": {"kind": "vllm", "quantization": "int8"}},
     "spec.engine.quantization"),
    ("builtin-tool-parser", {"engine": {"toolCallParser": "llama3_json"}},
     "spec.engine.toolCallParser"),
    ("tgi-tool-parser", {"engine": {"kind": "tgi", "toolCallParser": "hermes"}},
     "spec.engine.toolCallParser"),
    ("vllm-tool-parser", {"engine": {"kind": "vllm", "toolCallParser": "json"}},
     "spec.engine.toolCallParser"),
    ("input-above-total", {"engine": {"maxInputTokens": 4096, "maxTotalTokens": 1024}},
     "spec.engine.maxInputTokens"),
    # vLLM and TGI listen on ENGINE_LOOPBACK_PORT inside the pod, behind the gateway
    ("vllm-engine-port", {"engine": {"kind": "vllm"}, "network": {"port": 8001}},
     "spec.network.port"),
    ("tgi-engine-port", {"engine": {"kind": "tgi"}, "network": {"port": 8001}},
     "spec.network.port"),
    # the gateway enforces the allow-list for vLLM too, so it needs the trusted proxies
    ("vllm-ingress-allow-list-without-trusted-proxies",
     {"engine": {"kind": "vllm"},
      "network": {"allowFrom": {"ipBlocks": ["192.168.1.0/24"]},
                  "ingress": {"host": "chat.lan.example"}}},
     "spec.network.ingress.trustedProxies"),
    # what an engine cannot honour is refused, not accepted and ignored
    ("vllm-max-input", {"engine": {"kind": "vllm", "maxInputTokens": 100}},
     "spec.engine.maxInputTokens"),
    ("vllm-default-max-tokens", {"engine": {"kind": "vllm"}, "defaults": {"maxTokens": 64}},
     "spec.defaults.maxTokens"),
    ("tgi-float32", {"engine": {"kind": "tgi", "dtype": "float32"}}, "spec.engine.dtype"),
    ("tgi-sampling-defaults", {"engine": {"kind": "tgi"}, "defaults": {"temperature": 0.5}},
     "spec.defaults"),
    ("autoscaling-min-above-max", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
     "spec.autoscaling.minReplicas"),
    ("autoscaling-metric", {"autoscaling": {"maxReplicas": 2, "metric": "gpu"}},
     "spec.autoscaling.metric"),
    ("replicas-with-autoscaling", {"replicas": 2, "autoscaling": {"maxReplicas": 3}},
     "spec.replicas"),
    ("priority-tier", {"qos": {"priority": "urgent"}}, "spec.qos.priority"),
    ("tls-secret-without-name", {"tls": {"mode": "secret"}}, "spec.tls.secretName"),
    ("tls-cert-manager-without-issuer", {"tls": {"mode": "certManager"}},
     "spec.tls.issuerRef"),
    ("tls-min-version", {"tls": {"minVersion": "1.1"}}, "spec.tls.minVersion"),
    ("api-keys-without-secret", {"auth": {"apiKeys": {"generate": False}}},
     "spec.auth.apiKeys.secretName"),
    ("api-key-count", {"auth": {"apiKeys": {"count": 0}}}, "spec.auth.apiKeys.count"),
    ("unknown-field", {"gpuCount": 1}, "spec.gpuCount"),
    ("unknown-nested-field", {"model": {"sourceUrl": "hf://a/b"}}, "spec.model.sourceUrl"),
    # the answer cache, overflow and redaction (render/server_features.py)
    ("cache-without-url", {"answerCache": {"ttlSeconds": 60}}, "spec.answerCache.redisUrl"),
    ("cache-password-without-url", {"answerCache": {"passwordSecretName": "redis"}},
     "spec.answerCache.redisUrl"),
    ("cache-http-url", {"answerCache": {"redisUrl": "http://10.0.0.5:6379"}},
     "spec.answerCache.redisUrl"),
    ("cache-url-with-password",
     {"answerCache": {"redisUrl": "redis://:hunter2@10.0.0.5:6379"}},
     "spec.answerCache.redisUrl"),
    ("cache-ttl-zero", {"answerCache": {"redisUrl": "redis://10.0.0.5", "ttlSeconds": 0}},
     "spec.answerCache.ttlSeconds"),
    ("cache-host-without-peer", {"answerCache": {"redisUrl": "redis://redis.lan:6379"}},
     "spec.answerCache.egressTo"),
    ("cache-egress-not-cidr",
     {"answerCache": {"redisUrl": "redis://redis.lan", "egressTo": ["redis.lan"]}},
     "spec.answerCache.egressTo"),
    ("overflow-without-url", {"overflow": {"apiKeySecretName": "cloud-key"}},
     "spec.overflow.url"),
    ("redact-requests-without-overflow-url", {"overflow": {"redactRequests": True}},
     "spec.overflow.url"),
    ("overflow-ftp-url", {"overflow": {"url": "ftp://10.0.0.9/v1"}}, "spec.overflow.url"),
    ("overflow-url-with-user", {"overflow": {"url": "https://me:pw@10.0.0.9/v1"}},
     "spec.overflow.url"),
    ("overflow-port-too-big", {"overflow": {"url": "http://10.0.0.9:70000/v1"}},
     "spec.overflow.url"),
    ("overflow-host-without-peer", {"overflow": {"url": "https://api.cloud.example/v1"}},
     "spec.overflow.egressTo"),
    ("overflow-ca-for-http",
     {"overflow": {"url": "http://big.models.svc:8080/v1", "caSecretName": "big-tls"}},
     "spec.overflow.caSecretName"),
    ("overflow-timeout-zero",
     {"overflow": {"url": "http://10.0.0.9/v1", "timeoutSeconds": 0}},
     "spec.overflow.timeoutSeconds"),
    ("overflow-egress-port-zero",
     {"overflow": {"url": "http://big.models.svc/v1", "egressPort": 0}},
     "spec.overflow.egressPort"),
    ("logging-unknown", {"logging": {"redactPrompts": True}}, "spec.logging.redactPrompts"),
]

# Valid object names (DNS subdomains) that the model's Service or labels cannot carry.
BAD_NAMES = ["9lives", "my.model", "a" * 64]


def test_bad_manifests_are_refused_naming_the_field(kubectl, namespace, crd) -> None:  # noqa: F811
    assert len(CASES) >= 25
    wrong: list[str] = []
    for i, (case, spec, field) in enumerate(CASES):
        proc = apply(kubectl, namespace, manifest(f"bad-{i}", spec), check=False)
        if proc.returncode == 0:
            wrong.append(f"{case}: accepted")
        elif field not in proc.stderr:
            wrong.append(f"{case}: message does not name {field}: {proc.stderr.strip()}")
    # names a Service or a label value cannot carry (the API server itself accepts them)
    for bad_name in BAD_NAMES:
        proc = apply(kubectl, namespace, manifest(bad_name), check=False)
        if proc.returncode == 0:
            wrong.append(f"name {bad_name!r}: accepted")
        elif "metadata.name must be a DNS-1035 label" not in proc.stderr:
            wrong.append(f"name {bad_name!r}: message does not name the rule: "
                         f"{proc.stderr.strip()}")
    # missing model altogether
    proc = apply(kubectl, namespace, {"apiVersion": "modeldeploy.io/v1alpha1",
                                      "kind": "ModelDeployment", "metadata": {"name": "none"},
                                      "spec": {"replicas": 1}}, check=False)
    if proc.returncode == 0 or "spec.model" not in proc.stderr:
        wrong.append(f"missing-model: {proc.stderr.strip() or 'accepted'}")
    assert wrong == [], "\n".join(wrong)
    # nothing half-built
    assert items(kubectl, namespace, "modeldeployments") == []
    assert items(kubectl, namespace, "deployments,services,secrets,configmaps",
                 "app.kubernetes.io/managed-by=modeldeploy") == []


def test_the_good_base_manifest_is_accepted(kubectl, namespace, crd) -> None:  # noqa: F811
    """The corpus only proves something if its valid base passes."""
    apply(kubectl, namespace, manifest("good", {"autoscaling": {"maxReplicas": 2}}))
    assert len(items(kubectl, namespace, "modeldeployments")) == 1


def test_cache_overflow_and_redaction_are_accepted(kubectl, namespace, crd) -> None:  # noqa: F811
    """The corpus's valid neighbours: each host form that gives the NetworkPolicy a peer
    (an IP, a Service name, egressTo), a host name with no NetworkPolicy at all, and every
    field together."""
    apply(kubectl, namespace, manifest("cache-ip", {"answerCache": {
        "redisUrl": "redis://10.0.0.5", "passwordSecretName": "redis", "ttlSeconds": 60}}))
    apply(kubectl, namespace, manifest("cache-ipv6", {"answerCache": {
        "redisUrl": "redis://[fd00::5]:6380/1"}}))
    apply(kubectl, namespace, manifest("overflow-svc", {"overflow": {
        "url": "https://big.models.svc.cluster.local:8080/v1", "apiKeySecretName": "key",
        "caSecretName": "big-tls", "timeoutSeconds": 30, "redactRequests": True,
        "egressPort": 8443}, "logging": {"redact": True}}))
    apply(kubectl, namespace, manifest("overflow-cloud", {"overflow": {
        "url": "https://api.cloud.example/v1", "egressTo": ["203.0.113.0/24"]}}))
    apply(kubectl, namespace, manifest("overflow-no-policy", {
        "overflow": {"url": "https://api.cloud.example/v1"},
        "network": {"networkPolicy": False}}))
    assert len(items(kubectl, namespace, "modeldeployments")) == 5


def test_tls_for_tgi_and_port_8001_for_builtin_are_accepted(kubectl, namespace,  # noqa: F811
                                                            crd) -> None:  # noqa: F811
    """TLS terminates in the gateway now, so TGI keeps the default tls.mode; the engine
    port rule is for the engines behind the gateway only; the gateway enforces vLLM's
    admission limit, so the field is accepted there."""
    apply(kubectl, namespace, manifest("tgi-tls", {"engine": {"kind": "tgi"}}))
    apply(kubectl, namespace, manifest("builtin-8001", {"network": {"port": 8001}}))
    apply(kubectl, namespace, manifest("vllm-limit", {"engine": {
        "kind": "vllm", "maxConcurrentRequests": 4}}))
    assert len(items(kubectl, namespace, "modeldeployments")) == 3
