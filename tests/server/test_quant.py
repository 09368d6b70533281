"""Int8Linear against the float layer it replaces and against its own definition."""

from __future__ import annotations

import pytest
import torch
from modelserver.quant import Int8Linear, quantize_int8
from torch import nn

pytestmark = pytest.mark.server


def test_int8_linear_matches_dequantized_weights_and_keeps_bias() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=True)
    q = Int8Linear(lin)
    x = torch.randn(5, 64)
    # its definition: x · (q · s)ᵀ + b, in float32
    ref = nn.functional.linear(x, q.weight_int8.float() * q.scale[:, None], lin.bias)
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
    # and close to the float layer (int8 rounding: well under 1% of the output scale)
    err = (q(x) - lin(x)).abs().max() / lin(x).abs().max()
    assert 0 < err < 0.01, err
    assert q.weight_int8.dtype == torch.int8


def test_quantize_keeps_the_lm_head() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
            self.head = nn.Linear(8, 16, bias=False)

        def get_output_embeddings(self) -> nn.Module:
            return self.head

    m = Tiny()
    assert quantize_int8(m) == 2
    assert isinstance(m.body[0], Int8Linear) and isinstance(m.head, nn.Linear)
