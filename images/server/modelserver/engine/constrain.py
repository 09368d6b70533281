"""Constrained decoding for forced tool calls (`tool_choice: "required"` or a named
function): the output is held to `{"name": "<one of the tools>", "arguments": {…}}` in
compact JSON, char by char, so any model — even a random one — returns a parseable call.

The JSON machine is incremental: each candidate token is tried on a copy of the state.
Near the token budget the grammar switches to closing mode and only accepts the shortest
completion, so a call always ends as valid JSON.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

_NUM_PREFIX = re.compile(r"-?(0|[1-9]\d*)?(\.\d*)?([eE][+-]?\d*)?")
_NUM_FULL = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_ESCAPES = set('"\\/bfnrtu')


class JSONObjectMachine:
    """Accepts exactly one compact JSON object (no whitespace outside strings)."""

    def __init__(self) -> None:
        self.stack: list[str] = []   # '{' or '['
        self.state = "start"         # see feed()
        self.buf = ""                # number or literal being read
        self.literal = ""            # expected literal (true/false/null)
        self.hex_left = 0
        self.done = False

    def _value_start(self, ch: str) -> bool:
        if ch == "{":
            self.stack.append("{")
            self.state = "key_or_end"
        elif ch == "[":
            self.stack.append("[")
            self.state = "value_or_end"
        elif ch == '"':
            self.state = "string"
        elif ch == "-" or ch.isdigit():
            self.state, self.buf = "number", ch
        elif ch in "tfn":
            self.literal = {"t": "true", "f": "false", "n": "null"}[ch]
            self.state, self.buf = "literal", ch
        else:
            return False
        return True

    def _after_value(self) -> None:
        self.state = "after_value"
        if not self.stack:
            self.done = True

    def feed(self, ch: str) -> bool:
        if self.done:
            return False
        st = self.state
        if st == "start":
            if ch != "{":
                return False
            self.stack.append("{")
            self.state = "key_or_end"
            return True
        if st in ("key_or_end", "key"):
            if ch == '"':
                self.state = "key_string"
                return True
            if ch == "}" and st == "key_or_end":
                self.stack.pop()
                self._after_value()
                return True
            return False
        if st in ("string", "key_string"):
            if ch == "\\":
                self.state = st + "_esc"
            elif ch == '"':
                if st == "key_string":
                    self.state = "colon"
                else:
                    self._after_value()
            elif ord(ch) < 0x20:
                return False
            return True
        if st.endswith("_esc"):
            if ch not in _ESCAPES:
                return False
            base = st[: -len("_esc")]
            if ch == "u":
                self.state, self.hex_left = base + "_hex", 4
            else:
                self.state = base
            return True
        if st.endswith("_hex"):
            if ch not in "0123456789abcdefABCDEF":
                return False
            self.hex_left -= 1
            if self.hex_left == 0:
                self.state = st[: -len("_hex")]
            return True
        if st == "colon":
            if ch != ":":
                return False
            self.state = "value"
            return True
        if st == "value":
            return self._value_start(ch)
        if st == "value_or_end":
            if ch == "]":
                self.stack.pop()
                self._after_value()
                return True
            return self._value_start(ch)
        if st == "number":
            cand = self.buf + ch
            if _NUM_PREFIX.fullmatch(cand):
                self.buf = cand
                return True
            if not _NUM_FULL.fullmatch(self.buf):
                return False
            self._after_value()
            return self.feed(ch)
        if st == "literal":
            cand = self.buf + ch
            if not self.literal.startswith(cand):
                return False
            self.buf = cand
            if cand == self.literal:
                self._after_value()
            return True
        if st == "after_value":
            top = self.stack[-1]
            if ch == ",":
                self.state = "key" if top == "{" else "value"
                return True
            if (ch == "}" and top == "{") or (ch == "]" and top == "["):
                self.stack.pop()
                self._after_value()
                return True
            return False
        return False

    def completion(self) -> str:
        """The shortest text that ends the object from here."""
        st, out = self.state, ""
        if self.done:
            return ""
        if st == "start":
            return "{}"
        if st.endswith("_hex"):
            out += "0" * self.hex_left
            st = st[: -len("_hex")]
        if st.endswith("_esc"):
            out += "n"
            st = st[: -len("_esc")]
        if st == "key_string":
            out += '":0'
        elif st == "string":
            out += '"'
        elif st == "colon":
            out += ":0"
        elif st in ("value", "key"):
            out += "0" if st == "value" else '"":0'
        elif st == "number":
            if not _NUM_FULL.fullmatch(self.buf):
                out += "0"
        elif st == "literal":
            out += self.literal[len(self.buf):]
        closers = "".join("}" if c == "{" else "]" for c in reversed(self.stack))
        return out + closers


class ToolCallGrammar:
    """`{"name": "<name>", "arguments": <object>}` with name from a fixed set."""

    HEAD, MID, TAIL = '{"name": "', '", "arguments": ', "}"

    def __init__(self, names: list[str]) -> None:
        self.names = [n for n in names if n]
        self.phase = "head"
        self.text = ""          # text of the current phase so far
        self.args = JSONObjectMachine()

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def feed(self, ch: str) -> bool:
        if self.phase == "head":
            if not self.HEAD.startswith(self.text + ch):
                return False
            self.text += ch
            if self.text == self.HEAD:
                self.phase, self.text = "name", ""
            return True
        if self.phase == "name":
            if ch == '"' and self.text in self.names:
                self.phase, self.text = "mid", '"'
                if self.text == self.MID:
                    self.phase, self.text = "args", ""
                return True
            if any(n.startswith(self.text + ch) for n in self.names):
                self.text += ch
                return True
            return False
        if self.phase == "mid":
            if not self.MID.startswith(self.text + ch):
                return False
            self.text += ch
            if self.text == self.MID:
                self.phase, self.text = "args", ""
            return True
        if self.phase == "args":
            if not self.args.feed(ch):
                return False
            if self.args.done:
                self.phase = "tail"
            return True
        if self.phase == "tail":
            if ch != self.TAIL:
                return False
            self.phase = "done"
            return True
        return False

    def accepts(self, text: str, budget: int | None = None,
                measure: Callable[[str], int] = len) -> bool:
        """Would `text` be a valid continuation (tried on a copy)? With `budget`, also: can
        the call still be closed within that many more tokens (`measure` counts them;
        the default, one token per character, is the worst case)?"""
        if not text or "\ufffd" in text:
            return False
        trial = self.clone()
        if not all(trial.feed(ch) for ch in text):
            return False
        return budget is None or measure(trial.completion()) <= budget

    def clone(self) -> ToolCallGrammar:
        new = copy.copy(self)
        new.args = copy.copy(self.args)
        new.args.stack = list(self.args.stack)
        return new

    def advance(self, text: str) -> None:
        for ch in text:
            if not self.feed(ch):
                raise ValueError(f"grammar violated by {text!r}")

    def forced(self) -> str:
        """The text that must come next whatever the model prefers (literal parts, and the
        name once only one fits): written with the tokenizer's own tokens, not char by
        char, so the budget goes to the arguments."""
        if self.phase == "head":
            rest = self.HEAD[len(self.text):]
            return rest + (self.names[0] + self.MID if len(self.names) == 1 else "")
        if self.phase == "name":
            fits = [n for n in self.names if n.startswith(self.text)]
            return fits[0][len(self.text):] + self.MID if len(fits) == 1 else ""
        if self.phase == "mid":
            return self.MID[len(self.text):]
        return ""

    def completion(self) -> str:
        if self.phase == "head":
            return self.HEAD[len(self.text):] + self.names[0] + self.MID + "{}" + self.TAIL
        if self.phase == "name":
            name = next(n for n in self.names if n.startswith(self.text))
            return name[len(self.text):] + self.MID + "{}" + self.TAIL
        if self.phase == "mid":
            return self.MID[len(self.text):] + "{}" + self.TAIL
        if self.phase == "args":
            return self.args.completion() + self.TAIL
        if self.phase == "tail":
            return self.TAIL
        return ""
