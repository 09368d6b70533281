"""Incremental detokenization (engine/detok.py) and stop sequences over pieces
(engine/text.py): the streamed text equals one full decode, with the real tokenizers the
server loads (the tiny test model's byte-level BPE, SmolLM2's from its GGUF)."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from modelserver.engine import detok
from modelserver.engine.detok import WINDOW_TOKENS, IncrementalDecoder, new_decoder
from modelserver.engine.text import StopState
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server

TEXT = ("Hello, world!  It's   a test: don't , stop . ok ?\n\n\tÜnïcödé ¿qué? 世界你好 "
        "こんにちは 🤖👍🏽🇫🇷 ∑x² = 1…\n    def f(x):\n        return x\n")


@pytest.fixture(scope="module")
def tiny_tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="module")
def smol_tok(smollm_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm_gguf.parent), gguf_file=smollm_gguf.name)


@pytest.fixture(params=["tiny", "smollm2"])
def tok(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("tiny_tok" if request.param == "tiny" else "smol_tok")


def _full(tok: Any, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def _byte_pieces(tok: Any) -> list[int]:
    """Ids that decode to part of a character on their own (byte-level pieces)."""
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    return [i for i, t in enumerate(texts) if "\ufffd" in t]


def _sequences(tok: Any) -> dict[str, list[int]]:
    rng = random.Random(7)
    text = tok.encode(TEXT, add_special_tokens=False)
    specials = sorted(tok.all_special_ids)
    with_specials = list(text)
    for _ in range(12):  # special ids between (and inside) characters
        with_specials.insert(rng.randrange(len(with_specials) + 1), rng.choice(specials))
    pieces = _byte_pieces(tok)
    bytes_mix = [rng.choice(pieces) if rng.random() < 0.6 else rng.choice(text)
                 for _ in range(300)]
    seqs = {"text": text, "text+specials": with_specials, "byte pieces": bytes_mix}
    for seed in range(3):
        r = random.Random(seed)
        seqs[f"random{seed}"] = [r.randrange(len(tok)) for _ in range(400)]
    # a long run of byte pieces: the window waits across many tokens, then restarts
    seqs["long wait"] = text[:5] + [rng.choice(pieces) for _ in range(3 * WINDOW_TOKENS)] + text
    return seqs


def test_every_release_equals_the_full_decode_so_far(tok: Any) -> None:
    for name, ids in _sequences(tok).items():
        dec = IncrementalDecoder(tok)
        out = ""
        for n, token in enumerate(ids, 1):
            out += dec.step(token)
            full = _full(tok, ids[:n])
            if full.endswith("\ufffd"):  # an incomplete character is held back, not lost
                assert full.startswith(out), (name, n)
            else:
                assert out == full, (name, n, out[-40:], full[-40:])
        assert out + dec.flush() == _full(tok, ids), name


def test_real_tokenizers_decode_in_a_bounded_window(tok: Any) -> None:
    assert new_decoder(tok).windowed  # the probe found the window exact for it
    ids = tok.encode(TEXT * 20, add_special_tokens=False)
    calls: list[int] = []
    original = tok.decode

    def spy(token_ids: list[int], **kw: Any) -> str:
        calls.append(len(token_ids))
        return original(token_ids, **kw)

    tok.decode = spy
    try:
        dec = new_decoder(tok)
        out = "".join(dec.step(t) for t in ids) + dec.flush()
    finally:
        del tok.decode
    assert out == _full(tok, ids)
    # O(new tokens) per token: each decode sees a window, never the whole output
    assert len(ids) > 20 * WINDOW_TOKENS
    assert max(calls) <= 2 * WINDOW_TOKENS, max(calls)
    assert len(calls) <= 1.25 * len(ids)  # one per token, plus one per window restart


def test_a_decoder_that_rewrites_earlier_text_falls_back_to_the_full_decode(caplog) -> None:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["[UNK]", *sorted(set(TEXT))])}
    raw = Tokenizer(models.BPE(vocab, merges=[], unk_token="[UNK]"))  # one char per token
    # "ll" becomes "L" only once both are there: the text of a window is not local
    raw.decoder = decoders.Sequence([decoders.Fuse(), decoders.Replace("ll", "L")])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    ids = tok.encode("Hello", add_special_tokens=False)
    assert _full(tok, ids) == "HeLo"
    windowed = IncrementalDecoder(tok)
    assert "".join(windowed.step(t) for t in ids) + windowed.flush() != "HeLo"
    with caplog.at_level(logging.WARNING, logger="modelserver.engine"):
        dec = new_decoder(tok)
    assert not dec.windowed
    assert "re-decodes the whole output" in caplog.text
    calls: list[int] = []
    original = tok.decode
    tok.decode = lambda token_ids, **kw: calls.append(len(token_ids)) or original(token_ids, **kw)
    try:
        for t in ids:
            dec.step(t)
    finally:
        del tok.decode
    assert calls == list(range(1, len(ids) + 1))  # the old path: the whole output each time


# ---- stop sequences ------------------------------------------------------------------

def _old_stop_state(stops: list[str]) -> Any:
    """The StopState before incremental detokenization, fed full decodes: kept once, in
    the benchmark that compares the two paths."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from long_output import OldStopState

    return OldStopState(stops)


def test_stop_state_on_pieces_equals_the_old_one_on_full_decodes() -> None:
    rng = random.Random(3)
    for trial in range(3000):
        pieces = ["".join(rng.choice("abc \ufffd") for _ in range(rng.randrange(0, 5)))
                  for _ in range(rng.randrange(1, 12))]
        stops = ["".join(rng.choice("abc ") for _ in range(rng.randrange(1, 5)))
                 for _ in range(rng.randrange(0, 4))]
        new, old = StopState(stops), _old_stop_state(stops)
        full = ""
        for piece in pieces:
            full += piece
            assert new.update(piece) == old.update(full), (trial, pieces, stops)
            assert new.stopped_on == old.stopped_on
            if new.stopped_on:
                break
        else:
            assert new.flush() == old.flush(), (trial, pieces, stops)
        assert new.text == old.text, (trial, pieces, stops)


def test_stop_state_waits_on_an_incomplete_character_and_drops_it_at_the_end() -> None:
    st = StopState(["STOP"])
    assert st.update("ab") == "ab"
    assert st.update("S") == ""            # could start "STOP": held back
    assert st.update("T\ufffd") == ""      # an incomplete character: wait
    assert st.update("x") == "ST\ufffdx"   # not a stop after all: released
    assert st.update("y\ufffd") == ""
    assert st.flush() == "y"               # the incomplete tail never completed
    assert st.text == "abST\ufffdxy" and st.stopped_on is None


def test_stop_spanning_tokens_with_a_real_tokenizer(tok: Any) -> None:
    ids = tok.encode("The answer is 42. The END of the text", add_special_tokens=False)
    st = StopState(["END of"])
    dec = new_decoder(tok)
    out = ""
    for t in ids:
        out += st.update(dec.step(t))
        if st.stopped_on:
            break
    assert st.stopped_on == "END of"
    assert out == st.text == "The answer is 42. The "


# ---- through the engine ----------------------------------------------------------------

def _generate(engine: Any, prompt: list[int], n: int, stop: list[str]) -> Any:
    from modelserver.engine import drive

    o = drive.submit(engine, prompt, drive.greedy(n, stop=stop)).wait(REQUEST_WAIT)
    assert o.ok, o.end
    return o


def test_engine_streams_the_full_decode_and_stops_across_tokens(tiny, tiny_tok) -> None:
    from modelserver.engine.core import Engine

    model, _ = tiny
    engine = Engine(model, tiny_tok, max_batch_size=2, prefix_cache_entries=0)
    engine.start()
    try:
        prompt = tiny_tok.encode("The quick brown fox", add_special_tokens=False)
        o = _generate(engine, prompt, 120, [])
        ids = o.tokens
        full = _full(tiny_tok, ids)
        assert o.text == o.end.text == full.rstrip("\ufffd")
        assert o.end.finish_reason == "length"
        # a stop string spanning a token boundary, well inside the output
        cut = len(_full(tiny_tok, ids[:40]))
        stop = full[cut - 2:cut + 3]
        assert len(stop.strip()) >= 2
        before = full[:full.find(stop)]
        o = _generate(engine, prompt, 120, [stop])
        assert o.end.finish_reason == "stop_sequence"
        assert o.text == o.end.text == before
    finally:
        engine.stop()


def test_probe_result_is_cached_per_tokenizer(tiny_tok) -> None:
    new_decoder(tiny_tok)
    assert detok._exact_by_tokenizer[tiny_tok] is True
