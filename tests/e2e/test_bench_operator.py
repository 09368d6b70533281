"""Smoke run of benchmarks/operator_bench.py (N=2) against the local control plane, so
the benchmark cannot rot: convergence, counted writes, zero writes on a no-op resync and
a restart that re-converges without writing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from operator_helpers import crd  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_operator_bench_smoke(kubeconfig: str, crd, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "operator.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "operator_bench.py"), "--sizes", "2",
         "--kubeconfig", kubeconfig, "--resync-seconds", "2", "--timeout", "90",
         "--logdir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + logs
    (r,) = json.loads(out.read_text())["results"]
    assert r["converged"] and r["converged_count"] == 2, r
    assert r["children_per_cr"] >= 9
    assert 0 < r["p50_seconds"] <= r["p95_seconds"] < 90
    assert r["operator_writes_per_cr"] >= r["children_per_cr"]
    assert r["apiserver_requests"] > 0 and r["peak_rss_mib"] > 20
    assert r["noop_reconciles"] >= 2 and r["noop_writes"] == 0, r.get("noop_writes_by_kind")
    assert r["restart_all_reconciled"] and r["restart_writes"] == 0, r


def test_restart_bench_smoke(kubeconfig: str, crd, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "restart.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "restart_bench.py"), "--n", "4",
         "--changed", "2", "--rounds", "1", "--timeout", "120", "--kubeconfig", kubeconfig,
         "--logdir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + logs
    result = json.loads(out.read_text())["variants"]["current"]
    (run,) = result["runs"]
    # The changed resources are reconciled (a write each), after the first write.
    assert 0 < run["first_write_seconds"] <= run["changed_converged_seconds"] < 120, run
