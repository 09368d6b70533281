"""Prefix reuse: keep the prompt KV of recent requests and start new prompts from the
longest shared prefix (Clawdbot re-sends the same multi-thousand-token system prompt and
tools on every turn). Causal attention makes a prefix's keys/values independent of what
follows, so reusing them is exact up to floating-point order.

Bounded by bytes and by a count of entries: a 10k-token prompt of a small fp32 model is
~450 MiB of KV, so a count alone let eight of them hold gigabytes. The bytes are those of the
KV budget (budget.py) that the running batch does not use: the engine evicts entries when a
joining request needs their room (`evict_to`) and stores a prompt only within what is left
(`store`'s `room`). An entry is charged the whole buffers its tensors keep alive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from .budget import tensor_bytes
from .kv import KV, crop


def _common_prefix(a: list[int], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    ta = torch.tensor(a[:n])
    tb = torch.tensor(b[:n])
    diff = torch.nonzero(ta != tb)
    return int(diff[0]) if diff.numel() else n


def _is_prefix(key: tuple[int, ...], prompt: list[int] | tuple[int, ...]) -> bool:
    return len(key) <= len(prompt) and tuple(prompt[: len(key)]) == key


def kv_bytes(kv: KV) -> int:
    """What keeping `kv` costs: every buffer it views, counted whole."""
    return tensor_bytes(t for pair in kv for t in pair)


class PrefixCache:
    def __init__(self, max_entries: int = 8, min_tokens: int = 16,
                 max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes  # None: no byte bound (in-process use without a budget)
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[KV, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0  # held by the entries now
        self.hits = 0
        self.hit_tokens = 0

    def _best(self, prompt: list[int]) -> tuple[int, tuple[int, ...] | None]:
        """The entry sharing the longest usable prefix with `prompt` (always leaving ≥1
        token to compute) and that length; (0, None) under min_tokens. Under the lock."""
        best, best_key = 0, None
        for key in self._entries:
            n = min(_common_prefix(prompt, key), len(prompt) - 1)
            if n > best:
                best, best_key = n, key
        return (best, best_key) if best >= self.min_tokens else (0, None)

    def lookup(self, prompt: list[int]) -> tuple[int, KV | None]:
        """Longest usable cached prefix of `prompt` (always leaving ≥1 token to compute)."""
        if self.max_entries <= 0:
            return 0, None
        with self._lock:
            best, key = self._best(prompt)
            if key is None:
                return 0, None
            self._entries.move_to_end(key)
            kv = self._entries[key][0]
        self.hits += 1
        self.hit_tokens += best
        return best, crop(kv, best)

    def store(self, prompt: list[int], kv: KV, room: int | None = None) -> None:
        """Keep `prompt`'s KV, evicting least recently used entries so the cache stays within
        `max_bytes` and `room` (the budget's bytes the batch leaves now; None: no bound)."""
        if self.max_entries <= 0 or len(prompt) < self.min_tokens:
            return
        size = kv_bytes(kv)
        bound = min(b for b in (self.max_bytes, room, 1 << 62) if b is not None)
        if size > bound:
            return  # larger than all the room there is: storing it would evict everything
        key = tuple(prompt)
        with self._lock:
            # an entry that is a prefix of the new prompt is now redundant
            for old in [k for k in self._entries if _is_prefix(k, key)]:
                self._drop(old)
            self._entries[key] = (kv, size)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > bound:
                self._drop(next(iter(self._entries)))  # least recently used first

    def match_bytes(self, prompt: list[int]) -> int:
        """Bytes of the entry `prompt` would start from (0: none)."""
        with self._lock:
            key = self._best(prompt)[1]
            return self._entries[key][1] if key is not None else 0

    def evict_to(self, max_bytes: int, keep_for: list[int] | None = None) -> None:
        """Drop least recently used entries until at most `max_bytes` are held; the entry
        that would serve `keep_for` (the request about to be prefilled) goes last."""
        with self._lock:
            keep = self._best(keep_for)[1] if keep_for else None
            for key in [k for k in self._entries if k != keep] + [keep]:
                if self.bytes <= max_bytes:
                    return
                if key in self._entries:
                    self._drop(key)

    def _drop(self, key: tuple[int, ...]) -> None:
        _, size = self._entries.pop(key)
        self.bytes -= size
