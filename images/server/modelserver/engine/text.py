"""Incremental detokenization with stop sequences.

Decoding token by token breaks multi-byte characters and cannot see a stop string that
spans tokens, so each request re-decodes its generated ids and only releases text that
can no longer become part of a stop sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopState:
    stops: list[str]
    text: str = ""        # decoded text of all generated tokens (before truncation)
    emitted: int = 0      # characters of `text` already handed out
    stopped_on: str | None = None
    _max_stop: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.stops = [s for s in self.stops if s]
        self._max_stop = max((len(s) for s in self.stops), default=0)

    def update(self, text: str) -> str:
        """Take the new full decode; return the delta that is safe to emit now."""
        self.text = text
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return ""
        if self.stops:
            start = max(0, self.emitted - self._max_stop)
            best = -1
            for s in self.stops:
                i = text.find(s, start)
                if i != -1 and (best == -1 or i < best):
                    best, self.stopped_on = i, s
            if best != -1:
                delta = text[self.emitted:best] if best > self.emitted else ""
                self.emitted = max(self.emitted, best)
                self.text = text[:best]
                return delta
            safe = len(text) - self._held_back(text)
        else:
            safe = len(text)
        if safe <= self.emitted:
            return ""
        delta = text[self.emitted:safe]
        self.emitted = safe
        return delta

    def flush(self) -> str:
        """At the end: release whatever was held back (no stop sequence completed)."""
        text = self.text.rstrip("\ufffd") if self.stopped_on is None else self.text
        delta = text[self.emitted:]
        self.emitted = len(text)
        self.text = text
        return delta

    def _held_back(self, text: str) -> int:
        # longest suffix of `text` that is a proper prefix of some stop string
        for n in range(min(self._max_stop - 1, len(text)), 0, -1):
            suffix = text[-n:]
            if any(s.startswith(suffix) for s in self.stops):
                return n
        return 0
