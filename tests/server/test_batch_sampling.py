"""engine/batch_sampling.py: a decode step sampled for all rows at once on the device, with
the semantics of one request sampled alone, and the engine copying each step's tokens to
the host exactly once."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from modelserver.engine import batch_sampling as bs
from modelserver.engine.sampling import Sampler, SamplingParams
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server

V = 64


def _logits(b: int, seed: int = 0, v: int = V) -> torch.Tensor:
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def _pick(logits: torch.Tensor, params: list[SamplingParams],
          prompts: list[list[int]] | None = None,
          generated: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    samplers = [Sampler(p) for p in params]
    return bs.pick(logits, samplers, prompts or [[] for _ in params],
                   generated or [[] for _ in params])


def _support(logits: torch.Tensor, p: SamplingParams, n: int = 4000) -> dict[int, float]:
    """Which token each of n evenly spaced uniforms picks: the distribution the inverse
    CDF draws from, as token → share of [0, 1)."""
    row = logits.expand(n, -1)
    t = torch.tensor([[max(p.temperature, bs.MIN_TEMPERATURE)]] * n)
    step = bs.StepParams(rows=torch.arange(n), temperature=t,
                         top_k=torch.tensor([[p.top_k]] * n), top_p=torch.tensor([[p.top_p]] * n),
                         uniform=(torch.arange(n, dtype=torch.float32) + 0.5) / n)
    tokens, _ = bs.sample(row, step)
    ids, counts = torch.unique(tokens, return_counts=True)
    return {int(i): int(c) / n for i, c in zip(ids, counts, strict=True)}


def _reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The per-row sampler this module replaces (temperature → top-k → top-p, then
    torch.multinomial over these probabilities), kept here as the reference."""
    scaled = logits.float() / max(p.temperature, 1e-5)
    if p.top_k and p.top_k > 0:
        kth = torch.topk(scaled, min(p.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if 0.0 < p.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = torch.cumsum(probs, dim=-1) - probs > p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    return torch.softmax(scaled, dim=-1)


def test_greedy_rows_are_argmax_with_log_softmax_logprobs() -> None:
    logits = _logits(6)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=1)] * 3
    tokens, logprobs = _pick(logits, params)
    assert torch.equal(tokens, logits.argmax(-1))
    want = torch.log_softmax(logits, -1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    assert torch.equal(logprobs, want)


@pytest.mark.parametrize("p", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.5, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.6),
    SamplingParams(temperature=0.8, top_k=10, top_p=0.3),
    SamplingParams(temperature=1.0, top_k=V + 10),  # k beyond the vocabulary: no mask
], ids=["plain", "top_k", "top_p", "top_k+top_p", "top_k>vocab"])
def test_sampled_rows_draw_from_the_old_samplers_distribution(p: SamplingParams) -> None:
    logits = _logits(1, seed=3)[0]
    ref = _reference_probs(logits, p)
    got = _support(logits, p)
    # exactly the tokens the old masks kept: top-k and top-p cut the same ones
    assert set(got) <= set(torch.nonzero(ref).flatten().tolist())
    likely = {i for i in range(V) if ref[i] > 2e-3}
    assert likely <= set(got), "a token the old sampler could draw is never drawn"
    for tok, share in got.items():  # each token's share of [0, 1) is its probability
        assert abs(share - float(ref[tok])) <= 2 / 4000 + 1e-4, tok


def test_top_k_and_top_p_masks_exactly() -> None:
    logits = torch.tensor([[4.0, 3.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
    # top_k 2 keeps every logit >= the 2nd largest: 4 and both 3s (a tie)
    assert set(_support(logits[0], SamplingParams(top_k=2))) == {0, 1, 2}
    probs = torch.softmax(logits[0], -1)  # 0.51, 0.19, 0.19, ...
    # the smallest prefix reaching top_p: just under p[0] → the first token alone; just
    # over → the first two of the sorted order (equal logits keep vocabulary order)
    assert set(_support(logits[0], SamplingParams(top_p=float(probs[0]) - 0.01))) == {0}
    assert set(_support(logits[0], SamplingParams(top_p=float(probs[0]) + 0.01))) == {0, 1}


def test_penalties_equal_the_one_row_form() -> None:
    logits = _logits(4, seed=5)
    prompts = [[1, 2, 3, 3], [5, 6], [7], [2, 9]]
    generated = [[3, 4, 4, 10], [6, 6, 6], [], [11]]
    params = [
        SamplingParams(temperature=0, repetition_penalty=1.3),
        SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(temperature=0),  # no penalty: untouched
        SamplingParams(temperature=0, repetition_penalty=0.8, frequency_penalty=-0.4),
    ]
    samplers = [Sampler(p) for p in params]
    pen = bs.penalties(samplers, prompts, generated, V, logits.device)
    got = bs.penalize(logits, pen)
    for i, s in enumerate(samplers):
        assert torch.equal(got[i], s.penalized(logits[i], prompts[i], generated[i])), i
    assert samplers[2].penalty is None  # no state kept for a row without a penalty


def test_penalty_state_takes_each_sampled_token_on_the_device() -> None:
    p = SamplingParams(temperature=0.9, seed=4, repetition_penalty=1.2, presence_penalty=0.3,
                       frequency_penalty=0.1)
    s = Sampler(p)
    prompt, generated = [1, 2], []
    for step in range(6):
        logits = _logits(1, seed=step)
        tokens, logprobs = bs.pick(logits, [s], [prompt], [generated])
        want = torch.log_softmax(s.penalized(logits[0], prompt, generated), -1)
        assert torch.equal(logprobs[0], want[int(tokens[0])])  # of the penalized logits
        generated.append(int(tokens[0]))
        fresh = bs.PenaltyState(prompt, generated, V, logits.device)
        assert torch.equal(s.penalty.seen, fresh.seen)
        assert torch.equal(s.penalty.counts, fresh.counts)


def test_same_seed_same_tokens_whatever_the_batch_and_row_order() -> None:
    seeds = [11, 12, 13]
    params = {sd: SamplingParams(temperature=1.1, top_p=0.9, top_k=20, seed=sd) for sd in seeds}
    steps = 12
    # each request sees its own logits at each step (what a batch-invariant forward gives)
    row_logits = {sd: [_logits(1, seed=100 * sd + t)[0] for t in range(steps)] for sd in seeds}
    solo = {}
    for sd in seeds:
        s = Sampler(params[sd])
        solo[sd] = [int(bs.pick(row_logits[sd][t][None], [s], [[]], [[]])[0][0])
                    for t in range(steps)]
    assert len({tuple(v) for v in solo.values()}) == 3  # the seeds do differ
    rng = random.Random(0)
    others = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=3),
              SamplingParams(temperature=1.0, repetition_penalty=1.5)]
    for _trial in range(3):
        rows = [("req", sd) for sd in seeds] + [("other", j) for j in range(len(others))]
        rng.shuffle(rows)
        samplers = [Sampler(params[k] if kind == "req" else others[k]) for kind, k in rows]
        got: dict[int, list[int]] = {sd: [] for sd in seeds}
        for t in range(steps):
            logits = torch.stack([row_logits[k][t] if kind == "req" else _logits(1, 50 + t)[0]
                                  for kind, k in rows])
            tokens, _ = bs.pick(logits, samplers, [[]] * len(rows), [[]] * len(rows))
            for (kind, k), tok in zip(rows, tokens.tolist(), strict=True):
                if kind == "req":
                    got[k].append(tok)
        assert got == solo


def test_a_draw_never_lands_on_a_masked_token() -> None:
    logits = torch.tensor([[0.0, -float("inf"), 5.0, -float("inf")]])
    for u in (0.0, 0.5, 1.0 - 2**-24, 1.0):
        step = bs.StepParams(rows=torch.tensor([0]), temperature=torch.tensor([[1.0]]),
                             top_k=torch.tensor([[0]]), top_p=torch.tensor([[1.0]]),
                             uniform=torch.tensor([u]))
        assert int(bs.sample(logits, step)[0][0]) in (0, 2), u


def test_to_host_is_exact() -> None:
    tokens = torch.tensor([0, 151_935, 2**31 - 1])
    logprobs = torch.tensor([-0.1, -12.345678, 0.0])
    ids, lps = bs.to_host(tokens, logprobs)
    assert ids == [0, 151_935, 2**31 - 1] and all(isinstance(i, int) for i in ids)
    assert lps == [float(x) for x in logprobs]


# ---------------------------------------------------------------- the engine, one copy a step

TRANSFERS = ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


def test_engine_copies_tokens_to_the_host_once_per_step(tiny, monkeypatch) -> None:
    """c = 8 mixed requests (greedy, seeded top-p, penalties): every decode step makes
    exactly one device→host transfer outside the model's forward, leaves included (a
    leaver's hole is refilled by one row moved on the device, Slots.move: no transfer)."""
    from modelserver.engine import drive
    from modelserver.engine.core import Engine

    model, tok = tiny
    engine = Engine(model, tok, max_batch_size=8, prefix_cache_entries=0)
    counts: list[int] = []
    state = threading.local()

    def counted(name: str):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, **kw):
            if getattr(state, "in_step", False) and not getattr(state, "in_forward", False):
                counts[-1] += 1
            return orig(self, *a, **kw)
        return wrapper

    for name in TRANSFERS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    step, forward = engine._decode_step, model.forward

    def counted_step() -> None:
        counts.append(0)
        state.in_step = True
        try:
            step()
        finally:
            state.in_step = False

    def uncounted(fn):
        def call(*a, **kw):
            state.in_forward = True
            try:
                return fn(*a, **kw)
            finally:
                state.in_forward = False
        return call

    monkeypatch.setattr(engine, "_decode_step", counted_step)
    monkeypatch.setattr(model, "forward", uncounted(forward))
    kinds = [SamplingParams(temperature=0), SamplingParams(temperature=0.9, top_p=0.8, seed=3),
             SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.2,
                            frequency_penalty=0.3)]
    engine.start()
    try:
        # different lengths: rows leave at different steps (the kept rows' tokens stay
        # on the device through index_select)
        params = [SamplingParams(**{**kinds[i % 3].__dict__, "max_new_tokens": 6 + i,
                                    "ignore_eos": True}) for i in range(8)]
        outs = drive.run_all(engine, [list(range(5, 12 + i)) for i in range(8)], params,
                             timeout=REQUEST_WAIT)
    finally:
        engine.stop()
    assert drive.first_error(outs) is None, drive.first_error(outs)
    assert len(counts) >= 6
    assert counts == [1] * len(counts), counts


def _generate(engine, reqs: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    from modelserver.engine import drive

    outs = drive.run_all(engine, [ids for ids, _ in reqs], [p for _, p in reqs],
                         timeout=REQUEST_WAIT)
    assert drive.first_error(outs) is None, drive.first_error(outs)
    return [o.tokens for o in outs]


def test_engine_seeded_rows_give_their_solo_tokens_when_batched(tiny) -> None:
    """The engine end to end: seeded sampled requests (top-p, top-k, penalties) next to
    greedy ones return exactly the tokens each returns alone."""
    from modelserver.engine.core import Engine

    model, tok = tiny
    kinds = [dict(temperature=1.0, top_p=0.9, seed=5), dict(temperature=0),
             dict(temperature=0.8, top_k=20, seed=6, repetition_penalty=1.3),
             dict(temperature=1.2, seed=7, presence_penalty=0.5, frequency_penalty=0.2)]
    reqs = [(list(range(20 + 3 * i, 30 + 5 * i)),
             SamplingParams(max_new_tokens=12 + i, ignore_eos=True, **kinds[i % 4]))
            for i in range(6)]
    solo_engine = Engine(model, tok, max_batch_size=1, prefix_cache_entries=0)
    solo_engine.start()
    try:
        solo = [_generate(solo_engine, [r])[0] for r in reqs]
    finally:
        solo_engine.stop()
    engine = Engine(model, tok, max_batch_size=6, prefix_cache_entries=0)
    engine.start()
    try:
        # the same requests (fresh generators: same seeds), submitted in reverse order
        batched = _generate(engine, [(ids, SamplingParams(**p.__dict__))
                                     for ids, p in reversed(reqs)])[::-1]
    finally:
        engine.stop()
    assert engine.stats.step_rows / engine.stats.steps > 2, "requests were not batched"
    assert len({tuple(s) for s in solo}) == len(solo)
    assert batched == solo
