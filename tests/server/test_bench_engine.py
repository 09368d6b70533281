"""Smoke test of benchmarks/engine_overhead.py (tiny model, one round) so that
`make bench-engine` cannot rot: every case runs and reports positive numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
CASES = {"limit", "engine", "server", "cb"}


def bench(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "operator"), str(ROOT / "images" / "server"),
         os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_overhead.py"), *args],
                   check=True, timeout=600, env=env)


def test_engine_overhead_bench_measures_every_case(tmp_path) -> None:
    out = tmp_path / "engine.json"
    bench("--model", "tiny", "--concurrency", "1", "2", "--prompt-tokens", "8",
          "--output-tokens", "4", "--rounds", "1", "--profile-concurrency", "2",
          "--detok-lengths", "16", "64", "--detok-outputs", "16",
          "--cache", str(tmp_path / "cache"), "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result["cases"]) == CASES
    assert [row["c"] for row in result["table"]] == [1, 2]
    for row in result["table"]:
        for case in CASES:
            for key in ("tok_s", "decode_steps_s"):
                stats = row[case][key]
                assert 0 < stats["min"] <= stats["median"] <= stats["max"], (case, key)
        for case in ("engine", "server", "cb"):
            for key in ("tok_s", "decode_steps_s"):
                ratio = row[f"{case}_over_limit"][key]
                assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"], (case, key)
    # every run made exactly c x output tokens (EOS ignored)
    for case, by_c in result["runs"].items():
        for c, runs in by_c.items():
            assert [r["tokens"] for r in runs] == [int(c) * 4], case
    (prof,) = result["profile"]
    assert prof["c"] == 2 and prof["steps"] >= 3 and prof["step_ms"] > 0
    # a step runs one forward, samples all rows in one call and detokenizes each row once
    assert prof["calls_per_step"]["forward"] == 1.0
    assert prof["calls_per_step"]["sampling"] == 1.0
    assert prof["calls_per_step"]["detokenize"] == 2.0
    assert prof["ms_per_step"]["forward"] > 0 and prof["ms_per_step"]["sampling"] > 0
    assert prof["ms_per_step"]["rest"] >= 0
    assert abs(sum(prof["share"].values()) - 1) < 0.01
    detok = result["detokenize"]
    assert [d["length"] for d in detok["per_call"]] == [16, 64]
    assert all(d["decode_us"] > 0 for d in detok["per_call"])
    assert detok["whole_output_redecode"][0]["total_ms"] > 0
    assert result["premise"]["transformers"]
    assert set(result["premise"]["found"]) >= {"cancellation", "prefix_sharing",
                                               "cuda_graphs", "compile"}


def test_numerics_check_compares_alone_and_together(tmp_path) -> None:
    out = tmp_path / "numerics.json"
    bench("--model", "tiny", "--numerics", "3", "--prompt-tokens", "9", "--output-tokens", "5",
          "--cache", str(tmp_path / "cache"), "--out", str(out))
    result = json.loads(out.read_text())["numerics"]
    assert result["prompt_lengths"] == [9, 6, 3]  # different lengths: the engine pads rows
    for case in ("engine", "cb"):
        diverge = result[case]["first_divergence"]
        assert len(diverge) == 3
        assert result[case]["identical"] == sum(d is None for d in diverge)
        assert all(d is None or 0 <= d < 5 for d in diverge)
    # the engine's own guarantee (engine/kv.py): a batched greedy run equals the solo one
    assert result["engine"]["identical"] == 3


def test_baseline_src_runs_that_trees_engine_in_the_same_rounds(tmp_path) -> None:
    """--baseline-src: the engine of another tree (here this one) as case engine-base, in a
    worker process that imports modelserver from that tree only."""
    out = tmp_path / "base.json"
    bench("--model", "tiny", "--concurrency", "2", "--prompt-tokens", "8",
          "--output-tokens", "4", "--rounds", "2", "--cases", "limit", "engine",
          "--profile-concurrency", "2", "--detok-lengths", "--baseline-src", str(ROOT),
          "--cache", str(tmp_path / "cache"), "--out", str(out))
    result = json.loads(out.read_text())
    assert result["cases"] == ["limit", "engine", "engine-base"]
    assert result["baseline"]["modelserver"] == str(ROOT / "images" / "server" / "modelserver")
    assert [r["tokens"] for r in result["runs"]["engine-base"]["2"]] == [8, 8]
    (row,) = result["table"]
    ratio = row["engine_over_base"]["decode_steps_s"]
    assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert row["engine-base_over_limit"]["tok_s"]["median"] > 0
    (prof,) = result["baseline"]["profile"]
    assert prof["c"] == 2 and prof["calls_per_step"]["forward"] == 1.0
