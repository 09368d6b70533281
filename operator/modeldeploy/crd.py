"""The ModelDeployment CustomResourceDefinition, built here and printed by `modeldeploy crd`.

crds/ holds its YAML (a unit test keeps the two equal). Validation lives in the schema:
OpenAPI types, ranges and enums, plus CEL rules (x-kubernetes-validations) whose
messages name the field, so bad input is refused at `kubectl apply`.
"""

from __future__ import annotations

from typing import Any

import yaml

from modeldeploy import contract
from modeldeploy.constants import (
    CRD_NAME,
    ENGINE_LOOPBACK_PORT,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from modeldeploy.spec import PARAMETER_COUNT, SERVICE_HOST

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A ModelDeployment's name becomes its Service's name (a DNS-1035 label: no leading digit,
# no dot) and a label value on every child (at most 63 characters); the other children's
# names add a suffix to it but are DNS subdomains (253). Refused at apply, so a bad name
# never leaves a half-built set of children behind.
NAME_MAX_LENGTH = 63
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SOURCE_RULE = (
    r"self.matches('^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\\s]*)?"
    r"|https://[A-Za-z0-9.-]+(:[0-9]+)?(/[^\\s]*)?"
    r"|file:///[^\\s]*)$')"
)


# URLs of the servers the pods call (answerCache, overflow): a host (a name, an IPv4
# address or a bracketed IPv6 one) and an optional port. No user info: credentials come
# from Secrets. Doubled backslashes: CEL string literals unescape them once.
URL_HOST = r"([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\[[0-9A-Fa-f:.]+\\])"
URL_PORT = (r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
            r"|[1-9][0-9]{0,3}))?")
REDIS_URL_RULE = f"self.matches('^redis://{URL_HOST}{URL_PORT}(/[0-9]{{0,2}})?$')"
HTTP_URL_RULE = f"self.matches('^https?://{URL_HOST}{URL_PORT}(/[-A-Za-z0-9._~%/]*)?$')"
# The same regex as spec.SERVICE_HOST, as a CEL string literal.
SERVICE_HOST_CEL = SERVICE_HOST.pattern.replace("\\", "\\\\")


def s(type_: str, description: str, **kw: Any) -> Schema:
    return {"type": type_, "description": description, **kw}


def obj(description: str, properties: dict[str, Schema], **kw: Any) -> Schema:
    return {"type": "object", "description": description, "properties": properties, **kw}


def rule(expr: str, message: str, field_path: str | None = None) -> dict[str, str]:
    r = {"rule": expr, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    return r


def quantity(field: str, description: str) -> Schema:
    return {
        "description": description,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "x-kubernetes-validations": [rule(
            "type(self) == int ? self >= 0 : (size(self) <= 64 && isQuantity(self) && "
            "quantity(self).compareTo(quantity('0')) >= 0)",
            f"{field} must be a Kubernetes quantity such as 16Gi, 4 or 500m")],
    }


def string_map(description: str, max_props: int = 64) -> Schema:
    return {"type": "object", "description": description, "maxProperties": max_props,
            "additionalProperties": {"type": "string", "maxLength": 1024}}


def model_schema() -> Schema:
    return obj("The model to serve and where its files come from.", {
        "source": s("string", "Where the weights are: hf://org/name (Hugging Face), "
                    "pvc://claim/path (a PersistentVolumeClaim in this namespace), "
                    "https://… (an archive or file URL) or file:///path (on the node image).",
                    maxLength=2048, minLength=1,
                    **{"x-kubernetes-validations": [rule(
                        SOURCE_RULE,
                        "model.source must be hf://org/name, pvc://claim/path, https://… or "
                        "file:///… (other schemes are not supported)")]}),
        "revision": s("string", "Revision (branch, tag or commit) of an hf:// model.",
                      maxLength=256, pattern=r"^[A-Za-z0-9._/-]+$"),
        "servedName": s("string", "Model id clients send in requests; defaults to the "
                        "resource name.", maxLength=256, pattern=r"^[A-Za-z0-9._:/-]+$"),
        "contextWindow": s("integer", "The model's real context window in tokens (prompt + "
                           "completion). Clawdbot refuses models below 16000.",
                           minimum=128, maximum=10_000_000),
        "parameters": s("string", "The model's parameter count, e.g. 80B, 7.6B or 135M (M, B "
                        "or T). The operator estimates the memory the model needs from it "
                        "(status.memory) and says in condition MemoryFits when the declared "
                        "memory cannot hold it. Unset: no estimate.",
                        maxLength=16, pattern=PARAMETER_COUNT.pattern),
        "kvCacheBytesPerToken": s("integer", "KV cache bytes of one token of context, all "
                                  "layers, at the served dtype: 2 × attention layers × "
                                  "num_key_value_heads × head_dim × bytes per value, from "
                                  "the model's config.json (e.g. 57344 for Qwen2.5-7B in "
                                  "bfloat16). Counted in the memory estimate for "
                                  "engine.maxBatchSize sequences of the context window; "
                                  "unset: the KV cache is not counted.",
                                  minimum=1, maximum=64 * 2**20),
        "checksums": {
            "type": "object",
            "description": "Expected digests by file path inside the model, as sha256:HEX "
                           "or md5:HEX; the fetch step verifies them before serving.",
            "maxProperties": 256,
            "additionalProperties": {"type": "string", "maxLength": 80},
            "x-kubernetes-validations": [rule(
                "self.all(k, self[k].matches('^(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})$'))",
                "model.checksums values must be sha256:<64 hex> or md5:<32 hex>")],
        },
        "cache": obj("A PersistentVolumeClaim the model is downloaded into once; pods "
                     "restart from it. An init container fetches and verifies the files.", {
            "size": quantity("model.cache.size", "Size of the cache volume (default 100Gi)."),
            "storageClassName": s("string", "StorageClass of the cache volume.",
                                  maxLength=253),
            "accessMode": s("string", "Access mode of the cache volume.",
                            enum=["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany",
                                  "ReadWriteOncePod"], default="ReadWriteOnce"),
            "retain": s("boolean", "Keep the volume (and the downloaded model) when the "
                        "ModelDeployment is deleted or the cache is removed from it; a "
                        "new ModelDeployment of the same name reuses it (default true). "
                        "false: it is deleted with the ModelDeployment.", default=True),
        }),
    }, required=["source"], **{"x-kubernetes-validations": [
        # The fetch step downloads into the cache; a volume or image path is read in place.
        rule("!has(self.cache) || self.source.startsWith('hf://') || "
             "self.source.startsWith('https://')",
             "model.cache is for downloaded models (hf://, https://): a pvc:// or file:// "
             "source is read where it is", ".cache"),
    ]})


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def quantization_rules() -> list[dict[str, str]]:
    """One rule per engine that cannot serve every quantization the enum lists."""
    rules = []
    for kind, supported in contract.QUANTIZATIONS_BY_ENGINE.items():
        if set(supported) == set(contract.QUANTIZATIONS):
            continue
        # An unset kind is the default engine.
        is_kind = (f"(!has(self.kind) || self.kind == '{kind}')" if kind == contract.DEFAULT_ENGINE
                   else f"(has(self.kind) && self.kind == '{kind}')")
        rules.append(rule(
            f"!has(self.quantization) || !{is_kind} || "
            f"self.quantization in {_cel_list(supported)}",
            f"engine.quantization: the {kind} engine supports only {', '.join(supported)}",
            ".quantization"))
    return rules


def engine_schema() -> Schema:
    return obj("The inference engine and its serving limits.", {
        "kind": s("string", "builtin (the bundled modelserver), vllm or tgi.",
                  enum=list(contract.ENGINE_KINDS), default=contract.DEFAULT_ENGINE),
        "image": s("string", "Container image override.", maxLength=512, minLength=1),
        "dtype": s("string", "Weight dtype.", enum=list(contract.DTYPES),
                   default=contract.DEFAULT_DTYPE),
        "quantization": s("string", "Weight quantization; " + "; ".join(
                              f"{kind}: {'|'.join(q)}"
                              for kind, q in contract.QUANTIZATIONS_BY_ENGINE.items()) + ".",
                          enum=list(contract.QUANTIZATIONS),
                          default=contract.DEFAULT_QUANTIZATION),
        "maxBatchSize": s("integer", "Requests batched together (the guide suggests 4-8).",
                          minimum=1, maximum=1024, default=contract.DEFAULT_MAX_BATCH_SIZE),
        # No schema default: the spec applies contract's, so the CRD states no second copy.
        "maxConcurrentRequests": s("integer", "Admitted requests (queued + running) before "
                                   f"429 (default {contract.DEFAULT_MAX_CONCURRENT_REQUESTS}). "
                                   "vllm and tgi: enforced by the gateway in front of the "
                                   "engine (tgi also gets it as its own limit).",
                                   minimum=1, maximum=100_000),
        "maxInputTokens": s("integer", "Longest prompt accepted.", minimum=1,
                            maximum=10_000_000),
        "maxTotalTokens": s("integer", "Longest prompt + completion.", minimum=1,
                            maximum=10_000_000),
        "toolCallParser": s("string", "Tool-call parser. builtin: "
                            f"{', '.join(contract.BUILTIN_TOOL_CALL_PARSERS)} (default "
                            f"{contract.DEFAULT_BUILTIN_TOOL_CALL_PARSER}; none turns tool "
                            "calling off); vllm: one of vLLM's parsers (e.g. hermes, "
                            "llama3_json; the CRD lists them), unset leaves tool calling "
                            "off; tgi: not accepted (TGI calls tools through its grammar, "
                            "with no parser).",
                            maxLength=64, pattern=r"^[A-Za-z0-9_.-]+$"),
        "args": {"type": "array", "description": "Extra engine arguments, appended last.",
                 "maxItems": 64, "items": {"type": "string", "maxLength": 4096}},
        "env": {"type": "array", "description": "Extra environment variables.",
                "maxItems": 64, "items": {
                    "type": "object", "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 256,
                                 "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                        "value": {"type": "string", "maxLength": 32768},
                        "valueFrom": {"type": "object",
                                      "x-kubernetes-preserve-unknown-fields": True},
                    }}},
        "startupTimeoutSeconds": s("integer", "How long a pod may take to load the model "
                                   "before it is restarted (startup probe).",
                                   minimum=30, maximum=86_400, default=1800),
    }, **{"x-kubernetes-validations": [
        *quantization_rules(),
        rule("!has(self.toolCallParser) || (has(self.kind) && self.kind != 'builtin') || "
             f"self.toolCallParser in {_cel_list(contract.BUILTIN_TOOL_CALL_PARSERS)}",
             "engine.toolCallParser: the builtin engine's parsers are "
             f"{', '.join(contract.BUILTIN_TOOL_CALL_PARSERS)}", ".toolCallParser"),
        rule("!has(self.toolCallParser) || !has(self.kind) || self.kind != 'vllm' || "
             f"self.toolCallParser in {_cel_list(contract.VLLM_TOOL_CALL_PARSERS)}",
             "engine.toolCallParser: vllm's parsers are "
             f"{', '.join(contract.VLLM_TOOL_CALL_PARSERS)}", ".toolCallParser"),
        # What an engine has no way to honour is refused, not accepted and ignored.
        rule("!has(self.maxInputTokens) || !has(self.kind) || self.kind != 'vllm'",
             "engine.maxInputTokens: vllm bounds prompt + completion only (--max-model-len, "
             "from maxTotalTokens or model.contextWindow); remove the field",
             ".maxInputTokens"),
        rule("!has(self.dtype) || !has(self.kind) || self.kind != 'tgi' || "
             "self.dtype != 'float32'",
             "engine.dtype: tgi serves float16 or bfloat16 (or auto), not float32", ".dtype"),
        rule("!has(self.toolCallParser) || !has(self.kind) || self.kind != 'tgi'",
             "engine.toolCallParser: tgi has no tool-call parser (it calls tools through "
             "its grammar); remove the field", ".toolCallParser"),
        rule("!has(self.maxInputTokens) || !has(self.maxTotalTokens) || "
             "self.maxInputTokens < self.maxTotalTokens",
             "engine.maxInputTokens must be less than engine.maxTotalTokens",
             ".maxInputTokens"),
    ]})


def defaults_schema() -> Schema:
    return obj("Server-side sampling defaults for requests that do not set them.", {
        "maxTokens": s("integer", "Default max tokens per completion (guide: 2048).",
                       minimum=1, maximum=1_000_000),
        "temperature": s("number", "Default temperature, 0-2 (guide: 0.7).",
                         minimum=0, maximum=2),
        "topP": s("number", "Default nucleus sampling top_p, in (0, 1] (guide: 0.9).",
                  minimum=0, exclusiveMinimum=True, maximum=1),
    })


def resources_schema() -> Schema:
    return obj("Compute for each replica.", {
        "gpus": s("integer", "GPUs per replica (0 = CPU only).", minimum=0, maximum=64,
                  default=0),
        "gpuResource": s("string", "Extended resource name of the GPU.",
                         enum=["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915",
                               "gpu.intel.com/xe"], default="nvidia.com/gpu"),
        "gpuProduct": s("string", "Required GPU product (node label, e.g. "
                        "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3).", maxLength=128,
                        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"),
        "gpuMemory": quantity("resources.gpuMemory", "GPU memory the model needs per "
                              "replica (all its GPUs together), e.g. 48Gi: shown in status "
                              "and checked against the memory estimate (condition "
                              "MemoryFits); not used for scheduling (gpuProduct is)."),
        "cpu": quantity("resources.cpu", "CPU per replica (default 2)."),
        "memory": quantity("resources.memory", "Memory per replica (default 8Gi)."),
        "sharedMemory": quantity("resources.sharedMemory",
                                 "Size of /dev/shm (memory-backed; default 1Gi)."),
    }, **{"x-kubernetes-validations": [
        rule("!has(self.gpuProduct) || self.gpus > 0",
             "resources.gpuProduct requires resources.gpus > 0", ".gpuProduct"),
    ]})


def placement_schema() -> Schema:
    return obj("Where pods may run (a GPU toleration is added for GPU pods).", {
        "nodeSelector": string_map("Node labels the pods require."),
        "tolerations": {"type": "array", "maxItems": 32, "description": "Extra tolerations.",
                        "items": {"type": "object", "properties": {
                            "key": {"type": "string", "maxLength": 317},
                            "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                            "value": {"type": "string", "maxLength": 63},
                            "effect": {"type": "string",
                                       "enum": ["NoSchedule", "PreferNoSchedule",
                                                "NoExecute"]},
                            "tolerationSeconds": {"type": "integer"},
                        }}},
        "affinity": {"type": "object", "description": "A core/v1 Affinity, merged with the "
                     "GPU product affinity.", "x-kubernetes-preserve-unknown-fields": True},
    })


def autoscaling_schema() -> Schema:
    return obj("HorizontalPodAutoscaler settings; replaces replicas.", {
        "minReplicas": s("integer", "Fewest replicas.", minimum=1, maximum=1000, default=1),
        "maxReplicas": s("integer", "Most replicas.", minimum=1, maximum=1000),
        "metric": s("string", "cpu (utilization %), inflightRequests or queueDepth (per-pod "
                    "averages from the server's /metrics).",
                    enum=["cpu", "inflightRequests", "queueDepth"],
                    default="inflightRequests"),
        "target": s("integer", "Target value of the metric (percent for cpu).", minimum=1,
                    maximum=100_000),
        "scaleDownStabilizationSeconds": s("integer", "Wait before scaling down.",
                                           minimum=0, maximum=3600),
    }, required=["maxReplicas"], **{"x-kubernetes-validations": [
        rule("self.minReplicas <= self.maxReplicas",
             "autoscaling.minReplicas must be <= autoscaling.maxReplicas", ".minReplicas"),
    ]})


def network_schema() -> Schema:
    cidr_rule = rule("self.all(c, isCIDR(c))",
                     "network.allowFrom.ipBlocks must be CIDRs such as 192.168.1.0/24")
    return obj("How clients reach the model, and who may.", {
        "port": s("integer", "Port of the server (for vllm and tgi: of the gateway in "
                  f"front of them; not {ENGINE_LOOPBACK_PORT}, their own) and the Service.",
                  minimum=1, maximum=65535, default=8080),
        "allowFrom": obj("Who may connect (NetworkPolicy + server allow-list). Empty: "
                         "pods of this namespace.", {
            "namespaces": {"type": "array", "maxItems": 64, "description": "Namespaces.",
                           "items": {"type": "string", "maxLength": 63,
                                     "pattern": DNS_LABEL}},
            "podSelector": {"type": "object", "description": "Pods of this namespace "
                            "(a LabelSelector).", "properties": {
                                "matchLabels": string_map("Labels."),
                                "matchExpressions": {
                                    "type": "array", "maxItems": 16,
                                    "items": {"type": "object",
                                              "x-kubernetes-preserve-unknown-fields": True}},
                            }},
            "ipBlocks": {"type": "array", "maxItems": 64, "description": "Client CIDRs "
                         "(also the server's --allow-cidr list).",
                         "items": {"type": "string", "maxLength": 43},
                         "x-kubernetes-validations": [cidr_rule]},
        }),
        "ingress": obj("An Ingress in front of the Service.", {
            "host": s("string", "Host name.", maxLength=253, pattern=DNS_SUBDOMAIN),
            "className": s("string", "IngressClass.", maxLength=253),
            "annotations": string_map("Extra Ingress annotations."),
            "path": s("string", "Path prefix.", maxLength=256, default="/",
                      pattern=r"^/[A-Za-z0-9._~/-]*$"),
            "controllerNamespace": s("string", "Namespace of the ingress controller, "
                                     "allowed by the NetworkPolicy.", maxLength=63,
                                     pattern=DNS_LABEL, default="ingress-nginx"),
            "trustedProxies": {
                "type": "array", "maxItems": 16, "description":
                    "CIDRs of the ingress controller's pods (e.g. the pod CIDR "
                    "10.244.0.0/16): the server takes the client address from their "
                    "X-Forwarded-For (--trusted-proxy-cidr), never from anyone else's. "
                    "Required when ipBlocks alone are allowed: the server's allow-list "
                    "would otherwise see the controller's address and refuse everyone.",
                "items": {"type": "string", "maxLength": 43},
                "x-kubernetes-validations": [rule(
                    "self.all(c, isCIDR(c))",
                    "network.ingress.trustedProxies must be CIDRs such as 10.244.0.0/16")]},
        }, required=["host"]),
        "networkPolicy": s("boolean", "Render the NetworkPolicy (default true).",
                           default=True),
    })


def tls_schema() -> Schema:
    return obj("TLS for the server (and the Ingress).", {
        "mode": s("string", "operator: a certificate from the operator's CA; certManager: "
                  "a cert-manager Certificate; secret: your kubernetes.io/tls Secret; "
                  "disabled: plain HTTP.",
                  enum=["operator", "certManager", "secret", "disabled"], default="operator"),
        "secretName": s("string", "TLS Secret name (required for mode secret).",
                        maxLength=253, pattern=DNS_SUBDOMAIN),
        "issuerRef": obj("cert-manager issuer (required for mode certManager).", {
            "name": s("string", "Issuer name.", maxLength=253, minLength=1),
            "kind": s("string", "Issuer or ClusterIssuer.", enum=["Issuer", "ClusterIssuer"]),
            "group": s("string", "Issuer API group.", maxLength=253),
        }, required=["name"]),
        "minVersion": s("string", "Lowest TLS version served.", enum=["1.2", "1.3"],
                        default="1.3"),
    }, **{"x-kubernetes-validations": [
        rule("!has(self.mode) || self.mode != 'secret' || has(self.secretName)",
             "tls.secretName is required when tls.mode is secret", ".secretName"),
        rule("!has(self.mode) || self.mode != 'certManager' || has(self.issuerRef)",
             "tls.issuerRef is required when tls.mode is certManager", ".issuerRef"),
    ]})


def auth_schema() -> Schema:
    return obj("API key authentication.", {
        "enabled": s("boolean", "Require an API key (default true).", default=True),
        "apiKeys": obj("The keys.", {
            "generate": s("boolean", "Generate the keys into a Secret (default true).",
                          default=True),
            "secretName": s("string", "Secret with data key `keys` (one per line); "
                            "required when generate is false.", maxLength=253,
                            pattern=DNS_LABEL),
            "count": s("integer", "How many keys to generate.", minimum=1, maximum=16,
                       default=1),
            "rotation": s("integer", "Bump to generate new keys (pods pick them up without "
                          "restart).", minimum=0, default=0),
        }, **{"x-kubernetes-validations": [
            rule("self.generate || has(self.secretName)",
                 "auth.apiKeys.secretName is required when auth.apiKeys.generate is false",
                 ".secretName"),
        ]}),
    })


def peer_properties(section: str, url_field: str) -> dict[str, Schema]:
    """The NetworkPolicy fields of a server the pods call (see spec.Peer)."""
    return {
        "egressTo": {
            "type": "array", "maxItems": 16, "description":
                f"CIDRs the NetworkPolicy lets the pods reach for {section}.{url_field}, "
                "instead of the peer derived from its host (an IP address: that /32 or "
                "/128; a Service name NAME.NAMESPACE.svc[.cluster.local]: the pods of that "
                "namespace). Required for any other host name.",
            "items": {"type": "string", "maxLength": 43},
            "x-kubernetes-validations": [rule(
                "self.all(c, isCIDR(c))",
                f"{section}.egressTo must be CIDRs such as 203.0.113.7/32")]},
        "egressPort": s("integer", "Port the peer's pods listen on, for the NetworkPolicy, "
                        f"when it differs from the port of {section}.{url_field} (a "
                        "Service whose targetPort differs: the policy sees the packet "
                        "after the Service's address translation).",
                        minimum=1, maximum=65535),
    }


def answer_cache_schema() -> Schema:
    return obj("Redis keeps the answers to deterministic requests (temperature 0, or a "
               "seed) and answers repeats of them; sampled requests are never cached. "
               "Redis being down skips the cache, it fails no request.", {
        "redisUrl": s("string", "redis://HOST[:PORT][/DB] (port default "
                      f"{contract.REDIS_DEFAULT_PORT}), without a password in it.",
                      maxLength=512, minLength=1,
                      **{"x-kubernetes-validations": [rule(
                          REDIS_URL_RULE,
                          "answerCache.redisUrl must be redis://HOST[:PORT][/DB], without "
                          "user or password (the password comes from "
                          "answerCache.passwordSecretName)")]}),
        "passwordSecretName": s("string", "Secret (this namespace) whose data key "
                                "`password` is Redis's password; mounted as a file.",
                                maxLength=253, pattern=DNS_SUBDOMAIN),
        "ttlSeconds": s("integer", "How long an answer stays cached (default "
                        f"{contract.DEFAULT_CACHE_TTL_SECONDS}).",
                        minimum=1, maximum=30 * 86_400),
        **peer_properties("answerCache", "redisUrl"),
    }, required=["redisUrl"])


def overflow_schema() -> Schema:
    return obj("An OpenAI-compatible upstream (e.g. another ModelDeployment or a cloud "
               "model) that answers the requests this one turns away when "
               "engine.maxConcurrentRequests are in flight. When the upstream fails, "
               "refuses or times out, the request gets 429 with Retry-After.", {
        "url": s("string", "The upstream's OpenAI base URL, http:// or https://, e.g. "
                 "https://big.models.svc:8080/v1 (port default 80 or 443).",
                 maxLength=512, minLength=1,
                 **{"x-kubernetes-validations": [rule(
                     HTTP_URL_RULE,
                     "overflow.url must be an http:// or https:// URL such as "
                     "https://host:8080/v1, without user, query or fragment (the key "
                     "comes from overflow.apiKeySecretName)")]}),
        "apiKeySecretName": s("string", "Secret (this namespace) whose data key `apiKey` "
                              "is the upstream's API key; mounted as a file, re-read for "
                              "every request.", maxLength=253, pattern=DNS_SUBDOMAIN),
        "caSecretName": s("string", "Secret (this namespace) whose data key `ca.crt` is "
                          "the CA of an https upstream with a private CA (another "
                          "ModelDeployment's <name>-tls Secret has it). Unset: the "
                          "image's public CAs.", maxLength=253, pattern=DNS_SUBDOMAIN),
        "timeoutSeconds": s("integer", "How long the upstream may take to answer before "
                            "the request gets 429 (default: the server's request "
                            "timeout, 600).", minimum=1, maximum=86_400),
        "redactRequests": s("boolean", "Mask personal data (e-mail addresses, phone, ID "
                            "and card numbers, keys) in the messages sent upstream.",
                            default=False),
        **peer_properties("overflow", "url"),
    }, required=["url"], **{"x-kubernetes-validations": [
        rule("!has(self.caSecretName) || self.url.startsWith('https://')",
             "overflow.caSecretName needs an https:// overflow.url (plain http has no "
             "certificate to verify)", ".caSecretName"),
    ]})


def logging_schema() -> Schema:
    return obj("The server's logs.", {
        "redact": s("boolean", "Mask personal data (e-mail addresses, phone, ID and card "
                    "numbers, keys) in every log line of the bundled server, or of the "
                    "gateway in front of vllm and tgi (their own logs are not filtered).",
                    default=False),
    })


# A URL whose host gives the NetworkPolicy a peer (spec.Peer): an IP address or a Service
# name. Regexes on the whole URL, not url().getHostname(): the API server bounds a rule's
# cost by the string's maxLength, which a function's result no longer carries.
IPV4_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{IPV4_OCTET}(\\.{IPV4_OCTET}){{3}}"
IPV6 = r"\\[[0-9A-Fa-f:.]+\\]"
PEER_HOST_URL = (f"^[a-z]+://({IPV4}|{IPV6}|{SERVICE_HOST_CEL.strip('^$')})"
                 r"(:[0-9]+)?(/.*)?$")


def egress_peer_rule(section: str, url_field: str, url_rule: str) -> dict[str, str]:
    """A URL whose host gives the NetworkPolicy no peer needs egressTo, unless there is
    no NetworkPolicy. Only a well-formed URL (`url_rule`, the field's own rule, which
    refuses the others with its own message) is judged here."""
    sec = f"self.{section}"
    return rule(
        f"!has({sec}) || !has({sec}.{url_field}) || "
        f"(has({sec}.egressTo) && size({sec}.egressTo) > 0) || "
        "(has(self.network) && has(self.network.networkPolicy) && "
        "!self.network.networkPolicy) || "
        f"!{url_rule.replace('self.', f'{sec}.{url_field}.', 1)} || "
        f"{sec}.{url_field}.matches('{PEER_HOST_URL}')",
        f"{section}.egressTo is required: the host of {section}.{url_field} is neither an "
        "IP address nor a Service name NAME.NAMESPACE.svc[.cluster.local], so the "
        "NetworkPolicy cannot tell which addresses it is; list them (CIDRs)",
        f".{section}.egressTo")


def clawdbot_schema() -> Schema:
    return obj("The ready-to-use Clawdbot ConfigMap.", {
        "enabled": s("boolean", "Render ConfigMap <name>-clawdbot (default true).",
                     default=True),
        "providerName": s("string", "Provider key in clawdbot.json.", maxLength=63,
                          pattern=DNS_LABEL, default="modeldeploy"),
    })


def spec_schema() -> Schema:
    # `default: {}` on the sections makes their own defaults visible in the stored
    # object (kubectl get -o yaml, printer columns) even when the section is omitted.
    return obj("What to serve and how.", {
        "model": model_schema(),
        "engine": {**engine_schema(), "default": {}},
        "defaults": defaults_schema(),
        "resources": {**resources_schema(), "default": {}},
        "placement": placement_schema(),
        "replicas": s("integer", "Replicas when autoscaling is not set (default 1).",
                      minimum=0, maximum=1000),
        "autoscaling": autoscaling_schema(),
        "qos": obj("Scheduling priority and QoS.", {
            "priority": s("string", "Tier, mapped to PriorityClass modeldeploy-<tier>.",
                          enum=["critical", "high", "normal", "low"], default="normal"),
            "guaranteed": s("boolean", "Guaranteed QoS: limits == requests (default true).",
                            default=True),
        }, default={}),
        "network": {**network_schema(), "default": {}},
        "tls": {**tls_schema(), "default": {}},
        "auth": {**auth_schema(), "default": {}},
        "clawdbot": {**clawdbot_schema(), "default": {}},
        "answerCache": answer_cache_schema(),
        "overflow": overflow_schema(),
        "logging": logging_schema(),
    }, required=["model"], **{"x-kubernetes-validations": [
        engine_port_rule(),
        egress_peer_rule("answerCache", "redisUrl", REDIS_URL_RULE),
        egress_peer_rule("overflow", "url", HTTP_URL_RULE),
        rule("!has(self.autoscaling) || !has(self.replicas)",
             "replicas must not be set together with autoscaling (the autoscaler sets replicas)",
             ".replicas"),
        trusted_proxies_rule(),
        rule("!has(self.engine) || !has(self.engine.kind) || self.engine.kind != 'tgi' || "
             "!has(self.defaults) || (!has(self.defaults.temperature) && "
             "!has(self.defaults.topP))",
             "defaults.temperature and defaults.topP: tgi has no server-side sampling "
             "defaults (its clients send them); remove them", ".defaults"),
        rule("!has(self.engine) || !has(self.engine.kind) || self.engine.kind != 'vllm' || "
             "!has(self.defaults) || !has(self.defaults.maxTokens)",
             "defaults.maxTokens: vllm would apply it as a server-wide cap on every request's "
             "max_tokens, not as a default; remove it", ".defaults.maxTokens"),
    ]})


def engine_port_rule() -> dict[str, str]:
    """vLLM and TGI listen on ENGINE_LOOPBACK_PORT inside the pod, behind the gateway that
    serves network.port: the two cannot share one port."""
    port = ENGINE_LOOPBACK_PORT
    return rule(
        "!has(self.engine) || !has(self.engine.kind) || self.engine.kind == 'builtin' || "
        f"!has(self.network) || !has(self.network.port) || self.network.port != {port}",
        f"network.port: {port} is the port vllm and tgi listen on inside the pod, behind "
        "the gateway that serves network.port; choose another", ".network.port")


def trusted_proxies_rule() -> dict[str, str]:
    """An Ingress in front of the server's own allow-list (ipBlocks alone: see
    spec.AllowFrom.server_cidrs; enforced by the builtin server or, for vLLM and TGI, the
    gateway) needs the controller's CIDRs, or every request through it is refused with 403
    (the server sees the controller's address, not the client's)."""
    n = "self.network"
    return rule(
        f"!has({n}) || !has({n}.ingress) || !has({n}.allowFrom) || "
        f"!has({n}.allowFrom.ipBlocks) || size({n}.allowFrom.ipBlocks) == 0 || "
        f"(has({n}.allowFrom.namespaces) && size({n}.allowFrom.namespaces) > 0) || "
        f"has({n}.allowFrom.podSelector) || "
        f"(has({n}.ingress.trustedProxies) && size({n}.ingress.trustedProxies) > 0)",
        "network.ingress.trustedProxies is required with an Ingress and "
        "network.allowFrom.ipBlocks: the server's allow-list sees the ingress controller's "
        "address, not the client's, and would refuse every request; list the controller "
        "pods' CIDR (e.g. the pod CIDR 10.244.0.0/16)",
        ".network.ingress.trustedProxies")


def name_rule() -> dict[str, str]:
    return rule(
        f"size(self.metadata.name) <= {NAME_MAX_LENGTH} && "
        f"self.metadata.name.matches('{DNS_1035_LABEL}')",
        "metadata.name must be a DNS-1035 label of at most "
        f"{NAME_MAX_LENGTH} characters (lowercase letters, digits and '-', starting with a "
        "letter, no dots): it names the model's Service and labels all its objects")


def status_schema() -> Schema:
    condition = {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer"},
    }}
    return obj("Observed state, written by the operator.", {
        "phase": s("string", "Pending, Progressing, Ready, Degraded or Failed.",
                   enum=["Pending", "Progressing", "Ready", "Degraded", "Failed"]),
        "observedGeneration": s("integer", "Generation the status describes."),
        "replicas": s("integer", "Desired replicas."),
        "readyReplicas": s("integer", "Ready replicas."),
        "ready": s("string", "ready/desired, for kubectl get."),
        "endpoint": s("string", "Service host:port inside the cluster."),
        "url": s("string", "OpenAI base URL (Ingress or Service)."),
        "apiKeySecret": s("string", "Secret holding the API keys."),
        "tlsSecret": s("string", "Secret holding the serving certificate."),
        "clawdbotConfigMap": s("string", "ConfigMap with clawdbot.json."),
        "gpuMemory": s("string", "GPU memory the model needs per replica."),
        "memory": obj("The operator's estimate of the memory the model needs per replica "
                      "(with spec.model.parameters), as Kubernetes quantities.", {
            "parameters": s("string", "Parameter count the estimate starts from."),
            "parametersSource": s("string", "Where the count comes from."),
            "weightFormat": s("string", "How the weights are held (dtype, quantization)."),
            "weights": s("string", "Weights."),
            "kvCache": s("string", "KV cache of a full batch at the full context window "
                         "(absent without spec.model.kvCacheBytesPerToken)."),
            "overhead": s("string", "Runtime and working memory."),
            "minimum": s("string", "Weights + overhead + one full-window sequence."),
            "total": s("string", "Weights + overhead + a full batch."),
            "perGpu": s("string", "total spread over resources.gpus."),
            "declared": s("string", "What the spec declares for it."),
            "declaredField": s("string", "The field declaring it."),
            "loaderMemory": s("string", "Pod memory loading onto GPUs needs."),
        }),
        "conditions": {"type": "array", "items": condition,
                       "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    })


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME,
                     "labels": {"app.kubernetes.io/name": "modeldeploy"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "listKind": f"{KIND}List",
                      "categories": ["all", "modeldeploy"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
                    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source",
                     "priority": 1},
                    {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.kind",
                     "priority": 1},
                    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus",
                     "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A served LLM: GPU pods, Service/Ingress, NetworkPolicy, "
                                   "TLS, API keys, QoS, autoscaling and a Clawdbot config.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    "required": ["spec"],
                    "x-kubernetes-validations": [name_rule()],
                }},
            }],
        },
    }


def crd_yaml() -> str:
    return ("# Generated by `modeldeploy crd` (operator/modeldeploy/crd.py); do not edit.\n"
            + yaml.safe_dump(crd(), sort_keys=False, width=100))
