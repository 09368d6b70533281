"""The KV cache's memory budget: how many bytes one token of context costs for the loaded
model, how many bytes the server may spend on KV (decided once at start), and what the
running batch really allocates when a request joins.

Why a budget: without one, the batch's left-padded slabs grow with whatever arrives and the
prefix cache keeps a count of entries whatever their size; with 10k-token agent prompts a
CPU server holding a 513 MiB model reached ~7 GB of RSS. With it, a request joins the batch
only when the batch's real allocation after the join fits; else it waits in the queue.

The accounting follows the layout in slots.py: the batch is one slab of R rows × W
positions per layer, a request per row. W is exactly the width admission reserved: the
largest prompt + max_new_tokens of its rows, rounded up to the slab alignment (a row never
grows past its prompt + max_new_tokens). R is the rows' count rounded up to a power of two,
or the exact count when the budget holds no more. What is alive together is counted:
  join:  the slab held + the joiners' own prefill caches (copied into free rows), and only
         when the batch outgrows the slab, the grown one (the held one is copied into it);
  leave: nothing new (the last row moves into the leaver's hole, in place).
The slab held keeps its size while rows leave (so a join after a leave copies nothing); it
is freed when the batch empties.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .kv import align, align_down

log = logging.getLogger("modelserver.engine")

# CPU and GPU alike: what the forward pass needs beside weights and KV (attention scores of
# one prefill chunk, the logits, the allocator's slack). Measured peaks of SmolLM2-135M
# prefilling 2048-token chunks of a 10k prompt stay under 0.8 GiB on CPU.
ACTIVATION_RESERVE_BYTES = 1 << 30
# of the memory left after the reserve: the rest stays for the allocator's fragmentation
# and for what the process allocates later (tokenizer caches, HTTP buffers)
AUTO_FRACTION = 0.9


class BudgetError(ValueError):
    """The budget is too small to serve anything; the message names the flag."""


def kv_bytes_per_token(model: Any) -> int:
    """KV bytes of one token of context, all layers, as the loaded model stores them:
    2 (keys and values) × layers × KV heads × head dim × element size — the formula of
    the operator's spec.model.kvCacheBytesPerToken, read from the model's config."""
    cfg = getattr(model.config, "text_config", None) or model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    layers = int(cfg.num_hidden_layers)
    # the cache holds the activations' dtype: int8 weights still compute (and cache) in it
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes kept alive by `tensors`: each distinct underlying buffer counted whole, so a
    view of a slab with spare capacity costs the whole slab."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@dataclass(frozen=True)
class KVBudget:
    """One pool of KV bytes for the running batch and the prefix cache together.

    The prefix cache holds what the batch does not use (at most `prefix_bytes`) and yields:
    its least recently used entries are evicted when a joining request needs their room. A
    fixed split would have to choose between a batch too small for an agent's long prompt
    and a prefix share too small to keep it (a 3Gi pod's quarter share held 9.9k tokens of
    SmolLM2's KV, under the 12k-token prompt Clawdbot re-sends every turn)."""
    total_bytes: int         # all KV: the running batch and the prefix cache
    prefix_bytes: int        # the most the prefix cache may hold (≤ total_bytes)
    bytes_per_token: int

    @property
    def batch_bytes(self) -> int:
        """The most the batch may allocate: all of it (prefix entries are evicted for it)."""
        return self.total_bytes

    def join_bytes(self, held: tuple[int, int], grown: tuple[int, int] | None,
                   joiner_prompts: list[int]) -> int:
        """Peak bytes while requests join: the slab `held` now (rows, width; (0, 0): none),
        the joiners' prefill caches, and the `grown` slab (rows, width) when the batch
        outgrows the held one (None: the joiners go into its free rows)."""
        slabs = held[0] * held[1] + (grown[0] * grown[1] if grown else 0)
        return self.bytes_per_token * (slabs + sum(joiner_prompts))

    def fits_alone(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether one request fits in an empty batch: else it can never run."""
        width = align(prompt_tokens + max_new_tokens)
        return self.join_bytes((0, 0), (1, width), [prompt_tokens]) <= self.batch_bytes

    def max_new_tokens_alone(self, prompt_tokens: int) -> int:
        """The most max_new_tokens a request of `prompt_tokens` may ask for (≤0: none)."""
        # width + prompt ≤ batch tokens, the width aligned up from prompt + max_new
        room = self.batch_bytes // self.bytes_per_token - prompt_tokens
        return align_down(room) - prompt_tokens

    def describe(self) -> str:
        return (f"KV budget {self.total_bytes} bytes ({self.total_bytes / 2**20:.1f} MiB) = "
                f"{self.total_bytes // self.bytes_per_token} tokens at "
                f"{self.bytes_per_token} bytes/token, for the batch and the prefix cache "
                f"(at most {self.prefix_bytes} bytes, yielding to the batch)")


# ---- deciding the budget at start -----------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2 memory.max, v1 memory.limit_in_bytes), or
    None when unlimited; v1 reports 'unlimited' as a huge page-rounded number."""
    v2 = _read("/sys/fs/cgroup/memory.max")
    if v2 is not None:
        return None if v2 == "max" else int(v2)
    v1 = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if v1 is not None and int(v1) < 1 << 60:
        return int(v1)
    return None


def mem_available() -> int:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise BudgetError("--kv-cache-memory auto: /proc/meminfo has no MemAvailable; give a "
                      "size such as 2Gi")


def process_rss() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def auto_bytes(device: torch.device) -> tuple[int, dict[str, int]]:
    """`auto`: bytes for KV from the memory free after loading, with the figures used."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        inputs = {"cuda_free": free, "cuda_total": total}
        room = free - ACTIVATION_RESERVE_BYTES
    else:
        limit, rss = cgroup_limit(), process_rss()
        available = mem_available()
        inputs = {"mem_available": available, "rss": rss}
        if limit is not None:
            # the pod's limit bounds this process; MemAvailable is the node's
            inputs["cgroup_limit"] = limit
            available = min(available, limit - rss)
        room = available - ACTIVATION_RESERVE_BYTES
    inputs["reserve"] = ACTIVATION_RESERVE_BYTES
    return int(max(0, room) * AUTO_FRACTION), inputs


def decide(kv_cache_bytes: int | None, prefix_cache_bytes: int | None, model: Any,
           device: torch.device) -> KVBudget:
    """The budget for --kv-cache-memory / --prefix-cache-memory (None: auto), logged with
    its inputs; a BudgetError naming the flag when it cannot hold a request's KV."""
    per_token = kv_bytes_per_token(model)
    inputs: dict[str, int] = {}
    total = kv_cache_bytes
    if total is None:
        total, inputs = auto_bytes(device)
    prefix = prefix_cache_bytes if prefix_cache_bytes is not None else total
    if prefix > total:
        raise BudgetError(f"--prefix-cache-memory ({prefix} bytes) must not exceed the KV "
                          f"budget --kv-cache-memory ({total} bytes) it is part of")
    budget = KVBudget(total, prefix, per_token)
    if budget.max_new_tokens_alone(1) < 1:
        raise BudgetError(f"--kv-cache-memory: {total} bytes leave no room for a request's "
                          f"KV at {per_token} bytes/token"
                          + (f" (auto, from {inputs})" if inputs else ""))
    how = "given" if kv_cache_bytes is not None else "auto from " + ", ".join(
        f"{k}={v / 2**20:.0f}MiB" for k, v in inputs.items()) + f", x{AUTO_FRACTION}"
    log.info("%s (%s)", budget.describe(), how)
    return budget
