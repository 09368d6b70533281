"""Autoscaling on the LLM signal, on the real node: the operator serves the custom metrics
API (custom.metrics.k8s.io/v1beta2) from the model pods' /metrics, the kube-apiserver's
aggregator proxies the HPA controller's requests to it, and the HPA scales a builtin-engine
ModelDeployment 1 → 2 under streamed load and back to 1 after the (shortened) scale-down
stabilization window.

The operator runs on this machine (as the other operator e2e tests run it), its metrics
API on the host end of the link; the APIService is the chart's own (helm template
--show-only), its Service made selector-less and pointed at that address by an
EndpointSlice (the API server dials endpoints: --enable-aggregator-routing).
`kubectl describe hpa` (with its events) is printed: `pytest -rA` shows it.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from node_helpers import (
    delete_host_volumes,
    host_volume,
    import_images,
    node_env,
    readable_copy,
    tiny_model,
    wait,
)
from operator_helpers import crd, free_port, operator_args  # noqa: F401 - crd: a fixture
from pins import HELM, KUBE_VERSION
from test_last_mile import host_lan, md, pods_of, secret_value, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.node]

NAME = "auto"
METRIC = "modelserver_inflight_requests"
APISERVICE = "v1beta2.custom.metrics.k8s.io"
STABILIZATION_SECONDS = 45
# The HPA controller samples every 15 s (kube-controller-manager's default sync period):
# the last sample under load may precede the load's end by up to that much, and the
# stabilization window counts from that sample, not from the end of the load.
HPA_SYNC_SECONDS = 15
CHART = Path(__file__).resolve().parents[2] / "charts" / "modeldeploy"
STREAMS = 4  # concurrent streamed completions: ~4 in flight on one pod, target 1


def metrics_api_objects(namespace: str, address: str, port: int) -> list[dict[str, Any]]:
    """The chart's APIService and Service (metricsApi.enabled), the Service selector-less
    with an EndpointSlice to the operator on this machine instead of its pod."""
    out = subprocess.run([str(HELM), "template", "rel", str(CHART), "--namespace", namespace,
                          "--kube-version", KUBE_VERSION, "--set", "metricsApi.enabled=true",
                          "--set", "rbac.create=false", "--show-only",
                          "templates/metricsapi.yaml"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    apiservice = next(d for d in docs if d["kind"] == "APIService")
    service = next(d for d in docs if d["kind"] == "Service")
    assert apiservice["spec"]["service"] == {"name": service["metadata"]["name"],
                                             "namespace": namespace, "port": 443}
    del service["spec"]["selector"]
    port_name = service["spec"]["ports"][0]["name"]
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": f"{service['metadata']['name']}-host",
                           "namespace": namespace,
                           "labels": {"kubernetes.io/service-name":
                                      service["metadata"]["name"]}},
              "addressType": "IPv4",
              "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
              "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}
    return [apiservice, service, slice_]


def stream_load(ip: str, port: int, ca_pem: str, server_name: str, key: str,
                stop: threading.Event, errors: list[str]) -> None:
    """Streamed chat completions back to back until `stop` (one request in flight)."""
    verify = ssl.create_default_context(cadata=ca_pem)
    with httpx.Client(verify=verify, timeout=120) as client:
        while not stop.is_set():
            try:
                with client.stream(
                        "POST", f"https://{ip}:{port}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        extensions={"sni_hostname": server_name},
                        json={"model": "tiny", "stream": True, "max_tokens": 1500,
                              "messages": [{"role": "user", "content": "count on"}]}) as r:
                    r.raise_for_status()
                    for _ in r.iter_lines():
                        if stop.is_set():
                            break
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(1)


def hpa(kubectl, ns: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "hpa", NAME, "-n", ns, "-o", "json").stdout)


def raw_metric(kubectl, ns: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta2/"
                              f"namespaces/{ns}/pods/*/{METRIC}").stdout)


def ready_replicas(kubectl, ns: str) -> int:
    dep = json.loads(kubectl("get", "deployment", NAME, "-n", ns, "-o", "json").stdout)
    return int(dep.get("status", {}).get("readyReplicas") or 0)


@pytest.mark.usefixtures("crd")
def test_hpa_scales_up_and_down_on_inflight_requests(kubectl, namespace: str, run_operator,
                                                    tmp_path: Path) -> None:
    env = node_env()
    import_images("pause", "server")
    ns = namespace
    port = free_port()
    if kubectl("get", "apiservice", APISERVICE, check=False).returncode == 0:
        pytest.fail(f"APIService {APISERVICE} already exists (another adapter or a "
                    "leftover): this test owns it while it runs")
    objects = metrics_api_objects(ns, env["LINK_HOST_IP"], port)
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        op = run_operator(*operator_args(ns), "--metrics-api-port", str(port),
                          "--metrics-api-bind-address", env["LINK_HOST_IP"])
        volume = Path(env["NODE_DIR"]) / "volumes" / ns
        readable_copy(tiny_model(tmp_path / "tiny-build"), volume / "tiny")
        host_volume(kubectl, ns, "weights", volume)
        manifest = md(NAME, "tiny", model={"servedName": "tiny"},
                      network={"allowFrom": {"ipBlocks": [host_lan()]}},
                      autoscaling={"minReplicas": 1, "maxReplicas": 2,
                                   "metric": "inflightRequests", "target": 1,
                                   "scaleDownStabilizationSeconds": STABILIZATION_SECONDS})
        manifest["spec"]["defaults"] = {"temperature": 1.0}
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        wait_ready(kubectl, ns, NAME)

        # The aggregator reaches the operator: the APIService turns Available, with the
        # operator's CA in its caBundle.
        wait(lambda: any(c["type"] == "Available" and c["status"] == "True"
                         for c in json.loads(kubectl("get", "apiservice", APISERVICE, "-o",
                                                     "json").stdout)["status"]
                         .get("conditions", [])), 90, "the APIService Available")
        # The address the API server dials answers no client without its proxy certificate.
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"https://{env['LINK_HOST_IP']}:{port}/apis/custom.metrics.k8s.io/"
                      "v1beta2", verify=False, timeout=10)
        idle = wait(lambda: raw_metric(kubectl, ns)["items"], 60, "an idle sample")
        assert [i["value"] for i in idle] == ["0"], idle

        pod = pods_of(kubectl, ns, NAME)[0]
        ca_pem = kubectl("get", "configmap", f"{NAME}-clawdbot", "-n", ns, "-o",
                         "jsonpath={.data.ca\\.crt}").stdout
        key = secret_value(kubectl, ns, f"{NAME}-api-keys", "primary")
        stop, errors = threading.Event(), []
        workers = [threading.Thread(target=stream_load, daemon=True,
                                    args=(pod["status"]["podIP"], 8080, ca_pem,
                                          f"{NAME}.{ns}.svc", key, stop, errors))
                   for _ in range(STREAMS)]
        for w in workers:
            w.start()
        try:
            busy = wait(lambda: [i for i in raw_metric(kubectl, ns)["items"]
                                 if i["value"] not in ("0", "")], 60,
                        "a pod reporting requests in flight")
            print("custom metrics API under load:", json.dumps(busy, indent=1))
            wait(lambda: hpa(kubectl, ns)["status"].get("desiredReplicas") == 2, 180,
                 "the HPA to want 2 replicas")
            wait(lambda: ready_replicas(kubectl, ns) == 2, 420, "2 ready replicas")
        finally:
            stop.set()
            stopped = time.monotonic()
            for w in workers:
                w.join(timeout=130)
        assert len(errors) < 10, errors
        wait(lambda: hpa(kubectl, ns)["status"].get("desiredReplicas") == 1,
             STABILIZATION_SECONDS + 180, "the HPA to scale back to 1")
        waited = time.monotonic() - stopped
        wait(lambda: len([p for p in pods_of(kubectl, ns, NAME)
                          if not p["metadata"].get("deletionTimestamp")]) == 1, 120,
             "one pod left")
        described = kubectl("describe", "hpa", NAME, "-n", ns).stdout
        print(f"kubectl describe hpa {NAME} (scale-down after {waited:.0f}s):\n{described}")
        (tmp_path / "describe-hpa.txt").write_text(described)
        assert "SuccessfulRescale" in described and "New size: 2" in described \
            and "New size: 1" in described, described
        assert waited >= STABILIZATION_SECONDS - HPA_SYNC_SECONDS, waited
        assert "metrics API" in op.log() and "serving on https://" in op.log()
    finally:
        kubectl("delete", "apiservice", APISERVICE, "--wait=false", check=False)
        delete_host_volumes(kubectl, ns)
        kubectl("delete", "md", NAME, "-n", ns, "--wait=false", check=False)

