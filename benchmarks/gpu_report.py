"""Print GPU sweep results next to the memory-bandwidth ceiling (used by gpu.sh).

    python benchmarks/gpu_report.py gpu-card.json gpu-qwen0.5b.json [gpu-qwen7b.json ...]

Ceiling: one decode step reads every weight once, so it takes at least
weight_bytes / bandwidth; a sequence gets at most bandwidth / weight_bytes tokens/s and a
batch of b at most b times that (KV-cache reads and compute ignored: a lower bound on
step time, so the gap shown is the smallest honest one). The bandwidth is the card's
measured device-to-device copy rate (gpu_card.py), not the datasheet's: the datasheet
ceiling is printed once per model as a cross-check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import CONFIGS  # noqa: E402


def param_count(cfg: dict[str, Any]) -> int:
    """Parameters of a Qwen2/Llama-style decoder from its config (biases on q, k, v)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    vocab = cfg["vocab_size"]
    kv_dim = h // heads * kv
    qkv_bias = cfg.get("model_type") == "qwen2"
    attn = h * h + 2 * h * kv_dim + h * h + ((h + 2 * kv_dim) if qkv_bias else 0)
    per_layer = attn + 3 * h * inter + 2 * h
    embed = vocab * h
    head = 0 if cfg.get("tie_word_embeddings") else vocab * h
    return embed + layers * per_layer + h + head


def weight_bytes(model: str, bytes_per_param: int = 2) -> int:
    return param_count(CONFIGS[model]) * bytes_per_param


def ceiling(wbytes: int, bandwidth_gbs: float) -> tuple[float, float]:
    """(shortest decode step in ms, most tok/s for one sequence)."""
    step = wbytes / (bandwidth_gbs * 1e9)
    return step * 1000, 1 / step


def report(card: dict[str, Any], sweeps: list[dict[str, Any]]) -> str:
    bw = float(card.get("measured_bandwidth_gbs") or 0)
    sheet = float(card.get("datasheet_bandwidth_gbs") or 0)
    lines = [f"card: {card.get('card')} ({card.get('memory_gib')} GiB, driver "
             f"{card.get('driver')}), measured bandwidth {bw:g} GB/s"
             + (f" ({100 * bw / sheet:.0f}% of the datasheet's {sheet:g})" if sheet else "")]
    nan = float("nan")
    for sw in sweeps:
        wb = weight_bytes(sw["model"]) if sw["model"] in CONFIGS else 0
        server_args = " ".join(sw.get("server_args") or [])
        lines.append(f"\n{sw['model']} {sw.get('dtype', 'bfloat16')}"
                     f"{f' (server {server_args})' if server_args else ''}: "
                     f"{wb / 1e9:.2f} GB of weights")
        step_ms = tok_s = nan
        if bw and wb:
            step_ms, tok_s = ceiling(wb, bw)
            lines.append(f"ceiling: decode step >= {step_ms:.2f} ms, "
                         f"<= {tok_s:.0f} tok/s per sequence")
            if sheet:
                lines.append(f"(datasheet {sheet:g} GB/s: >= {ceiling(wb, sheet)[0]:.2f} ms, "
                             f"<= {ceiling(wb, sheet)[1]:.0f} tok/s)")
        lines.append(f"{'engine':9} {'c':>3} {'tok/s':>9} {'ceiling':>9} {'% of ceil':>9} "
                     f"{'ITL p50 ms':>10} {'min step':>8} {'TTFT p50':>8}")
        for engine, res in sw["engines"].items():
            for r in res["rows"]:
                c = r["concurrency"]
                ceil = c * tok_s
                frac = 100 * r["output_tok_s"] / ceil
                lines.append(f"{engine:9} {c:>3} {r['output_tok_s']:>9.1f} {ceil:>9.0f} "
                             f"{frac:>8.0f}% {r['itl_p50_ms'] or nan:>10.2f} "
                             f"{step_ms:>8.2f} {r['ttft_p50_s'] or nan:>8.3f}")
                if r.get("tokens_without_text"):
                    lines.append(f"  !! {r['tokens_without_text']} of {r['output_tokens']} "
                                 "tokens streamed no text: ITL p50 above is not per token")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    card = json.loads(Path(argv[0]).read_text())
    sweeps = [json.loads(Path(p).read_text()) for p in argv[1:] if Path(p).exists()]
    print(report(card, sweeps))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
