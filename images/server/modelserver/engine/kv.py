"""KV-cache storage for prefill, and the capacity arithmetic of KV buffers.

A request prefills alone into a `SlabCache` (below); its KV then joins the running batch,
which lives in slots.py (a row per request, right padded: joins and leaves copy one row).

Storage: transformers' DynamicCache grows by `torch.cat` on every forward, i.e. it copies
the whole cache of every layer once per decoded token; at 16 rows × 300 positions that was
a third of a CPU decode step. `SlabCache` is a DynamicCache whose layers write new
positions in place into a buffer with spare capacity (grown geometrically) and hand the
model views of the filled part, so a forward writes only its new positions.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), (B, H, T, D)

_ALIGN = 64  # capacity granularity (positions): fewer regrowths, no effect on numerics


def align(n: int) -> int:
    """`n` positions rounded up to the capacity granularity."""
    return -(-n // _ALIGN) * _ALIGN


def align_down(n: int) -> int:
    return n // _ALIGN * _ALIGN


def capacity_for(length: int, current: int = 0) -> int:
    """Capacity for `length` positions: keep `current` if it fits, else grow geometrically."""
    if current >= length:
        return current
    return align(max(length, 2 * current, length + _ALIGN))


class SlabLayer(DynamicLayer):
    """A DynamicLayer whose `keys`/`values` are views of preallocated buffers.

    `update` writes the new positions into the spare capacity and returns views of the
    filled part: O(new tokens) per step instead of DynamicLayer's O(whole cache) cat.
    """

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity_hint = capacity
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor, capacity: int = 0) -> SlabLayer:
        layer = cls(capacity)
        layer._adopt(keys, values, capacity_for(keys.shape[-2], capacity))
        return layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        empty_k = key_states[..., :0, :]
        empty_v = value_states[..., :0, :]
        self._adopt(empty_k, empty_v, capacity_for(key_states.shape[-2], self.capacity_hint))

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Copy `keys`/`values` into fresh buffers of `capacity` positions."""
        n = keys.shape[-2]
        self.device, self.dtype = keys.device, keys.dtype  # transformers 5.1x reads dtype
        kshape = (*keys.shape[:-2], capacity, keys.shape[-1])
        vshape = (*values.shape[:-2], capacity, values.shape[-1])
        self._kbuf = keys.new_empty(kshape)
        self._vbuf = values.new_empty(vshape)
        self._kbuf[..., :n, :].copy_(keys)
        self._vbuf[..., :n, :].copy_(values)
        self.keys = self._kbuf[..., :n, :]
        self.values = self._vbuf[..., :n, :]
        self.is_initialized = True

    def _owned(self) -> bool:
        # DynamicLayer methods we do not override (crop, batch_select_indices, ...) replace
        # keys/values with new tensors; then the buffers are stale and must be re-adopted
        return (self._kbuf is not None and self.keys is not None
                and self.keys.data_ptr() == self._kbuf.data_ptr()
                and self.values.data_ptr() == self._vbuf.data_ptr()
                and self.keys.shape[0] == self._kbuf.shape[0])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2]
        end = n + key_states.shape[-2]
        if not self._owned() or end > self._kbuf.shape[-2]:
            self._adopt(self.keys, self.values, capacity_for(end, self.capacity))
        self._kbuf[..., n:end, :].copy_(key_states)
        self._vbuf[..., n:end, :].copy_(value_states)
        self.keys = self._kbuf[..., :end, :]
        self.values = self._vbuf[..., :end, :]
        return self.keys, self.values

    @property
    def capacity(self) -> int:
        return self._kbuf.shape[-2] if self._kbuf is not None else 0


class SlabCache(DynamicCache):
    """A DynamicCache (so models accept it as their own) made of `SlabLayer`s."""

    def __init__(self, kv: KV | None = None, capacity: int = 0) -> None:
        if kv:
            Cache.__init__(self, layers=[SlabLayer.of(k, v, capacity) for k, v in kv])
        else:
            Cache.__init__(self, layer_class_to_replicate=lambda: SlabLayer(capacity))

    def tensors(self) -> KV:
        """Per-layer (keys, values) views of the filled part (no copy)."""
        return [(layer.keys, layer.values) for layer in self.layers]


def from_tensors(kv: KV, capacity: int = 0) -> SlabCache:
    """A cache holding a copy of `kv` (callers' tensors are never written)."""
    return SlabCache(kv, capacity)


def crop(kv: KV, length: int) -> KV:
    return [(k[..., :length, :], v[..., :length, :]) for k, v in kv]
