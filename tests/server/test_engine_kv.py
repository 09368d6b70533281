"""The engine's in-place KV cache (engine/kv.py) against the plain torch.cat path, and the
engine itself: batched greedy equals solo greedy when requests join and leave mid-run."""

from __future__ import annotations

import pytest
import torch
from modelserver.engine import kv as kvops
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server

H, D = 2, 4


def _rand(b: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, H, t, D, generator=g)


def test_slab_layer_appends_in_place_and_grows_geometrically():
    layer = kvops.SlabLayer(capacity=0)
    ref_k, ref_v = _rand(3, 5, 0), _rand(3, 5, 1)
    k, v = layer.update(ref_k, ref_v)
    assert torch.equal(k, ref_k) and torch.equal(v, ref_v)
    buffers = {layer._kbuf.data_ptr()}
    for step in range(300):
        nk, nv = _rand(3, 1, 10 + step), _rand(3, 1, 1000 + step)
        ref_k, ref_v = torch.cat([ref_k, nk], -2), torch.cat([ref_v, nv], -2)
        k, v = layer.update(nk, nv)
        assert torch.equal(k, ref_k) and torch.equal(v, ref_v)
        buffers.add(layer._kbuf.data_ptr())
    assert layer.get_seq_length() == 305
    # 305 positions one at a time: a handful of reallocations, not one per step
    assert len(buffers) <= 4, len(buffers)
    assert layer.capacity >= 305


def test_slab_layer_survives_foreign_replacement():
    # DynamicLayer methods we do not override replace keys/values: the next update re-adopts
    layer = kvops.SlabLayer()
    layer.update(_rand(4, 6, 0), _rand(4, 6, 1))
    layer.batch_select_indices(torch.tensor([1, 3]))
    ref_k = layer.keys.clone()
    k, _ = layer.update(_rand(2, 1, 2), _rand(2, 1, 3))
    assert k.shape == (2, H, 7, D)
    assert torch.equal(k[..., :6, :], ref_k)


def test_from_tensors_copies_and_never_writes_the_source():
    src_k, src_v = _rand(1, 8, 0), _rand(1, 8, 1)
    keep_k = src_k.clone()
    cache = kvops.from_tensors([(src_k, src_v)], capacity=16)
    cache.update(_rand(1, 3, 2), _rand(1, 3, 3), 0)
    assert torch.equal(src_k, keep_k)
    assert cache.get_seq_length() == 11
    assert cache.layers[0].capacity == 16


@torch.no_grad()
def test_model_decode_through_slab_cache_equals_dynamic_cache(tiny):
    from transformers import DynamicCache

    model, _ = tiny
    ids = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    outs = []
    for cache in (DynamicCache(), kvops.SlabCache(capacity=0)):
        out = model(input_ids=ids, cache=cache, use_cache=True)
        logits = [out.logits[:, -1]]
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(70):  # crosses the first capacity boundary
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        outs.append(torch.stack(logits))
    assert torch.equal(outs[0], outs[1])


def _run(engine, prompts: list[list[int]], n: int, stagger: bool = False) -> list[list[int]]:
    from modelserver.engine import drive

    # staggered lengths: rows finish at different steps and others join mid-run
    params = [drive.greedy(n + (7 * i) % 13 if stagger else n) for i in range(len(prompts))]
    outs = drive.run_all(engine, prompts, params, timeout=REQUEST_WAIT)
    assert all(o.ok for o in outs), [o.end for o in outs]
    return [o.tokens for o in outs]


def test_engine_batched_greedy_equals_solo(tiny):
    from modelserver.engine.core import Engine

    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 500, (int(ln),), generator=g).tolist()
               for ln in torch.randint(3, 40, (10,), generator=g)]
    solo_engine = Engine(model, tok, max_batch_size=1, prefix_cache_entries=0)
    solo_engine.start()
    try:
        solo = [_run(solo_engine, [p], 20 + (7 * i) % 13)[0] for i, p in enumerate(prompts)]
    finally:
        solo_engine.stop()
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=0, prefill_chunk=8)
    engine.start()
    try:
        batched = _run(engine, prompts, 20, stagger=True)
    finally:
        engine.stop()
    assert engine.stats.step_rows / engine.stats.steps > 2, "requests were not batched"
    for i in range(len(prompts)):
        assert batched[i] == solo[i], f"request {i} differs when batched"
