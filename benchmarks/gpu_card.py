"""The card gpu.sh runs on and its measured memory bandwidth, for the decode ceiling.

    python benchmarks/gpu_card.py --out results/gpu-card.json [--device cuda] [--gib 4]

Bandwidth: a large device-to-device tensor copy reads and writes every byte once, so
GB/s = 2 x bytes / time, best of `--repeats` (timed with CUDA events on a GPU). That is
what this card, driver and clock actually reach, which a decode step (streaming every
weight once) can at best match; the vendor datasheet figure, usually 10-20 % higher, is
kept beside it as a cross-check only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Peak DRAM bandwidth by card name, GB/s (vendor datasheets); first substring match wins
# (so GH200 before H200).
DATASHEET_GBS = (
    ("GH200", 4000), ("H200", 4800), ("H100 PCIe", 2000), ("H100 NVL", 3900), ("H100", 3350),
    ("A100 80GB PCIe", 1935), ("A100-SXM4-80GB", 2039), ("A100 80GB", 2039), ("A100", 1555),
    ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("T4", 320),
    ("RTX 4090", 1008), ("RTX 3090", 936),
)


def datasheet_gbs(card: str) -> float | None:
    return next((float(gbs) for name, gbs in DATASHEET_GBS if name in card), None)


def copy_bandwidth_gbs(device: str, nbytes: int, repeats: int) -> tuple[float, list[float]]:
    """Best device-to-device copy bandwidth (GB/s) and every timed copy's seconds."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: allocation, first-touch, kernel load
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / min(times) / 1e9, times


def nvidia_smi(field: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return proc.stdout.splitlines()[0].strip() if proc.returncode == 0 and proc.stdout else None


def describe(device: str, gib: float, repeats: int) -> dict[str, Any]:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        card, memory_gib = props.name, round(props.total_memory / 2**30, 1)
    else:  # gpu.sh's dry run: the same code path on the host, to prove the script
        card, memory_gib = f"cpu ({platform.processor() or platform.machine()}, dry run)", None
    nbytes = int(gib * 2**30)
    gbs, times = copy_bandwidth_gbs(device, nbytes, repeats)
    return {
        "card": card, "memory_gib": memory_gib,
        "driver": nvidia_smi("driver_version"), "cuda": torch.version.cuda,
        "torch": torch.__version__, "python": platform.python_version(),
        "measured_bandwidth_gbs": round(gbs, 1),
        "bandwidth_method": f"device-to-device copy of {nbytes / 2**30:g} GiB, "
                            f"2 x bytes / time, best of {repeats}",
        "copy_ms": [round(t * 1000, 3) for t in times],
        "datasheet_bandwidth_gbs": datasheet_gbs(card),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda | cpu (cpu: gpu.sh's dry run)")
    p.add_argument("--gib", type=float, default=4.0, help="size of the copied tensor (GiB)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.gib <= 0 or args.repeats < 1:
        p.error("--gib must be > 0 and --repeats >= 1")
    card = describe(args.device, args.gib, args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(card, indent=1))
    print(json.dumps({k: v for k, v in card.items() if k != "copy_ms"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
