"""Peak memory and time of loading a model: transformers' whole-model load (then int8)
against the server's streaming loader (int8 while reading), same run, fresh processes.

The model is random weights in a real architecture (`--config`, default Qwen2.5-1.5B's
config.json fields), saved once as sharded bf16 safetensors under .cache/bench-models
(reused when present). Each case runs in its own subprocess, which reports:

- peak_rss_mib: VmHWM from /proc/self/status after the load and one read of every weight
  byte (what a memory limit sees at its worst; counts file pages mapped from the
  checkpoint too: transformers can leave weights as views of the mmapped file, paged in
  when first used), the part added by the load (minus the VmHWM after imports), and
  peak_rss_before_touch_mib (VmHWM right after the load call returned);
- peak_anon_mib: the highest RssAnon sampled every 5 ms (heap only: the model's copies);
- load_seconds, weight_bytes (what the server reports in /info), parameters.

Cases: `old` = `from_pretrained(dtype)` on the host, `.to(device)`, then `quantize_int8`
(the server before streaming); `new` = `modelserver.loading.load` (streaming.py). On a
CPU "device memory" is host memory; the CUDA path is not measured by this script.

    python benchmarks/load_memory.py --out benchmarks/results/load-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-models"

QWEN25_15B = {  # Qwen/Qwen2.5-1.5B-Instruct config.json (architecture fields)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "vocab_size": 151936, "use_sliding_window": False, "attention_dropout": 0.0,
}
TINY = {**QWEN25_15B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 600}
CONFIGS = {"qwen1.5b": QWEN25_15B, "tiny": TINY}  # tiny: the smoke test's
CASES = [("old", "none"), ("new", "none"), ("old", "int8"), ("new", "int8")]


def log(msg: str) -> None:
    print(f"[load_memory {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(name: str, shard_size: str, cache: Path) -> Path:
    """Random bf16 weights for CONFIGS[name], sharded, with the test suite's tokenizer."""
    path = cache / f"{name}-random-bfloat16-sharded"
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        log(f"reusing {path}")
        return path
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "tests" / "server"))
    import tinymodel

    log(f"building {name} (random weights) in {path}: once, then reused")
    tok_dir = tinymodel.build(cache / "tokenizer-source")
    cfg_dict = dict(CONFIGS[name])
    cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    torch.manual_seed(0)
    t0 = time.monotonic()
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    log(f"initialised {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters"
        f" in {time.monotonic() - t0:.0f}s; saving")
    model.save_pretrained(path, max_shard_size=shard_size)
    for f in tok_dir.glob("tokenizer*"):
        (path / f.name).write_bytes(f.read_bytes())
    log(f"saved {len(list(path.glob('*.safetensors')))} shards")
    return path


def _status(field: str) -> int:
    """A /proc/self/status field in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_case(model_dir: str, path: str, quantization: str, dtype: str) -> dict[str, Any]:
    """One load in this process; returns the measurements (called in a fresh subprocess)."""
    import importlib

    import torch
    from modelserver.fetch import LocalModel
    from modelserver.loading import load
    from modelserver.quant import quantize_int8
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # import the architecture's code before the baseline: the load, not imports, is measured
    config = AutoConfig.from_pretrained(model_dir)
    importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    peak_anon = [_status("RssAnon")]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
            time.sleep(0.005)

    base_hwm = _status("VmHWM")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    if path == "old":  # what loading.load did before streaming.py, tokenizer included
        AutoTokenizer.from_pretrained(model_dir)
        torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to("cpu")
        parameters = sum(p.numel() for p in model.parameters())
        loader = "transformers"
        if quantization == "int8":
            quantize_int8(model)
    else:
        loaded = load(LocalModel(Path(model_dir)), dtype, "cpu", quantization)
        model, parameters, loader = loaded.model, loaded.parameters, loaded.loader
    took = time.monotonic() - t0
    load_hwm = _status("VmHWM")
    # transformers may leave weights as views of the mmapped checkpoint, paged in only when
    # first used: read every byte once, as serving will, so those pages count too
    tensors = [*model.parameters(), *model.buffers()]
    with torch.no_grad():
        for t in tensors:
            for chunk in t.reshape(-1).split(2**24):  # 16M elements: a small float temp
                chunk.float().sum()
    stop.set()
    sampler.join()
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    hwm = _status("VmHWM")
    return {"path": path, "loader": loader, "quantization": quantization, "dtype": dtype,
            "load_seconds": round(took, 2), "parameters": parameters,
            "weight_bytes": weight_bytes, "peak_rss_mib": round(hwm / 1024, 1),
            "peak_rss_before_touch_mib": round(load_hwm / 1024, 1),
            "baseline_rss_mib": round(base_hwm / 1024, 1),
            "load_peak_rss_mib": round((hwm - base_hwm) / 1024, 1),
            "peak_anon_mib": round(peak_anon[0] / 1024, 1),
            "rss_after_mib": round(_status("VmRSS") / 1024, 1)}


def machine() -> dict[str, Any]:
    import torch
    import transformers

    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpus": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="qwen1.5b")
    p.add_argument("--shard-size", default="1GB", help="max_shard_size when building")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--rounds", type=int, default=2, help="each case this many times, interleaved")
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--out", required=True)
    p.add_argument("--case", nargs=3, metavar=("DIR", "PATH", "QUANT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:  # the child: one measurement as JSON on stdout
        print(json.dumps(run_case(a.case[0], a.case[1], a.case[2], a.dtype)))
        return
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    model_dir = build(a.config, a.shard_size, Path(a.cache))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "operator"), str(ROOT / "images" / "server"),
         os.environ.get("PYTHONPATH", "")])}
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for r in range(a.rounds):
        for path, quant in CASES:
            log(f"round {r + 1}/{a.rounds}: {path} path, quantization {quant}")
            out = subprocess.run([sys.executable, __file__, "--dtype", a.dtype, "--out", a.out,
                                  "--case", str(model_dir), path, quant],
                                 capture_output=True, text=True, env=env, check=False)
            if out.returncode:
                raise SystemExit(f"case {path}/{quant} failed:\n{out.stderr[-3000:]}")
            row = {"round": r + 1, **json.loads(out.stdout.strip().splitlines()[-1])}
            log(f"  peak RSS {row['peak_rss_mib']} MiB (load added {row['load_peak_rss_mib']}),"
                f" peak anon {row['peak_anon_mib']} MiB, {row['load_seconds']} s")
            rows.append(row)
    checkpoint = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    result = {"benchmark": "load_memory", "config": a.config, "dtype": a.dtype,
              "model_dir": str(model_dir), "checkpoint_bytes": checkpoint,
              "shards": len(list(model_dir.glob("*.safetensors"))), "started": started,
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": machine(), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """Markdown: the median of each case's rounds."""
    import statistics

    lines = ["| path | quantization | peak RSS MiB | added by the load MiB | peak anon MiB |"
             " load s | weight MB |", "|---|---|---|---|---|---|---|"]
    for path, quant in CASES:
        rs = [r for r in result["rows"] if r["path"] == path and r["quantization"] == quant]
        med = {k: statistics.median(r[k] for r in rs) for k in
               ("peak_rss_mib", "load_peak_rss_mib", "peak_anon_mib", "load_seconds",
                "weight_bytes")}
        lines.append(f"| {path} | {quant} | {med['peak_rss_mib']:.0f} |"
                     f" {med['load_peak_rss_mib']:.0f} | {med['peak_anon_mib']:.0f} |"
                     f" {med['load_seconds']:.1f} | {med['weight_bytes'] / 1e6:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
