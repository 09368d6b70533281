"""Prometheus metrics of the operator (served by `modeldeploy run --metrics-port`)."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("modeldeploy_reconciles_total", "Reconciles run.", ["result"])
RECONCILE_SECONDS = Histogram("modeldeploy_reconcile_duration_seconds",
                              "Duration of one reconcile.")
API_WRITES = Counter("modeldeploy_api_writes_total",
                     "Mutating API requests sent by the operator.", ["verb", "kind"])
MANAGED = Gauge("modeldeploy_managed_resources", "ModelDeployments being watched.")
APISERVER_REACHABLE = Gauge("modeldeploy_apiserver_reachable",
                            "1 while the API server answers, 0 while waiting for it.")
LEADER = Gauge("modeldeploy_leader",
               "1 while this replica holds a fresh lease and may write (always 1 without "
               "leader election).")


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, read from Prometheus
    text (our own /metrics); the tests and benchmarks count writes and reconciles with it."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([^{ ]+)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total
