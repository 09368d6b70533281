"""Smoke run of benchmarks/server_bench.py: one request of a few tokens through every
engine (sequential generate, transformers' continuous batching, modelserver) on the tiny
random model, and the plot, so the benchmark cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_server_bench_smoke(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "server_bench.py"), "sweep",
         "--model", str(tiny_model), "--dtype", "float32", "--prompt-tokens", "16",
         "--output-tokens", "4", "--concurrency", "1", "--min-requests", "1",
         "--logdir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["engines"]) == {"baseline", "peer", "server"}
    for engine, res in data["engines"].items():
        (row,) = res["rows"]
        assert row["requests"] == 1, engine
        # forced length: every engine generates exactly the requested count
        assert row["tokens_per_request"] == [4], engine
        assert row["output_tok_s"] > 0 and row["ttft_p50_s"] > 0, engine
        assert res["peak_rss_mib"] > 10, engine
    png = tmp_path / "sweep.png"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "server_bench.py"), "plot",
                    str(out), str(png)], check=True, timeout=120, cwd=ROOT)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_server_bench_runs_another_trees_server_in_alternating_rounds(tiny_model: Path,
                                                                      tmp_path: Path) -> None:
    """`server-base` is the server of --baseline-src (here this checkout itself, so the
    run is quick), and --rounds 2 runs the engines in turn twice, each round recorded."""
    out = tmp_path / "rounds.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "server_bench.py"), "sweep",
         "--model", str(tiny_model), "--dtype", "float32", "--prompt-tokens", "16",
         "--output-tokens", "3", "--concurrency", "2", "--min-requests", "2",
         "--engines", "server-base", "--baseline-src", str(ROOT), "--rounds", "2",
         "--logdir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data["engines"]) == ["server-base #1", "server-base #2"]
    assert data["server_base"]["src"] == str(ROOT)
    assert data["server_base"]["commit"].startswith(data["commit"][:40])
    for res in data["engines"].values():
        (row,) = res["rows"]
        assert row["requests"] == 2 and row["tokens_per_request"] == [3]
    log = (tmp_path / "modelserver-base.log").read_text()
    assert "Traceback" not in log


@pytest.mark.parametrize("args, message", [
    (["--engines", "server-base"], "--engines server-base needs --baseline-src DIR"),
    (["--engines", "server-base", "--baseline-src", "/nonexistent"], "got /nonexistent"),
    (["--rounds", "0"], "--rounds 0: at least 1"),
])
def test_server_bench_refuses_a_base_engine_without_a_tree(args: list[str],
                                                           message: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "server_bench.py"),
                           "sweep", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
