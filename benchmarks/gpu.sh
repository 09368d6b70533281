#!/usr/bin/env bash
# The server sweep on one NVIDIA GPU, bf16, next to the memory-bandwidth ceiling.
#
#   bash benchmarks/gpu.sh            # from the repository root, with .venv set up (CUDA torch)
#
# Models (random weights, built on the GPU from the real configs; no hub access needed):
# Qwen2.5-0.5B and a 7B-class model (the Qwen2.5-7B config). Engines: the sequential
# `model.generate` baseline, transformers' continuous batching manager, and modelserver.
# For every row it prints the decode-step ceiling: weight bytes ÷ memory bandwidth is the
# shortest a decode step can take (every weight is read once per step), so per-sequence
# tok/s ≤ bandwidth ÷ weight bytes and aggregate tok/s ≤ batch × that (KV reads ignored).
#
# The card's bandwidth comes from a table of common cards; set BANDWIDTH_GBS to override.
# Budget: under 8 minutes on an H100 (each step is capped with `timeout`).
# Results: benchmarks/results/gpu-*.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-benchmarks/results}
LEVELS=${LEVELS:-"1 8 32"}
mkdir -p "$OUT"
start=$SECONDS

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this script needs an NVIDIA GPU"; exit 2; }
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader | head -1)
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "torch in $PY has no CUDA: install a CUDA build of torch"; exit 2; }

bandwidth_gbs() {  # peak DRAM bandwidth in GB/s by card name (vendor datasheets)
  if [[ -n "${BANDWIDTH_GBS:-}" ]]; then echo "$BANDWIDTH_GBS"; return; fi
  case "$1" in
    *H200*) echo 4800 ;;
    *H100*PCIe*) echo 2000 ;;
    *H100*NVL*) echo 3900 ;;
    *H100*) echo 3350 ;;          # SXM5 80GB HBM3
    *GH200*) echo 4000 ;;
    *A100*80GB*PCIe*) echo 1935 ;;
    *A100*80GB*) echo 2039 ;;
    *A100*) echo 1555 ;;
    *L40S*) echo 864 ;;
    *L40*) echo 864 ;;
    *L4*) echo 300 ;;
    *A10G*) echo 600 ;;
    *A10*) echo 600 ;;
    *T4*) echo 320 ;;
    *"RTX 4090"*) echo 1008 ;;
    *"RTX 3090"*) echo 936 ;;
    *) echo 0 ;;
  esac
}
BW=$(bandwidth_gbs "$CARD")
echo ">> card: $CARD ($MEM, driver $DRIVER), peak bandwidth ${BW} GB/s"
echo "{\"card\": \"$CARD\", \"memory\": \"$MEM\", \"driver\": \"$DRIVER\", \"bandwidth_gbs\": $BW}" \
  > "$OUT/gpu-card.json"

# model, per-step timeout (s), requests per level
run_model() {
  local model=$1 limit=$2
  echo ">> $model: sweep over concurrency $LEVELS (bf16, 256 in / 128 out)"
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" benchmarks/server_bench.py sweep --model "$model" --dtype bfloat16 \
    --device cuda --concurrency $LEVELS --min-requests 4 \
    --out "$OUT/gpu-$model.json" || echo "!! $model sweep stopped (timeout $limit s or error)"
}
run_model qwen0.5b 150
run_model qwen7b 300

"$PY" benchmarks/gpu_report.py "$OUT/gpu-card.json" "$OUT"/gpu-qwen0.5b.json "$OUT"/gpu-qwen7b.json
echo ">> done in $((SECONDS - start)) s"
