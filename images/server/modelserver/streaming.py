"""Build a causal LM straight on its device(s) from safetensors, one tensor at a time.

The skeleton is made with its parameters on the meta device (no memory); buffers the
checkpoint does not hold (rotary `inv_freq`, RoPE-scaled or not) are computed for real by
the model's own constructor. With int8, Linear layers (not the LM head) are swapped for
empty `Int8Linear` shells before any weight exists, and each Linear weight is quantized as
it is read: the full-precision model never exists, only one full-precision tensor at a
time. Everything else is cast to its dtype on its device as it is read.

Peak host memory is therefore one tensor (plus the file pages of the shard being read,
released when the shard is closed), not the model. transformers' own `from_pretrained`
streams too, but has no hook for the server's int8; it stays the path for whatever this
loader does not cover (`plan` says why): GGUF, non-safetensors or pre-quantized
checkpoints, and key layouts that need transformers' checkpoint conversions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.utils import get_balanced_memory
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig

from .quant import Int8Linear, quantize_int8

log = logging.getLogger("modelserver.streaming")

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


class StreamingError(RuntimeError):
    """The checkpoint does not fit the model it claims to be; the message names the keys."""


class NotStreamable(Exception):
    """This checkpoint needs transformers' own loader; the message says why."""


@dataclass
class Plan:
    files: list[Path]                  # shards, in order
    key_of: dict[str, str]             # checkpoint key -> model state_dict name


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint (sharded through an index json, or one file);
    empty when there are none."""
    index = directory / SHARD_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / SINGLE_FILE
    return [single] if single.is_file() else []


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    # pread reads each tensor into its own buffer: with mmap (older safetensors, and the
    # default) every page read stays in the process's RSS until the shard is closed
    try:
        handle = safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors without the `backend` argument
        handle = safe_open(str(path), framework="pt", device="cpu")
    with handle as f:
        yield f


def skeleton(config: Any, dtype: torch.dtype) -> nn.Module:
    """The model with every parameter on the meta device and real buffers (on the CPU:
    they are small and not all of them are in a checkpoint)."""
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # post_init leaves meta weights untied under init_empty_weights
    return model


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """state_dict name -> every name sharing its tensor (tied embeddings / LM head)."""
    by_tensor: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(name)
    return {name: names for names in by_tensor.values() for name in names}


def plan(directory: Path, model: nn.Module) -> Plan:
    """How to stream `directory` into `model` (a skeleton); NotStreamable says why not."""
    files = checkpoint_files(directory)
    if not files:
        raise NotStreamable(f"no {SINGLE_FILE} or {SHARD_INDEX} in {directory}")
    if getattr(model.config, "quantization_config", None):
        raise NotStreamable("the checkpoint is pre-quantized (quantization_config in config)")
    expected = set(model.state_dict().keys())
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    key_of: dict[str, str] = {}
    for path in files:
        with _open(path) as f:
            names = f.keys()  # a safetensors handle is not iterable
            for key in names:
                name = key if key in expected or prefix == "." else prefix + key
                if name in expected:
                    key_of[key] = name
    # only parameters must come from the checkpoint: the skeleton's buffers are real
    aliases = _aliases(model)
    loaded = set(key_of.values())
    missing = sorted(n for n in aliases if not set(aliases[n]) & loaded)
    if missing:
        raise NotStreamable(
            f"{len(missing)} model tensors are not in the checkpoint under their own names"
            f" (e.g. {missing[:3]}): it needs transformers' key conversions")
    return Plan(files, key_of)


def device_map_for(model: nn.Module, device_map: str | dict) -> dict[str, Any]:
    """A module -> device map: `{"": device}` for one device; "auto" is sized on the
    skeleton as it will be (int8 shells count as int8) over every visible GPU."""
    if isinstance(device_map, dict):
        return device_map
    if device_map != "auto":
        return {"": device_map}
    no_split = getattr(model, "_no_split_modules", None) or []
    memory = get_balanced_memory(model, no_split_module_classes=no_split)
    return infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)


def _device_of(name: str, device_map: dict[str, Any]) -> Any:
    best = ""
    for prefix in device_map:
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and \
                len(prefix) >= len(best):
            best = prefix
    return device_map[best]


def _set(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        # an existing Parameter (a tied alias) is put in as is: one tensor, not a copy
        module._parameters[attr] = tensor if isinstance(tensor, nn.Parameter) else \
            nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def stream_into(model: nn.Module, the_plan: Plan, device_map: dict[str, Any]) -> None:
    """Read each checkpoint tensor once, cast/quantize it on its device, put it in place."""
    aliases = _aliases(model)
    targets = dict(model.state_dict(keep_vars=True))  # dtypes to cast to, before any swap
    done = 0
    for path in the_plan.files:
        with _open(path) as f:
            names = f.keys()
            for key in names:
                name = the_plan.key_of.get(key)
                if name is None:
                    log.warning("checkpoint tensor %s is not part of the model: skipped", key)
                    continue
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name)
                device = _device_of(name, device_map)
                if isinstance(module, Int8Linear) and attr == "weight":
                    weight = f.get_tensor(key).to(device=device, dtype=module.scale.dtype)
                    module.load_weight(weight)
                    del weight
                else:
                    tensor = f.get_tensor(key).to(device=device, dtype=targets[name].dtype)
                    _set(model, name, tensor)
                    for other in aliases.get(name, []):
                        if other != name:  # tied: the same tensor, not a second copy
                            _set(model, other, model.get_parameter(name))
                done += 1
        log.info("streamed %s (%d tensors so far)", path.name, done)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                  if t.is_meta]
    if still_meta:
        raise StreamingError(f"not in the checkpoint: {still_meta[:5]}")


def load(directory: Path, config: Any, dtype: torch.dtype, device_map: str | dict,
         int8: bool) -> tuple[nn.Module, int]:
    """(model, parameter count before int8) loaded tensor by tensor onto `device_map`
    ("cpu", "cuda", "cuda:1" or "auto"). Raises NotStreamable, before any weight is read,
    when the checkpoint needs transformers' own loader."""
    model = skeleton(config, dtype)
    the_plan = plan(directory, model)
    parameters = sum(p.numel() for p in model.parameters())  # counted like from_pretrained
    if int8:
        quantize_int8(model)  # meta Linear -> empty Int8Linear shells
    placement = device_map_for(model, device_map)
    stream_into(model, the_plan, placement)
    if len(set(placement.values())) > 1:
        dispatch_model(model, device_map=placement)  # hooks move activations across GPUs
        model.hf_device_map = placement
    else:
        model.to(next(iter(placement.values())))  # the CPU-made buffers (inv_freq)
    with suppress(OSError):  # no generation_config.json: keep the one made from the config
        model.generation_config = GenerationConfig.from_pretrained(str(directory))
    model.eval()
    return model, parameters
