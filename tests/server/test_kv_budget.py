"""The KV budget (engine/budget.py): its arithmetic, the prefix cache bounded by bytes,
admission by tokens in the engine (requests beyond the budget wait, then finish; one that
can never fit is refused), and the real server: a budget too small for a request is a
typed 422 naming the parameter, and /metrics shows the budget."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from modelserver.config import ConfigError, settings_from_args
from modelserver.engine import budget as kvbudget
from modelserver.engine import kv as kvops
from modelserver.engine.prefix import PrefixCache, kv_bytes
from serverutil import REQUEST_WAIT, start_server

pytestmark = pytest.mark.server

# the tiny model (tinymodel.py): 2 layers × 2 KV heads × head dim 16 × 2 (K, V) × 4 bytes
TINY_BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4


# ---- arithmetic --------------------------------------------------------------------
def test_bytes_per_token_from_the_loaded_model(tiny):
    model, _ = tiny
    assert kvbudget.kv_bytes_per_token(model) == TINY_BYTES_PER_TOKEN
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert kvbudget.kv_bytes_per_token(half) == TINY_BYTES_PER_TOKEN // 2


def test_join_counts_the_slab_held_the_grown_one_and_the_joiners():
    b = kvbudget.KVBudget(total_bytes=10_000, prefix_bytes=2_000, bytes_per_token=10)
    assert b.batch_bytes == 10_000  # the prefix cache yields: the batch may use it all
    # a free row in the held slab (4 rows of width 128): the slab + the joiner's prefill
    assert b.join_bytes((4, 128), None, [50]) == 10 * (4 * 128 + 50)
    # outgrown: the held slab and the grown one are alive together during the copy
    assert b.join_bytes((4, 128), (8, 128), [50, 60]) == 10 * ((4 + 8) * 128 + 110)
    # alone: its slab + its prefill cache
    assert b.join_bytes((0, 0), (1, 192), [100]) == 10 * (192 + 100)


def test_max_new_tokens_alone_is_the_fits_alone_boundary():
    b = kvbudget.KVBudget(total_bytes=100_000, prefix_bytes=20_000, bytes_per_token=16)
    for prompt in (1, 17, 64, 300, 4000):
        most = b.max_new_tokens_alone(prompt)
        if most >= 1:
            assert b.fits_alone(prompt, most)
        assert not b.fits_alone(prompt, most + 1)


def test_capacity_keeps_what_fits_and_grows_geometrically():
    assert kvops.capacity_for(100, 0) == 192            # headroom: the next steps fit
    assert kvops.capacity_for(100, 192) == 192          # fits: no regrowth
    assert kvops.capacity_for(193, 192) == 384          # outgrown: doubled, aligned


def test_sizes_parse_and_bad_ones_name_the_flag():
    base = ["serve", "--model", "m", "--no-tls", "--no-auth"]
    s = settings_from_args([*base, "--kv-cache-memory", "2Gi",
                            "--prefix-cache-memory", "256Mi"])[1]
    assert (s.kv_cache_bytes, s.prefix_cache_bytes) == (2 << 30, 256 << 20)
    assert settings_from_args(base)[1].kv_cache_bytes is None  # auto
    with pytest.raises(ConfigError, match="--kv-cache-memory '2 gigs'"):
        settings_from_args([*base, "--kv-cache-memory", "2 gigs"])[1].validate()
    settings_from_args([*base, "--kv-cache-memory", "1Gi",
                        "--prefix-cache-memory", "1Gi"])[1].validate()  # all of it: fine
    with pytest.raises(ConfigError, match="--prefix-cache-memory 2Gi must not exceed"):
        settings_from_args([*base, "--kv-cache-memory", "1Gi",
                            "--prefix-cache-memory", "2Gi"])[1].validate()


def test_auto_budget_on_cpu_leaves_the_reserve(tiny):
    model, _ = tiny
    b = kvbudget.decide(None, None, model, torch.device("cpu"))
    room = kvbudget.mem_available() - kvbudget.ACTIVATION_RESERVE_BYTES
    assert 0 < b.total_bytes <= room  # MemAvailable moves a little between the two reads
    assert b.prefix_bytes == b.total_bytes  # auto: bounded only by what the batch leaves
    with pytest.raises(kvbudget.BudgetError, match="--kv-cache-memory"):
        kvbudget.decide(1000, None, model, torch.device("cpu"))


# ---- the prefix cache by bytes ------------------------------------------------------
def _kv(tokens: int, capacity: int | None = None) -> kvops.KV:
    """One layer of KV for `tokens` positions, viewing a buffer of `capacity`."""
    k = torch.zeros(1, 2, capacity or tokens, 8)
    v = torch.zeros(1, 2, capacity or tokens, 8)
    return [(k[..., :tokens, :], v[..., :tokens, :])]


def test_prefix_cache_evicts_by_bytes_least_recent_first():
    per_token = 2 * 2 * 8 * 4
    cache = PrefixCache(max_entries=100, min_tokens=1, max_bytes=250 * per_token)
    prompts = [[i] * 100 for i in range(1, 4)]
    cache.store(prompts[0], _kv(100))
    cache.store(prompts[1], _kv(100))
    assert cache.bytes == 200 * per_token
    assert cache.lookup(prompts[0] + [9])[0] == 100  # makes prompts[1] the oldest
    cache.store(prompts[2], _kv(100))
    assert cache.bytes == 200 * per_token <= cache.max_bytes
    assert cache.lookup(prompts[1] + [9])[0] == 0
    assert cache.lookup(prompts[0] + [9])[0] == 100
    # an entry bigger than the whole share is not kept (it would evict everything)
    cache.store([7] * 300, _kv(300))
    assert cache.lookup([7] * 301)[0] == 0 and cache.bytes == 200 * per_token


def test_a_view_of_a_larger_slab_counts_as_the_whole_slab():
    assert kv_bytes(_kv(10, capacity=1000)) == 2 * 2 * 1000 * 8 * 4
    cache = PrefixCache(max_entries=8, min_tokens=1, max_bytes=2 * 2 * 500 * 8 * 4)
    cache.store([1] * 10, _kv(10, capacity=1000))  # 10 tokens, but a 1000-position slab
    assert cache.bytes == 0


# ---- the engine under a budget -------------------------------------------------------
def _run(engine, prompts: list[list[int]], max_new: int,
         timeout: float = REQUEST_WAIT):
    """Submit all, wait for all; the events, and the largest allocations seen."""
    from modelserver.engine import drive

    peak = {"batch": 0, "prefix": 0, "rows": 0, "both": 0}

    def observe(o, ev) -> None:  # runs on the engine thread, between copies
        batch, prefix = engine.kv_bytes()
        peak["batch"] = max(peak["batch"], batch)
        peak["prefix"] = max(peak["prefix"], prefix)
        peak["both"] = max(peak["both"], batch + prefix)
        peak["rows"] = max(peak["rows"], engine.stats.batch_size)

    outs = drive.run_all(engine, prompts, drive.greedy(max_new), timeout, observe)
    return [o.end for o in outs], [o.tokens for o in outs], peak


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 500, (length,), generator=g).tolist() for _ in range(n)]


def test_requests_beyond_the_budget_wait_then_finish(tiny):
    from modelserver.engine.core import Engine, FinalEvent

    model, tok = tiny
    # 1200 tokens for batch and prefix cache; prompt 100 + 20 new → width 128. Growing a
    # slab of h rows to b rows for b - h joiners holds both slabs and the joiners' prefill
    # caches: h×128 + b×128 + (b-h)×100 ≤ 1200 tokens allows b ≤ 5 rows, although eight
    # are allowed
    budget = kvbudget.KVBudget(total_bytes=1200 * TINY_BYTES_PER_TOKEN,
                               prefix_bytes=400 * TINY_BYTES_PER_TOKEN,
                               bytes_per_token=TINY_BYTES_PER_TOKEN)
    engine = Engine(model, tok, max_batch_size=8, prefix_cache_entries=8, kv_budget=budget)
    engine.start()
    try:
        prompts = _prompts(10, 100, seed=3)
        finals, tokens, peak = _run(engine, prompts, max_new=20)
    finally:
        engine.stop()
    assert all(isinstance(f, FinalEvent) for f in finals), finals
    assert all(len(t) == 20 for t in tokens)
    assert 2 <= peak["rows"] <= 5, peak  # batched, but held to what the budget admits
    assert peak["both"] <= budget.total_bytes, peak  # the prefix cache yielded its room
    assert peak["prefix"] <= budget.prefix_bytes, peak
    # waiting changed nothing: each answer equals the same request run alone
    solo = Engine(model, tok, max_batch_size=1, prefix_cache_entries=0)
    solo.start()
    try:
        for i in (0, 9):
            assert _run(solo, [prompts[i]], max_new=20)[1][0] == tokens[i]
    finally:
        solo.stop()


def test_a_request_that_can_never_fit_is_refused_not_queued_forever(tiny):
    from modelserver.engine.core import Engine, ErrorEvent, FinalEvent

    model, tok = tiny
    budget = kvbudget.KVBudget(total_bytes=400 * TINY_BYTES_PER_TOKEN,
                               prefix_bytes=100 * TINY_BYTES_PER_TOKEN,
                               bytes_per_token=TINY_BYTES_PER_TOKEN)
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=0, kv_budget=budget)
    engine.start()
    try:
        big, small = _prompts(2, 100, seed=4)
        finals, _, _ = _run(engine, [big, small], max_new=500, timeout=30)
        assert isinstance(finals[0], ErrorEvent) and finals[0].kind == "too_large"
        assert "max_new_tokens (500)" in finals[0].message
        assert "--kv-cache-memory" in finals[0].message
        # the queue behind it moves on
        finals, _, _ = _run(engine, [small], max_new=20, timeout=30)
        assert isinstance(finals[0], FinalEvent)
    finally:
        engine.stop()


def test_prefix_cache_stays_within_its_bytes_under_the_engine(tiny):
    from modelserver.engine.core import Engine

    model, tok = tiny
    budget = kvbudget.KVBudget(total_bytes=4000 * TINY_BYTES_PER_TOKEN,
                               prefix_bytes=500 * TINY_BYTES_PER_TOKEN,
                               bytes_per_token=TINY_BYTES_PER_TOKEN)
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=100,
                    kv_budget=budget)
    engine.start()
    try:
        # 6 distinct 200-token prompts: 1200 tokens of prefixes for a 500-token share
        _, _, peak = _run(engine, _prompts(6, 200, seed=5), max_new=4)
        assert 0 < peak["prefix"] <= budget.prefix_bytes, peak
        assert engine.prefix.bytes <= budget.prefix_bytes
        # the newest prompt is still there to be reused
        assert len(engine.prefix._entries) == 2
    finally:
        engine.stop()


def test_the_prefix_cache_yields_to_the_batch_and_keeps_a_long_prompt(tiny):
    """One pool: a prompt larger than any fixed share is kept and reused (an agent's
    system prompt), and it is evicted, not waited on, when a request needs the room."""
    from modelserver.engine.core import Engine, FinalEvent

    model, tok = tiny
    budget = kvbudget.KVBudget(total_bytes=1400 * TINY_BYTES_PER_TOKEN,
                               prefix_bytes=1400 * TINY_BYTES_PER_TOKEN,
                               bytes_per_token=TINY_BYTES_PER_TOKEN)
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_entries=8, kv_budget=budget)
    engine.start()
    try:
        system, other = _prompts(2, 500, seed=6)
        # turn 1 then turn 2 of an agent: 500 shared tokens (over a third of the budget),
        # then they differ (OpenClaw's turns do: turn 1 is no prefix of turn 2). Turn 2's
        # join needs its slab (512) + prefill (504); the entry it starts from (502) lives
        # beside the prefill only (turn 2's store evicts it for the join): kept until then
        _run(engine, [system + [7, 8]], max_new=4)
        held = engine.prefix.bytes
        assert held >= 500 * TINY_BYTES_PER_TOKEN
        finals, _, peak = _run(engine, [system + [9, 10, 11, 12]], max_new=4)
        assert finals[0].cached_tokens >= 500, finals
        assert peak["both"] <= budget.total_bytes, peak
        # a request whose join needs more than what the prefix cache leaves: 640-wide slab
        # + its 500-token prefill = 1140 tokens > 1400 - held (504)
        finals, _, peak = _run(engine, [other], max_new=100, timeout=60)
        assert isinstance(finals[0], FinalEvent), finals
        assert peak["both"] <= budget.total_bytes, peak
        assert engine.prefix.lookup(system + [9, 10, 11, 12, 13])[0] < 500  # evicted for it
    finally:
        engine.stop()


# ---- the real server ----------------------------------------------------------------
def test_server_refuses_a_request_over_its_kv_budget_and_shows_it(workdir, tiny_model):
    # tiny model: 256 bytes/token; 128Ki = 512 tokens for the batch and the prefix cache
    server = start_server(workdir, "kvbudget", str(tiny_model), "--served-name", "tiny",
                          "--dtype", "float32", "--kv-cache-memory", "128Ki",
                          "--default-temperature", "0", tls=None)
    try:
        server.wait_ready()
        assert "KV budget 131072 bytes" in server.log_text()  # the decision is logged
        with server.client() as c:
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello world",
                                                "max_tokens": 1000})
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["param"] == "max_tokens" and err["type"] == "invalid_request_error"
            assert "--kv-cache-memory 128Ki" in err["message"]
            most = int(re.search(r"at most (\d+) `max_tokens`", err["message"])[1])
            ok = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello world",
                                                 "max_tokens": most})
            assert ok.status_code == 200, ok.text
            # TGI's route names its own parameter
            r = c.post("/generate", json={"inputs": "hello world",
                                          "parameters": {"max_new_tokens": 1000}})
            assert r.status_code == 422 and "max_new_tokens" in r.json()["error"]
            metrics = c.get("/metrics").text
        assert re.search(r"^modelserver_kv_budget_bytes 131072\.0$", metrics, re.M), metrics
        assert re.search(r"^modelserver_prefix_cache_budget_bytes 131072\.0$", metrics, re.M)
        assert re.search(r'^modelserver_kv_cache_bytes\{part="prefix"\} ', metrics, re.M)
    finally:
        server.stop()
