"""The running batch's KV in slots: one preallocated slab per layer, one request per row.

Why: the left-padded batch this replaced (stacked anew at a join, cut down at a leave)
copied the whole batch's KV at every join and every leave, and its shape changed at every
step, so neither CUDA graphs nor torch.compile could capture the decode forward. Here:
- row i holds its request's positions [0, L_i), right padded; active rows are 0..B-1;
- a joiner's prefill KV is copied into a free row (its own bytes only);
- a leaver's row is refilled by the last active row (one row's copy), so rows stay dense;
- a decode step writes each row's new K/V at its own position L_i (an indexed write) and
  attends over columns [0, W) under a per-row mask (key j valid iff j <= L_i), so a row
  attends to exactly its own tokens, as alone (batch invariance);
- the slab grows (one whole copy) only when the rows or the width outgrow it.
A failed forward needs no rollback: the column it wrote lies at or past the row's length,
which only advances once the step is accepted.

Static shapes (the compiled decode, --compile on; core.py `_forward_slots`): the forward
runs over a bucket of rows (powers of two) and the slab's full width (a power of two too),
so a few shapes cover every batch. The slab tensors are then marked as static addresses:
CUDA graphs (reduce-overhead) would otherwise copy every input into a buffer of their own
before each replay (the whole KV, every step) and refuse to capture a graph that writes
into its inputs; marked, a replay reads and writes the slab in place, and a new slab (the
batch outgrew it) makes them re-record instead of recompiling.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .kv import KV


def bucket(rows: int, cap: int) -> int:
    """`rows` rounded up to a power of two, at most `cap` (the most rows the slab holds)."""
    return min(cap, 1 << max(0, rows - 1).bit_length())


class Slots:
    """Per layer a key and a value slab [rows capacity, KV heads, width capacity, head dim].

    The engine owns which rows are active and how long each is (it passes lengths in);
    this class only moves bytes, and counts them (`copied`: bytes written into the slab by
    joins, leaves and growth; benchmarks/engine_slots.py counts them its own way)."""

    def __init__(self, like: KV, rows: int, width: int, static_address: bool = False) -> None:
        self.k = [k.new_zeros(rows, k.shape[1], width, k.shape[-1]) for k, _ in like]
        self.v = [v.new_zeros(rows, v.shape[1], width, v.shape[-1]) for _, v in like]
        self.static_address = static_address
        if static_address:
            for t in self.k + self.v:
                torch._dynamo.mark_static_address(t)
        # per row: columns [0, stale) may hold a former occupant's data, past the current
        # one's length. Masked columns must be finite (0 × inf is NaN): they are zeroed
        # when a row is reused, only as far as the former occupant wrote
        self.stale = [0] * rows
        self.copied = 0
        self._view = SlotView(self)

    @property
    def rows_cap(self) -> int:
        return self.k[0].shape[0]

    @property
    def width_cap(self) -> int:
        return self.k[0].shape[2]

    def _bytes(self, rows: int, width: int) -> int:
        return sum(t.element_size() * t.shape[1] * t.shape[3] for t in self.k + self.v) \
            * rows * width

    def place(self, row: int, kv: KV) -> None:
        """Copy one request's own KV (1 row, its prompt) into `row` at [0, L)."""
        n = kv[0][0].shape[-2]
        for (k, v), kb, vb in zip(kv, self.k, self.v, strict=True):
            kb[row, :, :n].copy_(k[0])
            vb[row, :, :n].copy_(v[0])
        self._occupy(row, n)
        self.copied += self._bytes(1, n)

    def move(self, src: int, dst: int, length: int) -> None:
        """Row `src`'s first `length` positions into row `dst` (a leaver's hole)."""
        for buf in self.k + self.v:
            buf[dst, :, :length].copy_(buf[src, :, :length])
        self._occupy(dst, length)
        self.copied += self._bytes(1, length)

    def vacate(self, row: int, length: int) -> None:
        """`row` is free; its occupant wrote at most up to its length (+ a failed step)."""
        self.stale[row] = max(self.stale[row], min(length + 1, self.width_cap))

    def _occupy(self, row: int, n: int) -> None:
        if self.stale[row] > n:
            for buf in self.k + self.v:
                buf[row, :, n:self.stale[row]].zero_()
        self.stale[row] = 0

    def empty_like(self, rows: int, width: int) -> Slots:
        """A new zeroed slab of `rows` × `width`, this one's layers, dtype and device."""
        return Slots([(k[:1, :, :1], v[:1, :, :1])
                      for k, v in zip(self.k, self.v, strict=True)], rows, width,
                     self.static_address)

    def put_rows(self, src: Slots, rows: list[int], at: int, lens: list[int]) -> None:
        """Copy `src`'s `rows` (lengths `lens`) into rows at, at+1, ... (fresh rows)."""
        w = max(lens, default=0)
        b = len(rows)
        dense = rows == list(range(rows[0], rows[0] + b)) if rows else True
        idx = None if dense else torch.tensor(rows, device=src.k[0].device)
        for s_buf, d_buf in zip(src.k + src.v, self.k + self.v, strict=True):
            part = s_buf[rows[0]:rows[0] + b] if dense else s_buf.index_select(0, idx)
            d_buf[at:at + b, :, :w].copy_(part[:, :, :w])
        self.copied += self._bytes(b, w)

    def grown(self, rows: int, width: int, lens: list[int]) -> Slots:
        """A slab of `rows` × `width` holding this one's active rows (len(lens) of them,
        each to its length): the one whole copy, when the batch outgrows the slab."""
        new = self.empty_like(rows, width)
        new.copied = self.copied
        if lens:
            new.put_rows(self, list(range(len(lens))), 0, lens)
        return new

    def take(self, rows: list[int], lens: list[int]) -> Slots:
        """A new slab holding a copy of `rows` (lengths `lens`), in that order: a part of
        the batch stepped on its own while a fault is isolated (rare)."""
        new = self.empty_like(max(1, len(rows)), self.width_cap)
        if rows:
            new.put_rows(self, rows, 0, lens)
        return new

    def tensors(self) -> list[torch.Tensor]:
        return self.k + self.v

    def view(self, rows: int, width: int, pos: torch.Tensor) -> SlotView:
        """The Cache a decode forward over rows [0, rows) and columns [0, width) gets: row
        i's new K/V goes to column pos[i]."""
        self._view.arm(rows, width, pos)
        return self._view


class _Step:
    """One decode step's shape, shared by a SlotView and its layers. Nothing here points
    back at the slab: a view and its layers holding their Slots (a reference cycle) kept
    every slab the engine dropped alive until a full garbage collection, one prompt's KV
    per request under an HTTP load (benchmarks/RESULTS.md §9)."""

    def __init__(self) -> None:
        self.rows = self.width = 0
        self.flat = torch.zeros(0, dtype=torch.long)


class _SlotLayer(DynamicLayer):
    """One layer of a SlotView: writes the step's column in place, returns slab views."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, step: _Step) -> None:
        super().__init__()
        self.k, self.v, self.step = k, v, step
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        s, k, v = self.step, self.k, self.v
        # one indexed copy per tensor: (row, head) pairs to their row's position
        k.view(-1, k.shape[-1]).index_copy_(0, s.flat, key_states.reshape(-1, k.shape[-1]))
        v.view(-1, v.shape[-1]).index_copy_(0, s.flat, value_states.reshape(-1, v.shape[-1]))
        self.keys, self.values = k[:s.rows, :, :s.width], v[:s.rows, :, :s.width]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.step.width

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.step.width, 0


class SlotView(Cache):
    """What the model gets as its cache for one decode step (one token per row). One per
    slab, re-armed every step: a compiled forward sees the same object every time. It
    holds the slab's tensors, never the Slots (see _Step)."""

    def __init__(self, slots: Slots) -> None:
        self.step = _Step()
        self._base = torch.zeros(0, 0, dtype=torch.long)
        super().__init__(layers=[_SlotLayer(k, v, self.step)
                                 for k, v in zip(slots.k, slots.v, strict=True)])

    def arm(self, rows: int, width: int, pos: torch.Tensor) -> None:
        """Set the step's shape; `flat`: where each (row, KV head)'s new position lies in a
        layer's slab seen as [rows × heads × width capacity, head dim] (one per step)."""
        step = self.step
        step.rows, step.width = rows, width
        _, heads, cap, _ = self.layers[0].k.shape
        if self._base.shape[0] != rows or self._base.device != pos.device:
            self._base = torch.arange(rows * heads, device=pos.device).view(rows, heads) * cap
        step.flat = (self._base + pos.unsqueeze(1)).view(-1)


def decode_mask(pos: torch.Tensor, width: int, attn_implementation: str,
                dtype: torch.dtype) -> torch.Tensor:
    """The 4-D mask [rows, 1, 1, width] of one decode step: row i attends to keys j <= pos[i]
    (its own tokens and the one being written). A 4-D mask is used as it is by
    transformers' mask builders, so the cache's shape does not have to say the lengths.
    sdpa takes it as booleans; the other attention functions add it."""
    cols = torch.arange(width, device=pos.device)
    keep = (cols.unsqueeze(0) <= pos.unsqueeze(1))[:, None, None, :]
    if attn_implementation == "sdpa":
        return keep
    zero = torch.zeros((), dtype=dtype, device=pos.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)
