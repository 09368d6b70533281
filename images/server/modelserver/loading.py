"""Load tokenizer + causal LM from a resolved source, with dtype, device placement,
optional int8 weights and honest context extension (RoPE scaling)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
    tokenizer = AutoTokenizer.from_pretrained(str(src.directory), **kw)
    config = AutoConfig.from_pretrained(str(src.directory), **kw)
    context = _rope_scaling(config, context_window)
    model_kw: dict[str, Any] = {"config": config, "dtype": torch_dtype, **kw}
    if dev == "cuda" and torch.cuda.device_count() > 1:
        model_kw["device_map"] = "auto"  # spread layers over all visible GPUs
    model = AutoModelForCausalLM.from_pretrained(str(src.directory), **model_kw)
    if "device_map" not in model_kw:
        model = model.to(dev)
    if model.dtype != torch_dtype and not src.gguf_file:
        model = model.to(torch_dtype)
    elif src.gguf_file and model.dtype != torch_dtype:
        model = model.to(torch_dtype)  # GGUF dequantizes to float32 first
    model.eval()
    params = sum(p.numel() for p in model.parameters())  # before int8 turns some into buffers
    if quantization == "int8":
        quantize_int8(model)
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
                  weight_bytes, took)
