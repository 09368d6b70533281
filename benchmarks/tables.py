"""Markdown tables for RESULTS.md from the JSON files in benchmarks/results/.

    python benchmarks/tables.py operator results/operator.json
    python benchmarks/tables.py sweep results/server-smollm2-128-full.json
    python benchmarks/tables.py int8 results/int8.json results/int8-qwen0.5b.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def operator_table(paths: list[str]) -> str:
    rows = []
    for p in paths:
        rows += json.loads(Path(p).read_text())["results"]
    out = ["| N | converged | total s | per-CR p50 s | p95 s | peak RSS MiB | operator writes/CR "
           "| API server requests/CR (all clients) | no-op resync: reconciles / writes "
           "| restart: s to reconcile all / writes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["n"]):
        out.append(
            f"| {r['n']} | {r['converged_count']}/{r['n']} | {r['total_seconds']} "
            f"| {r['p50_seconds']} | {r['p95_seconds']} | {r['peak_rss_mib']} "
            f"| {r['operator_writes_per_cr']} | {r['apiserver_requests_per_cr']} "
            f"| {r.get('noop_reconciles', '-')} / {r.get('noop_writes', '-')} "
            f"| {r.get('restart_reconcile_seconds', '-')} / {r.get('restart_writes', '-')} |")
    return "\n".join(out)


def sweep_table(path: str) -> str:
    d = json.loads(Path(path).read_text())
    out = ["| engine | c | requests | tokens/req | output tok/s | req/s | TTFT p50 s | TTFT p95 s "
           "| ITL p50 ms | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for engine, res in d["engines"].items():
        for r in res["rows"]:
            out.append(f"| {engine} | {r['concurrency']} | {r['requests']} "
                       f"| {','.join(map(str, r['tokens_per_request']))} | {r['output_tok_s']} "
                       f"| {r['req_s']} | {r['ttft_p50_s']} | {r['ttft_p95_s']} "
                       f"| {r['itl_p50_ms']} | {res['peak_rss_mib']} |")
    return "\n".join(out)


def int8_table(paths: list[str]) -> str:
    out = ["| model | quantization | weight MB (/info) | ratio | idle RSS MiB | tok/s c=1 "
           "| tok/s c=4 | ITL p50 ms c=1 |", "|---|---|---|---|---|---|---|---|"]
    for p in paths:
        d = json.loads(Path(p).read_text())
        base = d["none"]["weight_bytes"]
        for q in ("none", "int8"):
            r = d[q]
            lv = {x["concurrency"]: x for x in r["levels"]}
            out.append(f"| {d['model']} | {q} | {r['weight_bytes'] / 1e6:.0f} "
                       f"| {r['weight_bytes'] / base:.3f} | {r['idle_rss_mib']} "
                       f"| {lv.get(1, {}).get('output_tok_s')} "
                       f"| {lv.get(4, {}).get('output_tok_s')} "
                       f"| {lv.get(1, {}).get('itl_p50_ms')} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "operator":
        print(operator_table(argv[1:]))
    elif argv and argv[0] == "int8":
        print(int8_table(argv[1:]))
    elif argv and argv[0] == "sweep":
        print(sweep_table(argv[1]))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
