"""The model service shared by both APIs: loading + warm-up, admission (429), length
limits (422), and an async view of one request's events from the engine thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request as HTTPRequest

from . import fetch, loading
from .config import Settings
from .engine import budget as kvbudget
from .engine import drive
from .engine.core import Engine, ErrorEvent, Event, FinalEvent, Request, TokenEvent
from .engine.sampling import SamplingParams
from .errors import (
    APIError,
    GenerationError,
    OverloadedError,
    RequestTimeoutError,
    UnavailableError,
    ValidationError,
)
from .metrics import Metrics

log = logging.getLogger("modelserver.service")

WARMUP_TIMEOUT = 600  # seconds per warm-up shape: a big model's first CUDA kernels compile
# the first token comes from the prefill, the second from one decode step of the whole
# batch; a request that arrived too late for that step makes the warm-up try again
WARMUP_DECODE_TOKENS = 2
WARMUP_BATCH_TRIES = 3
# on CPU the full 2048-token chunk proves nothing about memory (host RAM is not the limit
# there) and costs startup: SmolLM2 on a loaded 2-core machine took 84 s for it, 24 s at
# 256 tokens, 2 s for the old warm-up (benchmarks/results/warmup-startup-cap256.json); a
# short prompt still runs the multi-token prefill path
WARMUP_CPU_PREFILL_TOKENS = 32


class ClientGone(Exception):
    """The HTTP client disconnected; the engine slot has been released."""


class Slot:
    """An admitted request; release() is idempotent so every exit path may call it."""

    def __init__(self, service: ModelService) -> None:
        self._service: ModelService | None = service

    def release(self) -> None:
        if self._service is not None:
            self._service.inflight -= 1
            self._service = None


class ModelService:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loaded: loading.Loaded | None = None
        self.engine: Engine | None = None
        self.loaded_and_warm = False
        self.load_error: str | None = None
        self.inflight = 0
        self.started_at = time.time()
        self._thread: threading.Thread | None = None
        # called when loading fails: the process should exit non-zero so Kubernetes shows
        # the error and restarts with back-off instead of a pod that is never ready
        self.on_fatal: Callable[[str], None] | None = None
        metrics.on_collect(self._collect)

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.engine:
            self.engine.stop()

    def _load(self) -> None:
        s = self.settings
        try:
            src = fetch.resolve(s.model, s.revision, s.model_cache_dir, download=True)
            fetch.verify(src, s.checksum)
            self.loaded = loading.load(src, s.dtype, s.device, s.quantization, s.context_window)
            # decided after loading: `auto` is what the weights left free
            budget = kvbudget.decide(s.kv_cache_bytes, s.prefix_cache_bytes,
                                     self.loaded.model, next(self.loaded.model.parameters()).device)
            self.metrics.kv_budget.set(budget.total_bytes)
            self.metrics.prefix_cache_budget.set(budget.prefix_bytes)
            self.engine = Engine(
                self.loaded.model, self.loaded.tokenizer, max_batch_size=s.max_batch_size,
                prefix_cache_entries=s.prefix_cache_entries,
                on_queue_wait=self.metrics.queue_duration.observe, kv_budget=budget,
                max_prefill_tokens_per_step=s.max_prefill_tokens_per_step,
                compile_decode=s.compile == "on",
            )
            self.engine.start()
            if s.warmup:
                self._warm_up()
            self.loaded_and_warm = True
            self.metrics.ready.set(1)
            log.info("ready: serving %s as %r", src.label, self.served_name)
        except Exception as exc:
            self.load_error = str(exc) if isinstance(exc, fetch.FetchError) else \
                f"{type(exc).__name__}: {exc}"
            log.error("model load failed: %s", self.load_error)
            if self.on_fatal:
                self.on_fatal(self.load_error)

    def _warm_up(self) -> None:
        """Run the largest shapes once before /health says 200, so a batch or a prompt
        that does not fit fails the load (and names the flag) instead of a request later:
        max_batch_size short requests decoding together, then one full prefill chunk."""
        s, engine = self.settings, self.engine
        ids = list(self.loaded.tokenizer("Hello", add_special_tokens=True)["input_ids"])
        for _ in range(WARMUP_BATCH_TRIES):  # arrival races may split the first batch
            self._warm_run([list(ids) for _ in range(s.max_batch_size)], WARMUP_DECODE_TOKENS,
                           f"{s.max_batch_size} requests decoding together "
                           f"(--max-batch-size {s.max_batch_size})")
            if engine.stats.max_step_rows >= s.max_batch_size:
                break
        else:
            log.warning("warm-up: no decode step ran %d rows together (largest %d)",
                        s.max_batch_size, engine.stats.max_step_rows)
        n = min(engine.prefill_chunk, self.max_input_tokens)
        if engine.device.type == "cpu":
            n = min(n, WARMUP_CPU_PREFILL_TOKENS)  # startup time, not memory, is at stake
        filler = list(self.loaded.tokenizer(" hello world" * 8,
                                            add_special_tokens=False)["input_ids"]) or ids
        long_prompt = (ids + filler * (n // len(filler) + 1))[:n]
        self._warm_run([long_prompt], 1, f"a prompt of {n} tokens (one prefill chunk of "
                                         f"{engine.prefill_chunk}, --max-input-tokens "
                                         f"{self.max_input_tokens})")

    def _warm_run(self, prompts: list[list[int]], max_new: int, shape: str) -> None:
        try:
            outs = drive.run_all(self.engine, prompts, drive.greedy(max_new),
                                 timeout=WARMUP_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"warm-up of {shape} did not finish in {WARMUP_TIMEOUT}s") from None
        errors = [o.error for o in outs if o.error is not None]
        if errors:
            hint = " (out of memory: lower it)" if any(
                "out of memory" in m.lower() or "OutOfMemory" in m for m in errors) else ""
            raise RuntimeError(f"warm-up of {shape} failed{hint}: {errors[0]}")

    # ---- facts ----------------------------------------------------------------------
    @property
    def served_name(self) -> str:
        if self.settings.served_name:
            return self.settings.served_name
        return self.settings.model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")

    @property
    def context_window(self) -> int:
        return self.loaded.context.served if self.loaded else (self.settings.context_window or 0)

    @property
    def max_total_tokens(self) -> int:
        return self.settings.max_total_tokens or self.context_window

    @property
    def max_input_tokens(self) -> int:
        return self.settings.max_input_tokens or max(1, self.max_total_tokens - 1)

    @property
    def broken(self) -> str | None:
        """Why the engine can no longer serve (a sticky device error), or None."""
        return self.engine.broken if self.engine else None

    @property
    def ready(self) -> bool:
        return self.loaded_and_warm and not self.broken

    def require_ready(self) -> None:
        if self.broken:
            raise UnavailableError(f"the engine is broken and awaits a restart: {self.broken}")
        if not self.ready:
            raise UnavailableError(
                "model failed to load: " + self.load_error if self.load_error else
                "model is loading"
            )

    def _collect(self) -> None:
        self.metrics.inflight.set(self.inflight)
        self.metrics.ready.set(1 if self.ready else 0)
        if self.engine:
            st = self.engine.stats
            self.metrics.queue_depth.set(self.engine.queue_depth)
            self.metrics.queue_size.set(self.engine.queue_depth)
            self.metrics.batch_current_size.set(st.batch_size)
            self.metrics.decode_steps.set(st.steps)
            self.metrics.decode_rows.set(st.step_rows)
        self.metrics.batch_max_size.set(self.settings.max_batch_size)
        if self.engine:
            batch, prefix = self.engine.kv_bytes()
            self.metrics.kv_cache_bytes.labels(part="batch").set(batch)
            self.metrics.kv_cache_bytes.labels(part="prefix").set(prefix)

    # ---- requests -------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.require_ready()
        return list(self.loaded.tokenizer(text, add_special_tokens=add_special_tokens)
                    ["input_ids"])

    def check_lengths(self, n_input: int, max_new: int | None, param: str) -> int:
        """Validate against the limits; return the max_new_tokens to use."""
        if n_input == 0:
            raise ValidationError("the prompt is empty", param="inputs")
        if n_input > self.max_input_tokens:
            raise ValidationError(
                f"the input has {n_input} tokens, over max_input_tokens "
                f"{self.max_input_tokens}", param="inputs")
        room = self.max_total_tokens - n_input
        kv_room = self._kv_room(n_input)
        if max_new is None:
            # a default may shrink to what the KV budget holds; an asked-for value may not
            if kv_room < 1:
                raise self._over_kv_budget(n_input, None, param)
            return max(1, min(self.settings.default_max_tokens, room, kv_room))
        if max_new < 1:
            raise ValidationError(f"`{param}` must be at least 1", param=param)
        if n_input + max_new > self.max_total_tokens:
            raise ValidationError(
                f"input tokens + `{param}` must be <= max_total_tokens "
                f"{self.max_total_tokens}: given {n_input} input tokens and {max_new} "
                f"`{param}`", param=param)
        if max_new > kv_room:
            raise self._over_kv_budget(n_input, max_new, param)
        return max_new

    def _kv_room(self, n_input: int) -> int:
        """The most new tokens a prompt of `n_input` tokens may ask for under the KV
        budget, alone in the batch (more could never run: it would wait forever)."""
        budget = self.engine.kv_budget if self.engine else None
        return budget.max_new_tokens_alone(n_input) if budget else self.max_total_tokens

    def _over_kv_budget(self, n_input: int, max_new: int | None,
                        param: str) -> ValidationError:
        budget = self.engine.kv_budget
        asked = f"{n_input} input tokens + {max_new} `{param}`" if max_new else \
            f"{n_input} input tokens"
        return ValidationError(
            f"{asked} need more KV cache than the server's budget holds for one request "
            f"(--kv-cache-memory {self.settings.kv_cache_memory}: "
            f"{budget.batch_bytes} bytes at {budget.bytes_per_token} "
            f"bytes/token): at most {max(0, self._kv_room(n_input))} `{param}` for this "
            "input", param=param if max_new else "inputs")

    def acquire(self) -> Slot:
        """Take one of max_concurrent_requests slots, or raise OverloadedError (429)."""
        self.require_ready()
        if self.inflight >= self.settings.max_concurrent_requests:
            self.metrics.rejected.inc()
            self.metrics.request_failure.labels(err="overloaded").inc()
            raise OverloadedError()
        self.inflight += 1
        return Slot(self)

    def has_room(self) -> bool:
        return self.inflight < self.settings.max_concurrent_requests

    async def events(self, prompt_ids: list[int], params: SamplingParams,
                     http: HTTPRequest | None = None,
                     heartbeat: float | None = None) -> AsyncIterator[Event | None]:
        """Submit and yield events until a final one; cancels the engine row on exit.

        With `heartbeat`, yields None after that many idle seconds (a long prefill), so a
        stream can send a keep-alive before a client's idle watchdog fires."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        deadline = time.monotonic() + self.settings.request_timeout

        def emit(e: Event) -> None:
            loop.call_soon_threadsafe(q.put_nowait, e)

        req = Request(prompt_ids, params, emit, deadline=deadline)
        started = time.monotonic()
        self.metrics.request_count.inc()
        self.metrics.input_length.observe(len(prompt_ids))
        self.engine.submit(req)
        finished = False
        idle_since = time.monotonic()
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=1.0)
                except TimeoutError:
                    if http is not None and await http.is_disconnected():
                        raise ClientGone() from None
                    if heartbeat and time.monotonic() - idle_since >= heartbeat:
                        idle_since = time.monotonic()
                        yield None
                    continue
                idle_since = time.monotonic()
                if isinstance(ev, FinalEvent):
                    finished = True
                    took = time.monotonic() - started
                    self.metrics.request_success.inc()
                    self.metrics.request_duration.observe(took)
                    self.metrics.generated_tokens.observe(ev.completion_tokens)
                    self.metrics.generated_tokens_total.inc(ev.completion_tokens)
                    self.metrics.prefix_cached_tokens.inc(ev.cached_tokens)
                    if req.started_at:
                        self.metrics.inference_duration.observe(time.monotonic() -
                                                                req.started_at)
                    if ev.completion_tokens:
                        self.metrics.mean_time_per_token.observe(took / ev.completion_tokens)
                    yield ev
                    return
                if isinstance(ev, ErrorEvent):
                    finished = True
                    self.metrics.request_failure.labels(err=ev.kind).inc()
                    if ev.kind == "timeout":
                        raise RequestTimeoutError(
                            f"request exceeded --request-timeout "
                            f"{self.settings.request_timeout:g}s")
                    if ev.kind == "cancelled":
                        raise ClientGone()
                    if ev.kind == "unavailable":
                        raise UnavailableError(ev.message)
                    if ev.kind == "too_large":  # the engine's own never-fits refusal
                        raise ValidationError(ev.message, param="max_tokens")
                    raise GenerationError(ev.message)
                yield ev
        finally:
            if not finished:
                req.cancel()  # client gone or consumer stopped: free the batch slot
                self.metrics.request_failure.labels(err="cancelled").inc()

    async def complete(self, prompt_ids: list[int], params: SamplingParams,
                       http: HTTPRequest | None = None) -> tuple[list[TokenEvent], FinalEvent]:
        """Run one request to its end, not streamed: its tokens and its final event."""
        tokens: list[TokenEvent] = []
        try:
            async for ev in self.events(prompt_ids, params, http):
                if isinstance(ev, TokenEvent):
                    tokens.append(ev)
                elif isinstance(ev, FinalEvent):
                    return tokens, ev
        except ClientGone:
            # nobody is listening; the answer is never read
            raise APIError("client closed the request") from None
        raise APIError("generation ended without a result")


def sampling_params(
    service: ModelService, *, max_new_tokens: int, temperature: float | None,
    top_p: float | None, top_k: int | None = None, repetition_penalty: float | None = None,
    presence_penalty: float | None = None, frequency_penalty: float | None = None,
    seed: int | None = None, stop: list[str] | None = None, do_sample: bool | None = None,
    ignore_eos: bool | None = None, prompt_logprobs: bool = False,
) -> SamplingParams:
    s = service.settings
    temp = s.default_temperature if temperature is None else temperature
    if do_sample is False:
        temp = 0.0
    return SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temp,
        top_p=s.default_top_p if top_p is None else top_p, top_k=top_k or 0,
        repetition_penalty=repetition_penalty or 1.0,
        presence_penalty=presence_penalty or 0.0, frequency_penalty=frequency_penalty or 0.0,
        seed=seed, stop=list(stop or []), ignore_eos=bool(ignore_eos),
        prompt_logprobs=prompt_logprobs,
    )


def usage_dict(ev: FinalEvent) -> dict[str, Any]:
    return {
        "prompt_tokens": ev.prompt_tokens,
        "completion_tokens": ev.completion_tokens,
        "total_tokens": ev.prompt_tokens + ev.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": ev.cached_tokens},
    }
