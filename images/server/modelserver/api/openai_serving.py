"""Serving one OpenAI request, chat or text completion, from its `Plan`: the response
cache, overflow to an upstream when full, admission, then one answer or an SSE stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import APIError, error_body
from ..service import ClientGone, ModelService, Slot
from .openai_protocol import Plan
from .openai_responses import ChatResponses, Result, responses_for, sse

HEARTBEAT_S = 10.0  # keep-alive comments during long prefills (idle watchdogs, proxies)


async def serve(request: Request, svc: ModelService,
                plan: Plan) -> JSONResponse | StreamingResponse:
    out = responses_for(plan)
    app = request.app
    cache = app.state.cache if plan.cache_request is not None else None
    key = None
    if cache is not None and cache.cacheable(plan.params):
        key = cache.key(plan.kind, plan.model, plan.cache_request)
        hit = await cache.get(key)
        if hit is not None:
            assert isinstance(out, ChatResponses)  # the only kind with a cache_request
            return out.replay(hit) if plan.stream else out.answer(hit)

    if not svc.has_room() and app.state.overflow is not None:
        return await app.state.overflow.forward(request, plan.route, plan.body, plan.stream)
    slot = svc.acquire()

    async def remember(result: Result) -> None:
        if key:
            await cache.put(key, result)

    if not plan.stream:
        try:
            tokens, final = await svc.complete(plan.ids, plan.params, request)
        finally:
            slot.release()
        result = out.result("".join(t.text for t in tokens), final)
        await remember(result)
        return out.answer(result)
    events = svc.events(plan.ids, plan.params, request, heartbeat=HEARTBEAT_S)
    return _event_stream(request, slot, out.stream(events, remember))


def _event_stream(request: Request, slot: Slot, events: AsyncIterator[str]) -> StreamingResponse:
    """An OpenAI SSE response: the events, then `[DONE]`; an error mid-stream becomes an
    `error` event (clients raise it); the admission slot is freed however the stream
    ends, a client that went away included."""

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in events:
                yield chunk
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        except APIError as err:
            yield sse(error_body(request.url.path, err))
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()  # the engine request ends with it, not at garbage collection
            slot.release()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
