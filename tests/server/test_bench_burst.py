"""Smoke test of benchmarks/burst_schedule.py (tiny model, one round, a small burst) so
that the §11 measurement cannot rot: both engines run, and the budget keeps the streams
receiving tokens while the burst prefills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_burst_bench_compares_the_base_and_budgeted_engines(tmp_path) -> None:
    out = tmp_path / "burst.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "operator"), str(ROOT / "images" / "server"),
         os.environ.get("PYTHONPATH", "")])}
    # this tree as its own baseline: the worker without a budget runs the default
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "burst_schedule.py"),
                    "--model", "tiny", "--streams", "2", "--burst", "4", "--prompt-min",
                    "64", "--prompt-max", "96", "--budgets", "32", "--rounds", "1",
                    "--baseline-src", str(ROOT), "--cache", str(tmp_path / "cache"),
                    "--out", str(out)], check=True, timeout=600, env=env)
    result = json.loads(out.read_text())
    assert set(result["median"]) == {"base", "new-32"}
    for name, m in result["median"].items():
        assert 0 < m["ttft_p50_s"] <= m["ttft_p90_s"] <= m["ttft_max_s"], name
        assert m["ttft_max_s"] <= m["burst_done_s"], name
        assert m["stream_gap_max_s"] > 0, name
    # 4 prompts of 64-96 tokens at 32 per iteration: the streams step between chunks
    assert result["median"]["new-32"]["stream_tokens_in_window"] >= 2 * 4
    assert result["baseline"]["commit"] and result["runs"]["base"][0]["burst_prompt_tokens"]
