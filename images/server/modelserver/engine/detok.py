"""Incremental detokenization: O(new tokens) per token, same text as one full decode.

Re-decoding the whole output on every token costs O(length) per token, quadratic per
request (RESULTS.md §5: 0.77 ms per token at 2,048 tokens). Instead each request decodes
a short window of its most recent ids and releases what the window's text gained since
the last release. The window starts at an earlier release point, a character boundary
with at least one released token of context before the new ones, so decoder rules that
depend on position (a leading space stripped at the start, UTF-8 split across byte
tokens) act the same in the window as in the full decode.

Not every decoder is local like that (e.g. a clean-up pass that rewrites spaces before
punctuation). `new_decoder` checks each tokenizer once against its own full decode and,
for one that differs, falls back to re-decoding the whole output (logged).
"""

from __future__ import annotations

import logging
import random
import weakref
from typing import Any

log = logging.getLogger("modelserver.engine")

# tokens a window may hold before it restarts at the last release point: a bigger window
# costs more per token, a smaller one an extra decode more often
WINDOW_TOKENS = 16
_PROBE_TEXT = (
    "Hello, world! It's  a test:\tdon't , stop . ok ?\n\n"
    "Ünïcödé – ¿qué? 世界你好 こんにちは 안녕 🤖👍🏽 🇫🇷 ∑x² = 1…  \r\n"
    "    def f(x):\n        return x  # done\n"
)
_PROBE_RANDOM_IDS = 256
_exact_by_tokenizer: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


class IncrementalDecoder:
    """Text of one request's generated ids, token by token.

    `step(id)` returns the text this token completes: nothing while the text ends in an
    incomplete UTF-8 sequence ("\\ufffd"), so a multi-byte character comes out whole.
    `flush()` returns what is still held back at the end. Everything returned, joined,
    equals `tokenizer.decode(ids, skip_special_tokens=True)`.
    `window=None` re-decodes the whole output every token (the fallback).
    """

    def __init__(self, tokenizer: Any, window: int | None = WINDOW_TOKENS) -> None:
        self._tokenizer = tokenizer
        self._window = window
        self._ids: list[int] = []
        self._start = 0       # the window: self._ids[self._start:]
        self._read = 0        # ids whose text has been released
        self._prev_read = 0   # the release point before that: where the next window starts
        self._shown = ""      # the window's text up to self._read
        self._text = ""       # the window's text after the last step

    @property
    def windowed(self) -> bool:
        return self._window is not None

    def step(self, token: int) -> str:
        self._ids.append(token)
        text = self._decode(self._ids[self._start:])
        self._text = text
        if text.endswith("\ufffd") or len(text) <= len(self._shown):
            return ""  # an incomplete character, or a token with no text (special)
        delta = text[len(self._shown):]
        self._shown = text
        self._prev_read, self._read = self._read, len(self._ids)
        if self._window is not None and self._read - self._start > self._window:
            # restart the window at the previous release point: the released tokens since
            # then are its context, their text (decoded alone) what it has shown already
            self._start = self._prev_read
            self._shown = self._text = self._decode(self._ids[self._start:self._read])
        return delta

    def flush(self) -> str:
        rest = self._text[len(self._shown):]
        self._shown = self._text
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def new_decoder(tokenizer: Any) -> IncrementalDecoder:
    """A decoder for one request: windowed where this tokenizer decodes exactly so
    (checked once per tokenizer, on its first request: the server's warm-up)."""
    exact = _exact_by_tokenizer.get(tokenizer)
    if exact is None:
        exact = _exact_by_tokenizer[tokenizer] = _decodes_incrementally(tokenizer)
        if not exact:
            log.warning("%s: incremental detokenization differs from a full decode; every"
                        " token re-decodes the whole output (quadratic in its length)",
                        type(tokenizer).__name__)
    return IncrementalDecoder(tokenizer, WINDOW_TOKENS if exact else None)


def _decodes_incrementally(tokenizer: Any) -> bool:
    """Decode probe sequences token by token, windowed, and compare with the full decode
    after every token: text, spaces, punctuation, CJK, emoji, byte pieces, special ids in
    the middle, and random ids (split and invalid UTF-8)."""
    ids = tokenizer.encode(_PROBE_TEXT, add_special_tokens=False)
    specials = sorted(getattr(tokenizer, "all_special_ids", []) or [])
    with_specials = list(ids)
    for k, sid in enumerate(specials[:8]):  # special ids in the middle of text
        with_specials.insert((k * 7 + 3) % (len(with_specials) + 1), sid)
    rng = random.Random(0)
    randoms = [rng.randrange(len(tokenizer)) for _ in range(_PROBE_RANDOM_IDS)]
    return all(_matches_full_decode(tokenizer, seq) for seq in (ids, with_specials, randoms))


def _matches_full_decode(tokenizer: Any, ids: list[int]) -> bool:
    dec = IncrementalDecoder(tokenizer)
    out = ""
    for n, token in enumerate(ids, 1):
        out += dec.step(token)
        if not tokenizer.decode(ids[:n], skip_special_tokens=True).startswith(out):
            return False
    return out + dec.flush() == tokenizer.decode(ids, skip_special_tokens=True)
