"""Stop sequences over streamed text.

Text arrives in pieces (engine/detok.py: one per token) and a stop string can span
pieces, so text that could still be the start of a stop string is held back until the
next piece decides. Only the held-back text and the new piece are searched: a match that
ends in new text starts at most max_stop-1 characters before it, and those are held back.
"""

from __future__ import annotations


class StopState:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.stopped_on: str | None = None
        self._max_stop = max((len(s) for s in self.stops), default=0)
        self._released: list[str] = []  # text handed out, in pieces (joined once, at the end)
        self._pending = ""               # text received, not handed out yet

    @property
    def text(self) -> str:
        """All text so far (released and held back), cut before a completed stop string."""
        return "".join(self._released) + self._pending

    def update(self, new: str) -> str:
        """Append the text the last token added; return the delta that is safe to emit now."""
        pending = self._pending = self._pending + new
        if pending.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return ""
        if not self.stops:
            return self._release(len(pending))
        best = -1
        for s in self.stops:
            i = pending.find(s)
            if i != -1 and (best == -1 or i < best):
                best, self.stopped_on = i, s
        if best != -1:
            self._pending = pending[:best]
            return self._release(best)
        return self._release(len(pending) - self._held_back(pending))

    def flush(self) -> str:
        """At the end: release whatever was held back (no stop sequence completed)."""
        if self.stopped_on is None:
            self._pending = self._pending.rstrip("\ufffd")
        return self._release(len(self._pending))

    def _release(self, n: int) -> str:
        delta, self._pending = self._pending[:n], self._pending[n:]
        if delta:
            self._released.append(delta)
        return delta

    def _held_back(self, text: str) -> int:
        # longest suffix of `text` that is a proper prefix of some stop string
        for n in range(min(self._max_stop - 1, len(text)), 0, -1):
            suffix = text[-n:]
            if any(s.startswith(suffix) for s in self.stops):
                return n
        return 0
