"""The memory estimate (memory_estimate.py), its MemoryFits condition (status.py) and the
examples: every number below is worked out by hand in the comment beside it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_operator import make_spec
from modeldeploy import memory_estimate, status
from modeldeploy.crd import crd
from modeldeploy.memory_estimate import GIB, estimate, parameter_label, weight_bytes
from modeldeploy.spec import PARAMETER_COUNT, parameter_count, parse
from modeldeploy.status import Observed

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# The guide's model: 80B parameters, 24576 bytes of KV cache per token (2 × 12
# full-attention layers × 2 KV heads × 256 head_dim × 2 bytes).
BIG: dict[str, Any] = {
    "model": {"source": "hf://Qwen/Qwen3-Next-80B-A3B-Instruct", "contextWindow": 32768,
              "parameters": "80B", "kvCacheBytesPerToken": 24576},
    "engine": {"maxBatchSize": 8},
    "resources": {"gpus": 3, "gpuMemory": "168Gi", "memory": "64Gi"},
}


def big(**resources: Any) -> Any:
    spec = copy.deepcopy(BIG)
    spec["resources"].update(resources)
    return make_spec(spec)


def memory_cond(spec: Any, ready: int = 0) -> status.Cond | None:
    dep = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": 1}}
    _, conds, _ = status.compute(spec, Observed(1, dep, [], []))
    return next((c for c in conds if c.type == "MemoryFits"), None)


# --- the parameter count ---

@pytest.mark.parametrize(("text", "count", "label"), [
    ("80B", 80_000_000_000, "80B"), ("7.6B", 7_600_000_000, "7.6B"),
    ("135M", 135_000_000, "135M"), ("0.5B", 500_000_000, "500M"),
    ("1.5T", 1_500_000_000_000, "1.5T"), ("360M", 360_000_000, "360M"),
    ("1000M", 1_000_000_000, "1B"),
])
def test_parameter_counts_parse_and_print_back(text: str, count: int, label: str) -> None:
    assert parameter_count(text) == count
    assert parameter_label(count) == label


@pytest.mark.parametrize("bad", ["80GB", "80", "80b", "0B", "-1B", "1.2345B", "80 B", "B",
                                 "1e9B", "0.0B", ""])
def test_a_bad_parameter_count_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.model\.parameters"):
        parameter_count(bad)
    # the CRD refuses it at apply with the same pattern (the API server's regexp is RE2;
    # this one has nothing RE2 and Python read differently)
    assert PARAMETER_COUNT.match(bad) is None


def test_the_crd_carries_the_spec_pattern_and_the_status_fields() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    model = schema["spec"]["properties"]["model"]["properties"]
    assert model["parameters"]["pattern"] == PARAMETER_COUNT.pattern
    assert model["kvCacheBytesPerToken"]["minimum"] == 1
    # every status.memory key is in the schema, or the API server would prune it
    written = memory_estimate.as_status(big(), estimate(big()))
    cpu = make_spec({**BIG, "resources": {"gpus": 0, "memory": "400Gi"}})
    written |= memory_estimate.as_status(cpu, estimate(cpu))
    assert set(written) <= set(schema["status"]["properties"]["memory"]["properties"])
    assert {"parameters", "parametersSource", "weights", "kvCache", "total",
            "declared"} <= set(written)


def test_spec_parses_the_model_fields_once() -> None:
    spec = make_spec(BIG)
    assert spec.model.parameters == 80_000_000_000
    assert spec.model.kv_cache_bytes_per_token == 24576
    assert make_spec().model.parameters is None
    with pytest.raises(ValueError, match=r"spec\.model\.parameters: '80GB'"):
        parse("m", "ns", "u", {"model": {"source": "hf://a/b", "parameters": "80GB"}})


# --- weights, KV cache, overhead ---

def test_weight_bytes_by_dtype_and_quantization() -> None:
    # 80e9 × 2 bytes
    assert weight_bytes(80 * 10**9, "bfloat16", "none") == (160e9, "bfloat16")
    assert weight_bytes(80 * 10**9, "float32", "none")[0] == 320e9
    # int8: 4% unquantized at 2 bytes + 96% at 1 byte = 1.04 bytes → 83.2e9
    # (≈ 0.52 × 160 GB, benchmarks/RESULTS.md)
    weights, fmt = weight_bytes(80 * 10**9, "bfloat16", "int8")
    assert weights == pytest.approx(83.2e9) and fmt == "int8, embeddings and LM head bfloat16"
    assert weights / 160e9 == pytest.approx(0.52)
    # fp8 is one byte per weight too
    assert weight_bytes(80 * 10**9, "bfloat16", "fp8")[0] == pytest.approx(83.2e9)
    # int8 with a float32 model (builtin on CPU): 0.04 × 4 + 0.96 × 1 = 1.12 bytes
    assert weight_bytes(80 * 10**9, "float32", "int8")[0] == pytest.approx(89.6e9)
    # AWQ/GPTQ: (4 + 20/128) / 8 = 0.51953125 byte; 0.04 × 2 + 0.96 × 0.51953125 = 0.57875
    assert weight_bytes(80 * 10**9, "float16", "awq")[0] == pytest.approx(46.3e9)
    assert weight_bytes(80 * 10**9, "float16", "gptq")[0] == pytest.approx(46.3e9)


@pytest.mark.parametrize(("engine", "gpus", "dtype"), [
    ({}, 1, "bfloat16"),                              # builtin on a GPU: pick_dtype's bf16
    ({}, 0, "float32"),                               # builtin on CPU: float32
    ({"kind": "vllm"}, 1, "bfloat16"),                # the checkpoint's dtype
    ({"kind": "vllm"}, 0, "bfloat16"),
    ({"dtype": "float16"}, 0, "float16"),             # set explicitly: as set
])
def test_the_dtype_auto_resolves_to(engine: dict, gpus: int, dtype: str) -> None:
    spec = make_spec({"engine": engine, "resources": {"gpus": gpus}})
    assert memory_estimate.served_dtype(spec) == dtype


def test_the_guide_model_on_three_gpus() -> None:
    e = estimate(big())
    assert e is not None
    assert e.weights == 160e9
    # 1 GiB per GPU + 5% of the weights
    assert e.overhead == 3 * GIB + 8e9
    # 24576 bytes × 32768 tokens = 768 MiB per sequence; × 8 = 6 GiB
    assert e.kv_per_sequence == 768 * 2**20 and e.kv_cache == 6 * GIB
    assert e.minimum == 160e9 + 8e9 + 3 * GIB + 768 * 2**20       # 160.21 GiB
    assert e.total == 160e9 + 8e9 + 9 * GIB                       # 165.46 GiB
    assert e.per_gpu == e.total / 3
    shown = memory_estimate.as_status(big(), e)
    # rounded up: 160e9 B = 149.01 GiB → 150Gi; 165.46 GiB → 166Gi; 55.15 GiB → 56Gi
    assert (shown["weights"], shown["total"], shown["perGpu"]) == ("150Gi", "166Gi", "56Gi")
    assert shown["kvCache"] == "6Gi" and shown["declared"] == "168Gi"
    assert shown["declaredField"] == "resources.gpuMemory" and shown["loaderMemory"] == "4Gi"


def test_kv_cache_follows_max_total_tokens_and_batch_size() -> None:
    spec = make_spec({**BIG, "engine": {"maxBatchSize": 2, "maxTotalTokens": 4096}})
    e = estimate(spec)
    # 24576 × 4096 = 96 MiB per sequence, 2 of them
    assert e.kv_per_sequence == 96 * 2**20 and e.kv_cache == 192 * 2**20


def test_without_kv_bytes_the_kv_cache_is_not_counted() -> None:
    model = {k: v for k, v in BIG["model"].items() if k != "kvCacheBytesPerToken"}
    spec = make_spec({**BIG, "model": model})
    e = estimate(spec)
    assert e.kv_per_sequence is None and e.minimum == e.total == 160e9 + 8e9 + 3 * GIB
    assert "kvCache" not in memory_estimate.as_status(spec, e)
    assert "KV cache not counted" in memory_cond(spec).message


def test_sequences_that_fit() -> None:
    e = estimate(big())
    # room = declared − weights − overhead; 768 MiB each
    assert e.sequences_in(e.weights + e.overhead + 3.5 * 768 * 2**20) == 3
    assert e.sequences_in(e.weights) == 0
    assert e.sequences_in(10**15) == 8


# --- the condition ---

def test_too_little_gpu_memory_is_model_too_large_with_both_numbers() -> None:
    c = memory_cond(big(gpus=1, gpuMemory="48Gi"))
    assert (c.status, c.reason) == ("False", "ModelTooLarge")
    # minimum on one GPU: 160e9 + 8e9 B (156.46 GiB) + 1 GiB + 768 MiB = 158.21 GiB → 159Gi
    assert "at least 159Gi of GPU memory per replica" in c.message
    assert "resources.gpuMemory is 48Gi" in c.message
    assert "80B parameters as bfloat16: 150Gi of weights" in c.message
    assert "engine.quantization" in c.message  # unquantized: quantizing is a way out


def test_a_declared_figure_is_shown_as_written() -> None:
    # 48G (decimal) is 44.7 GiB: the message quotes the spec, not a conversion
    c = memory_cond(big(gpus=1, gpuMemory="48G"))
    assert "resources.gpuMemory is 48G:" in c.message


def test_within_the_margin_is_not_too_large() -> None:
    e = estimate(big())
    just_short = int(e.minimum * (1 - memory_estimate.MARGIN)) + 2**20  # 9.9% short
    c = memory_cond(big(gpuMemory=str(just_short)))
    assert c.status == "True" and c.reason == "FitsFewerSequences"
    clearly_short = int(e.minimum * (1 - memory_estimate.MARGIN)) - 2**20
    assert memory_cond(big(gpuMemory=str(clearly_short))).status == "False"


def test_enough_memory_fits_with_the_numbers() -> None:
    c = memory_cond(big())
    assert (c.status, c.reason) == ("True", "Fits")
    assert "resources.gpuMemory 168Gi holds the 166Gi" in c.message
    assert "(3 GPUs together)" in c.message


def test_room_for_fewer_sequences_says_how_many_per_engine() -> None:
    # 160e9 + 8e9 + 3 GiB = 159.46 GiB; 162Gi leaves 2.54 GiB: 3 sequences of 768 MiB
    c = memory_cond(big(gpuMemory="162Gi"))
    assert (c.status, c.reason) == ("True", "FitsFewerSequences")
    assert "about 3 of 8 sequences" in c.message and "may run out of memory" in c.message
    vllm = make_spec({**BIG, "engine": {"kind": "vllm", "maxBatchSize": 8},
                      "resources": {**BIG["resources"], "gpuMemory": "162Gi"}})
    assert "the engine batches that many" in memory_cond(vllm).message


def test_gpus_without_gpu_memory_are_unknown() -> None:
    spec = make_spec({**BIG, "resources": {"gpus": 3, "memory": "64Gi"}})
    c = memory_cond(spec)
    assert (c.status, c.reason) == ("Unknown", "GpuMemoryNotDeclared")
    assert "set resources.gpuMemory" in c.message and "at least 161Gi" in c.message


def test_a_gpu_pod_needs_memory_for_loading_only() -> None:
    c = memory_cond(big(memory="1Gi"))
    assert (c.status, c.reason) == ("False", "PodMemoryTooSmall")
    assert "4Gi of pod memory" in c.message and "resources.memory is 1Gi" in c.message
    assert memory_cond(big(memory="8Gi")).status == "True"  # far below the 160 GB of weights


def test_on_cpu_the_pod_memory_holds_the_model() -> None:
    # SmolLM2-360M in float32 on CPU (mini-pc.yaml): 1.44e9 B weights + 1 GiB + 5%,
    # 81920 × 8192 = 640 MiB per sequence: minimum 3.03 GiB
    spec = {"model": {"source": "hf://a/b", "contextWindow": 8192, "parameters": "360M",
                      "kvCacheBytesPerToken": 81920},
            "engine": {"maxBatchSize": 4}, "resources": {"gpus": 0, "memory": "2Gi"}}
    c = memory_cond(make_spec(spec))
    assert (c.status, c.reason) == ("False", "ModelTooLarge")
    assert "of memory per replica" in c.message and "resources.memory is 2Gi" in c.message
    assert "float32" in c.message
    spec["resources"]["memory"] = "6Gi"
    assert memory_cond(make_spec(spec)).reason == "Fits"


def test_no_parameters_no_condition_and_no_status_memory() -> None:
    spec = make_spec({"resources": {"gpus": 1, "gpuMemory": "1Mi"}})
    assert memory_cond(spec) is None
    _, _, fields = status.compute(spec, Observed(1, None, [], []))
    assert fields["memory"] is None


def test_ready_says_so_first_and_an_event_is_due() -> None:
    spec = big(gpus=1, gpuMemory="48Gi")
    dep = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "readyReplicas": 0, "updatedReplicas": 1}}
    oom = [{"metadata": {"name": "p"}, "status": {"containerStatuses": [{
        "name": "server", "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}]
    new = status.build(spec, Observed(1, dep, oom, []), {}, "2026-01-01T00:00:00Z")
    ready = new["conditions"][0]
    # the cause comes before its symptom, the OOMKilled crash
    assert ready["status"] == "False" and "resources.gpuMemory is 48Gi" in ready["message"]
    assert new["memory"]["declared"] == "48Gi" and new["memory"]["minimum"] == "159Gi"
    assert "MemoryFits" in [w["type"] for w in status.new_warnings({}, new)]
    # a serving replica keeps Ready True: the estimate may be wrong, the pod is the truth
    served = {**dep, "status": {**dep["status"], "readyReplicas": 1}}
    ok = status.build(spec, Observed(1, served, [], []), {}, "2026-01-01T00:00:00Z")
    assert ok["conditions"][0]["status"] == "True"


# --- the examples ---

def example_specs() -> dict[str, Any]:
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[path.name] = (doc, parse(doc["metadata"]["name"], "ns", "u", doc["spec"]))
    return out


def test_every_example_states_its_size_and_fits_its_estimate() -> None:
    specs = example_specs()
    assert len(specs) >= 6
    for name, (_, spec) in specs.items():
        c = memory_cond(spec)
        assert c is not None, f"{name}: no spec.model.parameters"
        assert c.status == "True", f"{name}: {c.message}"
        # and with GPUs, a GPU product that holds its share (80 GB H100, 24 GB L4)
        per_gpu = estimate(spec).per_gpu
        if spec.resources.gpu_product == "NVIDIA-H100-80GB-HBM3":
            assert per_gpu < 80e9 * 0.9, name
        if spec.resources.gpu_product == "NVIDIA-L4":
            assert estimate(spec).minimum < 24e9 * 0.9, name


def test_the_old_31gi_int8_example_would_not_fit() -> None:
    doc, _ = example_specs()["lan-80b-int8.yaml"]
    old = copy.deepcopy(doc["spec"])
    old["resources"].update({"gpus": 1, "gpuMemory": "31Gi"})  # as it was before issue 12
    c = memory_cond(parse("lan-80b-int8", "ns", "u", old))
    assert (c.status, c.reason) == ("False", "ModelTooLarge")
    # int8 weights alone: 83.2e9 B = 77.5 GiB → 78Gi
    assert "78Gi of weights" in c.message and "resources.gpuMemory is 31Gi" in c.message
    assert "quantize" not in c.message  # already int8: not offered again


def test_the_examples_table_quotes_the_estimate() -> None:
    """examples/README.md's bracketed figure is the estimate's total (or minimum)."""
    rows = [line for line in (EXAMPLES / "README.md").read_text().splitlines()
            if line.startswith("| `") and ".yaml`" in line]
    specs = example_specs()
    assert len(rows) == len(specs)
    for row in rows:
        name = row.split("`")[1]
        quoted = row.rsplit("|", 2)[-2].split("(", 1)[1].split(")")[0].split()[0].rstrip(";")
        shown = memory_estimate.as_status(specs[name][1], estimate(specs[name][1]))
        assert quoted in (shown["total"], shown["minimum"]), name
