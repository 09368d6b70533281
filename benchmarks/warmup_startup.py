"""Startup time (process start → /health 200) of `modelserver serve` with the old warm-up
(one 2-token generation) against the new one (max_batch_size requests decoding together,
then one prefill chunk), on CPU, rounds interleaved so machine noise hits both alike.

    python benchmarks/warmup_startup.py --base-src DIR --tiny-model DIR --smollm2 FILE \
        --out benchmarks/results/warmup-startup.json

DIR of --base-src holds the base commit's images/server (e.g. `git archive <base>
images/server | tar -x -C DIR`). Variants: base; new with its CPU cap on the warm-up
prompt; new with the full chunk (the cap lifted), which is what the cap saves.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from procs import stop_process

REPO = Path(__file__).resolve().parents[1]
NEW_SRC = REPO / "images" / "server"
# the new server with the CPU cap on the warm-up prompt lifted (the full 2048 chunk)
UNCAPPED = ("import sys, modelserver.service as s; s.WARMUP_CPU_PREFILL_TOKENS = 1 << 30; "
            "from modelserver.cli import main; sys.exit(main(sys.argv[1:]))")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startup_seconds(src: Path, model: str, batch: int, code: str | None) -> float:
    port = _port()
    entry = ["-c", code] if code else ["-m", "modelserver"]
    args = [sys.executable, *entry, "serve", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--no-tls", "--no-auth", "--dtype", "float32",
            "--max-batch-size", str(batch), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{src}",
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(timeout=2) as c:
                while proc.poll() is None:
                    try:
                        if c.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                            return time.monotonic() - started
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
            log.seek(0)
            raise RuntimeError(f"server exited {proc.returncode}: {log.read()[-2000:]!r}")
        finally:
            stop_process(proc, 15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-src", type=Path, required=True)
    ap.add_argument("--tiny-model", required=True)
    ap.add_argument("--smollm2", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    variants = {"base": (a.base_src / "images" / "server", None),
                "new": (NEW_SRC, None), "new-uncapped": (NEW_SRC, UNCAPPED)}
    models = {"tiny": (a.tiny_model, 8), "smollm2": (a.smollm2, 8)}
    runs: dict[str, dict[str, list[float]]] = {m: {v: [] for v in variants} for m in models}
    for _ in range(a.rounds):
        for m, (path, batch) in models.items():
            for v, (src, code) in variants.items():
                runs[m][v].append(round(startup_seconds(src, path, batch, code), 2))
                print(m, v, runs[m][v][-1], flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "max_batch_size": 8, "device": "cpu", "dtype": "float32",
        "startup_seconds": runs,
        "median": {m: {v: statistics.median(x) for v, x in r.items()} for m, r in runs.items()},
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
