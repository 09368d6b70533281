"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..chat import render_prompt
from ..engine.core import FinalEvent, TokenEvent
from ..errors import APIError, NotFoundError, ValidationError, stream_error_payload
from ..service import ClientGone, ModelService, Slot, sampling_params, usage_dict
from ..toolcalls import StreamSplitter, ToolCall, parse

router = APIRouter(tags=["OpenAI"])

FINGERPRINT = f"modelserver-{__version__}"
HEARTBEAT_S = 10.0  # keep-alive comments during long prefills (idle watchdogs, proxies)
FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use (store…)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    ignore_eos: bool | None = None  # vLLM's extension: generate exactly max_tokens


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatCompletionRequest(_Base):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Base):
    prompt: str | list[str] | list[int] = Field(...)
    echo: bool | None = False


def _svc(request: Request) -> ModelService:
    return request.app.state.service


def _check_common(svc: ModelService, body: _Base) -> None:
    svc.require_ready()
    if body.n not in (None, 1):
        raise ValidationError("`n` must be 1: this server returns one choice per request",
                              param="n")
    # "tgi" is what the text-generation client always sends as the model name
    if body.model and body.model not in (svc.served_name, "tgi"):
        raise NotFoundError(f"model {body.model!r} is not served here; this server serves "
                            f"{svc.served_name!r}", param="model")


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise ValidationError("`stop` takes at most 4 sequences", param="stop")
    return stops


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _include_usage(body: _Base) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))


def _forced_tools(choice: str | dict[str, Any] | None, names: set[str]) -> list[str] | None:
    """tool_choice "required" → any tool; {"type": "function", "function": {"name"}} → it."""
    if choice == "required":
        return sorted(names)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise ValidationError(f"`tool_choice` names {name!r}, which is not in `tools`",
                                  param="tool_choice")
        return [name]
    if choice not in (None, "auto", "none"):
        raise ValidationError("`tool_choice` must be none, auto, required or a function",
                              param="tool_choice")
    return None


def _tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    return {(t.get("function") or {}).get("name") for t in tools or []} - {None}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    ctx = svc.loaded.context.as_dict() if svc.loaded else {}
    return {"object": "list", "data": [{
        "id": svc.served_name, "object": "model", "created": int(svc.started_at),
        "owned_by": "modelserver", "max_model_len": svc.context_window,
        "context_window": svc.context_window, "ready": svc.ready, **ctx,
    }]}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest,
                           request: Request) -> JSONResponse | StreamingResponse:
    svc = _svc(request)
    _check_common(svc, body)
    if body.max_tokens and body.max_completion_tokens and (
            body.max_tokens != body.max_completion_tokens):
        raise ValidationError("give `max_completion_tokens` or `max_tokens`, not both",
                              param="max_completion_tokens")
    use_tools = bool(body.tools) and body.tool_choice != "none"
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    prompt = render_prompt(svc.loaded.tokenizer, messages, body.tools if use_tools else None)
    ids = svc.tokenize(prompt, add_special_tokens=False)
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_new = svc.check_lengths(len(ids), body.max_completion_tokens or body.max_tokens, param)
    params = sampling_params(svc, max_new_tokens=max_new, temperature=body.temperature,
                             top_p=body.top_p, seed=body.seed, stop=_stops(body.stop),
                             ignore_eos=body.ignore_eos)
    parser = svc.settings.tool_call_parser if use_tools else "none"
    names = _tool_names(body.tools)
    forced = _forced_tools(body.tool_choice, names) if use_tools else None
    if forced:
        # the output is constrained to a call of one of `forced`: see engine/constrain.py
        params.tool_names = forced
        parser = "json"
    meta = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()),
            "model": svc.served_name}
    app = request.app

    cache_key = None
    if app.state.cache is not None and app.state.cache.cacheable(params):
        cache_key = app.state.cache.key("chat", svc.served_name, body.model_dump(
            exclude={"stream", "stream_options", "user"}, exclude_none=True))
        hit = await app.state.cache.get(cache_key)
        if hit is not None:
            return _chat_from_result(hit, meta, body)

    if not svc.has_room() and app.state.overflow is not None:
        return await app.state.overflow.forward(request, "chat/completions", body.model_dump(
            exclude_none=True), bool(body.stream))
    slot = svc.acquire()

    if not body.stream:
        try:
            text, final = await _collect(svc, ids, params, request)
        finally:
            slot.release()
        content, calls = parse(text, parser, names)
        result = _result(content, calls, final)
        if cache_key:
            await app.state.cache.put(cache_key, result)
        return _chat_from_result(result, meta, body)

    async def stream() -> AsyncIterator[str]:
        splitter = StreamSplitter(parser)
        pieces: list[str] = []
        yield _sse(_chunk(meta, {"role": "assistant", "content": ""}))
        async for ev in svc.events(ids, params, request, heartbeat=HEARTBEAT_S):
            if ev is None:
                yield ": keep-alive\n\n"  # SSE comment: clients ignore it, proxies see bytes
            elif isinstance(ev, TokenEvent):
                out = splitter.feed(ev.text)
                if out:
                    pieces.append(out)
                    yield _sse(_chunk(meta, {"content": out}))
            elif isinstance(ev, FinalEvent):
                rest, calls = splitter.finish(names)
                if rest:
                    pieces.append(rest)
                    yield _sse(_chunk(meta, {"content": rest}))
                for i, call in enumerate(calls):
                    # first the call with its id and name, then its arguments
                    head = call.as_openai(i)
                    head["function"]["arguments"] = ""
                    yield _sse(_chunk(meta, {"tool_calls": [head]}))
                    yield _sse(_chunk(meta, {"tool_calls": [
                        {"index": i, "function": {"arguments": call.arguments}}]}))
                result = _result("".join(pieces), calls, ev)
                yield _sse(_chunk(meta, {}, result["finish_reason"]))
                if _include_usage(body):
                    yield _sse({**_obj(meta, "chat.completion.chunk"), "choices": [],
                                "usage": result["usage"]})
                if cache_key:
                    await app.state.cache.put(cache_key, result)

    return _event_stream(request, slot, stream())


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest,
                      request: Request) -> JSONResponse | StreamingResponse:
    svc = _svc(request)
    _check_common(svc, body)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise ValidationError("`prompt` as a list takes exactly one string here",
                                  param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, list):
        vocab = len(svc.loaded.tokenizer)
        if not prompt or any(not isinstance(t, int) or t < 0 or t >= vocab for t in prompt):
            raise ValidationError(f"`prompt` token ids must be in [0, {vocab})", param="prompt")
        ids = list(prompt)
        text_prompt = svc.loaded.tokenizer.decode(ids)
    else:
        ids = svc.tokenize(prompt)
        text_prompt = prompt
    max_new = svc.check_lengths(len(ids), body.max_tokens, "max_tokens")
    params = sampling_params(svc, max_new_tokens=max_new, temperature=body.temperature,
                             top_p=body.top_p, seed=body.seed, stop=_stops(body.stop),
                             ignore_eos=body.ignore_eos)
    meta = {"id": "cmpl-" + uuid.uuid4().hex, "created": int(time.time()),
            "model": svc.served_name}
    app = request.app
    if not svc.has_room() and app.state.overflow is not None:
        return await app.state.overflow.forward(request, "completions", body.model_dump(
            exclude_none=True), bool(body.stream))
    slot = svc.acquire()
    echo = text_prompt if body.echo else ""

    if not body.stream:
        try:
            text, final = await _collect(svc, ids, params, request)
        finally:
            slot.release()
        return JSONResponse({**_obj(meta, "text_completion"), "choices": [{
            "index": 0, "text": echo + text, "logprobs": None,
            "finish_reason": FINISH[final.finish_reason]}], "usage": usage_dict(final)})

    async def stream() -> AsyncIterator[str]:
        if echo:
            yield _sse({**_obj(meta, "text_completion"), "choices": [
                {"index": 0, "text": echo, "logprobs": None, "finish_reason": None}]})
        async for ev in svc.events(ids, params, request, heartbeat=HEARTBEAT_S):
            if ev is None:
                yield ": keep-alive\n\n"
            elif isinstance(ev, TokenEvent) and ev.text:
                yield _sse({**_obj(meta, "text_completion"), "choices": [
                    {"index": 0, "text": ev.text, "logprobs": None,
                     "finish_reason": None}]})
            elif isinstance(ev, FinalEvent):
                yield _sse({**_obj(meta, "text_completion"), "choices": [
                    {"index": 0, "text": "", "logprobs": None,
                     "finish_reason": FINISH[ev.finish_reason]}]})
                if _include_usage(body):
                    yield _sse({**_obj(meta, "text_completion"), "choices": [],
                                "usage": usage_dict(ev)})

    return _event_stream(request, slot, stream())


# ---- helpers ---------------------------------------------------------------------------
async def _collect(svc: ModelService, ids: list[int], params: Any,
                   request: Request) -> tuple[str, FinalEvent]:
    parts: list[str] = []
    try:
        async for ev in svc.events(ids, params, request):
            if isinstance(ev, TokenEvent):
                parts.append(ev.text)
            elif isinstance(ev, FinalEvent):
                return "".join(parts), ev
    except ClientGone:
        # nobody is listening; 499 is nginx's "client closed request"
        raise APIError("client closed the request") from None
    raise APIError("generation ended without a result")


def _result(content: str, calls: list[ToolCall], final: FinalEvent) -> dict[str, Any]:
    return {
        "content": content,
        "tool_calls": [c.as_openai() for c in calls],
        "finish_reason": "tool_calls" if calls else FINISH[final.finish_reason],
        "usage": usage_dict(final),
    }


def _obj(meta: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"id": meta["id"], "object": kind, "created": meta["created"],
            "model": meta["model"], "system_fingerprint": FINGERPRINT}


def _chunk(meta: dict[str, Any], delta: dict[str, Any],
           finish: str | None = None) -> dict[str, Any]:
    return {**_obj(meta, "chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


def _chat_from_result(result: dict[str, Any], meta: dict[str, Any],
                      body: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
    """Build the response (either form) from a finished result, e.g. a cache hit."""
    if not body.stream:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": result["content"] or None}
        if result["tool_calls"]:
            message["tool_calls"] = result["tool_calls"]
        elif message["content"] is None:
            message["content"] = ""
        return JSONResponse({**_obj(meta, "chat.completion"), "choices": [{
            "index": 0, "message": message, "logprobs": None,
            "finish_reason": result["finish_reason"]}], "usage": result["usage"]})

    async def replay() -> AsyncIterator[str]:
        yield _sse(_chunk(meta, {"role": "assistant", "content": ""}))
        if result["content"]:
            yield _sse(_chunk(meta, {"content": result["content"]}))
        for i, call in enumerate(result["tool_calls"]):
            yield _sse(_chunk(meta, {"tool_calls": [{**call, "index": i}]}))
        yield _sse(_chunk(meta, {}, result["finish_reason"]))
        if _include_usage(body):
            yield _sse({**_obj(meta, "chat.completion.chunk"), "choices": [],
                        "usage": result["usage"]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(replay(), media_type="text/event-stream")


def _event_stream(request: Request, slot: Slot,
                  events: AsyncGenerator[str, None]) -> StreamingResponse:
    """An OpenAI SSE response: the route's events, then `[DONE]`; an error mid-stream
    becomes an `error` event (clients raise it); the admission slot is freed however the
    stream ends, a client that went away included."""

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in events:
                yield chunk
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        except APIError as err:
            yield _sse(stream_error_payload(request.url.path, err))
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()  # the engine request ends with it, not at garbage collection
            slot.release()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
