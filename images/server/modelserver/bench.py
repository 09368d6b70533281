"""Engine throughput on this machine: `python -m modelserver.bench --model SOURCE`.

Measures prefill tokens/s, decode tokens/s for one stream and for N concurrent streams
(continuous batching), weight memory and process RSS, and prints one JSON object. The
output length is forced (ignore EOS) so every configuration generates the same count.
"""

from __future__ import annotations

import argparse
import json
import time

import psutil
import torch

from .engine import drive
from .engine.core import Engine
from .fetch import resolve
from .loading import load


def _run(engine: Engine, prompts: list[list[int]], tokens: int) -> float:
    """Seconds for `prompts` to generate `tokens` each, all submitted at once."""
    t0 = time.perf_counter()
    drive.run_all(engine, prompts, drive.greedy(tokens))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", default="none")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prefill", type=int, default=2000, help="prompt tokens for prefill speed")
    a = p.parse_args()

    loaded = load(resolve(a.model), a.dtype, a.device, a.quantization)
    tok = loaded.tokenizer
    engine = Engine(loaded.model, tok, max_batch_size=a.batch, prefix_cache_entries=0)
    engine.start()
    _run(engine, [tok("warm up")["input_ids"]], 4)
    long = (tok("The weather is nice today. " * (a.prefill // 4))["input_ids"])[: a.prefill]
    prefill_s = _run(engine, [long], 1)
    solo_s = _run(engine, [tok("Hello there")["input_ids"]], a.tokens)
    prompts = [tok(f"Hello there, request {i}")["input_ids"] for i in range(a.batch)]
    batch_s = _run(engine, prompts, a.tokens)
    out = {
        "model": a.model, "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": loaded.device, "quantization": a.quantization,
        "parameters_m": round(loaded.parameters / 1e6, 1),
        "weight_mib": round(loaded.weight_bytes / 2**20, 1),
        "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
        "threads": torch.get_num_threads(), "load_s": round(loaded.load_seconds, 1),
        "prefill_tok_s": round(len(long) / prefill_s, 1),
        "solo_tok_s": round(a.tokens / solo_s, 2),
        f"batch{a.batch}_tok_s": round(a.batch * a.tokens / batch_s, 2),
        "mean_batch": round(engine.stats.step_rows / max(engine.stats.steps, 1), 2),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out))
    engine.stop()


if __name__ == "__main__":
    main()
