"""The CPU-independent parts of benchmarks/gpu.sh: its syntax, the weight-byte count and
the bandwidth ceiling it prints next to each result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_report  # noqa: E402


def test_gpu_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_param_counts_match_the_published_sizes() -> None:
    # Qwen2.5-0.5B: 0.49B parameters; Qwen2.5-7B: 7.61B (model cards)
    assert gpu_report.param_count(gpu_report.CONFIGS["qwen0.5b"]) == 494_032_768
    assert gpu_report.param_count(gpu_report.CONFIGS["qwen7b"]) == 7_615_616_512


def test_ceiling_is_weight_bytes_over_bandwidth() -> None:
    wb = gpu_report.weight_bytes("qwen7b")  # bf16
    step_ms, tok_s = gpu_report.ceiling(wb, 3350)  # H100 SXM
    assert 4.4 < step_ms < 4.7 and 215 < tok_s < 225
    sweep = {"model": "qwen7b", "engines": {"server": {"rows": [
        {"concurrency": 8, "output_tok_s": 880.0, "itl_p50_ms": 9.0, "ttft_p50_s": 0.05}]}}}
    text = gpu_report.report({"card": "NVIDIA H100 80GB HBM3", "bandwidth_gbs": 3350}, [sweep])
    assert "NVIDIA H100" in text and "15.23 GB" in text
    row = [line for line in text.splitlines() if line.startswith("server")][0]
    assert row.split()[3] == "1760"  # 8 sequences x 220 tok/s
    assert row.split()[4] == "50%"
