#!/usr/bin/env bash
# The server sweep on one NVIDIA GPU, bf16, next to the measured memory-bandwidth ceiling,
# self-contained for a bare GPU machine (torch + transformers + accelerate, no network, no
# project venv):
#
#   make gpu-bundle                             # once, where PyPI is reachable (~14 MiB)
#   OUT_DIR=/some/dir bash benchmarks/gpu.sh    # on the GPU machine, from a checkout that
#                                               # carries .cache/gpu-bundle
#
# It needs only this checkout and .cache/gpu-bundle (benchmarks/gpu_bundle.py): the server's
# missing wheels (fastapi, uvicorn, pydantic, ...), installed offline into a temp dir put
# first on PYTHONPATH with images/server and operator, and SmolLM2's tokenizer. Models:
# random weights built on the GPU from the real Qwen2.5-0.5B and -7B configs (real vocabulary,
# so the weight bytes are the real ones; ids that SmolLM2's tokenizer cannot turn into text
# are never generated: server_bench.silence_textless). Engines, in this order so a cut run
# keeps the server: modelserver, the sequential `model.generate` baseline, transformers'
# continuous batching; then, with what the budget leaves, modelserver with --compile on
# (CUDA graphs) on the small model. The ceiling: weight bytes / the card's measured device-to-device
# copy bandwidth (gpu_card.py) is the shortest a decode step can take.
#
# Budget: GPU_SH_BUDGET seconds (480; 900 in a dry run) for everything; each step is capped with `timeout`
# by its own limit and by what is left, so a slow step cuts the run, never overruns it.
# Results in OUT_DIR (benchmarks/results): gpu-card.json, gpu-MODEL.json, gpu-report.txt,
# logs-MODEL/ (the server's log).
#
# Knobs: PY (python3: any Python >= 3.11 whose torch has CUDA), OUT_DIR, GPU_BUNDLE
# (.cache/gpu-bundle), GPU_SH_BUDGET, LEVELS ("1 8 32"), ENGINES ("server baseline peer"),
# MODELS ("qwen0.5b qwen7b"), COMPILE_MODEL (qwen0.5b; empty: no --compile on pass),
# COMPILE_LEVELS ("1 8"). GPU_SH_DRY_RUN=1: no CUDA needed; the same steps on the CPU
# with a toy Qwen-vocabulary model and the server alone (tests/server/test_bench_gpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-python3}
RESULTS=${OUT_DIR:-benchmarks/results}
BUNDLE=${GPU_BUNDLE:-.cache/gpu-bundle}
BUDGET=${GPU_SH_BUDGET:-$([[ ${GPU_SH_DRY_RUN:-0} == 1 ]] && echo 900 || echo 480)}
DRY=${GPU_SH_DRY_RUN:-0}
start=$SECONDS

if [[ $DRY == 1 ]]; then
  DEVICE=cpu MODELS=${MODELS:-qwen-tiny} LEVELS=${LEVELS:-"1 2"} ENGINES=${ENGINES:-server}
  COMPILE_MODEL=${COMPILE_MODEL-qwen-tiny} COMPILE_LEVELS=${COMPILE_LEVELS:-1}
  PROMPT_TOKENS=16 OUTPUT_TOKENS=8 MIN_REQUESTS=2 THREADS=1 COPY_GIB=0.0625 COPY_REPEATS=3
else
  DEVICE=cuda MODELS=${MODELS:-"qwen0.5b qwen7b"} LEVELS=${LEVELS:-"1 8 32"}
  ENGINES=${ENGINES:-"server baseline peer"}
  COMPILE_MODEL=${COMPILE_MODEL-qwen0.5b} COMPILE_LEVELS=${COMPILE_LEVELS:-"1 8"}
  PROMPT_TOKENS=256 OUTPUT_TOKENS=128 MIN_REQUESTS=4 THREADS=0 COPY_GIB=4 COPY_REPEATS=20
fi

say() { printf '>> [%3d s] %s\n' "$((SECONDS - start))" "$*"; }
die() { printf '!! gpu.sh: %s\n' "$*" >&2; exit 2; }
# seconds a step may take: its own cap, or what is left of the budget less 15 s for the
# report, whichever is smaller
cap() {
  local want=$1 left=$((BUDGET - (SECONDS - start) - 15))
  ((left < want)) && want=$left
  ((want < 5)) && want=5
  echo "$want"
}

# ---------------------------------------------------------------- preflight
# One Python process checks the interpreter, torch's CUDA and the server's imports (each
# torch import costs seconds); the bundle is installed before it, with no torch needed.
command -v "$PY" >/dev/null || die "no '$PY' on PATH: set PY to a Python >= 3.11 with CUDA torch"
[[ -d $BUNDLE/wheels && -f $BUNDLE/tokenizer/tokenizer_config.json ]] \
  || die "no bundle in $BUNDLE: run 'make gpu-bundle' where PyPI is reachable and carry .cache/gpu-bundle"
SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
"$PY" benchmarks/gpu_bundle.py install "$BUNDLE" "$SITE" || die "could not install the bundle (above)"
export PYTHONPATH="$SITE:$ROOT/images/server:$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - "$DEVICE" "$SITE" <<'EOF' || die "'$PY' cannot run the benchmark (above); PY must be a Python >= 3.11 with CUDA torch, transformers and accelerate"
import importlib, sys
if sys.version_info < (3, 11):
    sys.exit(f"Python >= 3.11 needed, {sys.executable} is {sys.version.split()[0]}")
try:
    import accelerate, torch, transformers  # noqa: F401
except ImportError as e:
    sys.exit(f"{sys.executable}: {e}")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} in {sys.executable} sees no CUDA device "
             f"(built for CUDA {torch.version.cuda})")
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}", flush=True)
# the server's whole import graph, with the bundled packages the ones imported
sys.path.insert(0, "benchmarks")
from gpu_bundle import MODULES
import modelserver.app  # noqa: F401
mods = {m: importlib.import_module(m) for m in MODULES}
stray = [f"{m} from {mod.__file__}" for m, mod in mods.items()
         if not mod.__file__.startswith(sys.argv[2])]
if stray:
    sys.exit("not from the bundle: " + ", ".join(stray))
print("server imports OK, from the bundle: " + ", ".join(
    f"{m} {getattr(mod, '__version__', '')}".strip() for m, mod in mods.items()))
EOF
say "preflight done ($DEVICE)"

# ---------------------------------------------------------------- card and bandwidth
mkdir -p "$RESULTS"
say "card and device-to-device copy bandwidth ($COPY_GIB GiB x $COPY_REPEATS)"
timeout -k 10 "$(cap 60)" "$PY" benchmarks/gpu_card.py --device "$DEVICE" --gib "$COPY_GIB" \
  --repeats "$COPY_REPEATS" --out "$RESULTS/gpu-card.json" || die "bandwidth measurement failed"
command -v nvidia-smi >/dev/null && nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || true

# ---------------------------------------------------------------- sweeps
limits() {  # model -> "build-cap sweep-cap" in seconds
  case $1 in
    qwen7b) echo "150 300" ;;  # 15 GB written once, then read by each engine
    qwen-tiny) echo "300 400" ;;  # the dry run: a shared CPU can take minutes for imports
    *) echo "60 150" ;;
  esac
}
reports=()
for model in $MODELS; do
  read -r build_cap sweep_cap <<<"$(limits "$model")"
  out="$RESULTS/gpu-$model.json"
  rm -f "$out"
  say "$model: random bf16 weights on $DEVICE (cap $(cap "$build_cap") s)"
  if ! timeout -k 10 "$(cap "$build_cap")" "$PY" -c '
import sys
sys.path.insert(0, "benchmarks")
from server_bench import random_model
print(random_model(sys.argv[1], "bfloat16", sys.argv[2], sys.argv[3]))' \
      "$model" "$DEVICE" "$BUNDLE/tokenizer"; then
    echo "!! $model: building the weights failed or ran out of time; skipped"
    continue
  fi
  limit=$(cap "$sweep_cap")
  say "$model: engines $ENGINES at concurrency $LEVELS ($PROMPT_TOKENS in / $OUTPUT_TOKENS out, cap $limit s)"
  # shellcheck disable=SC2086
  timeout -k 20 "$limit" "$PY" benchmarks/server_bench.py sweep --model "$model" \
    --dtype bfloat16 --device "$DEVICE" --tokenizer "$BUNDLE/tokenizer" --engines $ENGINES \
    --concurrency $LEVELS --min-requests "$MIN_REQUESTS" --prompt-tokens "$PROMPT_TOKENS" \
    --output-tokens "$OUTPUT_TOKENS" --threads "$THREADS" --logdir "$RESULTS/logs-$model" \
    --out "$out" || echo "!! $model sweep stopped (cap $limit s or error); engines done so far are kept"
  if [[ -f $out ]]; then reports+=("$out"); fi
done

# ---------------------------------------------------------------- compiled decode
# Last, with what the budget leaves: the server with --compile on (torch.compile over static
# shapes; on CUDA, CUDA graphs) at COMPILE_LEVELS, the small model, where per-step host
# work weighs most. Skipped when under a minute is left. Each new row bucket compiles once.
left=$((BUDGET - (SECONDS - start) - 15))
if [[ -n $COMPILE_MODEL && $left -ge 60 ]] && [[ " $MODELS " == *" $COMPILE_MODEL "* ]]; then
  out="$RESULTS/gpu-$COMPILE_MODEL-compile.json"
  rm -f "$out"
  say "$COMPILE_MODEL: server --compile on at concurrency $COMPILE_LEVELS (cap $left s)"
  # shellcheck disable=SC2086
  timeout -k 20 "$left" "$PY" benchmarks/server_bench.py sweep --model "$COMPILE_MODEL" \
    --dtype bfloat16 --device "$DEVICE" --tokenizer "$BUNDLE/tokenizer" --engines server \
    --server-arg=--compile=on --concurrency $COMPILE_LEVELS --min-requests "$MIN_REQUESTS" \
    --prompt-tokens "$PROMPT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --threads "$THREADS" \
    --logdir "$RESULTS/logs-$COMPILE_MODEL-compile" --out "$out" \
    || echo "!! $COMPILE_MODEL --compile on stopped (cap $left s or error)"
  if [[ -f $out ]]; then reports+=("$out"); fi
else
  say "--compile on pass skipped (${left} s left, COMPILE_MODEL '$COMPILE_MODEL')"
fi

# ---------------------------------------------------------------- report
say "report"
"$PY" benchmarks/gpu_report.py "$RESULTS/gpu-card.json" "${reports[@]}" | tee "$RESULTS/gpu-report.txt"
say "done (budget $BUDGET s)"
((${#reports[@]} > 0)) || die "no sweep finished"
