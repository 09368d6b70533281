"""Engine faults fail only the request that caused them (tests/server: a real Engine over
the tiny random model, in process). Each fault is injected by patching one Engine method
on the instance from the test (production code reads no test switch); the survivors'
greedy tokens must equal an unfaulted run's, token for token."""

from __future__ import annotations

import time

import pytest
import torch
from modelserver.engine import drive
from modelserver.engine.core import Engine, ErrorEvent, FinalEvent
from modelserver.engine.drive import Outcome
from modelserver.service import WARMUP_CPU_PREFILL_TOKENS
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server

MAX_NEW = 12
GREEDY = drive.greedy(MAX_NEW)  # the engine never writes a request's params: shared


def _prompts(n: int, long_one: int | None = None) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    out = [torch.randint(5, 500, (6 + 3 * i,), generator=g).tolist() for i in range(n)]
    if long_one is not None:  # holds the most KV of all
        out[long_one] = torch.randint(5, 500, (70,), generator=g).tolist()
    return out


def _engine(tiny, **kw) -> Engine:
    model, tok = tiny
    kw.setdefault("max_batch_size", 8)
    e = Engine(model, tok, prefix_cache_entries=0, **kw)
    e.start()
    return e


def _reference(tiny, prompts: list[list[int]], max_new: int = MAX_NEW,
               **kw) -> list[list[int]]:
    e = _engine(tiny, **kw)
    try:
        outs = drive.run_all(e, prompts, drive.greedy(max_new), REQUEST_WAIT)
        return [o.tokens for o in outs]
    finally:
        e.stop()


def _check(outs: list[Outcome], ref: list[list[int]], failed: set[int], kind: str) -> None:
    for i, o in enumerate(outs):
        o.wait(REQUEST_WAIT)
        if i in failed:
            assert isinstance(o.end, ErrorEvent), (i, o.end)
            assert kind in o.end.message, o.end.message
        else:
            assert isinstance(o.end, FinalEvent), (i, o.end)
            assert o.tokens == ref[i], f"request {i} differs from the unfaulted run"


def test_oom_in_decode_fails_only_the_request_that_made_the_batch_too_large(tiny):
    prompts = _prompts(12, long_one=5)
    ref = _reference(tiny, prompts)
    engine = _engine(tiny)
    culprit = prompts[5]
    real = engine._forward_rows
    stepping, fired = [], []

    def forward(rows, *args):
        stepping[:] = rows
        try:
            return real(rows, *args)
        finally:
            stepping.clear()

    def second_layer(module, args):
        # inside the model: the first layer has written this step's KV column already
        if any(r.prompt_ids == culprit for r in stepping):
            fired.append(len(stepping))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    engine._forward_rows = forward
    hook = engine.model.model.layers[1].register_forward_pre_hook(second_layer)
    try:
        outs = [drive.submit(engine, p, GREEDY) for p in prompts]  # 8 in the batch, 4 queued
        _check(outs, ref, {5}, "OutOfMemoryError")
    finally:
        hook.remove()
        engine.stop()
    assert len(fired) == 1, fired  # it failed once and was never tried again
    assert engine.stats.max_step_rows == 8
    assert engine.broken is None


def test_error_in_one_prefill_fails_only_that_request(tiny):
    prompts = _prompts(6)
    ref = _reference(tiny, prompts)
    engine = _engine(tiny)
    real = engine._prefill

    def prefill(p, budget):
        if p.req.prompt_ids == prompts[2]:
            raise ValueError("injected prefill failure")
        return real(p, budget)

    engine._prefill = prefill
    try:
        outs = [drive.submit(engine, p, GREEDY) for p in prompts]
        _check(outs, ref, {2}, "injected prefill failure")
    finally:
        engine.stop()


LONG = 64  # prefilled 8 tokens per iteration: seven decode steps run between its chunks
DECODE = 40


def _interleaved(tiny, engine: Engine) -> tuple[list[Outcome], list[list[int]]]:
    """Four short requests decode while a long prompt prefills in chunks; returns the
    outcomes (the long one last) and an unfaulted run's tokens."""
    prompts = _prompts(4) + [_prompts(1, long_one=0)[0][:LONG]]
    ref = _reference(tiny, prompts, DECODE, prefill_chunk=8)
    outs = [drive.submit(engine, p, drive.greedy(DECODE)) for p in prompts[:4]]
    while not all(o.tokens for o in outs):  # they are decoding before the long one comes
        time.sleep(0.01)
    outs.append(drive.submit(engine, prompts[4], drive.greedy(DECODE)))
    return outs, ref


def test_error_in_an_interleaved_long_prefill_fails_only_that_request(tiny):
    engine = _engine(tiny, prefill_chunk=8, max_prefill_tokens_per_step=8)
    real = engine.model
    chunks = []

    class FailingModel:  # the model, except that the long prompt's third chunk fails
        def __call__(self, **kw):
            if kw["input_ids"].shape[1] > 1:
                chunks.append(int(kw["position_ids"][0, 0]))
                if chunks[-1] == 16:
                    raise RuntimeError("injected prefill failure")
            return real(**kw)

        def __getattr__(self, name):
            return getattr(real, name)

    engine.model = FailingModel()
    try:
        outs, ref = _interleaved(tiny, engine)
        _check(outs, ref, {4}, "injected prefill failure")
    finally:
        engine.stop()
    assert 8 in chunks and 16 in chunks and engine.stats.steps > 0


def test_error_in_a_decode_step_between_prefill_chunks_fails_only_its_row(tiny):
    engine = _engine(tiny, prefill_chunk=8, max_prefill_tokens_per_step=8)
    real_forward = engine._forward_rows
    victim = _prompts(4)[2]
    fired = []

    def forward(rows, *args):  # decode steps run between the long prompt's chunks
        p = engine._prefilling
        if p is not None and len(p.req.prompt_ids) == LONG and any(
                r.prompt_ids == victim for r in rows):
            fired.append(len(rows))
            raise RuntimeError("injected decode failure")
        return real_forward(rows, *args)

    engine._forward_rows = forward
    try:
        outs, ref = _interleaved(tiny, engine)
        _check(outs, ref, {2}, "injected decode failure")
    finally:
        engine.stop()
    # the full batch failed, then the bisection ran halves down to the victim alone
    assert fired[0] == 4 and fired[-1] == 1, fired


@pytest.mark.parametrize("culprit", [0, 4], ids=["first-row", "middle-row"])
def test_error_in_one_rows_sampling_fails_only_that_row(tiny, culprit):
    prompts = _prompts(8)
    ref = _reference(tiny, prompts)
    engine = _engine(tiny)
    real = engine._pick

    def pick(rows, logits):
        # the step's rows are sampled together: the culprit's failure is the batch's, and
        # the engine has to find whose it is
        if any(r.prompt_ids == prompts[culprit] and len(r.generated) == 3 for r in rows):
            raise KeyError("injected sampling failure")
        return real(rows, logits)

    engine._pick = pick
    try:
        outs = []
        for p in prompts:  # in order: row i of the batch is request i
            outs.append(drive.submit(engine, p, GREEDY))
            deadline = time.monotonic() + 120
            while not outs[-1].tokens and not outs[-1].done.is_set():
                assert time.monotonic() < deadline, "no first token"
                time.sleep(0.005)
        _check(outs, ref, {culprit}, "injected sampling failure")
    finally:
        engine.stop()


@pytest.mark.parametrize("how", ["probe-fails", "fatal-cuda-error"])
def test_sticky_device_error_breaks_the_engine(tiny, how):
    prompts = _prompts(10)
    engine = _engine(tiny)
    real = engine._forward_rows
    steps = []

    def forward(rows, *args):
        steps.append(len(rows))
        if len(steps) == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered"
                               if how == "fatal-cuda-error" else "CUDA error: unknown error")
        return real(rows, *args)

    def probe() -> None:
        if steps and len(steps) >= 3:
            raise RuntimeError("CUDA error: the device is unusable")

    engine._forward_rows = forward
    if how == "probe-fails":
        engine._probe_device = probe
    try:
        outs = [drive.submit(engine, p, GREEDY) for p in prompts]
        for o in outs:
            o.wait(REQUEST_WAIT)
            assert isinstance(o.end, ErrorEvent) and o.end.kind == "unavailable", o.end
            assert "engine broken" in o.end.message
        reason = engine.broken
        assert reason and ("illegal memory access" in reason if how == "fatal-cuda-error"
                           else "device probe failed" in reason and "unusable" in reason)
        late = drive.submit(engine, prompts[0], GREEDY).wait(REQUEST_WAIT)
        assert isinstance(late.end, ErrorEvent) and late.end.kind == "unavailable"
        assert reason in late.end.message
    finally:
        engine.stop()


def test_a_non_sticky_error_leaves_the_engine_serving(tiny):
    """The probe runs after an error and passes: the engine is not broken by it."""
    prompts = _prompts(3)
    ref = _reference(tiny, prompts)
    engine = _engine(tiny)
    real = engine._forward_rows
    probes = []

    def forward(rows, *args):
        if any(r.prompt_ids == prompts[1] for r in rows):
            raise RuntimeError("injected")
        return real(rows, *args)

    engine._probe_device = lambda: probes.append(1)
    engine._forward_rows = forward
    try:
        outs = [drive.submit(engine, p, GREEDY) for p in prompts]
        _check(outs, ref, {1}, "injected")
    finally:
        engine.stop()
    assert probes and engine.broken is None


# ---- warm-up: the largest shapes run before /health says 200 -----------------------------
def _service(tiny_model, **kw):
    from modelserver.config import Settings
    from modelserver.metrics import Metrics
    from modelserver.service import ModelService

    svc = ModelService(Settings(model=str(tiny_model), dtype="float32", device="cpu", **kw),
                       Metrics())
    svc._load()  # the loader thread's body, run here
    return svc


def test_warm_up_runs_the_largest_batch_and_a_full_prefill_chunk(tiny_model):
    svc = _service(tiny_model, max_batch_size=6)
    try:
        assert svc.ready, svc.load_error
        st = svc.engine.stats
        assert st.max_step_rows == 6  # six requests decoded in one step
        # and one long prompt (on CPU: the capped chunk) after the six short ones
        assert st.prefill_tokens >= WARMUP_CPU_PREFILL_TOKENS + 6
    finally:
        svc.stop()


def test_warm_up_out_of_memory_fails_the_load_naming_the_flag(tiny_model, monkeypatch):
    real = Engine._forward_rows

    def forward(self, rows, *args):
        if len(rows) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, rows, *args)

    monkeypatch.setattr(Engine, "_forward_rows", forward)
    svc = _service(tiny_model, max_batch_size=5)
    try:
        assert not svc.ready
        assert "--max-batch-size 5" in svc.load_error, svc.load_error
        assert "out of memory" in svc.load_error, svc.load_error
    finally:
        svc.stop()


# ---- through the real server: a sticky device error → /health 503 → restart ------------
def test_sticky_device_error_turns_health_503_and_refuses_requests(workdir, tiny_model):
    import httpx
    import openai
    from serverutil import FAULTY_LAUNCHER, STICKY_MARKER, start_server

    srv = start_server(workdir, "sticky", str(tiny_model), "--served-name", "tiny",
                       "--max-batch-size", "2", "--dtype", "float32", tls=None, auth=False,
                       launcher=FAULTY_LAUNCHER)
    try:
        srv.wait_ready()
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0)
        with httpx.Client(base_url=srv.base, timeout=30) as http:
            assert http.get("/health").status_code == 200
            ok = client.completions.create(model="tiny", prompt="hello", max_tokens=3)
            assert ok.choices[0].finish_reason

            with pytest.raises(openai.APIStatusError) as caused:
                client.completions.create(model="tiny", prompt=f"x {STICKY_MARKER}",
                                          max_tokens=3)
            assert "injected device failure" in caused.value.message

            health = http.get("/health")
            assert health.status_code == 503, health.text
            body = health.json()
            assert body["status"] == "broken"
            assert "device probe failed" in body["error"]
            assert "no longer answers" in body["error"]
            assert "modelserver_ready 0.0" in http.get("/metrics").text

            with pytest.raises(openai.InternalServerError) as refused:
                client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert refused.value.status_code == 503
            assert "no longer answers" in refused.value.message
            assert refused.value.body["type"] == "server_error"
            assert refused.value.body["code"] == "unavailable"
    finally:
        srv.stop()
