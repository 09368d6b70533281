"""Typed view of a ModelDeployment spec, with every default in one place.

The CRD schema has already refused malformed input; this module only fills defaults and
derives values the renderers share (names, URLs). It never does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

from modeldeploy import contract
from modeldeploy.constants import CACHE_DIR, PVC_MODELS_DIR

GPU_PRODUCT_LABELS = {
    "nvidia.com/gpu": "nvidia.com/gpu.product",
    "amd.com/gpu": "amd.com/gpu.product-name",
    "gpu.intel.com/i915": "gpu.intel.com/device-id",
}


# model.parameters: a count such as 80B, 7.6B or 135M (the CRD's pattern refuses others).
PARAMETER_COUNT = re.compile(r"^(0\.[0-9]{0,2}[1-9]|[1-9][0-9]{0,5}(\.[0-9]{1,3})?)([MBT])$")
PARAMETER_UNITS = {"M": 10**6, "B": 10**9, "T": 10**12}


def parameter_count(text: object) -> int:
    """80B → 80_000_000_000; ValueError naming the field for anything else."""
    m = PARAMETER_COUNT.match(str(text))
    if not m:
        raise ValueError(f"spec.model.parameters: {text!r} is not a parameter count such as "
                         "80B, 7.6B or 135M")
    return int(Decimal(m.group(1)) * PARAMETER_UNITS[m.group(3)])


@dataclass(frozen=True)
class CacheSpec:
    size: str = "100Gi"
    storage_class_name: str | None = None
    access_mode: str = "ReadWriteOnce"
    # Keep the claim (no owner reference) when the ModelDeployment goes.
    retain: bool = True


@dataclass(frozen=True)
class ModelSpec:
    source: str
    revision: str | None = None
    served_name: str = ""
    context_window: int = contract.DEFAULT_CONTEXT_WINDOW
    checksums: dict[str, str] = field(default_factory=dict)
    cache: CacheSpec | None = None
    # The model's size, for the memory estimate (memory_estimate.py); None: not estimated.
    parameters: int | None = None
    # KV cache of one token of context, all layers, at the served dtype; None: not counted.
    kv_cache_bytes_per_token: int | None = None

    @property
    def scheme(self) -> str:
        return urlparse(self.source).scheme

    @property
    def hf_id(self) -> str | None:
        """`org/name` of an hf:// source, else None."""
        if self.scheme != "hf":
            return None
        return self.source[len("hf://"):]

    @property
    def pvc_claim(self) -> str | None:
        return urlparse(self.source).netloc if self.scheme == "pvc" else None

    @property
    def needs_network(self) -> bool:
        """Whether pods download the model (and so need egress on 443)."""
        return self.scheme in ("hf", "https")

    def local_path(self) -> str | None:
        """Where the model files are inside the pod, when they are not downloaded."""
        parsed = urlparse(self.source)
        if self.scheme == "pvc":
            return f"{PVC_MODELS_DIR}/{parsed.netloc}{parsed.path}".rstrip("/")
        if self.scheme == "file":
            return parsed.path
        return None


@dataclass(frozen=True)
class EngineSpec(contract.EngineOptions):
    kind: str = contract.DEFAULT_ENGINE
    image: str | None = None
    # None: the engine's own default (builtin: hermes; vllm: tool calling off).
    tool_call_parser: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    startup_timeout_seconds: int = 1800


@dataclass(frozen=True)
class SamplingDefaults:
    max_tokens: int = contract.GUIDE_MAX_TOKENS
    temperature: float = contract.GUIDE_TEMPERATURE
    top_p: float = contract.GUIDE_TOP_P


@dataclass(frozen=True)
class ResourcesSpec:
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    gpu_product: str | None = None
    gpu_memory: str | None = None
    cpu: str = "2"
    memory: str = "8Gi"
    shared_memory: str = "1Gi"

    @property
    def gpu_product_label(self) -> str:
        return GPU_PRODUCT_LABELS.get(self.gpu_resource, "nvidia.com/gpu.product")


@dataclass(frozen=True)
class PlacementSpec:
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)


# The default target when autoscaling.metric is cpu: a utilization percentage, where the
# LLM metrics' default target (AutoscalingSpec.target) counts requests per pod.
CPU_TARGET_PERCENT = 70


@dataclass(frozen=True)
class AutoscalingSpec:
    min_replicas: int = 1
    max_replicas: int = 2
    metric: str = "inflightRequests"
    target: int = 4
    scale_down_stabilization_seconds: int = 300


@dataclass(frozen=True)
class QosSpec:
    priority: str = "normal"
    guaranteed: bool = True

    @property
    def priority_class_name(self) -> str:
        return f"modeldeploy-{self.priority}"


@dataclass(frozen=True)
class AllowFrom:
    namespaces: tuple[str, ...] = ()
    pod_selector: dict[str, Any] | None = None
    ip_blocks: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.namespaces or self.pod_selector is not None or self.ip_blocks)

    @property
    def server_cidrs(self) -> tuple[str, ...]:
        """The CIDRs the server's own allow-list enforces (beside the NetworkPolicy): the
        ipBlocks, when they are the only clients allowed. An address list cannot say
        "pods of namespace X", so when namespaces or pods are allowed too, the server
        list would refuse them; then the NetworkPolicy alone enforces the whole set."""
        if self.namespaces or self.pod_selector is not None:
            return ()
        return self.ip_blocks


@dataclass(frozen=True)
class IngressSpec:
    host: str
    class_name: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    controller_namespace: str = "ingress-nginx"
    # CIDRs of the ingress controller's pods: the server takes the client address from
    # their X-Forwarded-For (and from nobody else's) for its allow-list.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def nginx(self) -> bool:
        """Whether the class is ingress-nginx's (its own class name, or none: the default
        class of the clusters this operator targets)."""
        return self.class_name in (None, "nginx")


@dataclass(frozen=True)
class NetworkSpec:
    port: int = contract.DEFAULT_PORT
    allow_from: AllowFrom = field(default_factory=AllowFrom)
    ingress: IngressSpec | None = None
    network_policy: bool = True


@dataclass(frozen=True)
class TlsSpec:
    mode: str = "operator"
    secret_name: str | None = None
    issuer_ref: dict[str, str] | None = None
    min_version: str = contract.DEFAULT_TLS_MIN_VERSION

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"


@dataclass(frozen=True)
class AuthSpec:
    enabled: bool = True
    generate: bool = True
    secret_name: str | None = None
    count: int = 1
    rotation: int = 0


# A Service's DNS name inside the cluster: NAME.NAMESPACE.svc[.cluster.local]. Only this
# form says which namespace the peer is in (a bare NAME or NAME.NAMESPACE leans on the
# pod's DNS search path, another cluster domain on the cluster's configuration).
SERVICE_HOST = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?$")


@dataclass(frozen=True)
class Peer:
    """A server the pods call (Redis, the overflow upstream): its URL, and who the
    NetworkPolicy lets the pods reach for it (render/networkpolicy.py)."""

    url: str
    # CIDRs that replace the peer derived from the URL's host (a host name outside the
    # cluster, or a Service whose pods the namespace alone does not describe).
    egress_to: tuple[str, ...] = ()
    # The port the peer's pods listen on, when it is not the URL's: a NetworkPolicy sees
    # the packet after the Service's DNAT, so a Service whose targetPort differs needs it.
    egress_port: int | None = None

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The URL's port, or its scheme's default (redis 6379, http 80, https 443)."""
        parsed = urlparse(self.url)
        return parsed.port or contract.URL_DEFAULT_PORTS[parsed.scheme]

    @property
    def policy_port(self) -> int:
        return self.egress_port or self.port

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def service_namespace(self) -> str | None:
        """The namespace of a cluster Service named by its DNS name, else None."""
        m = SERVICE_HOST.match(self.host)
        return m.group(2) if m else None


@dataclass(frozen=True)
class AnswerCacheSpec(Peer):
    """Redis answers repeated deterministic requests (temperature 0 or a seed)."""

    # Secret (this namespace) whose data key `password` is Redis's password.
    password_secret_name: str | None = None
    ttl_seconds: int = contract.DEFAULT_CACHE_TTL_SECONDS


@dataclass(frozen=True)
class OverflowSpec(Peer):
    """An OpenAI-compatible upstream that answers what the admission limit turns away."""

    # Secret (this namespace) whose data key `apiKey` is the upstream's key.
    api_key_secret_name: str | None = None
    # Secret (this namespace) whose data key `ca.crt` signs an https upstream's certificate.
    ca_secret_name: str | None = None
    # None: the server's own request timeout.
    timeout_seconds: int | None = None
    # Mask personal data in the requests sent upstream (render: --redact-overflow-requests).
    redact_requests: bool = False


@dataclass(frozen=True)
class LoggingSpec:
    # Mask personal data in the server's (or the gateway's) log lines (--redact-logs).
    redact: bool = False


@dataclass(frozen=True)
class ClawdbotSpec:
    enabled: bool = True
    provider_name: str = "modeldeploy"


@dataclass(frozen=True)
class Spec:
    """A whole ModelDeployment: its identity plus its spec with defaults filled in."""

    name: str
    namespace: str
    uid: str
    model: ModelSpec
    engine: EngineSpec = field(default_factory=EngineSpec)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    replicas: int = 1
    autoscaling: AutoscalingSpec | None = None
    qos: QosSpec = field(default_factory=QosSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    tls: TlsSpec = field(default_factory=TlsSpec)
    auth: AuthSpec = field(default_factory=AuthSpec)
    clawdbot: ClawdbotSpec = field(default_factory=ClawdbotSpec)
    answer_cache: AnswerCacheSpec | None = None
    overflow: OverflowSpec | None = None
    logging: LoggingSpec = field(default_factory=LoggingSpec)

    # --- derived names, so every renderer agrees on them ---
    @property
    def service_name(self) -> str:
        return self.name

    @property
    def tls_secret_name(self) -> str:
        if self.tls.mode == "secret" and self.tls.secret_name:
            return self.tls.secret_name
        return self.tls.secret_name or f"{self.name}-tls"

    @property
    def api_key_secret_name(self) -> str:
        return self.auth.secret_name or f"{self.name}-api-keys"

    @property
    def cache_claim_name(self) -> str:
        return f"{self.name}-model-cache"

    @property
    def clawdbot_configmap_name(self) -> str:
        return f"{self.name}-clawdbot"

    @property
    def cache_dir(self) -> str:
        return CACHE_DIR

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"

    @property
    def service_dns_names(self) -> list[str]:
        n, ns = self.name, self.namespace
        return [n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local"]

    @property
    def endpoint(self) -> str:
        return f"{self.name}.{self.namespace}.svc:{self.network.port}"

    @property
    def service_url(self) -> str:
        """The OpenAI base URL inside the cluster: the Service."""
        return f"{self.scheme}://{self.endpoint}/v1"

    @property
    def ingress_url(self) -> str | None:
        """The OpenAI base URL through the Ingress (LAN clients), None without one."""
        if not self.network.ingress:
            return None
        path = self.network.ingress.path.rstrip("/")
        return f"{self.scheme}://{self.network.ingress.host}{path}/v1"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use: the Ingress when there is one, else the Service."""
        return self.ingress_url or self.service_url

    def url_via(self, via: str | None) -> str:
        """The base URL through `via` ("ingress" | "service"), or base_url for None;
        ValueError for "ingress" without an Ingress."""
        if via is None:
            return self.base_url
        if via == "service":
            return self.service_url
        if via == "ingress" and self.ingress_url:
            return self.ingress_url
        if via == "ingress":
            raise ValueError(f"ModelDeployment {self.namespace}/{self.name} has no "
                             "network.ingress")
        raise ValueError(f"unknown route {via!r}: ingress or service")

    @property
    def desired_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas


def _given(section: dict[str, Any] | None, **fields: tuple[str, Callable[[Any], Any]]) -> dict:
    """Keyword arguments for a spec dataclass from the CR's camelCase keys, only for the
    keys the user set: what is not set takes the dataclass's own default (defined once)."""
    section = section or {}
    return {attr: convert(section[key]) for attr, (key, convert) in fields.items()
            if section.get(key) is not None}


def _model(name: str, m: dict[str, Any]) -> ModelSpec:
    cache = m.get("cache")
    return ModelSpec(
        source=m.get("source", ""),
        served_name=m.get("servedName") or name,
        checksums=dict(m.get("checksums") or {}),
        cache=None if cache is None else CacheSpec(**_given(
            cache, size=("size", str), storage_class_name=("storageClassName", str),
            access_mode=("accessMode", str), retain=("retain", bool))),
        **_given(m, revision=("revision", str), context_window=("contextWindow", int),
                 parameters=("parameters", parameter_count),
                 kv_cache_bytes_per_token=("kvCacheBytesPerToken", int)),
    )


def _engine(e: dict[str, Any]) -> EngineSpec:
    return EngineSpec(
        args=tuple(e.get("args") or ()),
        env=tuple(e.get("env") or ()),
        **_given(e, kind=("kind", str), image=("image", str), dtype=("dtype", str),
                 quantization=("quantization", str), max_batch_size=("maxBatchSize", int),
                 max_concurrent_requests=("maxConcurrentRequests", int),
                 max_input_tokens=("maxInputTokens", int),
                 max_total_tokens=("maxTotalTokens", int),
                 tool_call_parser=("toolCallParser", str),
                 startup_timeout_seconds=("startupTimeoutSeconds", int)),
    )


def _defaults(d: dict[str, Any]) -> SamplingDefaults:
    return SamplingDefaults(**_given(d, max_tokens=("maxTokens", int),
                                     temperature=("temperature", float),
                                     top_p=("topP", float)))


def _resources(r: dict[str, Any]) -> ResourcesSpec:
    return ResourcesSpec(**_given(
        r, gpus=("gpus", int), gpu_resource=("gpuResource", str),
        gpu_product=("gpuProduct", str), gpu_memory=("gpuMemory", str), cpu=("cpu", str),
        memory=("memory", str), shared_memory=("sharedMemory", str)))


def _placement(p: dict[str, Any]) -> PlacementSpec:
    return PlacementSpec(node_selector=dict(p.get("nodeSelector") or {}),
                         tolerations=tuple(p.get("tolerations") or ()),
                         affinity=dict(p.get("affinity") or {}))


def _autoscaling(a: dict[str, Any] | None) -> AutoscalingSpec | None:
    if a is None or a.get("enabled") is False:
        return None
    given = _given(a, min_replicas=("minReplicas", int), max_replicas=("maxReplicas", int),
                   metric=("metric", str), target=("target", int),
                   scale_down_stabilization_seconds=("scaleDownStabilizationSeconds", int))
    if "target" not in given and given.get("metric") == "cpu":
        given["target"] = CPU_TARGET_PERCENT
    return AutoscalingSpec(**given)


def _network(n: dict[str, Any]) -> NetworkSpec:
    af = n.get("allowFrom") or {}
    ing = n.get("ingress")
    return NetworkSpec(
        allow_from=AllowFrom(
            namespaces=tuple(af.get("namespaces") or ()),
            pod_selector=af.get("podSelector"),
            ip_blocks=tuple(af.get("ipBlocks") or ()),
        ),
        ingress=IngressSpec(
            host=ing["host"], annotations=dict(ing.get("annotations") or {}),
            trusted_proxies=tuple(ing.get("trustedProxies") or ()),
            **_given(ing, class_name=("className", str), path=("path", str),
                     controller_namespace=("controllerNamespace", str)),
        ) if ing else None,
        **_given(n, port=("port", int), network_policy=("networkPolicy", bool)),
    )


def _auth(au: dict[str, Any]) -> AuthSpec:
    return AuthSpec(**_given(au, enabled=("enabled", bool)),
                    **_given(au.get("apiKeys"), generate=("generate", bool),
                             secret_name=("secretName", str), count=("count", int),
                             rotation=("rotation", int)))


def _peer_fields(p: dict[str, Any]) -> dict[str, Any]:
    return {"egress_to": tuple(p.get("egressTo") or ()),
            **_given(p, egress_port=("egressPort", int))}


def _answer_cache(c: dict[str, Any] | None) -> AnswerCacheSpec | None:
    if c is None:
        return None
    return AnswerCacheSpec(url=c.get("redisUrl", ""), **_peer_fields(c),
                           **_given(c, password_secret_name=("passwordSecretName", str),
                                    ttl_seconds=("ttlSeconds", int)))


def _overflow(o: dict[str, Any] | None) -> OverflowSpec | None:
    if o is None:
        return None
    return OverflowSpec(url=o.get("url", ""), **_peer_fields(o),
                        **_given(o, api_key_secret_name=("apiKeySecretName", str),
                                 ca_secret_name=("caSecretName", str),
                                 timeout_seconds=("timeoutSeconds", int),
                                 redact_requests=("redactRequests", bool)))


def parse(name: str, namespace: str, uid: str, spec: dict[str, Any]) -> Spec:
    """Build the typed Spec from the CR's `spec` dict (already schema-validated)."""
    def section(key: str) -> dict[str, Any]:
        return spec.get(key) or {}

    return Spec(
        name=name, namespace=namespace, uid=uid,
        model=_model(name, section("model")),
        engine=_engine(section("engine")),
        defaults=_defaults(section("defaults")),
        resources=_resources(section("resources")),
        placement=_placement(section("placement")),
        autoscaling=_autoscaling(spec.get("autoscaling")),
        qos=QosSpec(**_given(section("qos"), priority=("priority", str),
                             guaranteed=("guaranteed", bool))),
        network=_network(section("network")),
        tls=TlsSpec(**_given(section("tls"), mode=("mode", str),
                             secret_name=("secretName", str),
                             issuer_ref=("issuerRef", dict), min_version=("minVersion", str))),
        auth=_auth(section("auth")),
        clawdbot=ClawdbotSpec(**_given(section("clawdbot"), enabled=("enabled", bool),
                                       provider_name=("providerName", str))),
        answer_cache=_answer_cache(spec.get("answerCache")),
        overflow=_overflow(spec.get("overflow")),
        logging=LoggingSpec(**_given(section("logging"), redact=("redact", bool))),
        **_given(spec, replicas=("replicas", int)),
    )
