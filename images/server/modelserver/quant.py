"""Weight-only int8 quantization of Linear layers (per-output-channel symmetric scales).

Portable (CPU and CUDA, no bitsandbytes): weights are stored as int8 + one scale per row,
about a quarter of fp32 / half of bf16, and converted on the fly for each matmul. This
buys memory, not speed (benchmarks/RESULTS.md states the cost): measured on CPU, torch's
`_weight_int8pack_mm` was slower than dequantize + fp32 matmul at every batch size (25x at
256 rows), so it is not used. The LM head stays in full precision because its errors go
straight into the sampled distribution.
"""

from __future__ import annotations

import torch
from torch import nn


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, one scale per output row in the weight's dtype). On a meta tensor this
    gives meta results of the right shapes and dtypes: an empty shell to stream into."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.to(weight.dtype)


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_rows(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def load_weight(self, weight: torch.Tensor) -> None:
        """Quantize a full-precision weight (already in this layer's dtype and on its
        device) into this layer: the streaming loader's path, same math as __init__."""
        self.weight_int8, self.scale = quantize_rows(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x·(q·s)ᵀ = (x·qᵀ)·s: scaling the output (rows × out) instead of the weight
        # (out × in) saves one full-weight pass per call, 1.5-2x faster on CPU
        y = nn.functional.linear(x, self.weight_int8.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias


def quantize_int8(model: nn.Module) -> int:
    """Replace Linear layers (except the LM head) in place; return how many. On a model
    whose weights are still on the meta device this swaps in empty Int8Linear shells."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not head:
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
