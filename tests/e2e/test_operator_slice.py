"""Issue 2's vertical slice: an example becomes a Ready Deployment + Service on a fake GPU
node; deleting it lets the garbage collector remove the children."""

from __future__ import annotations

import json

import pytest
from operator_helpers import (
    EXAMPLES,
    condition,
    crd,  # noqa: F401 - fixture
    get,
    items,
    operator_args,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.e2e


def test_example_becomes_ready_then_gc_removes_children(
        kubectl, namespace, run_operator, crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "lan-80b.yaml"))
    md = wait_phase(kubectl, namespace, "lan-80b", timeout=90)

    status = md["status"]
    assert status["ready"] == "1/1" and status["readyReplicas"] == 1
    assert status["endpoint"] == f"lan-80b.{namespace}.svc:8080"
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert condition(md, "Ready")["status"] == "True"
    assert condition(md, "Scheduled")["status"] == "True"
    assert condition(md, "Available")["status"] == "True"

    # kube-scheduler put the pod on the H100 node (product affinity + GPU toleration)
    pods = items(kubectl, namespace, "pods", "modeldeploy.io/name=lan-80b")
    assert [p["spec"]["nodeName"] for p in pods] == ["gpu-a"]
    assert pods[0]["status"]["phase"] == "Running"

    uid = md["metadata"]["uid"]
    for kind in ("deployment", "service"):
        obj = json.loads(kubectl("get", "-n", namespace, kind, "lan-80b", "-o", "json",
                                 "--show-managed-fields").stdout)
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"
        assert meta["labels"]["modeldeploy.io/name"] == "lan-80b"
        assert [(r["kind"], r["uid"], r["controller"]) for r in meta["ownerReferences"]] == [
            ("ModelDeployment", uid, True)]
        applied = [m for m in meta["managedFields"] if m["operation"] == "Apply"]
        assert [m["manager"] for m in applied] == ["modeldeploy"], kind

    # printer columns: phase, ready, endpoint
    table = kubectl("get", "md", "-n", namespace, "-o", "wide").stdout
    assert "Ready" in table and "1/1" in table and f"lan-80b.{namespace}.svc:8080" in table

    kubectl("delete", "-n", namespace, "modeldeployment", "lan-80b")
    wait_for(lambda: not items(kubectl, namespace, "deployments,services,configmaps",
                               "modeldeploy.io/name=lan-80b"),
             60, what="garbage collection of the children")
    # the operator's status reflected nothing odd and nothing is left in the namespace
    left = json.loads(kubectl("get", "md", "-n", namespace, "-o", "json").stdout)["items"]
    assert left == []


def test_schema_refuses_a_bad_manifest_naming_the_field(
        kubectl, namespace, crd) -> None:  # noqa: F811
    bad = {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "bad"},
           "spec": {"model": {"source": "hf://org/m"}, "network": {"port": 70000}}}
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert "spec.network.port" in proc.stderr and "65535" in proc.stderr
    assert get(kubectl, namespace, "modeldeployment", "bad") is None
