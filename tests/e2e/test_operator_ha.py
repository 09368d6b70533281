"""Running more than one replica: only the Lease holder reconciles, and a standby takes
over when the leader dies. Plus the operator's health probe and metrics endpoints."""

from __future__ import annotations

import json
import urllib.request

import pytest
from modeldeploy.metrics import metric_sum
from operator_helpers import (
    apply,
    crd,  # noqa: F401 - fixture
    free_port,
    get,
    manifest,
    operator_args,
    scrape,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.e2e


def holder(kubectl, namespace: str) -> str | None:
    lease = get(kubectl, namespace, "lease", "modeldeploy-operator")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def test_leader_election_and_failover(kubectl, namespace, run_operator,
                                      crd) -> None:  # noqa: F811
    ports = [free_port(), free_port()]
    ops = [run_operator(*operator_args(namespace, "--leader-election", "--lease-seconds", "3",
                                       "--metrics-port", str(p))) for p in ports]
    for p in ports:  # both replicas are up (serving metrics) before anything is judged
        wait_for(lambda p=p: scrape(p), 30, what=f"metrics on port {p}")
    wait_for(lambda: holder(kubectl, namespace), 30, what="a lease holder")
    apply(kubectl, namespace, manifest("ha"))
    wait_phase(kubectl, namespace, "ha")

    # exactly one replica reconciled
    counts = [metric_sum(scrape(p), "modeldeploy_reconciles_total") for p in ports]
    assert sorted(c > 0 for c in counts) == [False, True], counts
    leader = counts.index(max(counts))
    first_holder = holder(kubectl, namespace)

    ops[leader].stop(kill=True)
    wait_for(lambda: holder(kubectl, namespace) not in (None, first_holder), 30,
             what="the standby to take the lease")
    apply(kubectl, namespace, manifest("ha2"))
    wait_phase(kubectl, namespace, "ha2", timeout=30)
    assert metric_sum(scrape(ports[1 - leader]), "modeldeploy_reconciles_total") > 0


def test_health_and_metrics_endpoints(kubectl, namespace, run_operator,
                                      crd) -> None:  # noqa: F811
    health, metrics = free_port(), free_port()
    op = run_operator(*operator_args(namespace, "--health-port", str(health),
                                     "--metrics-port", str(metrics), "--log-format", "json"))
    apply(kubectl, namespace, manifest("h"))
    wait_phase(kubectl, namespace, "h")

    def healthz() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as r:
            assert r.status == 200
            return json.loads(r.read() or b"{}")

    wait_for(healthz, 20, what="/healthz")
    wait_for(lambda: scrape(metrics), 20, what="/metrics")
    text = scrape(metrics)
    assert metric_sum(text, "modeldeploy_reconciles_total", result="ok") >= 1
    assert metric_sum(text, "modeldeploy_reconcile_duration_seconds_count") >= 1
    assert metric_sum(text, "modeldeploy_api_writes_total", kind="Deployment") >= 1
    assert metric_sum(text, "modeldeploy_managed_resources") == 1
    # structured logs: one JSON object per line, the reconcile's own lines included
    records = [json.loads(line) for line in op.log().splitlines() if line.strip()]
    assert any("applied Deployment" in r.get("message", "") for r in records)
