"""Prometheus metrics of the operator (served by `modeldeploy run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("modeldeploy_reconciles_total", "Reconciles run.", ["result"])
RECONCILE_SECONDS = Histogram("modeldeploy_reconcile_duration_seconds",
                              "Duration of one reconcile.")
API_WRITES = Counter("modeldeploy_api_writes_total",
                     "Mutating API requests sent by the operator.", ["verb", "kind"])
MANAGED = Gauge("modeldeploy_managed_resources", "ModelDeployments being watched.")


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr)
