"""Smoke runs of benchmarks/cpu_gemm.py and benchmarks/decode_limit.py (RESULTS §13) at toy
sizes, so `make bench-limit` cannot rot: every part reports, the engine really batched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_gemm_reports_both_dtypes_at_every_batch(tmp_path: Path) -> None:
    out = tmp_path / "gemm.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_gemm.py"), "--threads", "1",
                    "--out", str(out)], check=True, timeout=120, capture_output=True)
    res = json.loads(out.read_text())
    assert {(r["dtype"], r["m"]) for r in res["rows"]} == {
        (d, m) for d in ("float32", "bfloat16") for m in (1, 16, 256)}
    assert all(r["gflop_s"] > 0 for r in res["rows"])
    assert res["cpu"]


def test_decode_limit_times_the_bare_forward_and_the_engine(tiny_model: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "limit.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_limit.py"),
                    "--model", str(tiny_model), "--rows", "1", "3", "--concurrency", "3",
                    "--prompt-tokens", "12", "--output-tokens", "12", "--steps", "3",
                    "--threads", "1", "--out", str(out)],
                   check=True, timeout=300, capture_output=True, cwd=ROOT)
    res = json.loads(out.read_text())
    assert [b["rows"] for b in res["bare"]] == [1, 3]
    assert all(b["step_ms_p50"] > 0 for b in res["bare"])
    eng = res["engine"]
    assert eng["max_step_rows"] == 3 and eng["output_tok_s"] > 0 and eng["step_ms_p50"] > 0
