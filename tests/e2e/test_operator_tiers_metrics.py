"""Issue 13 on the real control plane: a priority tier refused outside the namespaces
the cluster admin listed (condition, Event, no pods) while an allowed namespace gets its
pods; and the PodMonitor the operator makes once the Prometheus Operator's API is served,
with the scraper's namespace admitted by the NetworkPolicy."""

from __future__ import annotations

import uuid

import pytest
import yaml
from operator_helpers import (
    apply,
    condition,
    crd,  # noqa: F401 - fixture
    events_for,
    get,
    items,
    manifest,
    operator_args,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.e2e

# The Prometheus Operator's PodMonitor API, reduced to what the API server needs to serve
# it (the real CRD's schema validates fields; this one keeps whatever is sent). Shared by
# every test and never deleted, like the ModelDeployment CRD (operator_helpers.crd).
PODMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "podmonitors", "singular": "podmonitor", "kind": "PodMonitor",
                  "listKind": "PodMonitorList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
            "openAPIV3Schema": {"type": "object",
                                "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


@pytest.fixture
def podmonitor_crd(kubectl) -> None:
    # A real Prometheus Operator's CRD, if this cluster has one, is left as it is.
    if kubectl("get", "crd", "podmonitors.monitoring.coreos.com", check=False).returncode:
        kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(PODMONITOR_CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/podmonitors.monitoring.coreos.com")


@pytest.fixture
def second_namespace(kubectl):
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_tier_refused_outside_its_namespaces(kubectl, namespace, second_namespace,
                                               run_operator, crd) -> None:  # noqa: F811
    refused_ns, allowed_ns = namespace, second_namespace
    run_operator("--namespace", refused_ns, "--namespace", allowed_ns,
                 "--operator-namespace", refused_ns, "--resync-seconds", "2",
                 "--priority-tier-namespaces", f"critical={allowed_ns}")
    critical = {"qos": {"priority": "critical"}}
    apply(kubectl, refused_ns, manifest("r", critical))
    apply(kubectl, allowed_ns, manifest("a", critical))

    # the allowed namespace is served at the tier
    wait_phase(kubectl, allowed_ns, "a")
    (pod,) = items(kubectl, allowed_ns, "pods", "modeldeploy.io/name=a")
    assert pod["spec"]["priorityClassName"] == "modeldeploy-critical"
    assert condition(get(kubectl, allowed_ns, "modeldeployment", "a"),
                     "PriorityAllowed")["status"] == "True"

    # the other one is refused, says why and where the rule is, and gets no pod
    md = wait_for(lambda: (m := get(kubectl, refused_ns, "modeldeployment", "r"))
                  and condition(m, "PriorityAllowed").get("status") == "False" and m, 30,
                  what="PriorityAllowed=False")
    allowed = condition(md, "PriorityAllowed")
    assert allowed["reason"] == "TierNotAllowed"
    for part in ("critical", refused_ns, allowed_ns, "priorityTiers.critical.namespaces"):
        assert part in allowed["message"], part
    ready = condition(md, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TierNotAllowed")
    assert md["status"]["phase"] == "Failed"
    ev = wait_for(lambda: [e for e in events_for(kubectl, refused_ns, "r")
                           if e["reason"] == "TierNotAllowed"], 15, what="the Event")
    assert ev[0]["type"] == "Warning" and refused_ns in ev[0]["message"]
    assert get(kubectl, refused_ns, "deployment", "r") is None
    assert items(kubectl, refused_ns, "pods", "modeldeploy.io/name=r") == []
    assert get(kubectl, refused_ns, "service", "r") is not None  # the endpoint is kept

    # an allowed tier: served like any other
    apply(kubectl, refused_ns, manifest("r", {"qos": {"priority": "normal"}}))
    md = wait_phase(kubectl, refused_ns, "r")
    assert condition(md, "PriorityAllowed")["status"] == "True"
    (pod,) = items(kubectl, refused_ns, "pods", "modeldeploy.io/name=r")
    assert pod["spec"]["priorityClassName"] == "modeldeploy-normal"


def test_pod_monitor_and_the_scraper_namespace(kubectl, namespace, run_operator, crd,  # noqa: F811
                                               podmonitor_crd) -> None:
    run_operator(*operator_args(namespace, "--scraper-namespace", "monitoring",
                                "--pod-monitor-label", "release=kps"))
    apply(kubectl, namespace, manifest("pm"))
    md = wait_phase(kubectl, namespace, "pm")

    pm = wait_for(lambda: get(kubectl, namespace, "podmonitor", "pm"), 30,
                  what="the PodMonitor")
    assert [r["uid"] for r in pm["metadata"]["ownerReferences"]] == [md["metadata"]["uid"]]
    assert pm["metadata"]["labels"]["release"] == "kps"
    (pod,) = items(kubectl, namespace, "pods", "modeldeploy.io/name=pm")
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "https")
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "pm-tls", "key": "ca.crt"}

    np = get(kubectl, namespace, "networkpolicy", "pm")
    scraper = [r for r in np["spec"]["ingress"] if "monitoring" in str(r["from"])]
    assert scraper and scraper[0]["ports"] == [{"protocol": "TCP", "port": 8080}]

    # drift: a deleted PodMonitor comes back; removing the resource removes it
    kubectl("delete", "-n", namespace, "podmonitor", "pm")
    wait_for(lambda: get(kubectl, namespace, "podmonitor", "pm"), 15,
             what="PodMonitor recreated")
    kubectl("delete", "-n", namespace, "modeldeployment", "pm")
    wait_for(lambda: get(kubectl, namespace, "podmonitor", "pm") is None, 60,
             what="PodMonitor garbage-collected")
