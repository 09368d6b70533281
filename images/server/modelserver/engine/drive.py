"""Drive requests through a running Engine to their end and collect what each produced.

What the warm-up, `python -m modelserver.bench`, the benchmarks and the engine tests all
do: submit requests, gather their token events, wait for each one's single end event
(a `FinalEvent` or an `ErrorEvent`). The engine calls `emit` on its own thread; a hook
(`on_event`) sees every event there too, for callers that observe the engine as it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .core import ErrorEvent, Event, FinalEvent, Request, TokenEvent
from .sampling import SamplingParams

# called on the engine thread with the outcome (the event already recorded) and the event
Hook = Callable[["Outcome", Event], None]


def greedy(max_new_tokens: int, **params: Any) -> SamplingParams:
    """Greedy, exactly `max_new_tokens` long (EOS ignored): a reproducible, fixed-size run."""
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0, ignore_eos=True,
                          **params)


@dataclass
class Outcome:
    """One request's tokens as they arrive and its end; `done` is set once it ended."""

    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the text each token released
    times: list[float] = field(default_factory=list)  # perf_counter() at each token
    end: FinalEvent | ErrorEvent | None = None
    done: threading.Event = field(default_factory=threading.Event)
    on_event: Hook | None = None
    request: Request | None = None  # set by submit: cancel() it to end a request early

    def emit(self, ev: Event) -> None:
        if isinstance(ev, TokenEvent):
            self.times.append(time.perf_counter())
            self.tokens.append(ev.id)
            self.texts.append(ev.text)
            if self.on_event:
                self.on_event(self, ev)
            return
        self.end = ev
        if self.on_event:  # before done: a waiter sees what the hook recorded
            self.on_event(self, ev)
        self.done.set()

    def wait(self, timeout: float | None = None) -> Outcome:
        """Block until the request ended; TimeoutError after `timeout` seconds (None: never)."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"the request did not end in {timeout}s "
                               f"({len(self.tokens)} tokens so far)")
        return self

    @property
    def ok(self) -> bool:
        return isinstance(self.end, FinalEvent)

    @property
    def error(self) -> str | None:
        """The ErrorEvent's message, or None."""
        return self.end.message if isinstance(self.end, ErrorEvent) else None

    @property
    def text(self) -> str:
        return "".join(self.texts)


def submit(engine: Any, prompt: Sequence[int], params: SamplingParams,
           on_event: Hook | None = None) -> Outcome:
    """Queue one request on `engine` (started); its Outcome fills in as it runs."""
    o = Outcome(on_event=on_event)
    o.request = Request(list(prompt), params, o.emit)
    engine.submit(o.request)
    return o


def wait_all(outcomes: Sequence[Outcome], timeout: float | None = None) -> list[Outcome]:
    """Wait for every outcome, each at most `timeout` seconds after the previous ended."""
    for o in outcomes:
        o.wait(timeout)
    return list(outcomes)


def run_all(engine: Any, prompts: Sequence[Sequence[int]],
            params: SamplingParams | Sequence[SamplingParams],
            timeout: float | None = None, on_event: Hook | None = None) -> list[Outcome]:
    """Submit every prompt at once (one params for all, or one per prompt), wait for all."""
    per = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(per) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(per)} sampling params")
    outs = [submit(engine, p, sp, on_event) for p, sp in zip(prompts, per, strict=True)]
    return wait_all(outs, timeout)


def first_error(outcomes: Sequence[Outcome]) -> str | None:
    """The message of the first request that did not finish normally, or None."""
    for o in outcomes:
        if not o.ok:
            return o.error or f"no final event: {o.end!r}"
    return None
