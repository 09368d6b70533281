"""Scheduling by token budget (engine/prefill.py, core.py `_admit`): each scheduler
iteration prefills at most --max-prefill-tokens-per-step prompt tokens, then steps the
running batch once. A real Engine over the tiny random model, in process; faults are
injected by patching one Engine method (or the model) on the instance from the test."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from modelserver.engine import drive
from modelserver.engine.core import Engine, ErrorEvent, FinalEvent, TokenEvent
from modelserver.engine.drive import Outcome
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server

BUDGET = 32       # prompt tokens per iteration in these tests
CHUNK = 16        # the memory bound of one prefill forward: a long prompt runs in pieces
BURST_PROMPT = 160


def _engine(tiny, **kw) -> Engine:
    model, tok = tiny
    kw.setdefault("max_batch_size", 16)
    kw.setdefault("prefix_cache_entries", 0)
    e = Engine(model, tok, **kw)
    e.start()
    return e


def _submit(engine: Engine, prompt: list[int], max_new: int, on_token=None,
            **params) -> Outcome:
    """A greedy request; `on_token(outcome)` runs on the engine thread at each token."""
    hook = on_token and (lambda o, ev: isinstance(ev, TokenEvent) and on_token(o))
    return drive.submit(engine, prompt, drive.greedy(max_new, **params), hook)


def _prompts(n: int, length: int, seed: int = 3, prefix: list[int] | None = None,
             ) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [(prefix or []) + torch.randint(5, 500, (length,), generator=g).tolist()
            for _ in range(n)]


def _solo(tiny, prompts: list[list[int]], max_new: int, **params) -> list[Outcome]:
    """Each prompt alone, prefilled in one forward: the reference."""
    e = _engine(tiny, max_batch_size=1, max_prefill_tokens_per_step=100_000)
    try:
        return [_submit(e, p, max_new, **params).wait(REQUEST_WAIT) for p in prompts]
    finally:
        e.stop()


def _stream_tokens_during_burst(tiny, k: int, **engine_kw) -> int:
    """One stream decodes; a burst of k long prompts arrives. Returns how many tokens the
    stream received between the first and the last burst request's first token."""
    engine = _engine(tiny, prefill_chunk=CHUNK, **engine_kw)
    started = threading.Event()
    seen: list[int] = []  # the stream's token count at each burst first token

    def first(o: Outcome) -> None:
        if len(o.tokens) == 1:
            seen.append(len(stream.tokens))

    try:
        stream = _submit(engine, _prompts(1, 8, seed=1)[0], 100_000,
                         lambda o: len(o.tokens) == 3 and started.set())
        assert started.wait(60), "the stream never started"
        burst = [_submit(engine, p, 4, first) for p in _prompts(k, BURST_PROMPT)]
        for o in burst:
            assert isinstance(o.wait(REQUEST_WAIT).end, FinalEvent), o.end
        stream.request.cancel()
        stream.wait(REQUEST_WAIT)
    finally:
        engine.stop()
    assert len(seen) == k
    return seen[-1] - seen[0]


def test_a_running_stream_keeps_receiving_tokens_while_a_burst_prefills(tiny):
    small = _stream_tokens_during_burst(tiny, 4, max_prefill_tokens_per_step=BUDGET)
    large = _stream_tokens_during_burst(tiny, 8, max_prefill_tokens_per_step=BUDGET)
    # one decode step per iteration of BUDGET prompt tokens: burst requests 2..k need
    # (k-1)·BURST_PROMPT tokens of prefill between the first first token and the last
    for k, got in ((4, small), (8, large)):
        assert got >= (k - 1) * BURST_PROMPT // BUDGET - 2, (k, got)
    assert large > small
    # the budget is what spreads the burst: one large enough for the whole burst holds
    # the stream until every burst request is prefilled, as the engine did before
    assert _stream_tokens_during_burst(tiny, 4, max_prefill_tokens_per_step=100_000) == 0


def test_burst_outputs_equal_solo_greedy_with_prefix_reuse_and_prompt_logprobs(tiny):
    """Prompts of many lengths (several short ones share an iteration, long ones span
    several) sharing a system-prompt prefix: every output equals its solo greedy run, the
    later ones reuse the prefix the first stored, prompt log-probabilities survive chunks."""
    shared = _prompts(1, 40, seed=9)[0]
    g = torch.Generator().manual_seed(5)
    lengths = [int(n) for n in torch.randint(1, 130, (12,), generator=g)]
    prompts = [shared + _prompts(1, n, seed=20 + i)[0] for i, n in enumerate(lengths)]
    max_new = 10
    ref = _solo(tiny, prompts, max_new)
    scored_ref = _solo(tiny, prompts[:1], max_new, prompt_logprobs=True)[0]

    engine = _engine(tiny, prefill_chunk=CHUNK, max_prefill_tokens_per_step=BUDGET,
                     prefix_cache_entries=4)
    try:
        running = _submit(engine, prompts[-1], 30)
        scored = _submit(engine, prompts[0], max_new, prompt_logprobs=True)
        outs = [_submit(engine, p, max_new) for p in prompts]
        for i, o in enumerate(outs):
            assert isinstance(o.wait(REQUEST_WAIT).end, FinalEvent), (i, o.end)
            assert o.tokens == ref[i].tokens, f"request {i} differs from its solo run"
        assert running.wait(REQUEST_WAIT).tokens[:max_new] == ref[-1].tokens
        assert scored.wait(REQUEST_WAIT).tokens == scored_ref.tokens
    finally:
        engine.stop()
    assert len(scored.end.prompt_logprobs) == len(prompts[0])
    assert torch.allclose(torch.tensor(scored.end.prompt_logprobs[1:]),
                          torch.tensor(scored_ref.end.prompt_logprobs[1:]), atol=1e-4)
    # looked up when its prefill starts, after the earlier requests stored theirs
    assert sum(o.end.cached_tokens >= len(shared) for o in outs) >= len(prompts) - 2


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_a_request_cancelled_mid_prefill_leaves_and_frees_its_cache(tiny, how):
    engine = _engine(tiny, prefill_chunk=CHUNK, max_prefill_tokens_per_step=BUDGET)
    victim_prompt, after_prompt = _prompts(2, 300, seed=11)
    ref = _solo(tiny, [after_prompt], 6)[0]
    real = engine._prefill
    caches: list[weakref.ref] = []
    progress: list[int] = []  # the victim's prefilled tokens after each of its calls

    def prefill(p, budget):
        ran = real(p, budget)
        if p.req.prompt_ids != victim_prompt:
            return ran
        progress.append(p.done)
        if p.done >= 3 * BUDGET and not caches:
            caches.append(weakref.ref(p.cache))  # partway: its next iteration must end it
            if how == "cancel":
                p.req.cancel()
            else:
                p.req.deadline = 0.0
        return ran

    engine._prefill = prefill
    try:
        victim = _submit(engine, victim_prompt, 6)
        after = _submit(engine, after_prompt, 6)
        victim.wait(REQUEST_WAIT)
        assert after.wait(REQUEST_WAIT).tokens == ref.tokens
    finally:
        engine.stop()
    assert isinstance(victim.end, ErrorEvent), victim.end
    assert victim.end.kind == ("cancelled" if how == "cancel" else "timeout"), victim.end
    assert not victim.tokens
    assert max(progress) == progress[-1] < len(victim_prompt), "it went on prefilling"
    gc.collect()
    assert caches and caches[0]() is None, "the cancelled prefill's KV is still alive"
    assert engine._prefilling is None
    assert engine.stats.prefill_tokens == len(after_prompt)  # only what completed counts


def test_an_error_in_one_prefilling_request_fails_only_it(tiny):
    """The victim's third chunk fails, iterations after its first two (decode steps of a
    running stream ran in between): it alone fails; the stream and the rest of the burst
    equal their solo runs and the engine keeps serving."""
    burst = _prompts(5, 120, seed=13)
    stream_prompt = _prompts(1, 8, seed=1)[0]
    ref = _solo(tiny, [stream_prompt, *burst], 12)
    engine = _engine(tiny, prefill_chunk=CHUNK, max_prefill_tokens_per_step=BUDGET)
    victim = burst[2]
    real = engine.model
    chunks: list[int] = []
    steps_before: list[int] = []

    class FailingModel:  # the model, except that the victim's third chunk fails
        def __call__(self, **kw):
            ids = kw["input_ids"][0].tolist()
            start = int(kw["position_ids"][0, 0])
            if len(ids) > 1 and ids == victim[start:start + len(ids)]:
                chunks.append(start)
                steps_before.append(engine.stats.steps)
                if len(chunks) == 3:
                    raise RuntimeError("injected prefill failure")
            return real(**kw)

        def __getattr__(self, name):
            return getattr(real, name)

    engine.model = FailingModel()
    try:
        started = threading.Event()
        stream = _submit(engine, stream_prompt, 12, lambda o: started.set())
        assert started.wait(60)
        outs = [_submit(engine, p, 12) for p in burst]
        for i, o in enumerate([stream, *outs]):
            o.wait(REQUEST_WAIT)
            if i == 3:  # burst[2]
                assert isinstance(o.end, ErrorEvent), o.end
                assert "injected prefill failure" in o.end.message
            else:
                assert isinstance(o.end, FinalEvent), (i, o.end)
                assert o.tokens == ref[i].tokens, f"request {i} differs from its solo run"
    finally:
        engine.stop()
    assert len(chunks) == 3 and chunks[0] == 0, chunks
    assert steps_before[-1] > steps_before[0], "no decode step ran between its chunks"
    assert engine.broken is None and engine._prefilling is None


def test_the_flag_is_validated_and_reaches_the_engine(tiny_model, monkeypatch):
    from modelserver.config import (
        DEFAULT_MAX_PREFILL_TOKENS_PER_STEP,
        ConfigError,
        Settings,
        settings_from_args,
    )
    from modelserver.metrics import Metrics
    from modelserver.service import ModelService

    base = ["serve", "--model", "m", "--no-tls", "--no-auth"]
    assert settings_from_args(base)[1].max_prefill_tokens_per_step == \
        DEFAULT_MAX_PREFILL_TOKENS_PER_STEP
    assert settings_from_args([*base, "--max-prefill-tokens-per-step", "96"])[1] \
        .max_prefill_tokens_per_step == 96
    monkeypatch.setenv("MODELSERVER_MAX_PREFILL_TOKENS_PER_STEP", "80")
    assert settings_from_args(base)[1].max_prefill_tokens_per_step == 80
    with pytest.raises(ConfigError, match="--max-prefill-tokens-per-step 0"):
        settings_from_args([*base, "--max-prefill-tokens-per-step", "0"])[1].validate()

    svc = ModelService(Settings(model=str(tiny_model), dtype="float32", device="cpu",
                                warmup=False, max_prefill_tokens_per_step=48), Metrics())
    svc._load()  # the loader thread's body, run here
    try:
        assert svc.ready, svc.load_error
        assert svc.engine.max_prefill_tokens_per_step == 48
    finally:
        svc.stop()
