"""Smoke test of benchmarks/load_memory.py (tiny config) so `make bench-load` cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_load_memory_bench_measures_every_case(tmp_path) -> None:
    out = tmp_path / "load.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_memory.py"), "--config",
                    "tiny", "--rounds", "1", "--cache", str(tmp_path / "cache"), "--out",
                    str(out)], check=True, timeout=600)
    result = json.loads(out.read_text())
    cases = {(r["path"], r["quantization"]): r for r in result["rows"]}
    assert set(cases) == {("old", "none"), ("new", "none"), ("old", "int8"), ("new", "int8")}
    assert result["shards"] >= 1 and result["checkpoint_bytes"] > 0
    for row in cases.values():
        assert row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0 and row["load_seconds"] > 0
    assert cases[("new", "int8")]["loader"] == cases[("new", "none")]["loader"] == "streaming"
    # both paths count the same parameters; int8 stores fewer bytes than bf16 on both
    assert cases[("old", "int8")]["parameters"] == cases[("new", "int8")]["parameters"]
    assert cases[("new", "int8")]["weight_bytes"] == cases[("old", "int8")]["weight_bytes"]
    assert cases[("new", "int8")]["weight_bytes"] < cases[("new", "none")]["weight_bytes"]
