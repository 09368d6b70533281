"""Hugging Face TGI-compatible routes: / (compat), /generate, /generate_stream, /info,
/tokenize. TGI's parameter names; every optional parameter may be an explicit null."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..engine.core import FinalEvent, TokenEvent
from ..engine.sampling import SEED_MAX, SamplingParams
from ..errors import APIError, ValidationError, error_body, refuse_unsupported
from ..service import ClientGone, ModelService, sampling_params

router = APIRouter(tags=["TGI"])

MAX_STOP_SEQUENCES = 4


class Parameters(BaseModel):
    # TGI's parameters, all of them (the text-generation client sends each); anything
    # else is refused with a 422 naming it, never accepted and ignored.
    model_config = ConfigDict(extra="forbid")

    best_of: int | None = None
    decoder_input_details: bool | None = None
    details: bool | None = None
    do_sample: bool | None = None
    frequency_penalty: float | None = None
    grammar: Any | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: list[str] | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool | None = None
    adapter_id: str | None = None
    ignore_eos: bool | None = None  # vLLM's extension: generate exactly max_new_tokens


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: Parameters | None = None
    stream: bool | None = False


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: Parameters | None = None


def _svc(request: Request) -> ModelService:
    return request.app.state.service


@dataclass
class Valid:
    """A validated TGI request: its parameters, prompt ids and sampling parameters."""

    inputs: str
    p: Parameters
    ids: list[int]
    params: SamplingParams


def validate(svc: ModelService, body: GenerateRequest, streaming: bool) -> Valid:
    """TGI's validation rules, with its messages' naming of the parameter; parameters
    this server does not implement are refused (422), never ignored."""
    svc.require_ready()
    p = body.parameters or Parameters()
    if p.best_of not in (None, 1):
        raise ValidationError("`best_of` != 1 is not supported", param="best_of")
    if p.temperature is not None and p.temperature <= 0:
        raise ValidationError("`temperature` must be strictly positive", param="temperature")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise ValidationError("`repetition_penalty` must be strictly positive",
                              param="repetition_penalty")
    if p.top_p is not None and not 0 < p.top_p < 1:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0", param="top_p")
    if p.top_k is not None and p.top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive", param="top_k")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise ValidationError("`max_new_tokens` must be strictly positive",
                              param="max_new_tokens")
    if p.stop and len(p.stop) > MAX_STOP_SEQUENCES:
        raise ValidationError(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. "
                              f"Given: {len(p.stop)}", param="stop")
    if p.truncate is not None and p.truncate <= 0:
        raise ValidationError("`truncate` must be strictly positive", param="truncate")
    if streaming and p.decoder_input_details:
        raise ValidationError("`decoder_input_details` == true is not supported when "
                              "streaming tokens", param="decoder_input_details")
    _refuse_unsupported(p)
    if not body.inputs:
        raise ValidationError("`inputs` cannot be empty", param="inputs")
    ids = svc.tokenize(body.inputs)
    if p.truncate is not None and len(ids) > p.truncate:
        ids = ids[-p.truncate:]
    max_new = svc.check_lengths(len(ids), p.max_new_tokens, "max_new_tokens")
    # TGI samples when asked to or when any sampling knob is set; otherwise greedy
    sample = bool(p.do_sample) or (p.temperature not in (None, 1.0)) or any(
        v is not None for v in (p.top_k, p.top_p))
    params = sampling_params(
        svc, max_new_tokens=max_new, temperature=(p.temperature or 1.0) if sample else 0.0,
        top_p=p.top_p or 1.0, top_k=p.top_k, repetition_penalty=p.repetition_penalty,
        seed=p.seed, stop=p.stop, ignore_eos=p.ignore_eos,
        prompt_logprobs=bool(p.decoder_input_details),
    )
    if sample and params.seed is None:
        # report the seed actually used, as TGI does, so the run can be repeated
        params.seed = random.getrandbits(63)
    return Valid(body.inputs, p, ids, params)


def _refuse_unsupported(p: Parameters) -> None:
    """Set values of parameters this server does not implement (explicit nulls, and the
    text-generation client's defaults, watermark=false, pass)."""
    refuse_unsupported({
        # typical sampling is not implemented
        "typical_p": p.typical_p is not None,
        # TGI counts the prompt's tokens too; /v1 routes have OpenAI's frequency_penalty
        "frequency_penalty": p.frequency_penalty not in (None, 0),
        "grammar": p.grammar is not None,
        "top_n_tokens": p.top_n_tokens not in (None, 0),
        "watermark": bool(p.watermark),
        "adapter_id": bool(p.adapter_id),
    })


def _details(svc: ModelService, v: Valid, tokens: list[dict[str, Any]],
             final: FinalEvent) -> dict[str, Any]:
    tok = svc.loaded.tokenizer
    # with decoder_input_details, the prompt's tokens and their log-probabilities
    prefill = [{"id": i, "text": tok.decode([i]), "logprob": lp}
               for i, lp in zip(v.ids, final.prompt_logprobs, strict=True)
               ] if v.p.decoder_input_details else []
    return {"finish_reason": final.finish_reason, "generated_tokens": final.completion_tokens,
            "seed": final.seed, "prefill": prefill, "tokens": tokens, "top_tokens": None,
            "best_of_sequences": None}


def _token(ev: TokenEvent) -> dict[str, Any]:
    return {"id": ev.id, "text": ev.text, "logprob": ev.logprob, "special": ev.special}


def _generated_text(v: Valid, final: FinalEvent) -> str:
    return (v.inputs if v.p.return_full_text else "") + final.text


async def _generate(request: Request, body: GenerateRequest) -> dict[str, Any]:
    svc = _svc(request)
    v = validate(svc, body, streaming=False)
    slot = svc.acquire()
    try:
        tokens, final = await svc.complete(v.ids, v.params, request)
    finally:
        slot.release()
    out: dict[str, Any] = {"generated_text": _generated_text(v, final)}
    if v.p.details or v.p.decoder_input_details:
        out["details"] = _details(svc, v, [_token(t) for t in tokens], final)
    return out


def _stream(request: Request, body: GenerateRequest) -> StreamingResponse:
    svc = _svc(request)
    v = validate(svc, body, streaming=True)
    slot = svc.acquire()

    async def events() -> AsyncIterator[str]:
        index = 0
        prev: dict[str, Any] = {}
        try:
            async for ev in svc.events(v.ids, v.params, request):
                if isinstance(ev, TokenEvent):
                    pending = {"index": index, "token": _token(ev), "generated_text": None,
                               "details": None, "top_tokens": None}
                    index += 1
                    # the final FinalEvent follows the last TokenEvent at once: hold one
                    # event back so the last token carries generated_text and details
                    if prev:
                        yield f"data:{json.dumps(prev, ensure_ascii=False)}\n\n"
                    prev = pending
                elif isinstance(ev, FinalEvent):
                    prev["generated_text"] = _generated_text(v, ev)
                    prev["details"] = {"finish_reason": ev.finish_reason,
                                       "generated_tokens": ev.completion_tokens,
                                       "seed": ev.seed, "input_length": len(v.ids)}
                    yield f"data:{json.dumps(prev, ensure_ascii=False)}\n\n"
        except ClientGone:
            return
        except APIError as err:
            yield f"data:{json.dumps(error_body(request.url.path, err))}\n\n"
        finally:
            slot.release()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/", response_model=None)
async def compat(body: GenerateRequest, request: Request) -> Any:
    """TGI's compat route: a stream when `stream` is true, else a JSON array of one."""
    if body.stream:
        return _stream(request, body)
    return JSONResponse([await _generate(request, body)])


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> dict[str, Any]:
    return await _generate(request, body)


@router.post("/generate_stream", response_model=None)
async def generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
    return _stream(request, body)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> list[dict[str, Any]]:
    svc = _svc(request)
    svc.require_ready()
    enc = svc.loaded.tokenizer(body.inputs, return_offsets_mapping=True)
    return [{"id": i, "text": body.inputs[a:b], "start": a, "stop": b}
            for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    s = svc.settings
    ctx = svc.loaded.context.as_dict() if svc.loaded else {}
    return {
        "model_id": svc.served_name, "model_sha": s.revision,
        "model_dtype": str(svc.loaded.dtype).removeprefix("torch.") if svc.loaded else None,
        "model_device_type": svc.loaded.device if svc.loaded else None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": s.max_concurrent_requests, "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_tokens": svc.max_input_tokens if svc.loaded else s.max_input_tokens,
        "max_input_length": svc.max_input_tokens if svc.loaded else s.max_input_tokens,
        "max_total_tokens": svc.max_total_tokens if svc.loaded else s.max_total_tokens,
        "max_batch_size": s.max_batch_size, "validation_workers": 1,
        "max_client_batch_size": 1, "router": "modelserver", "version": __version__,
        "sha": None, "docker_label": None, "quantization": s.quantization,
        "parameters": svc.loaded.parameters if svc.loaded else None,
        "weight_bytes": svc.loaded.weight_bytes if svc.loaded else None, **ctx,
    }
