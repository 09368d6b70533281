"""KV-cache surgery for continuous batching over transformers' DynamicCache.

The running batch keeps one left-padded cache (B rows × T positions) plus a 2-D attention
mask. A request joins by prefilling alone and being concatenated in (the shorter side is
left-padded); it leaves by row selection, after which all-padding columns are trimmed.
Padded key/value slots are zeros and masked out, so a row attends to exactly its own
tokens — the reason a batched greedy run equals the solo one.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), (B, H, T, D)


def to_tensors(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def from_tensors(kv: KV) -> DynamicCache:
    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


def seq_len(kv: KV) -> int:
    return kv[0][0].shape[-2] if kv else 0


def crop(kv: KV, length: int) -> KV:
    return [(k[..., :length, :], v[..., :length, :]) for k, v in kv]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = t.new_zeros(*t.shape[:-2], n, t.shape[-1])
    return torch.cat([pad, t], dim=-2)


def merge(
    a: KV, mask_a: torch.Tensor, b: KV, mask_b: torch.Tensor
) -> tuple[KV, torch.Tensor]:
    """Concatenate two left-padded batches along the batch dimension."""
    ta, tb = mask_a.shape[1], mask_b.shape[1]
    t = max(ta, tb)
    out: KV = []
    for (ka, va), (kb, vb) in zip(a, b, strict=True):
        k = torch.cat([_left_pad(ka, t - ta), _left_pad(kb, t - tb)], dim=0)
        v = torch.cat([_left_pad(va, t - ta), _left_pad(vb, t - tb)], dim=0)
        out.append((k, v))
    pa = mask_a.new_zeros(mask_a.shape[0], t - ta)
    pb = mask_b.new_zeros(mask_b.shape[0], t - tb)
    mask = torch.cat([torch.cat([pa, mask_a], 1), torch.cat([pb, mask_b], 1)], 0)
    return out, mask


def select(kv: KV, mask: torch.Tensor, rows: list[int]) -> tuple[KV, torch.Tensor]:
    """Keep `rows`, then drop leading columns that are padding in every kept row."""
    idx = torch.tensor(rows, device=mask.device)
    mask = mask.index_select(0, idx)
    real = mask.sum(dim=0) > 0
    first = int(torch.nonzero(real)[0]) if bool(real.any()) else mask.shape[1]
    mask = mask[:, first:]
    out = [
        (k.index_select(0, idx.to(k.device))[..., first:, :],
         v.index_select(0, idx.to(v.device))[..., first:, :])
        for k, v in kv
    ]
    return out, mask
