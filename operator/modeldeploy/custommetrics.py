"""The custom metrics API (custom.metrics.k8s.io/v1beta2) as pure functions: request
paths and label selectors in, discovery and MetricValueList objects out, and the gauge
values read from a pod's Prometheus text.

No I/O: metricsapi_server.py serves these over HTTPS and metricsapi_scrape.py fetches the
pods' /metrics. The HPA controller asks, once per sync, for
/apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/*/METRIC?labelSelector=SELECTOR
(its Deployment's selector); a named pod instead of * returns a list of one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
GROUP_VERSION = f"{GROUP}/{VERSION}"
# The APIService the chart renders and the operator writes its caBundle into; the same
# name prometheus-adapter and KEDA's custom-metrics adapters use, so one cluster has one.
APISERVICE_NAME = f"{VERSION}.{GROUP}"
PREFIX = f"/apis/{GROUP_VERSION}"
# The gauges are instantaneous: a scrape stands for this short window (metrics-server
# reports its own resolution the same way).
WINDOW_SECONDS = 1


class ApiError(Exception):
    """A request the API refuses: `code` and `reason` become a metav1 Status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def status(err: ApiError) -> dict[str, Any]:
    """The metav1 Status body the API server relays to the client."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": str(err), "reason": err.reason, "code": err.code}


# --- discovery ---
def api_group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version],
            "preferredVersion": version}


def resource_list(metric_names: Iterable[str]) -> dict[str, Any]:
    """APIResourceList: one `pods/METRIC` resource per metric this operator serves."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
            "resources": [{"name": f"pods/{m}", "singularName": "", "namespaced": True,
                           "kind": "MetricValueList", "verbs": ["get"]}
                          for m in sorted(set(metric_names))]}


# --- requests ---
@dataclass(frozen=True)
class MetricRequest:
    namespace: str
    pod: str | None  # None: every pod the selector picks ("*")
    metric: str


_POD_PATH = re.compile(r"^namespaces/([^/]+)/pods/([^/]+)/([^/]+)$")


def parse_path(path: str) -> MetricRequest:
    """A metric request path (after PREFIX/) → what it asks for; NotFound for any other
    resource (this API serves pod metrics only)."""
    m = _POD_PATH.match(path)
    if not m:
        raise not_found(f"{PREFIX}/{path}: only namespaces/NS/pods/NAME|*/METRIC is served")
    namespace, pod, metric = m.groups()
    return MetricRequest(namespace, None if pod == "*" else pod, metric)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # notin (also true when absent)


_SET = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$")
_KEY = re.compile(r"^(!?)\s*([\w./-]+)$")


def _split_selector(selector: str) -> list[str]:
    """Top-level commas only: `a in (x,y)` keeps its own."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_selector(selector: str | None) -> tuple[Requirement, ...]:
    """A Kubernetes label selector string (what kubectl -l and the HPA send); BadRequest
    naming the labelSelector parameter when it cannot be parsed."""
    out = []
    for part in _split_selector(selector or ""):
        if m := _SET.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ.match(part):
            op = "notin" if m.group(2) == "!=" else "in"
            out.append(Requirement(m.group(1), op, frozenset({m.group(3)})))
        elif m := _KEY.match(part):
            out.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise bad_request(f"labelSelector: cannot parse {part!r}")
    return tuple(out)


def selects(requirements: Iterable[Requirement], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)


# --- values ---
_SAMPLE = re.compile(r"^([^\s{]+)(?:\{[^}]*\})?\s+(\S+)")


def gauge_value(text: str, name: str) -> float | None:
    """The value of gauge `name` in Prometheus text: the sum over its label sets (vLLM
    labels its gauges by model; one pod serves one), None when the pod exports no sample
    of it, so that a missing gauge is never mistaken for an idle pod."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        total += value
        found = True
    return total if found else None


def quantity(value: float) -> str:
    """A resource.Quantity string: whole numbers as they are, the rest in milli-units
    (what the HPA compares against target.averageValue)."""
    if value == int(value):
        return str(int(value))
    return f"{round(value * 1000)}m"


@dataclass(frozen=True)
class PodSample:
    name: str
    value: float
    timestamp: str  # RFC 3339, when it was scraped


def value_list(namespace: str, metric: str, samples: Iterable[PodSample]) -> dict[str, Any]:
    """MetricValueList (v1beta2) for the pods that were scraped."""
    return {"kind": "MetricValueList", "apiVersion": GROUP_VERSION,
            "metadata": {},
            "items": [{"describedObject": {"kind": "Pod", "namespace": namespace,
                                           "name": s.name, "apiVersion": "/v1"},
                       "metric": {"name": metric, "selector": None},
                       "timestamp": s.timestamp, "windowSeconds": WINDOW_SECONDS,
                       "value": quantity(s.value)}
                      for s in sorted(samples, key=lambda s: s.name)]}
