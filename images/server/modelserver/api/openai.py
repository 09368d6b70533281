"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models. Each is
a typed request (openai_protocol) planned and then served by one function
(openai_serving)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..service import ModelService
from .openai_protocol import ChatCompletionRequest, CompletionRequest, plan_chat, plan_completion
from .openai_serving import serve

router = APIRouter(tags=["OpenAI"])


def _svc(request: Request) -> ModelService:
    return request.app.state.service


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
    return await serve(request, svc, plan_chat(svc, body))


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest,
                      request: Request) -> JSONResponse | StreamingResponse:
    svc = _svc(request)
    return await serve(request, svc, plan_completion(svc, body))
