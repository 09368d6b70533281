"""engine/drive.py, the one way warm-up, bench, benchmarks and tests run requests through
an Engine: a real Engine over the tiny random model, in process."""

from __future__ import annotations

import threading

import pytest
from modelserver.engine import drive
from modelserver.engine.core import Engine, FinalEvent, TokenEvent
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def engine(tiny):
    model, tok = tiny
    e = Engine(model, tok, max_batch_size=4, prefix_cache_entries=0)
    e.start()
    yield e
    e.stop()


def test_run_all_collects_each_request_and_the_hook_sees_every_event(engine):
    seen: list[tuple[int, str, bool, int]] = []  # (prompt length, event, done set, thread)

    def hook(o: drive.Outcome, ev) -> None:
        seen.append((len(o.request.prompt_ids), type(ev).__name__, o.done.is_set(),
                     threading.get_ident()))

    prompts = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
    outs = drive.run_all(engine, prompts, [drive.greedy(n) for n in (4, 9, 6)],
                         timeout=REQUEST_WAIT, on_event=hook)
    assert [len(o.tokens) for o in outs] == [4, 9, 6]
    assert all(o.ok and o.error is None for o in outs), [o.end for o in outs]
    assert drive.first_error(outs) is None
    for o in outs:
        assert isinstance(o.end, FinalEvent) and o.end.finish_reason == "length"
        assert o.text == o.end.text and len(o.times) == len(o.tokens)
        assert o.times == sorted(o.times)
    assert len(seen) == 4 + 9 + 6 + 3  # every token and every end
    assert {t for *_, t in seen} != {threading.get_ident()}  # the engine thread
    for n in (3, 4, 2):  # each request: its tokens, then its end, seen before `done`
        kinds = [(kind, done) for length, kind, done, _ in seen if length == n]
        assert kinds[-1] == ("FinalEvent", False)
        assert {k for k, _ in kinds[:-1]} == {TokenEvent.__name__}


def test_a_wait_that_times_out_says_so_and_a_cancelled_request_is_an_error(engine):
    o = drive.submit(engine, [5, 6, 7], drive.greedy(1_000_000))
    with pytest.raises(TimeoutError, match=r"did not end in 0\.05s"):
        o.wait(0.05)
    o.request.cancel()
    o.wait(REQUEST_WAIT)
    assert not o.ok and o.error == "cancelled"
    assert drive.first_error([o]) == "cancelled"


def test_one_params_for_all_or_one_per_prompt():
    with pytest.raises(ValueError, match="2 prompts but 3 sampling params"):
        drive.run_all(None, [[1], [2]], [drive.greedy(1)] * 3)
    p = drive.greedy(5, stop=["x"])
    assert (p.max_new_tokens, p.temperature, p.ignore_eos, p.stop) == (5, 0, True, ["x"])
