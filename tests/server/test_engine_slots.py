"""The running batch's KV in slots (engine/slots.py): joins and leaves copy one row's bytes,
a right-padded row decodes as it does alone, and the compiled decode (--compile on) yields
eager's greedy tokens (a real Engine over the tiny random model, in process, on the CPU)."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
from modelserver.config import ConfigError, Settings
from modelserver.engine import budget as kvbudget
from modelserver.engine import drive
from modelserver.engine.core import Engine
from modelserver.engine.slots import Slots, bucket, decode_mask
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server


def _kv(length: int, seed: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 2, length, 4, generator=g), torch.randn(1, 2, length, 4, generator=g))
            for _ in range(layers)]


def test_a_join_copies_its_own_row_and_a_leave_moves_one_row():
    row_bytes = 2 * 2 * 2 * 4 * 4  # (K and V) × layers × heads × head dim × fp32, per position
    slots = Slots(_kv(1, 0), rows=4, width=16)
    a, b, c = _kv(9, 1), _kv(3, 2), _kv(5, 3)
    for row, kv in enumerate((a, b, c)):
        slots.place(row, kv)
    assert slots.copied == (9 + 3 + 5) * row_bytes  # the joiners' own positions, no more
    # row 0 (9 positions) leaves: the last row (5 positions) moves into its hole
    slots.vacate(0, 9)
    slots.move(2, 0, 5)
    assert slots.copied == (9 + 3 + 5 + 5) * row_bytes
    for li in range(2):
        assert torch.equal(slots.k[li][0, :, :5], c[li][0][0])
        assert torch.equal(slots.v[li][1, :, :3], b[li][1][0])
        # the former occupant's positions past the new one's length are zeroed (a masked
        # column must be finite: 0 × inf is NaN)
        assert not slots.k[li][0, :, 5:].any() and not slots.v[li][0, :, 5:].any()
    grown = slots.grown(8, 32, [5, 3])  # outgrown: the one whole copy, of the active rows
    assert (grown.rows_cap, grown.width_cap) == (8, 32)
    assert grown.copied - slots.copied == 2 * 5 * row_bytes
    assert torch.equal(grown.k[1][:2, :, :5], slots.k[1][:2, :, :5])
    assert [bucket(n, 6) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]


@pytest.mark.parametrize("budgeted", [False, True])
def test_the_engine_leaves_no_tensor_to_the_cycle_collector(tiny, budgeted):
    """Batches that grow, empty and refill, with the prefix cache storing and evicting:
    with the cyclic collector off, every tensor the engine drops is freed by reference
    counting. A slab's view holding its Slots (a cycle) kept each dropped slab until a
    full collection: in the HTTP server, one prompt's KV per request past the KV budget
    (11 GB over it at 7.7k-token prompts, RESULTS.md §9)."""
    model, tok = tiny
    budget = kvbudget.KVBudget(total_bytes=1 << 22, prefix_bytes=1 << 21,
                               bytes_per_token=kvbudget.kv_bytes_per_token(model))
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=4,
                    kv_budget=budget if budgeted else None)
    g = torch.Generator().manual_seed(9)
    shared = torch.randint(5, 500, (200,), generator=g).tolist()
    engine.start()
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):
            lengths = torch.randint(3, 60, (8,), generator=g).tolist()
            outs = drive.run_all(
                engine, [shared + torch.randint(5, 500, (n,), generator=g).tolist()
                         for n in lengths],
                [drive.greedy(n) for n in torch.randint(2, 24, (8,), generator=g).tolist()],
                timeout=REQUEST_WAIT)
            assert all(o.ok for o in outs), [o.error for o in outs]
        engine.stop()
        # the thread's exit drops its frames: done inside the window, it is counted here,
        # not by the next test (an engine is itself a cycle: it holds bound methods)
        engine._thread.join(REQUEST_WAIT)
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        engine.stop()
    assert not cyclic, (f"{len(cyclic)} tensors ({sum(t.nbytes for t in cyclic)} bytes) "
                        "were freed only by the cycle collector")


def test_right_padded_rows_decode_as_they_do_alone(tiny):
    """One decode step of three rows of different lengths in one slab equals each row's
    step alone: the per-row mask and positions leave no trace of the others or padding."""
    from modelserver.engine import kv as kvops

    model, _ = tiny
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (7, 19, 2)]
    nxt = [11, 12, 13]
    kvs, alone = [], []
    for p, t in zip(prompts, nxt, strict=True):
        cache = kvops.SlabCache()
        model(input_ids=torch.tensor([p]), cache=cache, use_cache=True)
        kvs.append([(k.clone(), v.clone()) for k, v in cache.tensors()])
        out = model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
        alone.append(out.logits[0, -1])
    slots = Slots(kvs[0], rows=4, width=64)
    for row, kv in enumerate(kvs):
        slots.place(row, kv)
    pos = torch.tensor([len(p) for p in prompts])
    width = int(pos.max()) + 1
    out = model(input_ids=torch.tensor(nxt).unsqueeze(1), position_ids=pos.unsqueeze(1),
                attention_mask=decode_mask(pos, width, model.config._attn_implementation,
                                           model.dtype),
                cache=slots.view(3, width, pos), use_cache=True)
    for i in range(3):
        torch.testing.assert_close(out.logits[i, -1], alone[i], rtol=0, atol=1e-5)


def _run(engine: Engine, prompts: list[list[int]], max_new: list[int]) -> list[list[int]]:
    outs = drive.run_all(engine, prompts, [drive.greedy(n) for n in max_new], timeout=600)
    assert all(o.ok for o in outs), [o.end for o in outs]
    return [o.tokens for o in outs]


def test_joins_and_leaves_in_a_running_batch_never_copy_the_batch(tiny, monkeypatch):
    """A long request runs while eight short ones join and leave around it (at most four
    rows): the slab is copied whole only to grow to four rows; every other join copies the
    joiner's own KV and every leave at most one row."""
    model, tok = tiny
    grows: list[tuple[int, int]] = []
    real = Slots.grown

    def grown(self, rows, width, lens):
        grows.append((rows, width))
        return real(self, rows, width, lens)

    monkeypatch.setattr(Slots, "grown", grown)
    budget = kvbudget.KVBudget(total_bytes=1 << 24, prefix_bytes=1 << 20,
                               bytes_per_token=kvbudget.kv_bytes_per_token(model))
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=0, kv_budget=budget)
    engine.start()
    g = torch.Generator().manual_seed(4)
    first = threading.Event()
    try:
        long = drive.submit(engine, torch.randint(5, 500, (10,), generator=g).tolist(),
                            drive.greedy(150), lambda o, ev: first.set())
        assert first.wait(60)
        shorts = [torch.randint(5, 500, (int(n),), generator=g).tolist()
                  for n in torch.randint(3, 30, (8,), generator=g)]
        _run(engine, shorts, [3 + i for i in range(8)])
        assert not long.done.is_set(), "the long request must outlive the short ones"
        long.wait(REQUEST_WAIT)
    finally:
        engine.stop()
    assert engine.stats.max_step_rows == 4
    # 1 → 2 → 4 rows, or 1 → 4 when three joined at once; never at a leave or later join
    assert 1 <= len(grows) <= 2 and grows[-1][0] == 4, grows


def test_eager_decode_of_padded_gqa_rows_never_repeats_kv(tiny, monkeypatch):
    """Issue 14: once a row was padded, attention copied K/V per query head (`repeat_kv`)
    over every padded column, every layer, every step. The tiny model is GQA (4 query
    heads, 2 KV heads); rows of different lengths decode together with a per-row mask, and
    transformers' GQA-aware path (one query token: the query is packed onto the KV heads)
    must take every step. The counter is proven live on a padded two-token forward, which
    does repeat K/V."""
    from transformers.integrations import sdpa_attention

    model, tok = tiny
    calls = []
    real = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv",
                        lambda h, n: calls.append(h.shape) or real(h, n))
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=0)
    engine.start()
    try:
        prompts = [list(range(5, 5 + n)) for n in (7, 30, 12)]
        outs = _run(engine, prompts, [12, 4, 9])
    finally:
        engine.stop()
    assert [len(o) for o in outs] == [12, 4, 9]
    assert engine.stats.max_step_rows == 3  # the rows really decoded together, padded
    assert calls == []
    with torch.no_grad():  # the counter sees a path that does repeat K/V
        model(input_ids=torch.tensor([[5, 6], [7, 8]]),
              attention_mask=torch.tensor([[0, 1], [1, 1]]))
    assert calls


def test_compiled_decode_yields_the_eager_tokens_across_joins_and_leaves(tiny, monkeypatch):
    """--compile on (torch.compile, inductor on the CPU) over static shapes: two row
    buckets (1, 2) and one width (the budget reserves 64 positions for every request here),
    so it compiles twice; five requests of different lengths join and leave the batch.
    Compiled, every slab is a static address (CUDA graphs replay in place, not on copies);
    eager, none is."""
    from torch._dynamo.utils import counters

    slabs: list[Slots] = []
    place = Slots.place
    monkeypatch.setattr(Slots, "place",
                        lambda self, row, kv: (slabs.append(self), place(self, row, kv))[1])

    model, tok = tiny
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (5, 21, 9, 30, 13)]
    max_new = [12, 5, 20, 9, 3]
    budget = kvbudget.KVBudget(total_bytes=1 << 24, prefix_bytes=1 << 20,
                               bytes_per_token=kvbudget.kv_bytes_per_token(model))
    runs = {}
    for compiled in (False, True):
        engine = Engine(model, tok, max_batch_size=2, prefix_cache_entries=0,
                        kv_budget=budget, compile_decode=compiled)
        frames = counters["frames"]["ok"]
        engine.start()
        try:
            runs[compiled] = _run(engine, prompts, max_new)
        finally:
            engine.stop()
        assert engine.stats.max_step_rows == 2  # the rows were batched
        compiles = counters["frames"]["ok"] - frames
        assert compiles == (2 if compiled else 0), compiles
        static = {getattr(t, "_dynamo_static_input_type", None) == "unguarded"
                  for slab in slabs for t in slab.tensors()}
        assert static == {compiled}, (compiled, static)
        slabs.clear()
    assert runs[True] == runs[False]
    assert [len(t) for t in runs[True]] == max_new


def test_compile_flag_names_itself_when_wrong():
    with pytest.raises(ConfigError, match="--compile 'yes'"):
        Settings(model="m", no_tls=True, no_auth=True, compile="yes").validate()
    Settings(model="m", no_tls=True, no_auth=True, compile="on").validate()
