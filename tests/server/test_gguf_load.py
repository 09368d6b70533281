"""A .gguf loads as a plain dense model, unpacked once: no packed (GGUF-block) weights left,
the requested dtype, the same weights and greedy tokens as a dense safetensors copy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from modelserver.fetch import LocalModel
from modelserver.loading import load, packed_weights
from torch import nn

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_packed_weights_names_gguf_blocks() -> None:
    """The check the loader relies on sees transformers' packed layer for what it is."""
    from transformers.integrations.gguf.utils import GgufLinear

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    assert packed_weights(model) == []
    model[1] = GgufLinear(64, 64, ggml_type=3)  # Q4_1, the SmolLM2 file's type
    assert packed_weights(model) == ["1.weight"]


@pytest.fixture(scope="module")
def dense_copy(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights unpacked by transformers directly and saved as safetensors
    (benchmarks/server_bench.py's helper, into a temporary folder)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import server_bench

    saved = server_bench.CACHE
    server_bench.CACHE = tmp_path_factory.mktemp("dense")
    try:
        return server_bench.smollm2_dense("bfloat16")
    finally:
        server_bench.CACHE = saved


def _greedy(loaded, prompt: str, tokens: int) -> list[int]:
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=tokens, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_gguf_loads_unpacked_in_the_requested_dtype_like_its_dense_copy(
        smollm_gguf: Path, dense_copy: Path) -> None:
    gg = load(LocalModel(smollm_gguf.parent, smollm_gguf.name), dtype="bfloat16",
              device="cpu")
    dense = load(LocalModel(dense_copy), dtype="bfloat16", device="cpu")
    assert (gg.loader, dense.loader) == ("GGUF file", "streaming")

    # unpacked once: plain Linear layers holding bf16 weights, nothing left in GGUF blocks
    assert packed_weights(gg.model) == []
    kinds = {type(m).__name__ for m in gg.model.modules()}
    assert not {k for k in kinds if k.lower().startswith("gguf")}, kinds
    assert isinstance(gg.model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert {p.dtype for p in gg.model.parameters()} == {torch.bfloat16}
    assert gg.parameters == dense.parameters > 100_000_000

    # the same weights as transformers' own unpacking, tensor for tensor
    ours, theirs = gg.model.state_dict(), dense.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    # and the same greedy answer
    a = _greedy(gg, "What is the capital of France?", 12)
    assert a == _greedy(dense, "What is the capital of France?", 12)
    assert "Paris" in gg.tokenizer.decode(a), gg.tokenizer.decode(a)


def test_gguf_with_int8_quantizes_the_unpacked_linears(smollm_gguf: Path) -> None:
    """--quantization int8 applies to a .gguf as to a dense checkpoint: after unpacking."""
    from modelserver.quant import Int8Linear

    q = load(LocalModel(smollm_gguf.parent, smollm_gguf.name), dtype="bfloat16",
             device="cpu", quantization="int8")
    int8 = [m for m in q.model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 30 * 7  # every attention and MLP projection of the 30 layers
    assert packed_weights(q.model) == []
    assert {p.dtype for p in q.model.parameters()} == {torch.bfloat16}  # embedding, norms
    answer = q.tokenizer.decode(_greedy(q, "What is the capital of France?", 12))
    assert "Paris" in answer, answer
