"""The generation engine: one scheduler thread running continuous batching.

Why our own loop rather than transformers' continuous-batching manager (which, in 5.24,
has cancellation, prefix block sharing, CUDA graphs and compile: benchmarks/RESULTS.md
§5): measured on this CPU it is no faster (engine / static-shape limit 1.14, 1.12, 0.69
at c = 1, 8, 32 against 0.88, 0.97, 0.65 for the manager, same rounds; §7 after device
sampling: 0.71 at c = 32), and what the server needs on top of it (TGI's details and
prompt log-probabilities, the forced tool-call grammar, cached_tokens, per-request fault
isolation, a KV budget with admission) would be rebuilt around it anyway. On a GPU its
CUDA-graph path may win: that is unmeasured (no GPU here).

This loop: requests prefill alone (reusing a cached prompt prefix when one matches,
chunked; at most --max-prefill-tokens-per-step prompt tokens per iteration across all of
them, with one decode step of the running streams between iterations: prefill.py), are
admitted only while the KV budget holds them, join the running batch (a row each,
slots.py) between decode steps, are sampled together on the device with one device→host
copy per step, detokenized incrementally, and leave when done or when their client has
gone. An error fails only the request that caused it; a sticky device error breaks the
engine (/health 503).
"""
from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import DEFAULT_MAX_PREFILL_TOKENS_PER_STEP
from . import batch_sampling
from . import kv as kvops
from .budget import KVBudget, tensor_bytes
from .constrain import ToolCallGrammar
from .detok import IncrementalDecoder, new_decoder
from .faults import EngineBroken, describe, fatal_reason, is_oom, probe
from .prefill import Prefill, chunk_end
from .prefix import PrefixCache, kv_bytes
from .sampling import Sampler, SamplingParams
from .slots import Slots, bucket, decode_mask
from .text import StopState

log = logging.getLogger("modelserver.engine")


@dataclass
class TokenEvent:
    id: int
    text: str          # text released by this token (may be "" while a stop is pending)
    logprob: float
    special: bool


@dataclass
class FinalEvent:
    finish_reason: str          # "length" | "eos_token" | "stop_sequence" (TGI vocabulary)
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    # each prompt token's log-probability (the first None) when params.prompt_logprobs
    prompt_logprobs: list[float | None]
    seed: int | None


@dataclass
class ErrorEvent:
    message: str
    kind: str = "generation"  # "generation" | "timeout" | "cancelled" | "unavailable"


Event = TokenEvent | FinalEvent | ErrorEvent


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    deadline: float | None = None
    cancelled: bool = False
    # state owned by the engine thread
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    prompt_logprobs: list[float | None] = field(default_factory=list)
    sampler: Sampler | None = None
    grammar: ToolCallGrammar | None = None
    stop: StopState | None = None
    detok: IncrementalDecoder | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Stats:
    batch_size: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    steps: int = 0
    step_rows: int = 0  # sum of batch sizes over decode steps: rows/steps = mean batch
    max_step_rows: int = 0  # the largest batch a decode step has run (warm-up proves it)


@dataclass
class _Batch:
    """The running batch's state, set aside while part of it is stepped on its own."""
    rows: list[Request]
    cache: Slots
    pos: torch.Tensor   # per row: its length, where its next token's KV goes
    lens: list[int]     # the same on the host (the step's width, leaves)
    last: torch.Tensor


@dataclass
class _Checkpoint:
    """The batch just before a decode forward that succeeded (references, no copies): what
    a failure later in the step (sampling, emitting) is rolled back to. The KV needs no
    rollback: the step's column lies at each row's length, which the checkpoint keeps."""
    rows: list[Request]
    pos: torch.Tensor
    lens: list[int]
    last: torch.Tensor


class _BatchGone(Exception):
    """Every row of the step failed: there is nothing left to sample."""


class Engine:
    # set once the device is unusable (a sticky CUDA error): the reason; never cleared,
    # the process must be restarted
    broken: str | None = None
    _checkpoint: _Checkpoint | None = None

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch_size: int, prefix_cache_entries: int,
        on_queue_wait: Callable[[float], None] | None = None, prefill_chunk: int = 2048,
        kv_budget: KVBudget | None = None, compile_decode: bool = False,
        max_prefill_tokens_per_step: int = DEFAULT_MAX_PREFILL_TOKENS_PER_STEP,
    ) -> None:
        self.prefill_chunk = prefill_chunk
        self.max_prefill_tokens_per_step = max_prefill_tokens_per_step
        # None: no limit (in-process tools); the server always decides one (budget.decide)
        self.kv_budget = kv_budget
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.prefix = PrefixCache(
            prefix_cache_entries, max_bytes=kv_budget.prefix_bytes if kv_budget else None)
        self.stats = Stats()
        self.on_queue_wait = on_queue_wait
        self.eos_ids = _eos_ids(model, tokenizer)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._inbox: queue.Queue[Request | None] = queue.Queue()
        self._waiting: deque[Request] = deque()
        self._rows: list[Request] = []
        self._cache: Slots | None = None  # the running batch's KV: a request per row
        # prefilled requests waiting to be stacked into the batch in one copy
        self._joining: list[tuple[Request, kvops.KV, torch.Tensor, int]] = []
        # the admitted request whose prefill goes on in the next iteration (arrival order)
        self._prefilling: Prefill | None = None
        self._pos: torch.Tensor | None = None     # next position per row (= its length)
        self._lens: list[int] = []                # the same on the host
        self._last: torch.Tensor | None = None    # next input token per row
        # transformers ≥5.2x renamed `past_key_values` to `cache`; accept both
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # compiled: every step's shape is one of a few (row and width buckets)
        self._static_shapes = compile_decode
        self._decode = self._setup_decode(compile_decode)
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopping = False
        self._vocab_cache: tuple[list[str], dict[str, int]] | None = None

    # ---- public API (any thread) -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(None)

    def submit(self, req: Request) -> None:
        req.sampler = Sampler(req.params)
        req.stop = StopState(list(req.params.stop))
        req.detok = new_decoder(self.tokenizer)
        if req.params.tool_names:
            req.grammar = ToolCallGrammar(req.params.tool_names)
        self._inbox.put(req)

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet in the batch (read from any thread)."""
        return self._inbox.qsize() + len(self._waiting)

    # ---- scheduler thread -------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopping:
            try:
                self._drain(block=not self._rows and not self._waiting and not self._joining
                            and self._prefilling is None)
                if self.broken:  # refuse what still arrives until the pod is restarted
                    self._fail_everything(self.broken)
                    continue
                self._admit()
                if self._rows:
                    self._step()
            except EngineBroken as exc:
                self._break(str(exc))
            except Exception as exc:  # never let the loop die: fail the batch, keep the queue
                log.exception("engine step failed")
                try:
                    self._check_device(exc)
                except EngineBroken as broken:
                    self._break(str(broken))
                    continue
                failed = self._rows + [j[0] for j in self._joining]
                if self._prefilling is not None:
                    failed.append(self._prefilling.req)
                for r in failed:
                    r.emit(ErrorEvent(f"generation failed: {describe(exc)}"))
                self._joining, self._prefilling = [], None
                self._reset_batch()

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        """Spend this iteration's prefill budget (--max-prefill-tokens-per-step) in arrival
        order: the request prefilling goes on where it stopped; when it is done the next is
        admitted, while the budget lasts. Those prefilled then join the batch, which steps
        once (`_loop`) before the next budget: a burst of long prompts no longer holds the
        running streams for its whole prefill."""
        budget = self.max_prefill_tokens_per_step
        while budget > 0 and (self._prefilling is not None or self._admit_next()):
            p = self._prefilling
            try:
                budget -= self._prefill(p, budget)
            except EngineBroken as exc:
                self._prefilling = None
                p.req.emit(ErrorEvent(f"engine broken: {exc}", "unavailable"))
                raise
            except Exception as exc:  # this request's prefill: it alone fails
                self._prefilling = None
                log.exception("prefill failed")
                p.req.emit(ErrorEvent(f"generation failed: {describe(exc)}"))
                self._check_device(exc)
                if is_oom(exc):
                    self._release_memory()
        self._join()
        # requests cancelled while waiting for a slot leave the queue at once
        for req in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(req)
            req.emit(ErrorEvent("cancelled", "cancelled"))

    def _admit_next(self) -> bool:
        """Admit the queue's head when the batch has a row and the KV budget room for it;
        it becomes the request prefilling. False when none may start now."""
        now = time.monotonic()
        while (self._waiting and len(self._rows) + len(self._joining) < self.max_batch_size
               and self._fits()):
            req = self._waiting.popleft()
            if req.cancelled:
                req.emit(ErrorEvent("cancelled", "cancelled"))
                continue
            if req.deadline is not None and now > req.deadline:
                req.emit(ErrorEvent("request timed out while queued", "timeout"))
                continue
            req.started_at = time.monotonic()
            if self.on_queue_wait:
                self.on_queue_wait(req.started_at - req.enqueued_at)
            self._prefilling = Prefill(req)
            return True
        return False

    def _slab_width(self, rows: list[Request]) -> int:
        """The slab width admission reserved for a batch of `rows` (0: no budget, the slab
        grows geometrically): no row outgrows its prompt + max_new_tokens."""
        if self.kv_budget is None:
            return 0
        return kvops.align(max(len(r.prompt_ids) + r.params.max_new_tokens for r in rows))

    def _grown_shape(self, rows: list[Request], lens: list[int],
                     joiner_prompts: list[int]) -> tuple[int, int] | None:
        """The slab (rows, width) a batch of `rows` (lengths `lens`) needs when it outgrows
        the one held now, else None. Rows grow to a power of two (a join rarely copies the
        batch, and the compiled decode sees few shapes), the width is what admission
        reserved (under a budget; compiled: rounded up to a power of two too, or each new
        max_new_tokens would compile anew) or grows geometrically (without a budget); what
        the KV budget cannot hold falls back to the exact rows, then the exact width."""
        held = (self._cache.rows_cap, self._cache.width_cap) if self._cache else (0, 0)
        width = self._slab_width(rows) or max(lens) + 1
        if len(rows) <= held[0] and width <= held[1]:
            return None
        n = bucket(len(rows), max(self.max_batch_size, len(rows)))
        budget = self.kv_budget
        if budget is None:
            return max(n, held[0]), kvops.capacity_for(width, held[1])
        wide = 1 << (width - 1).bit_length() if self._static_shapes else width
        shapes = [(n, wide), (len(rows), wide), (len(rows), width)]
        for shape in shapes:
            if budget.join_bytes(held, shape, joiner_prompts) <= budget.batch_bytes:
                return shape
        return shapes[-1]

    def _join_bytes(self, joining: list[Request]) -> tuple[int, int]:
        """Peak KV bytes of the batch while `joining` (prefilled or not yet) joins it, and
        the bytes of those that are a slab grown for it (0: it fits the one held)."""
        prompts = [len(r.prompt_ids) for r in joining]
        held = (self._cache.rows_cap, self._cache.width_cap) if self._cache else (0, 0)
        grown = self._grown_shape(self._rows + joining, self._lens + prompts, prompts)
        grown_bytes = grown[0] * grown[1] * self.kv_budget.bytes_per_token if grown else 0
        return self.kv_budget.join_bytes(held, grown, prompts), grown_bytes

    def _fits(self) -> bool:
        """Whether the queue's head may be prefilled now: the batch's real allocation once
        it joins (budget.py: the slab held, the joiners' prefill caches and, when the batch
        outgrows the slab, the grown one) stays within the KV budget. Else it waits; a head
        that cannot fit even alone is refused here, or it would block the queue forever."""
        budget = self.kv_budget
        while budget is not None and self._waiting:
            req = self._waiting[0]
            timed_out = req.deadline is not None and time.monotonic() > req.deadline
            if req.cancelled or timed_out:
                return True  # _admit drops it without allocating anything
            prompt = len(req.prompt_ids)
            if not budget.fits_alone(prompt, req.params.max_new_tokens):
                self._waiting.popleft()
                req.emit(ErrorEvent(
                    f"the prompt ({prompt} tokens) + max_new_tokens "
                    f"({req.params.max_new_tokens}) need more KV cache than the budget "
                    f"allows one request: at most "
                    f"{max(0, budget.max_new_tokens_alone(prompt))} new tokens for this "
                    f"prompt under --kv-cache-memory ({budget.describe()})", "too_large"))
                continue
            # asked only while no request is prefilling (one at a time, `_admit_next`):
            # the joiners are the prefilled ones and the head
            need, grown = self._join_bytes([j[0] for j in self._joining] + [req])
            if need > budget.batch_bytes:
                return False
            # The prefix cache lives in what the batch leaves: it yields the room needed.
            # The entry the head starts from (an agent's previous turn) must live beside
            # the head's prefill only: the head's store evicts it (least recently used)
            # when the join needs its room (`_prefix_room`), so only what it exceeds a slab
            # grown for the join by must be left free (else a 13k-token turn could never be
            # reused in a budget of three such prompts).
            reused = self.prefix.match_bytes(req.prompt_ids)
            self.prefix.evict_to(budget.total_bytes - need + reused - max(0, reused - grown),
                                 keep_for=req.prompt_ids)
            return True
        return bool(self._waiting)  # refusals above may have emptied the queue

    def _prefix_room(self, req: Request, kv_bytes: int) -> int | None:
        """The KV budget's bytes the prefix cache may hold once `req` (prefilled, its KV
        `kv_bytes` about to be stored) has joined: all but the join's peak, of which its
        stored KV is part (None: no budget)."""
        if self.kv_budget is None:
            return None
        need, _ = self._join_bytes([j[0] for j in self._joining] + [req])
        return self.kv_budget.total_bytes - need + kv_bytes

    def kv_bytes(self) -> tuple[int, int]:
        """(batch, prefix cache) KV bytes allocated now; read from any thread."""
        cache = self._cache
        batch = tensor_bytes(cache.tensors()) if cache else 0
        return batch, self.prefix.bytes

    def _prefill(self, p: Prefill, budget: int) -> int:
        """Run the next chunk of `p`'s prompt, at most `budget` tokens; returns the tokens
        it ran. When the prompt is done, its first token is picked and it joins (or ends)."""
        req, ids = p.req, p.req.prompt_ids
        if req.cancelled or (req.deadline is not None and time.monotonic() > req.deadline):
            self._prefilling = None  # its cache goes with it
            req.emit(ErrorEvent("cancelled", "cancelled") if req.cancelled
                     else ErrorEvent("request timed out", "timeout"))
            return 0
        scored = req.params.prompt_logprobs
        if p.cache is None:
            # scoring the prompt needs the logits of every position: no cached prefix then
            reuse, cached = (0, None) if scored else self.prefix.lookup(ids)
            if scored:
                req.prompt_logprobs = [None]  # the first token has no context to score it
            # sized for the whole prompt up front: chunks write in place, and the views
            # handed to the prefix cache below are exactly the prompt (no spare capacity)
            p.cache = kvops.from_tensors(cached or [], capacity=len(ids))
            p.done = req.cached_tokens = reuse
        # chunked prefill: attention over a chunk needs chunk × total scores, not total²,
        # so a 30k-token prompt fits in memory; only the last position's logits are kept
        start = p.done
        end = chunk_end(p, budget, self.prefill_chunk)
        out = self.model(
            input_ids=torch.tensor([ids[start:end]], device=self.device),
            attention_mask=torch.ones(1, end, dtype=torch.long, device=self.device),
            position_ids=torch.arange(start, end, device=self.device).unsqueeze(0),
            **{self._cache_kw: p.cache}, use_cache=True, logits_to_keep=0 if scored else 1,
        )
        if scored:
            req.prompt_logprobs += _target_logprobs(out.logits[0], ids[start + 1:end + 1])
        p.done = end
        if p.remaining == 0:
            self._prefilling = None
            self._prefilled(p, out.logits[:, -1])
        return end - start

    def _prefilled(self, p: Prefill, logits: torch.Tensor) -> None:
        """`p`'s prompt is in its cache: store it for reuse, pick the first token, and
        queue the request to join the batch (unless that token already ended it)."""
        req, ids = p.req, p.req.prompt_ids
        if req.cancelled:
            req.emit(ErrorEvent("cancelled", "cancelled"))
            return
        mask = torch.ones(1, len(ids), dtype=torch.long, device=self.device)
        self.stats.prefill_tokens += len(ids) - req.cached_tokens
        self.stats.cached_tokens += req.cached_tokens
        new_kv = p.cache.tensors()
        self.prefix.store(ids, new_kv, room=self._prefix_room(req, kv_bytes(new_kv)))
        _, (token,), (logprob,) = self._pick([req], logits)
        if self._accept(req, token, logprob):
            return  # finished on its first token: never joins the batch
        self._joining.append((req, new_kv, mask, token))

    def _join(self) -> None:
        """Put the requests prefilled since the last step into free rows of the slab: each
        joiner's own KV is copied, the batch's only when it outgrows the slab."""
        joining = [j for j in self._joining if not j[0].cancelled]
        for req, *_ in self._joining:
            if req.cancelled:
                req.emit(ErrorEvent("cancelled", "cancelled"))
        self._joining = []
        if not joining:
            return
        new_lens = [kv[0][0].shape[-2] for _, kv, _, _ in joining]
        rows = self._rows + [req for req, *_ in joining]
        lens = self._lens + new_lens
        try:
            slots = self._cache
            grown = self._grown_shape(rows, lens, new_lens)
            if grown is not None:
                slots = (slots.grown(*grown, self._lens) if slots is not None
                         else Slots(joining[0][1], *grown, static_address=self._static_shapes))
            for i, (_, kv, _, _) in enumerate(joining):
                slots.place(len(self._rows) + i, kv)
        except Exception as exc:  # the batch's rows are untouched: only the joiners are at stake
            self._join_failed(joining, exc)
            return
        self._cache = slots
        pos = torch.tensor(new_lens, device=self.device)
        last = torch.tensor([t for *_, t in joining], device=self.device)
        self._pos = torch.cat([self._pos, pos]) if self._rows else pos
        self._last = torch.cat([self._last, last]) if self._rows else last
        self._rows, self._lens = rows, lens
        self.stats.batch_size = len(self._rows)

    def _decode_step(self) -> None:
        # drop rows whose client went away or whose deadline passed before paying a step
        now = time.monotonic()
        keep = []
        for i, r in enumerate(self._rows):
            if r.cancelled:
                r.emit(ErrorEvent("cancelled", "cancelled"))
            elif r.deadline is not None and now > r.deadline:
                r.emit(ErrorEvent("request timed out", "timeout"))
            else:
                keep.append(i)
        if len(keep) != len(self._rows):
            self._keep_rows_and_next_tokens(keep)
            if not self._rows:
                return
        logits = self._forward_decode()
        self.stats.steps += 1
        self.stats.step_rows += len(self._rows)
        self._pos = self._pos + 1
        self._lens = [n + 1 for n in self._lens]
        nxt, tokens, logprobs = self._pick(self._rows, logits)
        keep = [i for i, (r, token, logprob) in enumerate(
            zip(self._rows, tokens, logprobs, strict=True)) if not self._accept(r, token, logprob)]
        self._last = nxt  # the next tokens stay on the device
        if len(keep) != len(self._rows):
            self._keep_rows_and_next_tokens(keep)
        self.stats.batch_size = len(self._rows)

    def _pick(self, rows: list[Request],
              logits: torch.Tensor) -> tuple[torch.Tensor, list[int], list[float]]:
        """logits (rows, vocab) → the next tokens on the device, and the same tokens with
        their log-probabilities on the host: one device→host copy for the rows sampled
        together; a row with a forced tool call takes the grammar's host path."""
        free = [i for i, r in enumerate(rows) if r.grammar is None]
        tokens, logprobs = [0] * len(rows), [0.0] * len(rows)
        nxt = None
        if free:
            sub = logits if len(free) == len(rows) else logits.index_select(
                0, torch.tensor(free, device=logits.device))
            nxt, lps = batch_sampling.pick(sub, [rows[i].sampler for i in free],
                                           [rows[i].prompt_ids for i in free],
                                           [rows[i].generated for i in free])
            for i, token, logprob in zip(free, *batch_sampling.to_host(nxt, lps), strict=True):
                tokens[i], logprobs[i] = token, logprob
        if len(free) != len(rows):
            for i, r in enumerate(rows):
                if r.grammar is not None:
                    tokens[i], logprobs[i] = self._pick_constrained(r, logits[i])
            nxt = torch.tensor(tokens, device=self.device)
        return nxt, tokens, logprobs

    def _vocab(self) -> tuple[list[str], dict[str, int]]:
        """Each token's text (special tokens: "", never allowed) and single-char tokens."""
        if self._vocab_cache is None:
            n = len(self.tokenizer)
            # one batched call into the Rust tokenizer: ~50x faster than n decode() calls
            decoded = self.tokenizer.batch_decode([[i] for i in range(n)])
            texts = ["" if i in self.special_ids else t for i, t in enumerate(decoded)]
            chars: dict[str, int] = {}
            for i, t in enumerate(texts):
                if len(t) == 1 and t not in chars:
                    chars[t] = i
            self._vocab_cache = (texts, chars)
        return self._vocab_cache

    def _pick_constrained(self, req: Request, logits: torch.Tensor) -> tuple[int, float]:
        g = req.grammar
        texts, chars = self._vocab()
        logits = req.sampler.penalized(logits, req.prompt_ids, req.generated)[: len(texts)]
        logprobs = torch.log_softmax(logits, dim=-1)

        def n_tokens(text: str) -> int:
            return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

        def first_token(text: str) -> int:
            return self.tokenizer.encode(text, add_special_tokens=False)[0]

        ending = g.completion()
        budget = req.params.max_new_tokens - len(req.generated) - 1  # after this token
        token = None
        forced = g.forced()
        if forced:  # literal parts: the tokenizer's own tokens for them
            t = first_token(forced)
            if g.accepts(texts[t], budget, n_tokens):
                token = t
        if token is None and budget > n_tokens(ending):  # else: write the shortest ending
            order = torch.argsort(logits, descending=True)[:512].tolist()
            want = 1 if req.params.greedy else 16
            valid: list[int] = []
            for t in order:
                if g.accepts(texts[t], budget, n_tokens):
                    valid.append(t)
                    if len(valid) >= want:
                        break
            if len(valid) == 1:
                token = valid[0]
            elif valid:
                scaled = logits[valid] / max(req.params.temperature, 1e-5)
                probs = torch.softmax(scaled, dim=-1).cpu()
                token = valid[int(torch.multinomial(probs, 1, generator=req.sampler.generator))]
        if token is None:
            t = first_token(ending)
            token = t if g.accepts(texts[t]) else chars[ending[0]]
        g.advance(texts[token])
        return token, float(logprobs[token])

    def _keep_rows_and_next_tokens(self, keep: list[int]) -> None:
        """Keep only the rows `keep` of the batch, with their pending next tokens."""
        order = self._keep_rows(keep)
        if order:
            self._last = self._last.index_select(
                0, torch.tensor(order, device=self.device, dtype=torch.long))

    def _keep_rows(self, keep: list[int]) -> list[int]:
        """Keep only the rows `keep` of the batch state (requests, KV, positions); returns
        the kept rows' former indices in their new order, for the caller's per-row tensors.

        The kept rows stay where they are, except those past the new batch size: each
        moves into a leaver's hole (one row's copy), so the active rows stay 0..B-1."""
        if not keep:
            self._reset_batch()
            return []
        n, kept = len(keep), set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n]
        for i in range(len(self._rows)):
            if i not in kept:
                self._cache.vacate(i, self._lens[i])
        order = list(range(n))
        for hole, src in zip(holes, movers, strict=True):
            self._cache.move(src, hole, self._lens[src])
            self._cache.vacate(src, self._lens[src])
            order[hole] = src
        if movers or n != len(self._rows):
            self._pos = self._pos.index_select(
                0, torch.tensor(order, device=self.device, dtype=torch.long))
        self._rows = [self._rows[i] for i in order]
        self._lens = [self._lens[i] for i in order]
        self.stats.batch_size = len(self._rows)
        return order

    def _reset_batch(self) -> None:
        self._rows, self._cache, self._lens = [], None, []
        self._pos = self._last = None
        self.stats.batch_size = 0

    def _accept(self, req: Request, token: int, logprob: float) -> bool:
        """Record one sampled token, emit it; return True when the request is finished."""
        p = req.params
        is_eos = token in self.eos_ids and not p.ignore_eos
        self.stats.generated_tokens += 1
        req.generated.append(token)
        finish = None
        if is_eos and req.grammar is None:
            finish = "eos_token"
            delta = ""
        else:
            delta = req.stop.update(req.detok.step(token))
            if req.stop.stopped_on is not None:
                finish = "stop_sequence"
            elif req.grammar is not None and req.grammar.done:
                finish = "eos_token"  # the forced call is complete
        if finish is None and len(req.generated) >= p.max_new_tokens:
            finish = "length"
        if finish is not None and finish != "stop_sequence":
            delta += req.stop.update(req.detok.flush()) + req.stop.flush()
        req.emit(TokenEvent(token, delta, logprob, token in self.special_ids))
        if finish is None:
            return False
        req.emit(FinalEvent(
            finish_reason=finish, text=req.stop.text,
            prompt_tokens=len(req.prompt_ids), completion_tokens=len(req.generated),
            cached_tokens=req.cached_tokens, prompt_logprobs=req.prompt_logprobs,
            seed=p.seed,
        ))
        return True

    # ---- faults: an error fails only the request that caused it -----------------------
    def _forward_rows(self, rows: list[Request], last: torch.Tensor, mask: torch.Tensor,
                      pos: torch.Tensor, cache: Any) -> torch.Tensor:
        """The model's decode forward over `rows` → their next-token logits (the requests
        are there to say whose forward it is: tests fail it for one of them)."""
        return self._decode(last.unsqueeze(1), pos.unsqueeze(1), mask, cache)

    def _forward_decode(self) -> torch.Tensor:
        """The decode forward over the batch; returns each row's next-token logits.

        Each row's new K/V is written in place at its own length. When the forward fails
        nothing is rolled back (a row's length advances only once its step is accepted):
        the rows that caused it fail and the others run the step again without them."""
        while True:
            if max(self._lens) + 1 > self._cache.width_cap:  # no budget: geometric growth
                self._cache = self._cache.grown(
                    self._cache.rows_cap,
                    kvops.capacity_for(max(self._lens) + 1, self._cache.width_cap), self._lens)
            try:
                logits = self._forward_slots(self._rows, self._last, self._pos, self._lens,
                                             self._cache)
            except Exception as exc:
                self._drop_failing_rows(exc)
                if not self._rows:
                    raise _BatchGone() from exc
                continue
            self._checkpoint = _Checkpoint(self._rows, self._pos, self._lens, self._last)
            if len(self._rows) > self.stats.max_step_rows:
                self.stats.max_step_rows = len(self._rows)
            return logits

    def _drop_failing_rows(self, exc: Exception) -> None:
        """After a failed decode forward: fail the rows that caused it.

        Out of memory: the row holding the most KV (the last admitted on a tie) made the
        batch too large. Any other error: the rows whose forward fails on their own, found
        by running halves of the batch on copies of their KV."""
        log.warning("decode forward failed with %d rows: %s", len(self._rows), describe(exc))
        self._check_device(exc)
        everyone = list(range(len(self._rows)))
        if is_oom(exc):
            lengths, rows = self._lens, self._rows
            bad = [max(everyone, key=lambda i: (lengths[i], rows[i].started_at or 0.0, i))]
            self._release_memory()
        else:
            bad = self._failing_rows(everyone) or everyone
        for i in bad:
            self._rows[i].emit(ErrorEvent(f"generation failed: {describe(exc)}"))
        self._keep_rows_and_next_tokens([i for i in everyone if i not in bad])

    def _failing_rows(self, idx: list[int]) -> list[int]:
        """Of the rows `idx`, whose forward together fails, those that fail without the
        others ([] when each half succeeds alone: the failure needs them together)."""
        if len(idx) == 1:
            return idx
        bad: list[int] = []
        for part in (idx[: len(idx) // 2], idx[len(idx) // 2:]):
            lens = [self._lens[i] for i in part]
            sel = torch.tensor(part, device=self.device)
            try:
                self._forward_slots(
                    [self._rows[i] for i in part], self._last.index_select(0, sel),
                    self._pos.index_select(0, sel), lens, self._cache.take(part, lens))
            except Exception as exc:
                self._check_device(exc)
                bad += self._failing_rows(part) or part
        return bad

    def _step(self) -> None:
        """One decode step of the batch, in which an error fails only its culprits."""
        self._checkpoint = None
        try:
            self._decode_step()
        except EngineBroken:
            raise
        except _BatchGone:
            self._reset_batch()
        except Exception as exc:
            ckpt, self._checkpoint = self._checkpoint, None
            if ckpt is not None and ckpt.rows is self._rows:
                self._recover_after_forward(ckpt, exc)
                return
            # not after a forward of this batch (e.g. dropping rows): its state is unknown
            log.exception("decode step failed")
            self._check_device(exc)
            for r in self._rows:
                r.emit(ErrorEvent(f"generation failed: {describe(exc)}"))
            self._reset_batch()

    def _recover_after_forward(self, ckpt: _Checkpoint, exc: Exception) -> None:
        """The forward succeeded, then picking or emitting one row's token failed.

        Rows are handled in order, so the rows before the culprit have taken this step's
        token (they keep the new KV column) and the rows after it have not (they stay at
        their length before the step and run it again with the next step). When no row
        took its token, the culprit is unknown: the halves of the batch run the step apart
        until it is found."""
        log.warning("decode step failed after its forward: %s", describe(exc))
        self._check_device(exc)
        rows, n = ckpt.rows, len(ckpt.rows)
        # a row's length is len(prompt) + len(generated) - 1 until it takes a token
        took = [len(r.generated) > n_ - len(r.prompt_ids) + 1
                for r, n_ in zip(rows, ckpt.lens, strict=True)]
        pending = [i for i in range(n) if not took[i]]
        self._rows, self._pos, self._lens, self._last = (
            rows, ckpt.pos, list(ckpt.lens), ckpt.last)
        if pending and (any(took) or n == 1):
            culprit = pending[0]
            rows[culprit].emit(ErrorEvent(f"generation failed: {describe(exc)}"))
            ahead = [i for i in range(n) if took[i]]
            if ahead:  # their step is done: one position further, their next token known
                sel = torch.tensor(ahead, device=self.device)
                self._pos = ckpt.pos.index_add(0, sel, torch.ones_like(sel))
                self._last = ckpt.last.index_copy(0, sel, torch.tensor(
                    [rows[i].generated[-1] for i in ahead], device=self.device,
                    dtype=ckpt.last.dtype))
                for i in ahead:
                    self._lens[i] += 1
            self._keep_rows_and_next_tokens([
                i for i in range(n) if i != culprit and not (took[i] and self._ended(rows[i]))])
            return
        parts: list[_Batch] = []
        full = self._cache
        for group in (g for g in (pending[: n // 2], pending[n // 2:]) if g):
            sel = torch.tensor(group, device=self.device)
            lens = [ckpt.lens[i] for i in group]
            self._put_batch(_Batch([rows[i] for i in group], full.take(group, lens),
                                   ckpt.pos.index_select(0, sel), lens,
                                   ckpt.last.index_select(0, sel)))
            try:
                self._step()
            except EngineBroken as broken:  # the rows set aside are no longer in the batch
                for r in (r for p in parts for r in p.rows):
                    r.emit(ErrorEvent(f"engine broken: {broken}", "unavailable"))
                raise
            if self._rows:
                parts.append(_Batch(self._rows, self._cache, self._pos, self._lens,
                                    self._last))
        self._reset_batch()
        if len(parts) == 1:
            self._put_batch(parts[0])
        elif parts:
            lens = [n_ for p in parts for n_ in p.lens]
            slots = full.empty_like(bucket(len(lens), max(self.max_batch_size, len(lens))),
                                    max(p.cache.width_cap for p in parts))
            at = 0
            for p in parts:
                slots.put_rows(p.cache, list(range(len(p.rows))), at, p.lens)
                at += len(p.rows)
            self._put_batch(_Batch([r for p in parts for r in p.rows], slots,
                                   torch.cat([p.pos for p in parts]), lens,
                                   torch.cat([p.last for p in parts])))

    def _ended(self, req: Request) -> bool:
        """Whether the token `_accept` just took finished `req` (its FinalEvent is out): the
        step broke off before such a row left the batch."""
        p = req.params
        if len(req.generated) >= p.max_new_tokens:
            return True
        if req.grammar is not None:
            return req.grammar.done
        if req.generated[-1] in self.eos_ids and not p.ignore_eos:
            return True
        return req.stop is not None and req.stop.stopped_on is not None

    def _put_batch(self, batch: _Batch) -> None:
        self._rows, self._cache, self._lens = batch.rows, batch.cache, batch.lens
        self._pos, self._last = batch.pos, batch.last
        self.stats.batch_size = len(self._rows)

    def _join_failed(self, joining: list[tuple[Request, kvops.KV, torch.Tensor, int]],
                     exc: Exception) -> None:
        """Putting the joiners into the batch failed (out of memory growing the slab, most
        likely): the one with the longest prompt fails, the others try again."""
        log.warning("join of %d requests failed: %s", len(joining), describe(exc))
        self._check_device(exc)
        self._release_memory()
        worst = max(range(len(joining)), key=lambda i: (joining[i][1][0][0].shape[-2], i))
        joining[worst][0].emit(ErrorEvent(f"generation failed: {describe(exc)}"))
        self._joining = joining[:worst] + joining[worst + 1:]
        self._join()

    def _setup_decode(self, compile_decode: bool) -> Callable[..., torch.Tensor]:
        """The decode forward: eager, or compiled (--compile on) over static shapes (row
        buckets, the slab's full width); on CUDA with CUDA graphs (reduce-overhead)."""
        if not compile_decode:
            return self._decode_logits
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return torch.compile(self._decode_logits, mode=mode, dynamic=False)

    def _decode_logits(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                       cache: Any) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                          **{self._cache_kw: cache}, use_cache=True).logits[:, -1]

    def _forward_slots(self, rows: list[Request], last: torch.Tensor, pos: torch.Tensor,
                       lens: list[int], slots: Slots) -> torch.Tensor:
        """One decode step of `rows` (slab rows 0..len-1): eager over exactly those rows and
        the widest one's columns; compiled over a bucket of rows (the extra ones write
        position 0 of free rows, which the next occupant overwrites) and the full width."""
        n = len(rows)
        if not self._static_shapes:
            width = max(lens) + 1
        else:
            width, pad = slots.width_cap, bucket(n, slots.rows_cap) - n
            if pad:
                last = torch.cat([last, last.new_zeros(pad)])
                pos = torch.cat([pos, pos.new_zeros(pad)])
        cfg = self.model.config
        mask = decode_mask(pos, width, getattr(cfg, "_attn_implementation", "sdpa"),
                           self.model.dtype)
        logits = self._forward_rows(rows, last, mask, pos, slots.view(len(pos), width, pos))
        return logits[:n]

    def _probe_device(self) -> None:
        probe(self.device)

    def _check_device(self, exc: Exception) -> None:
        """Raise EngineBroken when `exc` left the device unusable: a known sticky CUDA
        error, or a trivial op on the device failing after it."""
        reason = fatal_reason(exc)
        if reason is None:
            try:
                self._probe_device()
            except Exception as probe_exc:
                reason = f"device probe failed after {describe(exc)}: {describe(probe_exc)}"
        if reason is not None:
            raise EngineBroken(reason) from exc

    def _break(self, reason: str) -> None:
        """The device is gone: fail everything in flight with the reason, refuse new work
        (/health turns 503, the kubelet restarts the pod)."""
        log.error("engine broken, refusing all work until restarted: %s", reason)
        self.broken = reason
        self._fail_everything(reason)

    def _fail_everything(self, reason: str) -> None:
        failed = self._rows + [j[0] for j in self._joining] + list(self._waiting)
        if self._prefilling is not None:
            failed.append(self._prefilling.req)
        self._waiting.clear()
        self._joining, self._prefilling = [], None
        self._reset_batch()
        for r in failed:
            r.emit(ErrorEvent(f"engine broken: {reason}", "unavailable"))

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the failed step's blocks back before retrying


def _target_logprobs(logits: torch.Tensor, targets: list[int]) -> list[float]:
    """logits (positions, vocab) → log-probability of targets[i] at position i."""
    logprobs = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(targets, device=logits.device).unsqueeze(1))
    return picked.squeeze(1).tolist()


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids
