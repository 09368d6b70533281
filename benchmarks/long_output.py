"""Long outputs: does time per token stay flat as the output grows? Incremental
detokenization (engine/detok.py + engine/text.py) against the old path (the whole output
re-decoded on every token, then the old StopState), same run.

Times are CPU time of the measuring thread (time.thread_time; on a shared, busy machine
wall time mostly measures the other processes), wall time alongside in (b).

(a) `detok`: host time of detokenization + the stop check per token, for one output of
    L tokens (SmolLM2's real tokenizer, ids of this repository's own docs, two stop
    strings that never occur), L = 16 … 4096: the mean over the whole output and over its
    last 128 tokens, old vs new.
(b) `engine`: modelserver's Engine in process with engine_overhead.py's `small` model
    (random Llama, 32k vocabulary of SmolLM2's tokenizer), greedy, EOS ignored, c
    requests of N output tokens. Per decode step (steps with all c rows): the step, the
    model's forward, and the host part outside it, over the first and the last 128
    steps. The old path is monkeypatched onto the engine instance from here
    (`old_accept`: core.py's `Engine._accept` before this change); the engine is not
    changed. The forward itself grows with the context (attention over up to N+prompt
    positions): the host part is what shows whether a quadratic term is left.

    python benchmarks/long_output.py --out benchmarks/results/engine-long-output.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_overhead import CACHE, ROOT, InProcessEngine, build  # noqa: E402
from server_bench import prompts, smollm2_gguf  # noqa: E402

STOPS = ["\n\nUser:", "<|im_end|>"]  # never in the docs' text: checked on every token
EDGE = 128  # steps/tokens at the start and at the end that are compared


def log(msg: str) -> None:
    print(f"[long_output {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the old path

class OldStopState:
    """engine/text.py before incremental detokenization: fed the full decode of the whole
    output after every token (also the reference tests/server/test_engine_detok.py
    compares the new StopState with)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.max_stop = max((len(s) for s in self.stops), default=0)
        self.text, self.emitted = "", 0
        self.stopped_on: str | None = None

    def update(self, text: str) -> str:
        self.text = text
        if text.endswith("\ufffd"):
            return ""
        if self.stops:
            start = max(0, self.emitted - self.max_stop)
            best = -1
            for s in self.stops:
                i = text.find(s, start)
                if i != -1 and (best == -1 or i < best):
                    best, self.stopped_on = i, s
            if best != -1:
                delta = text[self.emitted:best] if best > self.emitted else ""
                self.emitted = max(self.emitted, best)
                self.text = text[:best]
                return delta
            held = next((n for n in range(min(self.max_stop - 1, len(text)), 0, -1)
                         if any(s.startswith(text[-n:]) for s in self.stops)), 0)
            safe = len(text) - held
        else:
            safe = len(text)
        if safe <= self.emitted:
            return ""
        delta = text[self.emitted:safe]
        self.emitted = safe
        return delta

    def flush(self) -> str:
        text = self.text.rstrip("\ufffd") if self.stopped_on is None else self.text
        delta = text[self.emitted:]
        self.emitted, self.text = len(text), text
        return delta


def old_accept(self: Any, req: Any, token: int, logprob: float) -> bool:
    """core.py's Engine._accept before this change (whole output re-decoded per token)."""
    from modelserver.engine.core import FinalEvent, TokenEvent

    if not isinstance(req.stop, OldStopState):
        req.stop = OldStopState(list(req.params.stop))
    p = req.params
    is_eos = token in self.eos_ids and not p.ignore_eos
    self.stats.generated_tokens += 1
    req.generated.append(token)
    finish = None
    if is_eos and req.grammar is None:
        finish = "eos_token"
        delta = ""
    else:
        full = self.tokenizer.decode(req.generated, skip_special_tokens=True)
        delta = req.stop.update(full)
        if req.stop.stopped_on is not None:
            finish = "stop_sequence"
        elif req.grammar is not None and req.grammar.done:
            finish = "eos_token"
    if finish is None and len(req.generated) >= p.max_new_tokens:
        finish = "length"
    if finish is not None and finish != "stop_sequence":
        delta += req.stop.flush()
    req.emit(TokenEvent(token, delta, logprob, token in self.special_ids))
    if finish is None:
        return False
    req.emit(FinalEvent(
        finish_reason=finish, text=req.stop.text,
        prompt_tokens=len(req.prompt_ids), completion_tokens=len(req.generated),
        cached_tokens=req.cached_tokens, prompt_logprobs=req.prompt_logprobs, seed=p.seed,
    ))
    return True


# --------------------------------------------------------------------------- (a) detok

def doc_ids(tokenizer: Any, n: int) -> list[int]:
    text = "\n\n".join((ROOT / f).read_text() for f in ("README.md", "benchmarks/RESULTS.md"))
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < n:
        ids += ids
    return ids[:n]


def detok_old(tokenizer: Any, ids: list[int]) -> tuple[list[float], str]:
    stop, out, ts = OldStopState(STOPS), [], []
    for n in range(1, len(ids) + 1):
        s = time.thread_time()
        out.append(stop.update(tokenizer.decode(ids[:n], skip_special_tokens=True)))
        ts.append(time.thread_time() - s)
    return ts, "".join(out) + stop.flush()


def detok_new(tokenizer: Any, ids: list[int]) -> tuple[list[float], str]:
    from modelserver.engine.detok import new_decoder
    from modelserver.engine.text import StopState

    dec, stop, out, ts = new_decoder(tokenizer), StopState(STOPS), [], []
    for token in ids:
        s = time.thread_time()
        out.append(stop.update(dec.step(token)))
        ts.append(time.thread_time() - s)
    return ts, "".join(out) + stop.update(dec.flush()) + stop.flush()


def detok_case(tokenizer: Any, lengths: list[int]) -> list[dict[str, Any]]:
    ids = doc_ids(tokenizer, max(lengths))
    rows = []
    for n in lengths:
        row: dict[str, Any] = {"output_tokens": n}
        # the new path first, then the old, per length: both under the same load
        for name, fn in (("new", detok_new), ("old", detok_old)):
            reps = max(1, min(20, 2048 // n)) if name == "new" else (1 if n > 512 else 3)
            runs = [fn(tokenizer, ids[:n]) for _ in range(reps)]
            assert all(text == tokenizer.decode(ids[:n], skip_special_tokens=True)
                       for _, text in runs), f"{name}: the streamed text is not the decode"
            best = min(runs, key=lambda r: sum(r[0]))[0]  # the least disturbed repetition
            row[name] = {"total_ms": round(1e3 * sum(best), 3),
                         "per_token_us": round(1e6 * sum(best) / n, 2),
                         f"last{EDGE}_per_token_us": round(1e6 * statistics.mean(best[-EDGE:]), 2),
                         f"first{EDGE}_per_token_us": round(1e6 * statistics.mean(best[:EDGE]), 2)}
        row["old_over_new_per_token"] = round(
            row["old"]["per_token_us"] / row["new"]["per_token_us"], 1)
        log(f"detok L={n}: new {row['new']['per_token_us']} us/token,"
            f" old {row['old']['per_token_us']} us/token")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- (b) engine

class StepTimer:
    """Per decode step: rows, wall time, forward time, _accept time; wrappers on the
    engine instance and its model from here (the engine's code is not changed)."""

    def __init__(self, eng: Any) -> None:
        self.eng = eng
        # (rows, step, forward, accept) in wall seconds, then the same in thread CPU seconds
        self.steps: list[tuple[int, float, float, float]] = []
        self.cpu: list[tuple[int, float, float, float]] = []
        self._fwd = self._acc = self._fwd_cpu = self._acc_cpu = 0.0

    def attach(self, accept: Any) -> None:
        eng, me = self.eng, self
        step, forward = eng._decode_step, eng.model.forward

        def timed_step() -> None:
            me._fwd = me._acc = me._fwd_cpu = me._acc_cpu = 0.0
            rows = len(eng._rows)
            s, sc = time.perf_counter(), time.thread_time()
            step()
            me.steps.append((rows, time.perf_counter() - s, me._fwd, me._acc))
            me.cpu.append((rows, time.thread_time() - sc, me._fwd_cpu, me._acc_cpu))

        def timed_forward(*a: Any, **kw: Any) -> Any:
            s, sc = time.perf_counter(), time.thread_time()
            try:
                return forward(*a, **kw)
            finally:
                me._fwd += time.perf_counter() - s
                me._fwd_cpu += time.thread_time() - sc

        def timed_accept(*a: Any, **kw: Any) -> Any:
            s, sc = time.perf_counter(), time.thread_time()
            try:
                return accept(*a, **kw)
            finally:
                me._acc += time.perf_counter() - s
                me._acc_cpu += time.thread_time() - sc

        eng._decode_step, eng.model.forward, eng._accept = timed_step, timed_forward, timed_accept

    def detach(self) -> None:
        for owner, name in ((self.eng, "_decode_step"), (self.eng.model, "forward"),
                            (self.eng, "_accept")):
            delattr(owner, name)


def window_stats(steps: list[tuple[int, float, float, float]], c: int) -> dict[str, Any]:
    def mean_ms(part: list[tuple[int, float, float, float]], k: int) -> float:
        return round(1e3 * statistics.mean(s[k] for s in part), 3)

    full = [s for s in steps if s[0] == c]  # every row in the batch
    out: dict[str, Any] = {"steps_with_all_rows": len(full)}
    for name, part in ((f"first{EDGE}", full[:EDGE]), (f"last{EDGE}", full[-EDGE:])):
        step, fwd, acc = mean_ms(part, 1), mean_ms(part, 2), mean_ms(part, 3)
        out[name] = {"step_ms": step, "forward_ms": fwd, "host_ms": round(step - fwd, 3),
                     "accept_ms": acc, "per_token_ms": round(step / c, 3),
                     "host_per_token_ms": round((step - fwd) / c, 3)}
    f, la = out[f"first{EDGE}"], out[f"last{EDGE}"]
    out["last_over_first"] = {k: round(la[k] / f[k], 3) if f[k] else None
                              for k in ("step_ms", "forward_ms", "host_ms", "accept_ms")}
    return out


def engine_run(ip: InProcessEngine, path: str, c: int, prompt_len: int, out_tokens: int,
               vocab: int, seed: int) -> dict[str, Any]:
    from modelserver.engine import drive
    from modelserver.engine.core import Engine

    eng = ip.engine
    timer = StepTimer(eng)
    timer.attach(types.MethodType(old_accept, eng) if path == "old" else eng._accept)
    t0 = time.perf_counter()
    try:
        outs = drive.run_all(eng, prompts(c, prompt_len, vocab, seed=seed),
                             drive.greedy(out_tokens, stop=list(STOPS)))
        wall = time.perf_counter() - t0
        time.sleep(0.05)  # the last step returns after emitting the final events
    finally:
        timer.detach()
    assert eng._accept.__func__ is Engine._accept
    assert all(o.ok and o.end.completion_tokens == out_tokens for o in outs)
    assert all(o.text == o.end.text for o in outs)
    return {"path": path, "c": c, "output_tokens": out_tokens, "wall_s": round(wall, 2),
            "wall": window_stats(timer.steps, c), "cpu": window_stats(timer.cpu, c)}


# --------------------------------------------------------------------------- main

def uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+",
                   default=[16, 64, 256, 1024, 2048, 4096], help="(a) output lengths")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="(b) c")
    p.add_argument("--output-tokens", type=int, default=2048, help="(b) tokens per request")
    p.add_argument("--prompt-tokens", type=int, default=32, help="(b) random prompt ids")
    p.add_argument("--model", choices=["small", "tiny"], default="small",
                   help="(b) engine_overhead.py's model: small (32k vocab) or tiny (smoke)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--cache", type=Path, default=CACHE, help="where the model is built once")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(a.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = uptime()
    gguf = smollm2_gguf()
    log("loading SmolLM2's tokenizer from its GGUF")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    detok = detok_case(tok, sorted(a.lengths))

    path = build(a.model, a.cache)
    ip = InProcessEngine(path, max(a.concurrency))
    vocab = ip.engine.model.config.vocab_size
    engine = []
    try:
        for c in a.concurrency:
            # a short warm-up (first-call costs, the tokenizer's probe), then one run of
            # each path, the order flipped per c so that neither always runs first
            engine_run(ip, "new", c, a.prompt_tokens, 8, vocab, seed=1)
            order = ("new", "old") if c == a.concurrency[0] else ("old", "new")
            for k, which in enumerate(order):
                r = engine_run(ip, which, c, a.prompt_tokens, a.output_tokens, vocab,
                               seed=100 + c)
                log(f"engine c={c} {which} (cpu): {r['cpu']}")
                engine.append(r | {"order": k})
    finally:
        ip.stop()
    result = {
        "command": "python benchmarks/long_output.py " + " ".join(argv or sys.argv[1:]),
        "started_utc": started, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()),
        "loadavg_start": load_start, "loadavg_end": uptime(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "threads": a.threads},
        "stops": STOPS, "edge": EDGE, "detok": detok, "engine": engine,
        "engine_model": a.model, "prompt_tokens": a.prompt_tokens,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
