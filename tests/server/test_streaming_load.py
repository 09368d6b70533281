"""Streaming load (modelserver/streaming.py) against transformers' own loader, on real
checkpoints written here: same logits in bf16/fp32, exactly the old load-then-quantize
logits in int8; sharded checkpoints, tied embeddings and RoPE-scaled configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from modelserver import loading, streaming
from modelserver.fetch import LocalModel
from modelserver.quant import Int8Linear, quantize_int8
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

pytestmark = pytest.mark.server

IDS = torch.tensor([[1, 5, 9, 200, 300, 17, 42, 7, 99, 3], [4, 4, 8, 15, 16, 23, 42, 0, 1, 2]])


@pytest.fixture(scope="module")
def qwen_sharded(tmp_path_factory, tiny_model) -> Path:
    """A Qwen2-shaped model (q/k/v biases, tied embeddings) saved in bf16 in 4+ shards."""
    path = tmp_path_factory.mktemp("qwen-sharded")
    cfg = Qwen2Config(vocab_size=600, hidden_size=64, intermediate_size=160,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(1)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path, max_shard_size="100KB")
    for f in tiny_model.glob("tokenizer*"):
        shutil.copy(f, path / f.name)
    return path


def _logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _reference(path: Path, dtype: torch.dtype, int8: bool, config=None):
    """The old path: transformers loads the whole model, then int8 if asked."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, config=config).eval()
    if int8:
        quantize_int8(model)
    return model


def test_sharded_tied_checkpoint_is_what_the_test_means(qwen_sharded) -> None:
    index = json.loads((qwen_sharded / streaming.SHARD_INDEX).read_text())
    assert len(streaming.checkpoint_files(qwen_sharded)) >= 4
    assert "lm_head.weight" not in index["weight_map"]  # tied: only the embedding is stored


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_full_precision_equals_from_pretrained(tiny_model, qwen_sharded, dtype):
    torch_dtype = loading.DTYPES[dtype]
    for path in (tiny_model, qwen_sharded):
        got = loading.load(LocalModel(path), dtype, "cpu", "none")
        assert got.loader == "streaming"
        ref = _reference(path, torch_dtype, int8=False)
        assert got.model.dtype == torch_dtype
        assert got.parameters == sum(p.numel() for p in ref.parameters())
        torch.testing.assert_close(_logits(got.model), _logits(ref), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_int8_equals_load_then_quantize(tiny_model, qwen_sharded, dtype):
    for path in (tiny_model, qwen_sharded):
        got = loading.load(LocalModel(path), dtype, "cpu", "int8")
        assert got.loader == "streaming"
        ref = _reference(path, loading.DTYPES[dtype], int8=True)
        layers = [m for m in got.model.modules() if isinstance(m, Int8Linear)]
        assert len(layers) == sum(isinstance(m, Int8Linear) for m in ref.modules()) > 0
        assert got.parameters == sum(p.numel() for p in _reference(
            path, loading.DTYPES[dtype], int8=False).parameters())
        assert torch.equal(_logits(got.model), _logits(ref))


def test_tied_embedding_is_one_tensor_and_stays_full_precision(qwen_sharded) -> None:
    got = loading.load(LocalModel(qwen_sharded), "bfloat16", "cpu", "int8")
    assert got.loader == "streaming"
    head, embed = got.model.get_output_embeddings(), got.model.get_input_embeddings()
    assert isinstance(head, torch.nn.Linear) and head.weight is embed.weight
    assert head.weight.dtype == torch.bfloat16


def test_streamed_rope_scaled_config_matches(qwen_sharded) -> None:
    got = loading.load(LocalModel(qwen_sharded), "float32", "cpu", "int8", context_window=8192)
    assert got.loader == "streaming"
    assert got.context.served == 8192 and got.context.rope_scaling["rope_type"] == "yarn"
    config = AutoConfig.from_pretrained(qwen_sharded)
    loading._rope_scaling(config, 8192)
    ref = _reference(qwen_sharded, torch.float32, int8=True, config=config)
    plain = _reference(qwen_sharded, torch.float32, int8=True)
    got_freq = got.model.model.rotary_emb.inv_freq
    assert torch.equal(got_freq, ref.model.rotary_emb.inv_freq)
    assert not torch.equal(got_freq, plain.model.rotary_emb.inv_freq)  # scaling took effect
    assert torch.equal(_logits(got.model), _logits(ref))


def test_checkpoint_it_cannot_stream_still_loads_the_old_way(tmp_path, tiny_model) -> None:
    # a .bin checkpoint is not safetensors: transformers' loader, then int8, same result
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    for f in tiny_model.glob("tokenizer*"):
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(streaming.NotStreamable, match="model.safetensors"):
        streaming.plan(tmp_path, streaming.skeleton(AutoConfig.from_pretrained(tmp_path),
                                                    torch.float32))
    got = loading.load(LocalModel(tmp_path), "float32", "cpu", "int8")
    assert "model.safetensors" in got.loader  # why it was not streamed
    assert torch.equal(_logits(got.model), _logits(_reference(tiny_model, torch.float32, True)))


def test_checkpoint_missing_a_tensor_is_refused_by_name(tmp_path, qwen_sharded) -> None:
    from safetensors.torch import load_file, save_file

    for f in qwen_sharded.iterdir():
        shutil.copy(f, tmp_path / f.name)
    index = json.loads((tmp_path / streaming.SHARD_INDEX).read_text())
    victim = "model.layers.1.mlp.up_proj.weight"
    shard = tmp_path / index["weight_map"].pop(victim)
    tensors = load_file(shard)
    del tensors[victim]
    save_file(tensors, shard, metadata={"format": "pt"})
    (tmp_path / streaming.SHARD_INDEX).write_text(json.dumps(index))
    skeleton = streaming.skeleton(AutoConfig.from_pretrained(tmp_path), torch.float32)
    with pytest.raises(streaming.NotStreamable, match=victim):
        streaming.plan(tmp_path, skeleton)
