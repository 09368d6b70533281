"""The builtin engine's per-step overhead: against a bare static-shape loop (the limit),
through its HTTP server, and next to transformers' own continuous batching; same run.

A tiny random Llama-like model (GQA) makes the forward cheap, so what is left of a decode
step is host work: the part a fast accelerator cannot hide either. The vocabulary is
32,000 tokens (Llama-2's size; the ids are the first 32,000 of SmolLM2's real tokenizer)
so that the LM head, sampling over a row and detokenization cost what they cost for a
real model; `--model tiny` (the test suite's
600-token tokenizer, hidden 64) is for the smoke test only.

Cases, each with c concurrent requests of the same prompt length and output length
(EOS ignored, so every case makes exactly c x output tokens), interleaved round by round:

- `limit`: a preallocated StaticCache for batch c, one batched prefill, then one forward
  per step with argmax on the device; no Python per row, one host sync at the end;
- `engine`: modelserver.engine.core.Engine in this process (the public API service.py
  uses: Engine(...).start(), submit(Request(ids, SamplingParams, emit)));
- `server`: `python -m modelserver serve` on loopback, c concurrent streaming clients
  (httpx, /v1/completions with token-id prompts, ignore_eos);
- `cb`: transformers' ContinuousBatchingManager (init_continuous_batching) in this process;
- `engine-base` (only with `--baseline-src DIR`): the same in-process engine case, run from
  another source tree (e.g. a `git worktree` at the commit before a change) in a worker
  subprocess whose PYTHONPATH is that tree's; it times itself exactly as `engine` does, so
  the two are compared round by round in the same run.

Per run: tokens/s over the whole run (prefill included) and decode steps/s over the
decode window (from the moment every request has its first token to the last token:
all c rows decode together there, so steps = output tokens - 1). Then a profile of one
steady engine decode step at the largest levels (perf_counter wrappers patched onto the
engine's methods from here; the engine's code is not changed), the cost of re-decoding
the whole output on every token against the output length, and what the installed
transformers offers that engine/core.py's opening premise says it lacks.

`--numerics N` instead compares the greedy tokens of N requests (N different prompt
lengths) run one at a time and run together, in the engine and in transformers' CB.

    python benchmarks/engine_overhead.py --out benchmarks/results/engine-overhead.json
    git worktree add --detach .cache/base afe4294
    python benchmarks/engine_overhead.py --baseline-src .cache/base --cases limit engine \
        --out benchmarks/results/engine-sampling.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import prompts, silence_textless, smollm2_gguf, start_ready  # noqa: E402
from tree_worker import TreeWorker, engine_drive, serve, tree_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-models"
CASES = ("limit", "engine", "server", "cb")
BASE_CASE = "engine-base"  # the engine of --baseline-src, next to this tree's
WORKER_REPLY = "@@engine-worker "  # marks the worker's replies among anything else on stdout
_MISSING = object()

LLAMA_SMALL = {  # Llama-like, GQA 8:2, head_dim 32; the LM head is most of the FLOPs
    "vocab_size": 32000,  # Llama-2's size: the first 32,000 ids of SmolLM2's tokenizer
    "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}
LLAMA_TINY = {**LLAMA_SMALL, "vocab_size": None, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4}
MODELS = {"small": LLAMA_SMALL, "tiny": LLAMA_TINY}


def log(msg: str) -> None:
    print(f"[engine_overhead {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model

def build(name: str, cache: Path) -> Path:
    """Random float32 weights for MODELS[name] with a real tokenizer; built once, reused."""
    path = cache / f"engine-overhead-{name}"
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        log(f"reusing {path}")
        return path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if name == "tiny":
        sys.path.insert(0, str(ROOT / "tests" / "server"))
        import tinymodel

        tok = AutoTokenizer.from_pretrained(tinymodel.build(cache / "tokenizer-source"))
    else:
        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fields = dict(MODELS[name])
    vocab = fields.pop("vocab_size") or len(tok)  # None: the whole tokenizer
    log(f"building {name} in {path} (vocab {vocab} of the tokenizer's {len(tok)})")
    cfg = LlamaConfig(vocab_size=vocab, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **fields)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    # a stream must carry text for every token to time it (see silence_textless)
    silent = silence_textless(model, tok)
    log(f"{silent} tokens that decode to no whole text are never picked")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def load_plain(path: Path, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation=attn).eval()


# --------------------------------------------------------------------------- timing

def window(first: list[float], last: list[float], out_tokens: int) -> float | None:
    """Decode steps/s once every row is in the batch: out_tokens - 1 steps from the latest
    first token to the latest last token (all rows started together and end together)."""
    span = max(last) - max(first)
    return (out_tokens - 1) / span if span > 0 and out_tokens > 1 else None


def record(c: int, out_tokens: int, t0: float, t_end: float, first: list[float],
           last: list[float], tokens: int, **extra: Any) -> dict[str, Any]:
    wall = t_end - t0
    return {"c": c, "tokens": tokens, "wall_s": round(wall, 4),
            "tok_s": round(tokens / wall, 2),
            "decode_steps_s": _round(window(first, last, out_tokens)),
            "ttft_max_s": round(max(first) - t0, 4), **extra}


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


# --------------------------------------------------------------------------- cases

class Limit:
    """A bare static-shape loop: the most a forward-per-step engine could do here."""

    def __init__(self, model, prompt_len: int, out_tokens: int) -> None:
        self.model, self.p, self.o = model, prompt_len, out_tokens
        self.caches: dict[int, Any] = {}
        # transformers >= 5.2x calls it `cache` (the engine accepts both the same way)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def run(self, plist: list[list[int]]) -> dict[str, Any]:
        import torch
        from transformers import StaticCache

        c = len(plist)
        if c not in self.caches:  # preallocated once per batch size, reset per run
            self.caches[c] = StaticCache(config=self.model.config, max_cache_len=self.p + self.o)
        cache = self.caches[c]
        ids = torch.tensor(plist)
        pos = torch.tensor([self.p])
        with torch.inference_mode():
            cache.reset()  # its tensors are inference tensors: written only in this mode
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, **{self.cache_kw: cache}, use_cache=True,
                             cache_position=torch.arange(self.p), logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t_first = time.perf_counter()
            toks = [nxt]
            for _ in range(self.o - 1):
                out = self.model(input_ids=nxt, **{self.cache_kw: cache}, use_cache=True,
                                 cache_position=pos)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                toks.append(nxt)
                pos += 1
            generated = torch.cat(toks, dim=1).tolist()  # the one host sync
            t_end = time.perf_counter()
        assert all(len(g) == self.o for g in generated)
        return record(c, self.o, t0, t_end, [t_first], [t_end], c * self.o)


class InProcessEngine:
    """modelserver's Engine, loaded the way the server loads it, driven by its public API."""

    def __init__(self, path: Path, max_batch: int) -> None:
        from modelserver.engine.core import Engine
        from modelserver.fetch import resolve
        from modelserver.loading import load

        loaded = load(resolve(str(path)), "float32", "cpu")
        self.tokenizer = loaded.tokenizer
        self.engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=max_batch,
                             prefix_cache_entries=0)
        self.engine.start()

    def run(self, plist: list[list[int]], out_tokens: int,
            keep_ids: bool = False) -> dict[str, Any]:
        drive = engine_drive()
        steps0 = self.engine.stats.steps
        t0 = time.perf_counter()
        outs = drive.run_all(self.engine, plist, drive.greedy(out_tokens))
        t_end = time.perf_counter()
        if (error := drive.first_error(outs)) is not None:
            raise RuntimeError(f"engine failed: {error}")
        extra = {"generated": [o.tokens for o in outs]} if keep_ids else {}
        return record(len(plist), out_tokens, t0, t_end,
                      [o.times[0] if o.times else 0.0 for o in outs],
                      [o.times[-1] if o.times else 0.0 for o in outs],
                      sum(len(o.tokens) for o in outs),
                      engine_steps=self.engine.stats.steps - steps0, **extra)

    def stop(self) -> None:
        self.engine.stop()


class BaselineEngine:
    """InProcessEngine of another source tree, in a worker process (`--worker`) whose
    PYTHONPATH is that tree's only: each run is timed inside the worker exactly as
    InProcessEngine times itself, so the pipe is outside the measurement."""

    def __init__(self, src: Path, path: Path, max_batch: int, threads: int) -> None:
        self.worker = TreeWorker(Path(__file__), src,
                                 [str(path), "--threads", str(threads), "--max-batch",
                                  str(max_batch), "--out", "-"], WORKER_REPLY, stop_timeout=30)
        self.src = self.worker.src
        self._call = self.worker.call
        self.stop = self.worker.stop

    def run(self, plist: list[list[int]], out_tokens: int) -> dict[str, Any]:
        return self._call({"op": "run", "prompts": plist, "out_tokens": out_tokens})

    def profile(self, c: int, prompt_len: int, out_tokens: int, vocab: int,
                seed: int) -> dict[str, Any]:
        return self._call({"op": "profile", "args": [c, prompt_len, out_tokens, vocab, seed]})


def worker(path: Path, max_batch: int) -> int:
    """The baseline's side of BaselineEngine: one JSON request per stdin line."""
    ip = InProcessEngine(path, max_batch)
    ops = {"run": lambda msg: ip.run(msg["prompts"], msg["out_tokens"]),
           "profile": lambda msg: profile(ip, *msg["args"])}

    def handle(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] not in ops:
            return {"error": f"unknown op {msg['op']!r}"}
        return ops[msg["op"]](msg)

    try:
        serve(WORKER_REPLY, handle)
    finally:
        ip.stop()
    return 0


class HTTPServer:
    """`modelserver serve` on loopback; c streaming clients over /v1/completions."""

    def __init__(self, path: Path, max_batch: int, threads: int, logdir: Path) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the server honours it
        self.srv = start_ready(str(path), "float32", "--device", "cpu", "--max-batch-size",
                               str(max_batch), "--max-concurrent-requests",
                               str(4 * max_batch + 8), "--prefix-cache-entries", "0",
                               log=logdir / "engine-overhead-server.log")

    def run(self, plist: list[list[int]], out_tokens: int) -> dict[str, Any]:
        return asyncio.run(self._run(plist, out_tokens))

    async def _run(self, plist: list[list[int]], out_tokens: int) -> dict[str, Any]:
        import httpx

        c = len(plist)
        limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
            async def one(ids: list[int]) -> tuple[float, float, int]:
                body = {"prompt": ids, "max_tokens": out_tokens, "temperature": 0,
                        "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}}
                times: list[float] = []
                usage: dict[str, Any] = {}
                end = 0.0
                async with client.stream("POST", self.srv.base + "/v1/completions",
                                         json=body) as resp:
                    resp.raise_for_status()
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        usage = chunk.get("usage") or usage
                        choices = chunk.get("choices") or []
                        if any(ch.get("text") for ch in choices):
                            times.append(time.perf_counter())
                        elif any(ch.get("finish_reason") for ch in choices):
                            end = time.perf_counter()  # right after the last token's step
                # a token whose text is held back (part of a UTF-8 character) sends nothing
                return (times or [end])[0], end, int(usage["completion_tokens"])

            t0 = time.perf_counter()
            res = await asyncio.gather(*(one(ids) for ids in plist))
            t_end = time.perf_counter()
        return record(c, out_tokens, t0, t_end, [r[0] for r in res], [r[1] for r in res],
                      sum(r[2] for r in res))

    def stop(self) -> None:
        self.srv.stop()


class TransformersCB:
    """transformers' ContinuousBatchingManager, fed directly (no HTTP in its way)."""

    def __init__(self, path: Path, max_batch: int, prompt_len: int, out_tokens: int) -> None:
        import math

        from transformers import ContinuousBatchingConfig, GenerationConfig

        self.model = load_plain(path)
        page = 64
        blocks = max_batch * math.ceil((prompt_len + out_tokens) / page) + 8
        # sized explicitly: on a CPU it would otherwise size the cache from host memory
        cfg = ContinuousBatchingConfig(page_size=page, num_blocks=blocks,
                                       max_batch_tokens=max(256, max_batch * prompt_len),
                                       max_requests_per_batch=max_batch)
        gen = GenerationConfig(max_new_tokens=out_tokens, do_sample=False, eos_token_id=-1,
                               pad_token_id=0)
        self.manager = self.model.init_continuous_batching(generation_config=gen,
                                                           continuous_batching_config=cfg)
        self.manager.start()
        self.attn = self.model.config._attn_implementation
        self.counter = 0

    def run(self, plist: list[list[int]], out_tokens: int,
            keep_ids: bool = False) -> dict[str, Any]:
        c = len(plist)
        ids = []
        t0 = time.perf_counter()
        for p in plist:
            self.counter += 1
            ids.append(f"r{self.counter}")
            self.manager.add_request(list(p), request_id=ids[-1], max_new_tokens=out_tokens,
                                     record_timestamps=True, eos_token_id=-1)
        results = {}
        while len(results) < c:
            res = self.manager.get_result(timeout=600)
            if res is None:
                raise RuntimeError("transformers CB returned no result")
            if res.is_finished():
                results[res.request_id] = res
        t_end = time.perf_counter()
        rs = [results[i] for i in ids]
        extra = {"generated": [list(r.generated_tokens) for r in rs]} if keep_ids else {}
        return record(c, out_tokens, t0, t_end, [r.timestamps[0] for r in rs],
                      [r.timestamps[-1] for r in rs], sum(len(r.generated_tokens) for r in rs),
                      attn_implementation=self.attn, **extra)

    def stop(self) -> None:
        self.manager.stop(block=True, timeout=30)


# --------------------------------------------------------------------------- profile

class StepProfile:
    """Where the engine's decode steps spend their time, from wrappers patched on here.

    Categories are exclusive at the top level (forward, sampling, detokenize, stop_check,
    emit, rest = the step minus them); kv_write and repeat_kv are inside forward, syncs
    (Tensor.__int__/__float__/item/tolist) inside the step wherever they happen."""

    TOP = ("forward", "sampling", "detokenize", "stop_check", "emit", "kv_leave")

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)
        self.in_step = False
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, name: str, key: str, only_in_step: bool = True) -> None:
        orig = getattr(owner, name)
        prof = self

        def timed(*a: Any, **kw: Any) -> Any:
            if only_in_step and not prof.in_step:
                return orig(*a, **kw)
            s = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                prof.t[key] += time.perf_counter() - s
                prof.n[key] += 1

        # put back exactly what was there: an own attribute, or nothing (inherited)
        own = vars(owner).get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        setattr(owner, name, timed)
        self._undo.append(lambda: delattr(owner, name) if own is _MISSING
                          else setattr(owner, name, own))

    @contextlib.contextmanager
    def attached(self, ip: InProcessEngine, emit_key: str = "emit") -> Iterator[None]:
        import torch
        import transformers.integrations.sdpa_attention as sdpa
        from modelserver.engine import kv, text

        eng = ip.engine
        orig_step = eng._decode_step
        prof = self

        def step() -> None:
            prof.in_step = True
            s = time.perf_counter()
            try:
                orig_step()
            finally:
                prof.t["step"] += time.perf_counter() - s
                prof.n["step"] += 1
                prof.in_step = False

        eng._decode_step = step
        self._undo.append(lambda: delattr(eng, "_decode_step"))
        self._wrap(eng.model, "forward", "forward")
        self._wrap(kv.SlabLayer, "update", "kv_write")
        self._wrap(*_leave_entry(), "kv_leave")
        self._wrap(sdpa, "repeat_kv", "repeat_kv")
        self._wrap(*_sampling_entry(), "sampling")
        self._wrap(eng.tokenizer, "decode", "detokenize")
        self._wrap(text.StopState, "update", "stop_check")
        self._wrap(eng, "_accept", "accept_total")
        for name in ("__int__", "__float__", "item", "tolist"):
            self._wrap(torch.Tensor, name, "syncs")
        try:
            yield
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo = []

    def summary(self) -> dict[str, Any]:
        step = self.t["step"]
        steps = max(self.n["step"], 1)
        # emit = what _accept spends outside decode and the stop check (events, bookkeeping)
        self.t["emit"] = max(0.0, self.t["accept_total"] - self.t["detokenize"]
                             - self.t["stop_check"])
        rest = step - sum(self.t[k] for k in self.TOP)
        parts = {k: self.t[k] for k in self.TOP} | {"rest": rest}
        inner = {k: self.t[k] for k in ("kv_write", "repeat_kv", "syncs")}
        return {
            "steps": self.n["step"], "step_ms": round(1000 * step / steps, 3),
            "ms_per_step": {k: round(1000 * v / steps, 3) for k, v in (parts | inner).items()},
            "share": {k: round(v / step, 3) for k, v in parts.items()} if step else {},
            "share_inside": {k: round(v / step, 3) for k, v in inner.items()} if step else {},
            "calls_per_step": {k: round(self.n[k] / steps, 1)
                               for k in ("forward", "sampling", "detokenize", "syncs",
                                         "repeat_kv", "kv_write")},
        }


def _leave_entry() -> tuple[Any, str]:
    """What copies KV when rows leave, in the engine being profiled: one row moved into
    the hole (engine/slots.py), or in an engine older than slots the whole batch's KV
    cut down to the kept rows (kv.select)."""
    try:
        from modelserver.engine.slots import Slots
    except ImportError:  # before slots: the left-padded batch
        from modelserver.engine import kv
        return kv, "select"
    return Slots, "move"


def _sampling_entry() -> tuple[Any, str]:
    """What samples in the engine being profiled: the whole step at once
    (engine/batch_sampling.py), or one row per call in an engine older than it."""
    try:
        from modelserver.engine import batch_sampling
    except ImportError:  # before issue 14: Sampler.__call__, once per row
        from modelserver.engine.sampling import Sampler

        return Sampler, "__call__"
    return batch_sampling, "pick"


def profile(ip: InProcessEngine, c: int, prompt_len: int, out_tokens: int, vocab: int,
            seed: int) -> dict[str, Any]:
    prof = StepProfile()
    with prof.attached(ip):
        run = ip.run(prompts(c, prompt_len, vocab, seed=seed), out_tokens)
        # the last step emits the final events before it returns: let it finish
        while prof.in_step:
            time.sleep(0.001)
    return {"c": c, "run": run, **prof.summary()}


def detok_scaling(tokenizer: Any, vocab: int, lengths: list[int],
                  outputs: list[int]) -> dict[str, Any]:
    """What the engine does per token (decode the whole output so far) against length."""
    ids = prompts(1, max(lengths + outputs), vocab, seed=99)[0]
    per_call = []
    for n in lengths:
        reps = max(3, 2000 // n)
        ts = []
        for _ in range(reps):
            s = time.perf_counter()
            tokenizer.decode(ids[:n], skip_special_tokens=True)
            ts.append(time.perf_counter() - s)
        per_call.append({"length": n, "decode_us": round(1e6 * statistics.median(ts), 1)})
    totals = []
    for n_out in outputs:  # the engine's loop: one full decode per generated token
        s = time.perf_counter()
        for n in range(1, n_out + 1):
            tokenizer.decode(ids[:n], skip_special_tokens=True)
        total = time.perf_counter() - s
        totals.append({"output_tokens": n_out, "total_ms": round(1000 * total, 2),
                       "per_token_us": round(1e6 * total / n_out, 1)})
    return {"per_call": per_call, "whole_output_redecode": totals}


def numerics(path: Path, n: int, prompt_len: int, out_tokens: int, vocab: int,
             seed: int) -> dict[str, Any]:
    """Greedy tokens of n requests run one at a time against the same n run together,
    prompts of n different lengths (so the engine pads rows and CB mixes page layouts):
    does batch composition change the output? engine/core.py's premise says transformers'
    CB does on CPU."""
    lengths = [max(1, prompt_len - 3 * i) for i in range(n)]
    plist = [prompts(1, m, vocab, seed=seed + i)[0] for i, m in enumerate(lengths)]
    out: dict[str, Any] = {"requests": n, "prompt_lengths": lengths,
                           "output_tokens": out_tokens}
    for name, make in (("engine", lambda: InProcessEngine(path, n)),
                       ("cb", lambda: TransformersCB(path, n, prompt_len, out_tokens))):
        runner = make()
        try:
            runner.run([plist[0]], 2)  # warm-up
            solo = [runner.run([p], out_tokens, keep_ids=True)["generated"][0] for p in plist]
            together = runner.run(plist, out_tokens, keep_ids=True)["generated"]
        finally:
            runner.stop()
        diverge = [next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
                   for a, b in zip(solo, together, strict=True)]
        out[name] = {"identical": sum(d is None for d in diverge),
                     "first_divergence": diverge}
        log(f"numerics {name}: {out[name]['identical']}/{n} identical alone and together")
    return out


# --------------------------------------------------------------------------- premise

def premise() -> dict[str, Any]:
    """engine/core.py opens with "no per-request cancellation and no prefix reuse across
    requests": what the installed transformers' continuous batching actually has."""
    import transformers
    from transformers import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import cache as cb_cache
    from transformers.generation.continuous_batching import continuous_api

    mgr = continuous_api.ContinuousBatchingManager
    fields = set(inspect.signature(ContinuousBatchingConfig).parameters)
    site = Path(transformers.__file__).parent

    def where(obj: Any) -> str:
        return f"{Path(inspect.getsourcefile(obj)).relative_to(site)}:{obj.__qualname__}"

    found = {
        "cancellation": hasattr(mgr, "cancel_request") and where(mgr.cancel_request),
        "prefix_sharing": "allow_block_sharing" in fields
        and "ContinuousBatchingConfig.allow_block_sharing; "
            + where(cb_cache.PagedAttentionCache),
        "cuda_graphs": "use_cuda_graph" in fields and "ContinuousBatchingConfig.use_cuda_graph",
        "compile": all(f in fields for f in ("varlen_compile_config", "decode_compile_config"))
        and "ContinuousBatchingConfig.varlen_compile_config / decode_compile_config / "
            "default_compile_level",
        "async_batching": "use_async_batching" in fields
        and "ContinuousBatchingConfig.use_async_batching",
        "cpu_offload": "cpu_offload_space" in fields
        and "ContinuousBatchingConfig.cpu_offload_space",
    }
    serve = site / "cli" / "serve.py"
    found["serve_cli"] = (serve.exists() and "continuous_batching" in serve.read_text()
                          and "cli/serve.py: transformers serve --continuous-batching")
    return {"transformers": transformers.__version__, "found": found}


# --------------------------------------------------------------------------- main

def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, nd in (("tok_s", 2), ("decode_steps_s", 2), ("ttft_max_s", 4)):
        xs = [r[key] for r in runs if r.get(key) is not None]
        if xs:
            out[key] = {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd),
                        "max": round(max(xs), nd)}
    return out


def ratios(runs: dict[str, dict[int, list[dict[str, Any]]]], c: int) -> dict[str, Any]:
    """Each case over the limit: per round (the runs next to each other in time, so a
    load change on the shared machine hits both) then the median, min and max of those."""
    out: dict[str, Any] = {}
    for name in ("engine", BASE_CASE, "server", "cb"):
        if name not in runs or "limit" not in runs:
            continue
        out[f"{name}_over_limit"] = {}
        for key in ("tok_s", "decode_steps_s"):
            xs = [r[key] / lim[key] for r, lim in zip(runs[name][c], runs["limit"][c],
                                                         strict=True)
                  if r.get(key) and lim.get(key)]
            if xs:
                out[f"{name}_over_limit"][key] = {
                    "median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
                    "max": round(max(xs), 3)}
    if "engine" in runs and BASE_CASE in runs:  # this tree's engine over the baseline's
        out["engine_over_base"] = {}
        for key in ("tok_s", "decode_steps_s"):
            xs = [r[key] / b[key] for r, b in zip(runs["engine"][c], runs[BASE_CASE][c],
                                                   strict=True) if r.get(key) and b.get(key)]
            if xs:
                out["engine_over_base"][key] = {
                    "median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
                    "max": round(max(xs), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="small",
                   help="small: hidden 256, 4 layers, GQA 8:2, vocabulary 32,000;"
                        " tiny: the smoke test's")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--profile-concurrency", type=int, nargs="*", default=[8, 32])
    p.add_argument("--detok-lengths", type=int, nargs="*", default=[16, 64, 256, 1024, 4096])
    p.add_argument("--detok-outputs", type=int, nargs="*", default=[128, 512, 2048])
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                   help="torch threads for every case (the server gets OMP_NUM_THREADS)")
    p.add_argument("--cache", default=str(CACHE), help="where the model is built once")
    p.add_argument("--numerics", type=int, default=0, metavar="N",
                   help="only compare N requests run alone and together (engine, cb): "
                        "greedy tokens identical or not")
    p.add_argument("--baseline-src", metavar="DIR",
                   help="also run the in-process engine of this source tree (e.g. a git "
                        "worktree at an older commit) as case engine-base, same rounds")
    p.add_argument("--worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.worker:  # BaselineEngine's subprocess
        import torch

        torch.set_num_threads(a.threads)
        torch.set_grad_enabled(False)
        return worker(Path(a.worker), a.max_batch)
    if a.baseline_src and not Path(a.baseline_src).is_dir():
        p.error(f"--baseline-src {a.baseline_src}: not a directory")
    for name in ("concurrency", "prompt_tokens", "output_tokens", "rounds", "threads"):
        vals = getattr(a, name)
        if any(v < 1 for v in (vals if isinstance(vals, list) else [vals])):
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.numerics < 0:
        p.error("--numerics must be >= 0 (0: the benchmark itself)")
    if a.output_tokens < 2:
        p.error("--output-tokens must be >= 2 (a decode window needs two tokens)")

    # a SIGTERM runs the finally below, so the server subprocess is not left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch

    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    path = build(a.model, Path(a.cache))
    from transformers import AutoConfig, AutoTokenizer

    vocab = AutoConfig.from_pretrained(path).vocab_size  # prompts stay inside the model's
    if a.numerics:
        result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "model": a.model, "numerics": numerics(
                      path, a.numerics, a.prompt_tokens, a.output_tokens, vocab, 10**6)}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
        return 0
    max_c = max(a.concurrency + a.profile_concurrency)
    logdir = ROOT / ".cache" / "bench-logs"
    logdir.mkdir(parents=True, exist_ok=True)

    runners: dict[str, Callable[[list[list[int]]], dict[str, Any]]] = {}
    stops: list[Callable[[], None]] = []
    ip: InProcessEngine | None = None
    try:
        log(f"starting cases {a.cases}")
        if "limit" in a.cases:
            limit = Limit(load_plain(path), a.prompt_tokens, a.output_tokens)
            runners["limit"] = limit.run
        if "engine" in a.cases or a.profile_concurrency:
            ip = InProcessEngine(path, max_c)
            stops.append(ip.stop)
            if "engine" in a.cases:
                runners["engine"] = lambda pl: ip.run(pl, a.output_tokens)
        base: BaselineEngine | None = None
        if a.baseline_src:
            base = BaselineEngine(Path(a.baseline_src), path, max_c, a.threads)
            stops.append(base.stop)
            runners[BASE_CASE] = lambda pl: base.run(pl, a.output_tokens)
        if "server" in a.cases:
            srv = HTTPServer(path, max_c, a.threads, logdir)
            stops.append(srv.stop)
            runners["server"] = lambda pl: srv.run(pl, a.output_tokens)
        if "cb" in a.cases:
            cb = TransformersCB(path, max_c, a.prompt_tokens, a.output_tokens)
            stops.append(cb.stop)
            runners["cb"] = lambda pl: cb.run(pl, a.output_tokens)

        seed = iter(range(1, 10**6))  # fresh prompts every run: no cache can help
        for run in runners.values():  # warm-up: first-call costs are not measured
            run(prompts(2, a.prompt_tokens, vocab, seed=next(seed)))
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {k: defaultdict(list) for k in runners}
        names = list(runners)
        for rnd in range(a.rounds):
            for c in a.concurrency:
                # rotate the order each round so no case always runs right after another
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                    r = runners[name](prompts(c, a.prompt_tokens, vocab, seed=next(seed)))
                    if r["tokens"] != c * a.output_tokens:
                        raise RuntimeError(f"{name} c={c}: {r['tokens']} tokens, expected "
                                           f"{c * a.output_tokens}")
                    runs[name][c].append(r)
                    log(f"round {rnd + 1}/{a.rounds} c={c} {name}: {r['tok_s']} tok/s, "
                        f"{r['decode_steps_s']} steps/s")

        table = []
        for c in a.concurrency:
            row: dict[str, Any] = {"c": c}
            for name in runners:
                row[name] = summarize(runs[name][c])
            table.append(row | ratios(runs, c))

        profiles: list[dict[str, Any]] = []
        base_profiles: list[dict[str, Any]] = []
        for c in a.profile_concurrency:
            log(f"profiling the engine's decode steps at c={c}")
            profiles.append(profile(ip, c, a.prompt_tokens, a.output_tokens, vocab, next(seed)))
            if base is not None:
                log(f"profiling the baseline engine's decode steps at c={c}")
                base_profiles.append(base.profile(c, a.prompt_tokens, a.output_tokens, vocab,
                                                  next(seed)))
        detok = detok_scaling(ip.tokenizer if ip else AutoTokenizer.from_pretrained(path), vocab,
                              a.detok_lengths, a.detok_outputs) if a.detok_lengths else {}
    finally:
        for stop in stops:
            stop()

    import psutil

    cfg = AutoConfig.from_pretrained(path)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": a.threads,
                    "loadavg_1m_after": round(psutil.getloadavg()[0], 2)},
        "model": {"name": a.model, "dtype": "float32", "vocab": cfg.vocab_size,
                  "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                  "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                  "parameters_m": round(sum(
                      x.numel() for x in ip.engine.model.parameters()) / 1e6, 2) if ip else None},
        "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens,
        "rounds": a.rounds, "cases": list(runners), "table": table,
        "runs": {k: {str(c): v for c, v in d.items()} for k, d in runs.items()},
        "profile": profiles, "detokenize": detok, "premise": premise(),
    }
    if base is not None:
        out["baseline"] = {"src": str(Path(a.baseline_src).resolve()),
                           "modelserver": base.src, "commit": tree_commit(Path(a.baseline_src)),
                           "profile": base_profiles}
    out["commit"] = tree_commit(ROOT)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    for row in table:
        print(json.dumps(row), flush=True)
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
