"""How fast this CPU multiplies by one SmolLM2-135M projection (576 → 1536) in float32 and
bfloat16, at M = 1, 16, 256 rows (a decode step of 1 and of 16 streams, a 256-token
prefill): whether batching can pay off here at all. A CPU without bf16 instructions
(AVX-512 BF16 / AMX) computes bfloat16 at one low rate whatever M is.

    .venv/bin/python benchmarks/cpu_gemm.py --out benchmarks/results/cpu-gemm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo ("" elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(field)), "")


def gflops(dtype: torch.dtype, m: int, k: int = 576, n: int = 1536, seconds: float = 0.5) -> float:
    a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    for _ in range(3):
        a @ w.T
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ w.T
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - t0) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [{"dtype": str(dt).removeprefix("torch."), "m": m, "gflop_s": round(gflops(dt, m), 1)}
            for dt in (torch.float32, torch.bfloat16) for m in (1, 16, 256)]
    for r in rows:
        print(r, flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": a.threads,
           "cpu": cpuinfo("model name") or platform.machine(),
           "cpu_flags": [f for f in CPU_FLAGS if f in cpuinfo("flags").split()],
           "loadavg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
