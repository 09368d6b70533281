"""The custom metrics API's pure parts (custommetrics.py), which pods the scraper reads
(metricsapi_scrape.targets) and the operator's --metrics-api-* flags."""

from __future__ import annotations

import pytest
from helpers_operator import make_spec
from modeldeploy import custommetrics as cm
from modeldeploy.cli import build_parser, metrics_api_flags
from modeldeploy.metricsapi_scrape import declared_metrics, targets

pytestmark = pytest.mark.unit

PROM = """\
# HELP modelserver_inflight_requests Requests being served.
# TYPE modelserver_inflight_requests gauge
modelserver_inflight_requests 3.0
modelserver_inflight_requests_total 99
vllm:num_requests_running{model_name="a"} 2
vllm:num_requests_running{model_name="b"} 0.5
modelserver_queue_depth NaN
"""


def test_gauge_value_reads_the_named_gauge_only() -> None:
    assert cm.gauge_value(PROM, "modelserver_inflight_requests") == 3.0
    assert cm.gauge_value(PROM, "vllm:num_requests_running") == 2.5


def test_missing_gauge_is_none_not_zero() -> None:
    assert cm.gauge_value(PROM, "tgi_queue_size") is None
    assert cm.gauge_value(PROM, "modelserver_queue_depth") is None  # only NaN


@pytest.mark.parametrize(("value", "text"), [(0.0, "0"), (3.0, "3"), (2.5, "2500m"),
                                             (0.001, "1m")])
def test_quantity(value: float, text: str) -> None:
    assert cm.quantity(value) == text


def test_parse_path() -> None:
    assert cm.parse_path("namespaces/ns/pods/*/m") == cm.MetricRequest("ns", None, "m")
    assert cm.parse_path("namespaces/ns/pods/p-1/vllm:x") == \
        cm.MetricRequest("ns", "p-1", "vllm:x")
    for other in ("namespaces/ns/services/*/m", "pods/*/m", "namespaces/ns/metrics/m"):
        with pytest.raises(cm.ApiError) as err:
            cm.parse_path(other)
        assert err.value.code == 404


@pytest.mark.parametrize(("selector", "labels", "want"), [
    ("", {}, True),
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a!=b", {"a": "b"}, False),
    ("a in (x, y),c", {"a": "y", "c": ""}, True),
    ("a notin (x,y)", {"a": "x"}, False),
    ("!a", {"a": "1"}, False),
    ("modeldeploy.io/name=m,app.kubernetes.io/component=model-server",
     {"modeldeploy.io/name": "m", "app.kubernetes.io/component": "model-server"}, True),
])
def test_selector(selector: str, labels: dict[str, str], want: bool) -> None:
    assert cm.selects(cm.parse_selector(selector), labels) is want


def test_bad_selector_names_the_parameter() -> None:
    with pytest.raises(cm.ApiError) as err:
        cm.parse_selector("a in x")
    assert err.value.code == 400 and "labelSelector" in str(err.value)


def test_discovery_lists_each_metric_once() -> None:
    out = cm.resource_list(["b", "a", "b"])
    assert out["groupVersion"] == "custom.metrics.k8s.io/v1beta2"
    assert [r["name"] for r in out["resources"]] == ["pods/a", "pods/b"]
    assert all(r["namespaced"] and r["verbs"] == ["get"] for r in out["resources"])


def test_value_list() -> None:
    out = cm.value_list("ns", "m", [cm.PodSample("p2", 0.5, "T"), cm.PodSample("p1", 2, "T")])
    assert out["kind"] == "MetricValueList" and out["apiVersion"] == cm.GROUP_VERSION
    assert [(i["describedObject"]["name"], i["value"]) for i in out["items"]] == \
        [("p1", "2"), ("p2", "500m")]
    assert out["items"][0]["describedObject"] == {"kind": "Pod", "namespace": "ns",
                                                  "name": "p1", "apiVersion": "/v1"}


def test_status_body() -> None:
    body = cm.status(cm.not_found("gone"))
    assert (body["kind"], body["code"], body["reason"], body["message"]) == \
        ("Status", 404, "NotFound", "gone")


def _pod(name: str, ip: str | None, phase: str = "Running", **meta: object) -> dict:
    return {"metadata": {"name": name, "uid": f"u-{name}", "labels": {"x": "1"}, **meta},
            "status": {"podIP": ip, "phase": phase}}


def test_targets_are_running_pods_with_an_address() -> None:
    spec = make_spec({"network": {"port": 8443}}, name="m", namespace="ns")
    got = targets(spec, [_pod("a", "10.0.0.1"), _pod("b", None), _pod("c", "10.0.0.3",
                         "Pending"), _pod("d", "10.0.0.4", deletionTimestamp="now"),
                         _pod("e", "fd00::5")])
    assert [(t.pod, t.url, t.server_name) for t in got] == [
        ("a", "https://10.0.0.1:8443/metrics", "m.ns.svc"),
        ("e", "https://[fd00::5]:8443/metrics", "m.ns.svc")]
    plain = targets(make_spec({"tls": {"mode": "disabled"}}), [_pod("a", "10.0.0.1")])
    assert plain[0].url.startswith("http://")


def test_declared_metrics_follow_the_engine_plans() -> None:
    assert declared_metrics([make_spec()]) == {"modelserver_inflight_requests",
                                               "modelserver_queue_depth"}
    assert "tgi_queue_size" in declared_metrics([make_spec({"engine": {"kind": "tgi"}})])


def test_metrics_api_flags() -> None:
    args = build_parser().parse_args(["run", "--metrics-api-port", "6443",
                                      "--metrics-api-bind-address", "10.244.0.1"])
    assert metrics_api_flags(args.metrics_api_port, args.metrics_api_bind_address) == \
        (6443, "10.244.0.1")
    default = build_parser().parse_args(["run"])
    assert (default.metrics_api_port, default.metrics_api_bind_address) == (0, "0.0.0.0")


@pytest.mark.parametrize(("port", "address", "flag"), [
    (70000, "0.0.0.0", "--metrics-api-port"), (-1, "0.0.0.0", "--metrics-api-port"),
    (6443, "localhost", "--metrics-api-bind-address")])
def test_bad_metrics_api_flags_name_the_flag(port: int, address: str, flag: str) -> None:
    with pytest.raises(SystemExit) as err:
        metrics_api_flags(port, address)
    assert flag in str(err.value)
