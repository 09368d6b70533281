"""Tool calls in the model's text → OpenAI `tool_calls`, for whole texts and streams.

Parsers: `hermes` (`<tool_call>{"name": …, "arguments": {…}}</tool_call>`, used by Qwen,
Hermes, SmolLM-style templates), `json` (the whole answer is a JSON call object or a list
of them) and `none`. While streaming, text before a tool call flows as content; text from
the opening tag on is held until the end, then sent as `tool_calls` deltas.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def as_openai(self, index: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": "function",
                             "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            d["index"] = index
        return d


def _call_from_obj(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(name, str) or not name:
        return None
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError:
            return None
        return ToolCall(name, args)
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse(text: str, parser: str, tool_names: set[str] | None = None) -> tuple[str, list[ToolCall]]:
    """Split `text` into (content, tool calls). Unparseable calls stay in the content."""
    if parser == "none" or not text:
        return text, []
    calls: list[ToolCall] = []
    if parser == "hermes" and OPEN in text:
        content = text[: text.index(OPEN)]
        for block in _BLOCK.findall(text):
            call = _call_from_obj(_loads(block))
            if call is None:
                return text, []
            calls.append(call)
    elif parser in ("json", "hermes"):
        stripped = text.strip()
        if stripped.startswith("```"):
            stripped = stripped.strip("`").removeprefix("json").strip()
        obj = _loads(stripped)
        objs = obj if isinstance(obj, list) else [obj]
        for o in objs:
            call = _call_from_obj(o)
            if call is None:
                return text, []
            calls.append(call)
        content = ""
    else:
        return text, []
    if tool_names is not None and any(c.name not in tool_names for c in calls):
        return text, []
    return content.strip() if calls else text, calls


class StreamSplitter:
    """Feed text deltas; get back the part that is safe to stream as content."""

    def __init__(self, parser: str) -> None:
        self.parser = parser
        self.held = ""        # text possibly belonging to a tool call
        self.in_call = False
        self.started = False  # any non-space content emitted yet

    def feed(self, delta: str) -> str:
        if self.parser == "none":
            return delta
        if self.in_call:
            self.held += delta
            return ""
        buf = self.held + delta
        if self.parser == "json" and not self.started and buf.lstrip()[:1] in ("{", "[", "`"):
            self.in_call = True  # a bare JSON answer: decide at the end
            self.held = buf
            return ""
        if OPEN in buf:
            i = buf.index(OPEN)
            self.in_call, self.held = True, buf[i:]
            return self._emit(buf[:i])
        # hold back a suffix that could be the start of the opening tag
        for n in range(min(len(OPEN) - 1, len(buf)), 0, -1):
            if OPEN.startswith(buf[-n:]):
                self.held = buf[-n:]
                return self._emit(buf[:-n])
        self.held = ""
        return self._emit(buf)

    def _emit(self, text: str) -> str:
        if text.strip():
            self.started = True
        return text

    def finish(self, tool_names: set[str] | None) -> tuple[str, list[ToolCall]]:
        """At the end: (remaining content, tool calls)."""
        held, self.held = self.held, ""
        if not held:
            return "", []
        content, calls = parse(held, self.parser, tool_names)
        return (content if calls else held), calls
