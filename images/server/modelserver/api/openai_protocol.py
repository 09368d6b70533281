"""OpenAI request types and their conversion into what the engine runs (a `Plan`):
validation, the prompt, sampling parameters and tool handling. No I/O here."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..chat import render_prompt
from ..engine.sampling import SEED_MAX, SamplingParams
from ..errors import NotFoundError, ValidationError, refuse_unsupported
from ..service import ModelService, sampling_params

# TGI's own clients (text_generation's Client.chat, huggingface_hub's InferenceClient on
# a TGI URL) always send model="tgi": TGI serves one model and takes the name as a
# placeholder. This server is a drop-in for TGI, so "tgi" is an alias of the served
# model; any other name that is not the served one is a 404.
TGI_MODEL_ALIAS = "tgi"
MAX_STOPS = 4


class _Base(BaseModel):
    # A parameter this server does not know is refused (422 naming it), as OpenAI's API
    # does, never accepted and ignored.
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # TGI's and vLLM's extension (TGI's own client sends it on chat): > 1 penalizes the
    # tokens of the prompt and of the output so far.
    repetition_penalty: float | None = Field(None, gt=0)
    # No token biasing here: null or {} only (TGI's client sends null).
    logit_bias: dict[str, float] | None = None
    # An end user's id for a provider's abuse monitoring: it changes no answer, here or
    # at OpenAI, and is kept out of the answer cache's key.
    user: str | None = None
    # Clawdbot and OpenClaw send store=false; this server stores no completion, so true
    # is refused rather than silently not honoured.
    store: bool | None = None
    ignore_eos: bool | None = None  # vLLM's extension: generate exactly max_tokens

    def check(self, svc: ModelService) -> None:
        svc.require_ready()
        if self.store:
            raise ValidationError("`store` must be false: this server stores no completions",
                                  param="store")
        refuse_unsupported({"logit_bias": bool(self.logit_bias)})
        if self.n not in (None, 1):
            raise ValidationError("`n` must be 1: this server returns one choice per request",
                                  param="n")
        if self.model and self.model not in (svc.served_name, TGI_MODEL_ALIAS):
            raise NotFoundError(f"model {self.model!r} is not served here; this server serves "
                                f"{svc.served_name!r}", param="model")

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > MAX_STOPS:
            raise ValidationError(f"`stop` takes at most {MAX_STOPS} sequences", param="stop")
        return stops

    def sampling(self, svc: ModelService, max_new: int) -> SamplingParams:
        return sampling_params(
            svc, max_new_tokens=max_new, temperature=self.temperature, top_p=self.top_p,
            seed=self.seed, stop=self.stops(), ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


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
    parallel_tool_calls: bool | None = None  # false: at most one call per answer
    # Token log-probabilities are not returned: false/null and 0/null only (TGI's client
    # sends null); anything else is a 422 naming the parameter.
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def check(self, svc: ModelService) -> None:
        super().check(svc)
        refuse_unsupported({"logprobs": bool(self.logprobs),
                            "top_logprobs": bool(self.top_logprobs)})


class CompletionRequest(_Base):
    prompt: str | list[str] | list[int] = Field(...)
    echo: bool | None = False


@dataclass
class Plan:
    """A validated request, ready to serve."""

    route: str                      # under /v1: where overflow forwards it
    model: str                      # the served name, as answers report it
    kind: str                       # "chat.completion" | "text_completion"
    ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    body: dict[str, Any]            # the request as sent on (overflow)
    cache_request: dict[str, Any] | None = None  # identifies a cacheable answer
    parser: str = "none"            # tool-call parser of the output
    tool_names: set[str] = field(default_factory=set)
    max_tool_calls: int | None = None  # None: as many as the model makes
    echo: str = ""                  # completions: the prompt, written before the answer
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prefix = "chatcmpl-" if self.kind == "chat.completion" else "cmpl-"
        self.meta = {"id": prefix + uuid.uuid4().hex, "created": int(time.time()),
                     "model": self.model}


def plan_chat(svc: ModelService, body: ChatCompletionRequest) -> Plan:
    body.check(svc)
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
    params = body.sampling(svc, max_new)
    parser = svc.settings.tool_call_parser if use_tools else "none"
    names = _tool_names(body.tools)
    forced = _forced_tools(body.tool_choice, names) if use_tools else None
    if forced:
        # the output is constrained to a call of one of `forced`: see engine/constrain.py
        params.tool_names = forced
        parser = "json"
    return Plan(
        route="chat/completions", model=svc.served_name, kind="chat.completion", ids=ids,
        params=params, stream=bool(body.stream), include_usage=body.include_usage,
        body=body.model_dump(exclude_none=True), parser=parser, tool_names=names,
        max_tool_calls=1 if body.parallel_tool_calls is False else None,
        cache_request=body.model_dump(exclude={"stream", "stream_options", "user"},
                                      exclude_none=True))


def plan_completion(svc: ModelService, body: CompletionRequest) -> Plan:
    body.check(svc)
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
    return Plan(
        route="completions", model=svc.served_name, kind="text_completion", ids=ids,
        params=body.sampling(svc, max_new), stream=bool(body.stream),
        include_usage=body.include_usage, body=body.model_dump(exclude_none=True),
        echo=text_prompt if body.echo else "")


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
