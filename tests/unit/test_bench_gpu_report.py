"""The CPU-independent parts of benchmarks/gpu.sh: its syntax, the weight-byte count and
the bandwidth ceiling it prints next to each result (tests/server/test_bench_gpu.py runs
the script itself, dry)."""

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


def test_ceiling_is_weight_bytes_over_the_measured_bandwidth() -> None:
    wb = gpu_report.weight_bytes("qwen7b")  # bf16
    step_ms, tok_s = gpu_report.ceiling(wb, 3350)
    assert 4.4 < step_ms < 4.7 and 215 < tok_s < 225
    sweep = {"model": "qwen7b", "engines": {"server": {"rows": [
        {"concurrency": 8, "output_tok_s": 880.0, "itl_p50_ms": 9.0, "ttft_p50_s": 0.05,
         "output_tokens": 1024, "tokens_without_text": 0}]}}}
    # measured 3350 GB/s on a card whose datasheet says 4800: the ceiling is the measured one
    card = {"card": "NVIDIA H200", "memory_gib": 139.8, "driver": "570.1",
            "measured_bandwidth_gbs": 3350, "datasheet_bandwidth_gbs": 4800}
    text = gpu_report.report(card, [sweep])
    assert "NVIDIA H200" in text and "15.23 GB" in text and "driver 570.1" in text
    assert "measured bandwidth 3350 GB/s (70% of the datasheet's 4800)" in text
    assert "(datasheet 4800 GB/s: >= 3.17 ms, <= 315 tok/s)" in text  # cross-check only
    row = [line for line in text.splitlines() if line.startswith("server")][0]
    assert row.split()[3] == "1760"  # 8 sequences x 220 tok/s
    assert row.split()[4] == "50%"
    assert "!!" not in text


def test_tokens_without_text_are_flagged() -> None:
    sweep = {"model": "qwen0.5b", "engines": {"server": {"rows": [
        {"concurrency": 1, "output_tok_s": 50.0, "itl_p50_ms": 20.0, "ttft_p50_s": 0.05,
         "output_tokens": 512, "tokens_without_text": 340}]}}}
    text = gpu_report.report({"card": "x", "measured_bandwidth_gbs": 1000}, [sweep])
    assert "!! 340 of 512 tokens streamed no text" in text


def test_datasheet_table_matches_the_card_names() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_card

    assert gpu_card.datasheet_gbs("NVIDIA H200") == 4800
    assert gpu_card.datasheet_gbs("NVIDIA H100 80GB HBM3") == 3350
    assert gpu_card.datasheet_gbs("NVIDIA H100 PCIe") == 2000
    assert gpu_card.datasheet_gbs("NVIDIA GH200 480GB") == 4000
    assert gpu_card.datasheet_gbs("NVIDIA A100-SXM4-80GB") == 2039
    assert gpu_card.datasheet_gbs("NVIDIA L40S") == 864
    assert gpu_card.datasheet_gbs("cpu (x86_64, dry run)") is None
