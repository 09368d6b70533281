"""Smoke test of benchmarks/engine_slots.py (one round, this tree as its own baseline) so
that the §12 figures can be rerun: every part reports, and the same tree copies the same
kind of bytes and yields the same tokens on both sides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_engine_slots_bench_reports_copies_timing_and_compile(tmp_path) -> None:
    out = tmp_path / "slots.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "operator"), str(ROOT / "images" / "server")])}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_slots.py"),
                    "--baseline-src", str(ROOT), "--rounds", "1", "--out", str(out)],
                   check=True, timeout=900, env=env)
    res = json.loads(out.read_text())
    assert res["same_tokens_as_baseline"]
    for side in ("this", "baseline"):
        copies = res[side]["copies"]
        assert copies["copied"] > 0 and copies["joins"] > 0 and copies["leaves"] > 0
        assert copies["generated"] == sum(copies["output_tokens"])
    assert all(len(w) == 1 and w[0] > 0 for w in res["timed"]["wall_s"].values())
    assert res["timed"]["this_over_baseline_tok_s"]["median"] > 0
    compiled = res["this"]["compile"]
    assert compiled["same_tokens"]
    assert compiled["eager"]["best_tokens_per_s"] > 0
    assert compiled["compiled"]["best_tokens_per_s"] > 0
