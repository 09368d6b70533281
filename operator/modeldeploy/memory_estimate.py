"""The memory a ModelDeployment's model needs: weights + KV cache + overhead, per replica.

Pure (no I/O): it reads the typed spec only. The operator never opens the model's files,
so the size comes from `spec.model.parameters` and the KV cache from
`spec.model.kvCacheBytesPerToken`; every other figure is stated below, with where it comes
from. It is an estimate for saying "this cannot fit" before a pod is OOMKilled, not a
measurement: status.py compares it with what the spec declares, with MARGIN to spare.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from modeldeploy import quantity
from modeldeploy.spec import Spec

GIB = 2**30

# Bytes per weight of each unquantized dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# dtype auto, on a GPU: builtin takes bfloat16 (float16 without bf16 support;
# modelserver.loading.pick_dtype), vLLM and TGI the checkpoint's own dtype, bfloat16 or
# float16 for current models (vLLM serves a float32 checkpoint as float16).
AUTO_GPU_DTYPE = "bfloat16"
# dtype auto on CPU: builtin's pick_dtype takes float32 there (exact, always supported).
AUTO_CPU_DTYPE_BY_ENGINE = {"builtin": "float32"}

# AWQ and GPTQ: 4-bit weights plus, per group of 128, an fp16 scale and a 4-bit zero point.
QUANT_GROUP = 128
FOUR_BIT_BYTES = (4 + (16 + 4) / QUANT_GROUP) / 8
# Bytes per quantized weight.
QUANTIZED_BYTES = {"int8": 1.0, "fp8": 1.0, "awq": FOUR_BIT_BYTES, "gptq": FOUR_BIT_BYTES}
# Every quantization here leaves the embeddings and the LM head unquantized (builtin int8:
# modelserver/quant.py; bitsandbytes, AWQ and GPTQ checkpoints and vLLM's fp8 skip them
# too). Their share of the parameters depends on the architecture; 4% is what
# benchmarks/RESULTS.md's arithmetic gives for an 80B model (int8 ≈ 0.52 of bf16). Smaller
# models have larger shares (14% at 7B there), so a small quantized model is
# underestimated by up to ~10%: within MARGIN.
UNQUANTIZED_SHARE = 0.04

# Runtime memory of each device: the CUDA context and kernels on a GPU, the Python/torch
# process on CPU (≈0.8 GiB idle RSS beside SmolLM2's weights in benchmarks/RESULTS.md).
RUNTIME_BYTES_PER_DEVICE = 1 * GIB
# Activations, temporary buffers and allocator fragmentation, as a share of the weights
# (an assumption, not measured).
WORKING_SHARE = 0.05
# Pod memory a GPU pod needs: the process plus one tensor at a time on its way to the
# device (the weights are streamed; an 80B model's largest tensor, a 152k × 8192 bf16
# embedding, is 2.5 GB). With GPUs the weights never sit in pod memory as a whole.
LOADER_BYTES = 4 * GIB
# The estimate's parameter count is rounded and its shares approximate: the declared
# memory must be more than this fraction short before the model clearly cannot fit.
MARGIN = 0.10
# Engines that allocate their KV cache from the memory left after the weights and batch
# only as many sequences as it holds; the builtin server grows it per request.
PREALLOCATING_ENGINES = ("vllm", "tgi")


@dataclass(frozen=True)
class Estimate:
    """Bytes per replica. `kv_per_sequence` is None when the KV cache is not counted."""

    parameters: int
    weight_format: str
    gpus: int
    weights: float
    overhead: float
    kv_per_sequence: float | None
    sequences: int
    tokens_per_sequence: int

    @property
    def kv_cache(self) -> float:
        """KV cache of a full batch, every sequence at the full window."""
        return (self.kv_per_sequence or 0) * self.sequences

    @property
    def minimum(self) -> float:
        """Weights, overhead and one sequence at the full window: less cannot serve it."""
        return self.weights + self.overhead + (self.kv_per_sequence or 0)

    @property
    def total(self) -> float:
        return self.weights + self.overhead + self.kv_cache

    @property
    def per_gpu(self) -> float | None:
        return self.total / self.gpus if self.gpus else None

    def sequences_in(self, declared: float) -> int:
        """Full-window sequences whose KV cache fits beside the weights in `declared`."""
        if not self.kv_per_sequence:
            return self.sequences
        room = declared - self.weights - self.overhead
        return max(0, min(self.sequences, int(room // self.kv_per_sequence)))


def parameter_label(count: int) -> str:
    """80_000_000_000 → 80B, 7_600_000_000 → 7.6B, 135_000_000 → 135M."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6)):
        if count >= size:
            number = f"{Decimal(count) / size:f}"
            return (number.rstrip("0").rstrip(".") if "." in number else number) + unit
    return str(count)


def served_dtype(spec: Spec) -> str:
    """The dtype the engine holds unquantized weights (and the KV cache) in."""
    if spec.engine.dtype != "auto":
        return spec.engine.dtype
    if spec.resources.gpus > 0:
        return AUTO_GPU_DTYPE
    return AUTO_CPU_DTYPE_BY_ENGINE.get(spec.engine.kind, AUTO_GPU_DTYPE)


def weight_bytes(parameters: int, dtype: str, quantization: str) -> tuple[float, str]:
    """(bytes of the weights, how they are held)."""
    full = DTYPE_BYTES[dtype]
    if quantization == "none":
        return parameters * full, dtype
    per_weight = (UNQUANTIZED_SHARE * full
                  + (1 - UNQUANTIZED_SHARE) * QUANTIZED_BYTES[quantization])
    return parameters * per_weight, f"{quantization}, embeddings and LM head {dtype}"


def estimate(spec: Spec) -> Estimate | None:
    """The estimate for one replica, or None without a parameter count."""
    count = spec.model.parameters
    if count is None:
        return None
    weights, weight_format = weight_bytes(count, served_dtype(spec), spec.engine.quantization)
    tokens = spec.engine.max_total_tokens or spec.model.context_window
    per_token = spec.model.kv_cache_bytes_per_token
    devices = max(spec.resources.gpus, 1)
    return Estimate(
        parameters=count, weight_format=weight_format, gpus=spec.resources.gpus,
        weights=weights,
        overhead=RUNTIME_BYTES_PER_DEVICE * devices + WORKING_SHARE * weights,
        kv_per_sequence=None if per_token is None else per_token * tokens,
        sequences=spec.engine.max_batch_size, tokens_per_sequence=tokens)


@dataclass(frozen=True)
class Check:
    """One memory the spec declares, against what the estimate says it must hold."""

    what: str  # "GPU memory" | "memory" | "pod memory for loading"
    field: str  # the spec field to change
    declared_text: str | None  # as the spec writes it; None: the field is not set
    minimum: float
    total: float

    @property
    def declared(self) -> float | None:
        parsed = quantity.parse(self.declared_text) if self.declared_text else None
        return None if parsed is None else float(parsed)

    @property
    def too_small(self) -> bool:
        return self.declared is not None and self.declared < self.minimum * (1 - MARGIN)

    @property
    def full_batch_fits(self) -> bool:
        return self.declared is not None and self.declared >= self.total


def checks(spec: Spec, est: Estimate) -> list[Check]:
    """What must hold the model: the GPUs' memory (resources.gpuMemory, per replica: all
    its GPUs together) and the pod's memory for loading; on CPU the pod's memory."""
    r = spec.resources
    if r.gpus == 0:
        return [Check("memory", "resources.memory", r.memory, est.minimum, est.total)]
    return [Check("GPU memory", "resources.gpuMemory", r.gpu_memory, est.minimum, est.total),
            Check("pod memory for loading", "resources.memory", r.memory, LOADER_BYTES,
                  LOADER_BYTES)]


def as_status(spec: Spec, est: Estimate) -> dict[str, str]:
    """status.memory: the estimate as Kubernetes quantities (absent figures left out)."""
    model = checks(spec, est)[0]
    out = {
        "parameters": parameter_label(est.parameters),
        "parametersSource": "spec.model.parameters",
        "weightFormat": est.weight_format,
        "weights": quantity.binary(est.weights),
        "kvCache": quantity.binary(est.kv_cache) if est.kv_per_sequence else None,
        "overhead": quantity.binary(est.overhead),
        "minimum": quantity.binary(est.minimum),
        "total": quantity.binary(est.total),
        "perGpu": quantity.binary(est.per_gpu) if est.per_gpu else None,
        "declared": model.declared_text,
        "declaredField": model.field,
        "loaderMemory": quantity.binary(LOADER_BYTES) if spec.resources.gpus else None,
    }
    return {k: v for k, v in out.items() if v is not None}
