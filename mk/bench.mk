# Benchmarks (included by the top-level Makefile; VENV and PY come from there).
# `make bench` reproduces benchmarks/RESULTS.md: the operator at scale on a separate local
# control plane named `bench` (the shared one is left alone), then the server runs.
# Not part of `make test`; tests/*/test_bench_*.py run tiny versions so these cannot rot.
# The defaults are the runs RESULTS.md reports (Qwen shortened for a shared 2-core
# machine); the issue's full Qwen sweep is BENCH_QWEN_LEVELS="1 2 4 8 16 32"
# BENCH_QWEN_OUT_TOKENS=128 (hours on 2 CPUs).
BENCH_OUT := benchmarks/results
BENCH_KUBECONFIG := $(CURDIR)/.cache/cluster-bench/kubeconfig
BENCH_SIZES ?= 10 100 1000
BENCH_TIMEOUT ?= 240
BENCH_LEVELS ?= 1 2 4 8 16 32
BENCH_OUT_TOKENS ?= 128
BENCH_QWEN_LEVELS ?= 1 8
BENCH_QWEN_OUT_TOKENS ?= 16
BENCH_THREADS ?= 2
export BENCH_THREADS

# The operator before the restart-ordering change, for bench-restart's same-run baseline.
BENCH_BASELINE ?= f4a0f2a
# The engine before sampling moved onto the device (issue 14), for bench-engine-base.
ENGINE_BASELINE ?= afe4294
# The engine before its batch moved into slots (issue 14), for bench-engine-slots.
SLOTS_BASELINE ?= b42f9cd

.PHONY: bench bench-operator bench-restart bench-server bench-gpu gpu-bundle bench-load \
  bench-engine bench-engine-base bench-engine-slots bench-limit

bench: bench-operator bench-server bench-load ## benchmarks: operator at N=10..1000, server vs baselines, loader memory (long)
	@echo ">> results in $(BENCH_OUT); benchmarks/RESULTS.md quotes them"

bench-operator: venv binaries
	@MODELDEPLOY_CLUSTER=bench bash hack/cluster.sh up
	KUBECONFIG=$(BENCH_KUBECONFIG) kubectl apply --server-side --force-conflicts -f crds/
	KUBECONFIG=$(BENCH_KUBECONFIG) kubectl wait --for=condition=Established --timeout=60s \
	  crd/modeldeployments.modeldeploy.io
	$(PY) benchmarks/operator_bench.py --sizes $(BENCH_SIZES) --kubeconfig $(BENCH_KUBECONFIG) \
	  --resync-seconds 30 --timeout $(BENCH_TIMEOUT) --add-nodes 4 \
	  --out $(BENCH_OUT)/operator.json; rc=$$?; \
	  MODELDEPLOY_CLUSTER=bench bash hack/cluster.sh down; exit $$rc
	$(PY) benchmarks/plots.py operator $(BENCH_OUT)/operator.json $(BENCH_OUT)/operator.png
	$(PY) benchmarks/tables.py operator $(BENCH_OUT)/operator.json

bench-restart: venv binaries ## time to first write after a restart at N=1000, vs the baseline commit
	@MODELDEPLOY_CLUSTER=bench bash hack/cluster.sh up
	KUBECONFIG=$(BENCH_KUBECONFIG) kubectl apply --server-side --force-conflicts -f crds/
	KUBECONFIG=$(BENCH_KUBECONFIG) kubectl wait --for=condition=Established --timeout=60s \
	  crd/modeldeployments.modeldeploy.io
	@[ -d .cache/baseline-$(BENCH_BASELINE) ] || \
	  git worktree add --detach .cache/baseline-$(BENCH_BASELINE) $(BENCH_BASELINE)
	$(PY) benchmarks/restart_bench.py --n 1000 --changed 10 --rounds 2 \
	  --baseline .cache/baseline-$(BENCH_BASELINE) --baseline-label $(BENCH_BASELINE) \
	  --kubeconfig $(BENCH_KUBECONFIG) --add-nodes 4 --out $(BENCH_OUT)/restart.json; \
	  rc=$$?; MODELDEPLOY_CLUSTER=bench bash hack/cluster.sh down; exit $$rc

bench-server: venv
	$(PY) benchmarks/server_bench.py sweep --model smollm2 --concurrency $(BENCH_LEVELS) \
	  --min-requests 2 --output-tokens $(BENCH_OUT_TOKENS) --engines baseline server peer \
	  --out $(BENCH_OUT)/server-smollm2-128-full.json
	$(PY) benchmarks/server_bench.py plot $(BENCH_OUT)/server-smollm2-128-full.json \
	  $(BENCH_OUT)/server-smollm2-128-full.png
	$(PY) benchmarks/server_bench.py sweep --model qwen0.5b --concurrency $(BENCH_QWEN_LEVELS) \
	  --min-requests 2 --output-tokens $(BENCH_QWEN_OUT_TOKENS) --out $(BENCH_OUT)/server-qwen0.5b.json
	$(PY) benchmarks/server_bench.py plot $(BENCH_OUT)/server-qwen0.5b.json $(BENCH_OUT)/server-qwen0.5b.png
	$(PY) benchmarks/server_bench.py sweep --model qwen0.5b --engines baseline server \
	  --concurrency 16 --baseline-concurrency 1 --min-requests 2 --output-tokens 128 \
	  --out $(BENCH_OUT)/server-qwen0.5b-c16-128.json
	BENCH_THREADS=1 $(PY) benchmarks/server_bench.py sweep --model smollm2 \
	  --engines baseline server peer --concurrency 1 16 --min-requests 2 \
	  --output-tokens 128 --out $(BENCH_OUT)/server-smollm2-c16-128-1thread.json
	$(PY) benchmarks/server_bench.py prefix --model smollm2 --system-words 800 --repeat 2 \
	  --out $(BENCH_OUT)/prefix.json
	$(PY) benchmarks/server_bench.py int8 --model smollm2 --concurrency 1 4 --output-tokens 16 \
	  --min-requests 2 --out $(BENCH_OUT)/int8.json
	$(PY) benchmarks/server_bench.py int8 --model qwen0.5b --concurrency 1 4 --output-tokens 16 \
	  --min-requests 2 --out $(BENCH_OUT)/int8-qwen0.5b.json
	$(PY) benchmarks/tables.py sweep $(BENCH_OUT)/server-smollm2-128-full.json
	$(PY) benchmarks/tables.py sweep $(BENCH_OUT)/server-qwen0.5b.json
	$(PY) benchmarks/tables.py sweep $(BENCH_OUT)/server-qwen0.5b-c16-128.json
	$(PY) benchmarks/tables.py sweep $(BENCH_OUT)/server-smollm2-c16-128-1thread.json
	$(PY) benchmarks/tables.py int8 $(BENCH_OUT)/int8.json $(BENCH_OUT)/int8-qwen0.5b.json

# What gpu.sh brings to a bare GPU machine (no network, no venv): the server's wheels for
# CPython 3.11-3.14 and SmolLM2's tokenizer; carry it (under the 64 MiB limit).
GPU_BUNDLE := .cache/gpu-bundle

gpu-bundle: venv ## wheels + tokenizer for benchmarks/gpu.sh on a bare GPU machine (< 64 MiB)
	$(PY) benchmarks/gpu_bundle.py build $(GPU_BUNDLE)

bench-gpu: gpu-bundle ## the server sweep on an NVIDIA GPU, next to the measured bandwidth ceiling (< 8 min)
	PY=$(PY) GPU_BUNDLE=$(GPU_BUNDLE) bash benchmarks/gpu.sh

bench-load: venv ## peak memory of loading Qwen2.5-1.5B-sized random bf16: whole load (+int8) vs streaming
	$(PY) benchmarks/load_memory.py --config qwen1.5b --rounds 2 --out $(BENCH_OUT)/load-memory.json

bench-engine: venv ## the builtin engine's per-step overhead vs a static loop, its HTTP server, transformers CB (~10-15 min)
	$(PY) benchmarks/engine_overhead.py --model small --concurrency 1 8 32 --prompt-tokens 32 \
	  --output-tokens 64 --rounds 5 --threads 1 --out $(BENCH_OUT)/engine-overhead.json
	$(PY) benchmarks/engine_overhead.py --model small --numerics 32 --prompt-tokens 128 \
	  --output-tokens 128 --threads 1 --out $(BENCH_OUT)/engine-overhead-numerics.json

bench-engine-base: venv ## the builtin engine against itself at ENGINE_BASELINE and the static loop, same rounds (RESULTS.md §7, ~5 min)
	@[ -d .cache/baseline-$(ENGINE_BASELINE) ] || \
	  git worktree add --detach .cache/baseline-$(ENGINE_BASELINE) $(ENGINE_BASELINE)
	$(PY) benchmarks/engine_overhead.py --model small --concurrency 1 8 32 --prompt-tokens 32 \
	  --output-tokens 64 --rounds 5 --threads 1 --cases limit engine --detok-lengths \
	  --baseline-src .cache/baseline-$(ENGINE_BASELINE) --out $(BENCH_OUT)/engine-sampling.json

bench-engine-slots: venv ## the slots batch vs SLOTS_BASELINE: bytes copied at joins/leaves, alternating timing, --compile on vs eager; then per-step cost, same rounds (RESULTS.md §12, ~5 min)
	@[ -d .cache/baseline-$(SLOTS_BASELINE) ] || \
	  git worktree add --detach .cache/baseline-$(SLOTS_BASELINE) $(SLOTS_BASELINE)
	$(PY) benchmarks/engine_slots.py --baseline-src .cache/baseline-$(SLOTS_BASELINE) \
	  --rounds 7 --out $(BENCH_OUT)/engine-slots.json
	$(PY) benchmarks/engine_overhead.py --model tiny --cases engine --concurrency 1 8 32 \
	  --rounds 5 --profile-concurrency --detok-lengths --detok-outputs \
	  --baseline-src .cache/baseline-$(SLOTS_BASELINE) --out $(BENCH_OUT)/engine-slots-overhead.json

bench-limit: venv ## this CPU's limits: matmul rate by batch (fp32/bf16), SmolLM2's bare decode step vs the engine's (RESULTS §13)
	$(PY) benchmarks/cpu_gemm.py --out $(BENCH_OUT)/cpu-gemm.json
	$(PY) benchmarks/decode_limit.py --dtype float32 \
	  --out $(BENCH_OUT)/decode-limit-smollm2-float32.json
