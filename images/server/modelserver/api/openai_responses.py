"""OpenAI response shapes, for chat completions and text completions: a finished result
→ a JSON answer (or a replayed stream, for a cached chat answer), engine events → SSE
chunks. A result is the answer in a form that can be cached: text, tool calls, finish
reason, usage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from .. import __version__
from ..engine.core import FinalEvent, TokenEvent
from ..service import usage_dict
from ..toolcalls import StreamSplitter, ToolCall, parse
from .openai_protocol import Plan

FINGERPRINT = f"modelserver-{__version__}"
FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
KEEP_ALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see bytes

Result = dict[str, Any]
OnResult = Callable[[Result], Awaitable[None]]


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Responses:
    """What both answer kinds share: the object header, the stream's loop and usage."""

    chunk_object = ""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def obj(self, kind: str) -> dict[str, Any]:
        m = self.plan.meta
        return {"id": m["id"], "object": kind, "created": m["created"], "model": m["model"],
                "system_fingerprint": FINGERPRINT}

    def result(self, text: str, final: FinalEvent) -> Result:
        raise NotImplementedError

    def answer(self, result: Result) -> JSONResponse:
        raise NotImplementedError

    def opening(self) -> list[str]:
        return []

    def on_token(self, ev: TokenEvent) -> list[str]:
        raise NotImplementedError

    def on_final(self, ev: FinalEvent) -> tuple[list[str], Result]:
        raise NotImplementedError

    def usage_chunk(self, result: Result) -> str:
        return sse({**self.obj(self.chunk_object), "choices": [], "usage": result["usage"]})

    async def stream(self, events: AsyncIterator[Any], on_result: OnResult) -> AsyncIterator[str]:
        """Engine events (None: idle, send a keep-alive) → SSE chunks; `[DONE]` is the
        caller's."""
        for chunk in self.opening():
            yield chunk
        async for ev in events:
            if ev is None:
                yield KEEP_ALIVE
            elif isinstance(ev, TokenEvent):
                for chunk in self.on_token(ev):
                    yield chunk
            elif isinstance(ev, FinalEvent):
                chunks, result = self.on_final(ev)
                for chunk in chunks:
                    yield chunk
                if self.plan.include_usage:
                    yield self.usage_chunk(result)
                await on_result(result)


class ChatResponses(Responses):
    chunk_object = "chat.completion.chunk"

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self._splitter = StreamSplitter(plan.parser)
        self._pieces: list[str] = []

    def result(self, text: str, final: FinalEvent) -> Result:
        content, calls = parse(text, self.plan.parser, self.plan.tool_names)
        return self._result(content, calls[:self.plan.max_tool_calls], final)

    @staticmethod
    def _result(content: str, calls: list[ToolCall], final: FinalEvent) -> Result:
        return {
            "content": content,
            "tool_calls": [c.as_openai() for c in calls],
            "finish_reason": "tool_calls" if calls else FINISH[final.finish_reason],
            "usage": usage_dict(final),
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        return sse({**self.obj(self.chunk_object), "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    def answer(self, result: Result) -> JSONResponse:
        message: dict[str, Any] = {"role": "assistant", "content": result["content"] or None}
        if result["tool_calls"]:
            message["tool_calls"] = result["tool_calls"]
        elif message["content"] is None:
            message["content"] = ""
        return JSONResponse({**self.obj("chat.completion"), "choices": [{
            "index": 0, "message": message, "logprobs": None,
            "finish_reason": result["finish_reason"]}], "usage": result["usage"]})

    def replay(self, result: Result) -> StreamingResponse:
        """A finished result (a cache hit) as a stream."""

        async def chunks() -> AsyncIterator[str]:
            yield self.chunk({"role": "assistant", "content": ""})
            if result["content"]:
                yield self.chunk({"content": result["content"]})
            for i, call in enumerate(result["tool_calls"]):
                yield self.chunk({"tool_calls": [{**call, "index": i}]})
            yield self.chunk({}, result["finish_reason"])
            if self.plan.include_usage:
                yield self.usage_chunk(result)
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    def opening(self) -> list[str]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def on_token(self, ev: TokenEvent) -> list[str]:
        out = self._splitter.feed(ev.text)
        if not out:
            return []
        self._pieces.append(out)
        return [self.chunk({"content": out})]

    def on_final(self, ev: FinalEvent) -> tuple[list[str], Result]:
        rest, calls = self._splitter.finish(self.plan.tool_names)
        calls = calls[:self.plan.max_tool_calls]
        chunks = []
        if rest:
            self._pieces.append(rest)
            chunks.append(self.chunk({"content": rest}))
        for i, call in enumerate(calls):
            # first the call with its id and name, then its arguments
            head = call.as_openai(i)
            head["function"]["arguments"] = ""
            chunks.append(self.chunk({"tool_calls": [head]}))
            chunks.append(self.chunk({"tool_calls": [
                {"index": i, "function": {"arguments": call.arguments}}]}))
        result = self._result("".join(self._pieces), calls, ev)
        chunks.append(self.chunk({}, result["finish_reason"]))
        return chunks, result


class CompletionResponses(Responses):
    chunk_object = "text_completion"

    def result(self, text: str, final: FinalEvent) -> Result:
        return {"text": self.plan.echo + text, "finish_reason": FINISH[final.finish_reason],
                "usage": usage_dict(final)}

    def choice(self, text: str, finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str, finish: str | None = None) -> str:
        return sse({**self.obj(self.chunk_object), "choices": [self.choice(text, finish)]})

    def answer(self, result: Result) -> JSONResponse:
        return JSONResponse({**self.obj("text_completion"), "choices": [
            self.choice(result["text"], result["finish_reason"])], "usage": result["usage"]})

    def opening(self) -> list[str]:
        return [self.chunk(self.plan.echo)] if self.plan.echo else []

    def on_token(self, ev: TokenEvent) -> list[str]:
        return [self.chunk(ev.text)] if ev.text else []

    def on_final(self, ev: FinalEvent) -> tuple[list[str], Result]:
        result = self.result(ev.text, ev)
        return [self.chunk("", result["finish_reason"])], result


def responses_for(plan: Plan) -> ChatResponses | CompletionResponses:
    return ChatResponses(plan) if plan.kind == "chat.completion" else CompletionResponses(plan)
