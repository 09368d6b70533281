"""What the warm-up adds to a server's startup, on CPU: the old warm-up (one 2-token
generation) against the new one (max_batch_size requests decoding together, then one
prefill chunk, capped on CPU) and the new one uncapped (a full 2048-token chunk), on the
same loaded model, rounds interleaved so machine noise hits all alike. Loading is the
same for all three and is left out (it dominates and is noisy on a shared machine).

    python benchmarks/warmup_startup.py --model tiny=DIR --model smollm2=FILE \
        --out benchmarks/results/warmup-startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from modelserver import service as service_module
from modelserver.config import Settings
from modelserver.engine import drive
from modelserver.engine.sampling import SamplingParams
from modelserver.metrics import Metrics
from modelserver.service import ModelService

MAX_BATCH = 8  # the server's default --max-batch-size


def old_warm_up(svc: ModelService) -> None:
    """The base commit's warm-up: one 2-token generation of "Hello"."""
    ids = svc.loaded.tokenizer("Hello", add_special_tokens=True)["input_ids"]
    drive.submit(svc.engine, ids, SamplingParams(max_new_tokens=2, temperature=0)).wait(600)


def new_warm_up(svc: ModelService, cap: int) -> None:
    service_module.WARMUP_CPU_PREFILL_TOKENS = cap
    svc._warm_up()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["old", "new", "new-uncapped"])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    cap = service_module.WARMUP_CPU_PREFILL_TOKENS
    every = {"old": old_warm_up, "new": lambda s: new_warm_up(s, cap),
             "new-uncapped": lambda s: new_warm_up(s, 1 << 30)}
    variants = {v: every[v] for v in a.variants}
    runs: dict[str, dict[str, list[float]]] = {}
    load_seconds: dict[str, float] = {}
    for spec in a.model:
        name, path = spec.split("=", 1)
        t0 = time.monotonic()
        # no prefix cache: a repeated warm-up prompt must be prefilled again every round
        svc = ModelService(Settings(model=path, dtype="float32", device="cpu",
                                    max_batch_size=MAX_BATCH, prefix_cache_entries=0,
                                    warmup=False), Metrics())
        svc._load()
        assert svc.ready, svc.load_error
        load_seconds[name] = round(time.monotonic() - t0, 2)
        runs[name] = {v: [] for v in variants}
        for _ in range(a.rounds):
            for v, run in variants.items():
                t = time.monotonic()
                run(svc)
                runs[name][v].append(round(time.monotonic() - t, 3))
                print(name, v, runs[name][v][-1], flush=True)
        svc.stop()
    result = {
        "command": "python benchmarks/warmup_startup.py " + " ".join(
            f"--model {m}" for m in a.model) + f" --rounds {a.rounds} --variants "
            + " ".join(a.variants) + f" --out {a.out}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "max_batch_size": MAX_BATCH, "cpu_prefill_cap": cap, "device": "cpu",
        "dtype": "float32", "load_seconds": load_seconds, "warm_up_seconds": runs,
        "median": {m: {v: statistics.median(x) for v, x in r.items()} for m, r in runs.items()},
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
