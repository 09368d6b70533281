"""`modelserver fetch`: https-style file lists over a real local HTTP server, checksums,
and errors that say what to check."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import pytest
from serverutil import REPO

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def file_server(tiny_model):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tiny_model))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def fetch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelserver", "fetch", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_url_list_with_checksums_then_serve_offline(file_server, tiny_model, tmp_path):
    names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "chat_template.jinja", "generation_config.json"]
    source = ",".join(f"{file_server}/{n}" for n in names)
    cache = tmp_path / "cache"
    md5 = hashlib.md5((tiny_model / "config.json").read_bytes()).hexdigest()
    r = fetch("--model", source, "--cache-dir", str(cache),
              "--checksum", f"model.safetensors=sha256:{sha256(tiny_model / 'model.safetensors')}",
              "--checksum", f"config.json=md5:{md5}")
    assert r.returncode == 0, r.stderr
    assert "model ready at" in r.stdout
    got = list(cache.rglob("model.safetensors"))
    assert len(got) == 1 and sha256(got[0]) == sha256(tiny_model / "model.safetensors")
    # a second fetch finds everything in place (the operator's init container re-runs)
    r = fetch("--model", source, "--cache-dir", str(cache))
    assert r.returncode == 0 and "already present" in r.stderr


def test_checksum_mismatch_names_file_and_both_digests(tiny_model):
    wrong = "0" * 64
    r = fetch("--model", str(tiny_model), "--checksum", f"model.safetensors=sha256:{wrong}")
    assert r.returncode == 1
    assert "model.safetensors" in r.stderr
    assert wrong in r.stderr and sha256(tiny_model / "model.safetensors") in r.stderr


def test_serve_refuses_to_start_on_checksum_mismatch(tiny_model, workdir):
    from serverutil import start_server

    srv = start_server(workdir, "badsum", str(tiny_model), "--checksum",
                       "config.json=md5:" + "f" * 32, tls=None, auth=False)
    try:
        assert srv.proc.wait(120) == 1  # exits: the pod restarts with the reason logged
        assert "checksum mismatch for config.json: expected md5:" + "f" * 32 in \
            srv.log_text()
    finally:
        srv.stop()


def test_unwritable_cache_dir_as_a_file_path(tmp_path):
    """Works as root too: the cache path is under a regular file."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = fetch("--model", "http://127.0.0.1:9/x.gguf", "--cache-dir", str(blocker / "sub"))
    assert r.returncode == 1
    assert str(blocker / "sub") in r.stderr or str(blocker) in r.stderr


def test_missing_local_model_and_unreachable_url(tmp_path):
    r = fetch("--model", str(tmp_path / "nope"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = fetch("--model", "http://127.0.0.1:9/model.gguf", "--cache-dir", str(tmp_path))
    assert r.returncode == 1 and "download of http://127.0.0.1:9/model.gguf failed" in r.stderr


def test_hf_source_offline_names_the_repo(tmp_path):
    env_note = "HF_HUB_OFFLINE"
    r = subprocess.run(
        [sys.executable, "-m", "modelserver", "fetch", "--model",
         "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, env_note: "1"})
    assert r.returncode == 1
    assert "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main" in r.stderr
