"""The builtin engine against the model's own forward (SmolLM2-135M), in process, no HTTP.

- `bare`: the model's forward alone, B rows of a `--prompt-tokens` prompt in a
  `DynamicCache`, then greedy decode steps (argmax on the logits, no engine): the step
  time any engine on this machine is bound by.
- `engine`: `Engine` driven by `engine/drive.py`, c requests of the same shape, greedy,
  `--output-tokens` each (EOS ignored); the median interval between a row's tokens once
  the batch runs (its first 8 tokens skipped), and tok/s over the whole run.

    BENCH_THREADS=2 .venv/bin/python benchmarks/decode_limit.py --dtype float32 \\
        --out benchmarks/results/decode-limit-smollm2-float32.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_gemm import cpuinfo  # noqa: E402
from server_bench import smollm2_dense  # noqa: E402


def bare_step_ms(model, rows: int, prompt: int, steps: int, vocab: int) -> float:
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(rows)
    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=torch.randint(5, vocab, (rows, prompt), generator=g),
                    past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(steps + 4):
            t = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - t)
    return round(statistics.median(times[4:]) * 1e3, 1)  # the first steps warm up


def engine_run(model, tok, c: int, prompt: int, output: int, vocab: int) -> dict:
    from modelserver.engine.core import Engine
    from modelserver.engine.drive import greedy, run_all

    engine = Engine(model, tok, max_batch_size=c, prefix_cache_entries=0)
    engine.start()
    try:
        g = torch.Generator().manual_seed(c)
        run_all(engine, [torch.randint(5, vocab, (16,), generator=g).tolist()], greedy(4),
                timeout=600)  # warm-up
        prompts = [torch.randint(5, vocab, (prompt,), generator=g).tolist() for _ in range(c)]
        t0 = time.perf_counter()
        outs = run_all(engine, prompts, greedy(output), timeout=3600)
        wall = time.perf_counter() - t0
    finally:
        engine.stop()
    gaps = [b - a for o in outs for a, b in zip(o.times[8:], o.times[9:], strict=False)]
    return {"concurrency": c, "wall_s": round(wall, 2),
            "output_tok_s": round(c * output / wall, 2),
            "step_ms_p50": round(statistics.median(gaps) * 1e3, 1),
            "ttft_max_s": round(max(o.times[0] for o in outs) - t0, 2),
            "max_step_rows": engine.stats.max_step_rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="",
                   help="a local model directory (default: SmolLM2-135M, the dense copy "
                   "server_bench.py makes from the gguf)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed bare decode steps per B")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    path = Path(a.model) if a.model else smollm2_dense("bfloat16")  # cast on load
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, a.dtype)).eval()
    tok = AutoTokenizer.from_pretrained(path)
    vocab = model.config.vocab_size
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(path),
           "dtype": a.dtype,
           "threads": a.threads, "cpu": cpuinfo("model name"),
           "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens,
           "loadavg_1m_before": round(os.getloadavg()[0], 2),
           "command": " ".join(["python", *sys.argv]), "bare": []}
    for rows in a.rows:
        out["bare"].append({"rows": rows, "step_ms_p50": bare_step_ms(
            model, rows, a.prompt_tokens, a.steps, vocab)})
        print(out["bare"][-1], flush=True)
    out["engine"] = engine_run(model, tok, a.concurrency, a.prompt_tokens, a.output_tokens,
                               vocab)
    print(out["engine"], flush=True)
    out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
