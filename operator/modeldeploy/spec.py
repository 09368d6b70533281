"""Typed view of a ModelDeployment spec, with every default in one place.

The CRD schema has already refused malformed input; this module only fills defaults and
derives values the renderers share (names, URLs). It never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from modeldeploy.constants import CACHE_DIR, PVC_MODELS_DIR

GPU_PRODUCT_LABELS = {
    "nvidia.com/gpu": "nvidia.com/gpu.product",
    "amd.com/gpu": "amd.com/gpu.product-name",
    "gpu.intel.com/i915": "gpu.intel.com/device-id",
}


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
    context_window: int = 4096
    checksums: dict[str, str] = field(default_factory=dict)
    cache: CacheSpec | None = None

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
class EngineSpec:
    kind: str = "builtin"
    image: str | None = None
    dtype: str = "auto"
    quantization: str = "none"
    max_batch_size: int = 8
    max_concurrent_requests: int = 128
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    tool_call_parser: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    startup_timeout_seconds: int = 1800


@dataclass(frozen=True)
class SamplingDefaults:
    max_tokens: int = 2048
    temperature: float = 0.7
    top_p: float = 0.9


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


@dataclass(frozen=True)
class NetworkSpec:
    port: int = 8080
    allow_from: AllowFrom = field(default_factory=AllowFrom)
    ingress: IngressSpec | None = None
    network_policy: bool = True


@dataclass(frozen=True)
class TlsSpec:
    mode: str = "operator"
    secret_name: str | None = None
    issuer_ref: dict[str, str] | None = None
    min_version: str = "1.3"

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
    def base_url(self) -> str:
        """The OpenAI base URL clients use: the Ingress when there is one, else the Service."""
        if self.network.ingress:
            scheme = "https" if self.tls.enabled else "http"
            path = self.network.ingress.path.rstrip("/")
            return f"{scheme}://{self.network.ingress.host}{path}/v1"
        return f"{self.scheme}://{self.endpoint}/v1"

    @property
    def desired_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas


def _get(d: dict[str, Any] | None, key: str, default: Any = None) -> Any:
    if not d:
        return default
    value = d.get(key)
    return default if value is None else value


def _quantity(value: Any, default: str) -> str:
    return default if value is None else str(value)


def parse(name: str, namespace: str, uid: str, spec: dict[str, Any]) -> Spec:
    """Build the typed Spec from the CR's `spec` dict (already schema-validated)."""
    m = spec.get("model") or {}
    cache = m.get("cache")
    model = ModelSpec(
        source=m.get("source", ""),
        revision=m.get("revision"),
        served_name=m.get("servedName") or name,
        context_window=int(_get(m, "contextWindow", 4096)),
        checksums=dict(m.get("checksums") or {}),
        cache=CacheSpec(
            size=_quantity(cache.get("size"), "100Gi"),
            storage_class_name=cache.get("storageClassName"),
            access_mode=_get(cache, "accessMode", "ReadWriteOnce"),
            retain=_get(cache, "retain", True),
        ) if cache is not None else None,
    )
    e = spec.get("engine") or {}
    engine = EngineSpec(
        kind=_get(e, "kind", "builtin"),
        image=e.get("image"),
        dtype=_get(e, "dtype", "auto"),
        quantization=_get(e, "quantization", "none"),
        max_batch_size=int(_get(e, "maxBatchSize", 8)),
        max_concurrent_requests=int(_get(e, "maxConcurrentRequests", 128)),
        max_input_tokens=e.get("maxInputTokens"),
        max_total_tokens=e.get("maxTotalTokens"),
        tool_call_parser=e.get("toolCallParser"),
        args=tuple(e.get("args") or ()),
        env=tuple(e.get("env") or ()),
        startup_timeout_seconds=int(_get(e, "startupTimeoutSeconds", 1800)),
    )
    d = spec.get("defaults") or {}
    defaults = SamplingDefaults(
        max_tokens=int(_get(d, "maxTokens", 2048)),
        temperature=float(_get(d, "temperature", 0.7)),
        top_p=float(_get(d, "topP", 0.9)),
    )
    r = spec.get("resources") or {}
    resources = ResourcesSpec(
        gpus=int(_get(r, "gpus", 0)),
        gpu_resource=_get(r, "gpuResource", "nvidia.com/gpu"),
        gpu_product=r.get("gpuProduct"),
        gpu_memory=None if r.get("gpuMemory") is None else str(r["gpuMemory"]),
        cpu=_quantity(r.get("cpu"), "2"),
        memory=_quantity(r.get("memory"), "8Gi"),
        shared_memory=_quantity(r.get("sharedMemory"), "1Gi"),
    )
    p = spec.get("placement") or {}
    placement = PlacementSpec(
        node_selector=dict(p.get("nodeSelector") or {}),
        tolerations=tuple(p.get("tolerations") or ()),
        affinity=dict(p.get("affinity") or {}),
    )
    a = spec.get("autoscaling")
    autoscaling = AutoscalingSpec(
        min_replicas=int(_get(a, "minReplicas", 1)),
        max_replicas=int(_get(a, "maxReplicas", 2)),
        metric=_get(a, "metric", "inflightRequests"),
        target=int(_get(a, "target", 4 if _get(a, "metric") != "cpu" else 70)),
        scale_down_stabilization_seconds=int(_get(a, "scaleDownStabilizationSeconds", 300)),
    ) if a is not None and _get(a, "enabled", True) else None
    q = spec.get("qos") or {}
    qos = QosSpec(priority=_get(q, "priority", "normal"),
                  guaranteed=bool(_get(q, "guaranteed", True)))
    n = spec.get("network") or {}
    af = n.get("allowFrom") or {}
    ing = n.get("ingress")
    network = NetworkSpec(
        port=int(_get(n, "port", 8080)),
        allow_from=AllowFrom(
            namespaces=tuple(af.get("namespaces") or ()),
            pod_selector=af.get("podSelector"),
            ip_blocks=tuple(af.get("ipBlocks") or ()),
        ),
        ingress=IngressSpec(
            host=ing["host"],
            class_name=ing.get("className"),
            annotations=dict(ing.get("annotations") or {}),
            path=_get(ing, "path", "/"),
            controller_namespace=_get(ing, "controllerNamespace", "ingress-nginx"),
        ) if ing else None,
        network_policy=bool(_get(n, "networkPolicy", True)),
    )
    t = spec.get("tls") or {}
    tls = TlsSpec(
        mode=_get(t, "mode", "operator"),
        secret_name=t.get("secretName"),
        issuer_ref=t.get("issuerRef"),
        min_version=str(_get(t, "minVersion", "1.3")),
    )
    au = spec.get("auth") or {}
    keys = au.get("apiKeys") or {}
    auth = AuthSpec(
        enabled=bool(_get(au, "enabled", True)),
        generate=bool(_get(keys, "generate", True)),
        secret_name=keys.get("secretName"),
        count=int(_get(keys, "count", 1)),
        rotation=int(_get(keys, "rotation", 0)),
    )
    c = spec.get("clawdbot") or {}
    clawdbot = ClawdbotSpec(
        enabled=bool(_get(c, "enabled", True)),
        provider_name=_get(c, "providerName", "modeldeploy"),
    )
    return Spec(
        name=name, namespace=namespace, uid=uid, model=model, engine=engine,
        defaults=defaults, resources=resources, placement=placement,
        replicas=int(_get(spec, "replicas", 1)), autoscaling=autoscaling, qos=qos,
        network=network, tls=tls, auth=auth, clawdbot=clawdbot,
    )
