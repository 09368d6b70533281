"""Load tokenizer + causal LM from a resolved source, with dtype, device placement,
optional int8 weights and honest context extension (RoPE scaling).

Weights go straight to their device(s) (streaming.py): the host never holds the whole
model, and with int8 the full-precision model never exists anywhere. benchmarks/RESULTS.md
("Loading a big model") has the peak memory of this path against load-then-quantize."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from . import streaming
from .fetch import LocalModel
from .quant import quantize_int8

log = logging.getLogger("modelserver.loading")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ContextInfo:
    native: int            # the model's own max_position_embeddings
    served: int            # what the server accepts (== native unless extended)
    rope_scaling: dict | None  # the scaling applied to reach `served`, if any

    def as_dict(self) -> dict:
        return {
            "native_context_window": self.native,
            "context_window": self.served,
            "rope_scaling": self.rope_scaling,
        }


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    context: ContextInfo
    dtype: torch.dtype
    device: str
    quantization: str
    parameters: int
    weight_bytes: int
    load_seconds: float
    loader: str = "streaming"  # or why transformers' loader was used instead


def pick_dtype(name: str, device: str) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPU: exact and universally supported


def pick_device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _rope_scaling(config: Any, wanted: int | None) -> ContextInfo:
    native = int(getattr(config, "max_position_embeddings", 0) or 0)
    if not wanted or not native or wanted <= native:
        return ContextInfo(native, min(wanted or native, native) or (wanted or 0), None)
    factor = wanted / native
    # YaRN, static: positions inside the trained window keep (almost) their trained
    # frequencies and the rotary embedding does not depend on the batch's current length —
    # dynamic NTK would, which breaks batch-invariance and prefix reuse.
    # transformers 5 keeps rope settings in `rope_parameters`; 4.x used `rope_scaling`.
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling = {"rope_type": "yarn", "factor": float(factor),
               "original_max_position_embeddings": native}
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = {**params, "rope_theta": theta, **scaling}
    else:
        config.rope_scaling = {**scaling, "type": "yarn"}
    config.max_position_embeddings = wanted
    log.warning(
        "context window extended from %d to %d tokens with YaRN RoPE scaling (factor %.2f):"
        " the model was trained on %d; quality beyond that is below its trained range",
        native, wanted, factor, native,
    )
    return ContextInfo(native, wanted, scaling)


def _gguf_kwargs(gguf_file: str) -> dict[str, Any]:
    """from_pretrained arguments that unpack a .gguf's weights once, at load.

    transformers >= 5.2x may otherwise keep them packed (GgufLinear) whenever the `kernels`
    package and a hub kernel are at hand, and then unpack them in every forward on the host
    (see transformers/quantizers/quantizer_gguf.py). Unpacked, they are plain nn.Linear
    weights in the requested dtype, so --dtype and --quantization int8 apply to them as to
    any dense checkpoint. Older transformers have no GgufConfig and always unpack."""
    kw: dict[str, Any] = {"gguf_file": gguf_file}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        kw["quantization_config"] = gguf_config(dequantize=True)
    return kw


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, each .gguf file is parsed once and each gguf tensor-name map built
    once.

    transformers reads the file anew for the tokenizer, the config and the weights, each
    time parsing every metadata field (the whole vocabulary) in Python, and its weight
    mapping builds gguf's TensorNameMap again for each of the model's modules (~400 for
    SmolLM2): together most of a GGUF load (benchmarks/RESULTS.md §10). Both are only read by
    their users, and transformers imports them from `gguf` at call time, so sharing them for
    the load is safe; the originals are back (and the file unmapped) when it ends."""
    try:
        import gguf
    except ImportError:  # transformers will say gguf is needed
        yield
        return
    reader_cls = getattr(gguf, "GGUFReader", None)
    name_map = getattr(gguf, "get_tensor_name_map", None)
    if reader_cls is None or name_map is None:  # a gguf release we do not know: as is
        yield
        return
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map
        readers.clear()


def packed_weights(model: Any) -> list[str]:
    """Names of parameters that are not plain floating-point weights (packed GGUF blocks
    are uint8); empty for a model that runs plain matmuls."""
    return [n for n, p in model.named_parameters() if not p.is_floating_point()]


def _load_model(src: LocalModel, config: Any, dtype: torch.dtype, device_map: str,
                int8: bool) -> tuple[Any, int, str]:
    """(model, parameter count before int8, "streaming" or why not): streamed when the
    checkpoint allows it, else transformers' loader (then int8 after the full load)."""
    if src.gguf_file:
        # GGUF cannot be streamed tensor by tensor into our layers: transformers reads and
        # dequantizes the whole file itself. Its path stays load-then-quantize.
        why = "GGUF file"
    else:
        try:
            return (*streaming.load(src.directory, config, dtype, device_map, int8), "streaming")
        except streaming.NotStreamable as e:
            why = str(e)
    kw: dict[str, Any] = _gguf_kwargs(src.gguf_file) if src.gguf_file else {}
    if src.gguf_file and device_map != "auto":
        # as before streaming existed: load on the host, then move
        model = AutoModelForCausalLM.from_pretrained(
            str(src.directory), config=config, dtype=dtype, **kw).to(device_map)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(src.directory), config=config, dtype=dtype, device_map=device_map, **kw)
    if model.dtype != dtype:
        model = model.to(dtype)  # GGUF dequantizes to float32 first
    model.eval()
    if src.gguf_file and (left := packed_weights(model)):
        # what transformers did not unpack would be unpacked again in every forward
        log.warning("GGUF weights still packed after loading (%d, e.g. %s): every forward"
                    " unpacks them", len(left), left[0])
    params = sum(p.numel() for p in model.parameters())  # before int8 turns some into buffers
    if int8:
        log.warning("int8 after a full-precision load (%s): peak memory is the"
                    " full-precision model", why)
        quantize_int8(model)
    else:
        log.info("loaded with transformers' loader: %s", why)
    return model, params, why


def load(
    src: LocalModel, dtype: str = "auto", device: str = "auto", quantization: str = "none",
    context_window: int | None = None,
) -> Loaded:
    t0 = time.monotonic()
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    kw: dict[str, Any] = {}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    with _gguf_parsed_once() if src.gguf_file else contextlib.nullcontext():
        tokenizer = AutoTokenizer.from_pretrained(str(src.directory), **kw)
        config = AutoConfig.from_pretrained(str(src.directory), **kw)
        context = _rope_scaling(config, context_window)
        # one device: materialise each tensor there (no host copy of the model first);
        # several GPUs: spread layers over all visible ones
        device_map = "auto" if dev == "cuda" and torch.cuda.device_count() > 1 else dev
        model, params, loader = _load_model(src, config, torch_dtype, device_map,
                                            quantization == "int8")
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if dev == "cpu" and params < 20_000_000 and "OMP_NUM_THREADS" not in os.environ:
        # a tiny model's matmuls are microseconds: thread hand-offs would cost 50x more
        torch.set_num_threads(1)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    took = time.monotonic() - t0
    log.info(
        "loaded %s: %.1fM parameters, %s on %s, %.1f MiB of weights, %.1fs",
        src.label, params / 1e6, str(torch_dtype).removeprefix("torch."), dev,
        weight_bytes / 2**20, took,
    )
    return Loaded(model, tokenizer, context, torch_dtype, dev, quantization, params,
                  weight_bytes, took, loader)
