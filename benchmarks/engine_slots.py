"""The slots layout's claims, measured (benchmarks/RESULTS.md §12): the bytes written into
the running batch's KV at joins and leaves, this tree against another (`--baseline-src`,
e.g. the commit before engine/slots.py), and the compiled decode (`--compile on`) against
eager decoding on this machine's CPU.

Copies: 32 requests of varied prompt (8…200 tokens) and output (4…64 tokens) lengths are
submitted at once to an Engine (max batch 16, a KV budget, the test suite's tiny random
Llama), so rows join and leave at different steps. Every tensor write made inside
`Engine._join` and `Engine._keep_rows` is counted, the same way in both trees (one worker
process per tree whose PYTHONPATH is that tree's): copies (`Tensor.copy_`,
`Tensor.index_select`, `torch.cat`: bytes of the result) and zero fills (`new_zeros`,
`zero_`). Both trees must produce the same greedy tokens.

Timed: the same workload, nothing patched, the two trees' workers alternating round by
round (one warm-up run each first).

Compile: 16 requests (prompt 32, output 64, max batch 8: one shape) eager, then compiled;
the compiled engine's first run (which compiles) is reported apart from the later ones.

    git worktree add --detach .cache/base b42f9cd
    python benchmarks/engine_slots.py --baseline-src .cache/base \
        --out benchmarks/results/engine-slots.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tree_worker import engine_drive, tree_commit, tree_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / ".cache" / "bench-models" / "engine-slots-tiny"
REPLY = "ENGINE_SLOTS "


def _model() -> Path:
    if not (MODEL_DIR / "config.json").exists():
        sys.path.insert(0, str(ROOT / "tests" / "server"))
        import tinymodel

        tinymodel.build(MODEL_DIR)
    return MODEL_DIR


def _workload(n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 500, (int(torch.randint(8, 201, (), generator=g)),),
                             generator=g).tolist() for _ in range(n)]
    outs = [int(torch.randint(4, 65, (), generator=g)) for _ in range(n)]
    return prompts, outs


def _run(engine: Any, prompts: list[list[int]], outs: list[int]) -> list[list[int]]:
    drive = engine_drive()
    done = drive.run_all(engine, prompts, [drive.greedy(n) for n in outs])
    if (error := drive.first_error(done)) is not None:
        raise RuntimeError(error)
    return [o.tokens for o in done]


def _engine(model: Any, tok: Any, max_batch: int, **kw: Any) -> Any:
    from modelserver.engine import budget as kvbudget
    from modelserver.engine.core import Engine

    budget = kvbudget.KVBudget(total_bytes=1 << 28, prefix_bytes=1 << 20,
                               bytes_per_token=kvbudget.kv_bytes_per_token(model))
    e = Engine(model, tok, max_batch_size=max_batch, prefix_cache_entries=0, kv_budget=budget,
               **kw)
    e.start()
    return e


def copies(model: Any, tok: Any) -> dict[str, Any]:
    """Bytes written inside _join and _keep_rows for the varied workload."""
    import torch
    from modelserver.engine.core import Engine

    count = {"copied": 0, "zeroed": 0, "joins": 0, "leaves": 0}
    depth = [0]

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def counted(fn, key: str, in_place: bool = False):
        def wrapper(*a, **kw):
            out = fn(*a, **kw)
            if depth[0]:  # bytes written: the target of an in-place op, else the result
                count[key] += nbytes(a[0] if in_place else out)
            return out
        return wrapper

    def scoped(fn, key: str):
        def wrapper(self, *a, **kw):
            depth[0] += 1
            count[key] += 1
            try:
                return fn(self, *a, **kw)
            finally:
                depth[0] -= 1
        return wrapper

    patches = [(torch.Tensor, "copy_", counted(torch.Tensor.copy_, "copied", True)),
               (torch.Tensor, "index_select", counted(torch.Tensor.index_select, "copied")),
               (torch, "cat", counted(torch.cat, "copied")),
               (torch.Tensor, "new_zeros", counted(torch.Tensor.new_zeros, "zeroed")),
               (torch.Tensor, "zero_", counted(torch.Tensor.zero_, "zeroed", True)),
               (Engine, "_join", scoped(Engine._join, "joins")),
               (Engine, "_keep_rows", scoped(Engine._keep_rows, "leaves"))]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    prompts, outs = _workload(32, seed=1)
    for obj, name, fn in patches:
        setattr(obj, name, fn)
    try:
        engine = _engine(model, tok, 16)
        t0 = time.perf_counter()
        tokens = _run(engine, prompts, outs)
        wall = time.perf_counter() - t0
        engine.stop()
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    return {**count, "wall_s": round(wall, 3), "steps": engine.stats.steps,
            "generated": sum(len(t) for t in tokens), "tokens": tokens,
            "prompt_tokens": [len(p) for p in prompts], "output_tokens": outs}


def serve_timed(model: Any, tok: Any) -> None:
    """Time the varied workload (nothing patched) once per line on stdin: the parent
    alternates the two trees' workers round by round."""
    prompts, outs = _workload(32, seed=1)
    engine = _engine(model, tok, 16)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        _run(engine, prompts, outs)
        print(REPLY + json.dumps({"wall_s": time.perf_counter() - t0,
                                  "tokens": sum(outs)}), flush=True)
    engine.stop()


def compiled(model: Any, tok: Any, rounds: int) -> dict[str, Any]:
    """tokens/s of the same 16 requests, eager vs --compile on (one shape)."""
    import torch

    prompts = [list(range(5 + i, 37 + i)) for i in range(16)]
    outs = [64] * 16
    res: dict[str, Any] = {}
    for mode in ("eager", "compiled"):
        engine = _engine(model, tok, 8, compile_decode=mode == "compiled")
        runs, tokens = [], None
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            got = _run(engine, prompts, outs)
            runs.append(time.perf_counter() - t0)
            assert tokens is None or got == tokens, "a run's tokens changed"
            tokens = got
        engine.stop()
        n = sum(outs)
        res[mode] = {"first_run_s": round(runs[0], 3),
                     "tokens_per_s": [round(n / w, 1) for w in runs[1:]],
                     "best_tokens_per_s": round(n / min(runs[1:]), 1), "tokens": tokens}
    res["same_tokens"] = res["eager"].pop("tokens") == res["compiled"].pop("tokens")
    res["torch_threads"] = torch.get_num_threads()
    return res


def worker(with_compile: bool, rounds: int, timed: bool = False) -> int:
    import modelserver
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    path = _model()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    if timed:
        serve_timed(model, tok)
        return 0
    out: dict[str, Any] = {"modelserver": str(Path(modelserver.__file__).parent),
                           "copies": copies(model, tok)}
    if with_compile:
        out["compile"] = compiled(model, tok, rounds)
    print(REPLY + json.dumps(out), flush=True)
    return 0


def _spawn(src: Path, with_compile: bool, rounds: int) -> dict[str, Any]:
    env = tree_env(src)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rounds", str(rounds)]
    if with_compile:
        cmd.append("--compile")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(REPLY):
            return json.loads(line[len(REPLY):])
    raise RuntimeError(f"worker for {src} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def interleaved(trees: dict[str, Path], rounds: int) -> dict[str, Any]:
    """The varied workload's wall time, the trees' workers alternating round by round
    (one warm-up run each first); per round the ratio this / baseline."""
    procs = {name: subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--timed"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=tree_env(src))
        for name, src in trees.items()}

    def ask(name: str) -> dict[str, Any]:
        proc = procs[name]
        proc.stdin.write("run\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"timed worker {name} exited ({proc.wait()})")

    walls: dict[str, list[float]] = {name: [] for name in trees}
    try:
        for name in trees:
            ask(name)  # warm
        for r in range(rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                walls[name].append(round(ask(name)["wall_s"], 4))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    out: dict[str, Any] = {"wall_s": walls}
    if len(trees) == 2:
        a, b = (walls[n] for n in trees)
        ratios = sorted(y / x for x, y in zip(a, b, strict=True))  # tok/s this / base
        out["this_over_baseline_tok_s"] = {"median": round(ratios[len(ratios) // 2], 3),
                                           "min": round(ratios[0], 3),
                                           "max": round(ratios[-1], 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", metavar="DIR", required=False)
    p.add_argument("--rounds", type=int, default=3, help="compiled/eager timed runs")
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.compile, a.rounds, a.timed)
    if not a.out:
        p.error("--out is required")
    if a.baseline_src and not (Path(a.baseline_src) / "images" / "server").is_dir():
        p.error(f"--baseline-src {a.baseline_src}: no images/server there")
    _model()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = os.getloadavg()
    res: dict[str, Any] = {"started": started, "loadavg_at_start": load,
                           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                           "commit": tree_commit(ROOT)}
    res["this"] = _spawn(ROOT, True, a.rounds)
    if a.baseline_src:
        src = Path(a.baseline_src).resolve()
        res["baseline"] = {"src": str(src), "commit": tree_commit(src),
                           **_spawn(src, False, a.rounds)}
        this, base = res["this"]["copies"], res["baseline"]["copies"]
        res["same_tokens_as_baseline"] = this["tokens"] == base["tokens"]
        res["copied_ratio"] = round(this["copied"] / max(1, base["copied"]), 4)
        res["timed"] = interleaved({"this": ROOT, "baseline": src}, a.rounds)
    for side in ("this", "baseline"):
        if side in res:
            res[side]["copies"].pop("tokens")
    res["loadavg_at_end"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("this", "baseline")}))
    for side in ("this", "baseline"):
        if side in res:
            c = res[side]["copies"]
            print(side, {k: c[k] for k in ("copied", "zeroed", "joins", "leaves")},
                  res[side].get("compile", ""))
    print("timed", res.get("timed"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
