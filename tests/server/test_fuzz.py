"""Schemathesis fuzzes every route of the server's own OpenAPI document: no 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serverutil import API_KEY, start_server

pytestmark = pytest.mark.server


def test_openapi_fuzz_finds_no_server_errors(workdir, tiny_model, tls_files, tmp_path):
    # small token limits keep every fuzzed generation short; the rest is the real server.
    # (schemathesis 4.x "coverage" phase crashes inside Python's compiler on this schema,
    # "AST constructor recursion depth mismatch": examples + fuzzing only.)
    srv = start_server(workdir, "fuzz", str(tiny_model), "--served-name", "tiny",
                       "--max-total-tokens", "96", "--request-timeout", "30",
                       "--max-concurrent-requests", "8", tls=tls_files)
    try:
        srv.wait_ready()
        st = Path(sys.executable).parent / "schemathesis"
        r = subprocess.run(
            [str(st), "run", f"{srv.base}/openapi.json", "--checks", "not_a_server_error",
             "--header", f"Authorization: Bearer {API_KEY}", "--tls-verify",
             str(tls_files.ca), "--max-examples", "15", "--seed", "1", "--workers", "2",
             "--request-timeout", "60", "--max-time", "45",
             "--phases", "examples,fuzzing"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        # every route in the document was exercised (10: OpenAI, TGI and ops routes)
        assert "Tested: 10" in out and " 0 passed" not in out, out[-3000:]
        assert srv.proc.poll() is None, "server died under fuzzing"
    finally:
        srv.stop()
