"""Level-based behaviour against the real control plane: drift, update, removal, no-op
resync with zero writes, unschedulable and crashing pods surfaced, key rotation."""

from __future__ import annotations

import json
import time

import pytest
from modeldeploy.metrics import metric_sum
from operator_helpers import (
    CHILD_KINDS,
    apply,
    b64,
    condition,
    crd,  # noqa: F401 - fixture
    events_for,
    free_port,
    get,
    items,
    manifest,
    operator_args,
    scrape,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.e2e


def test_drift_is_undone_within_seconds(kubectl, namespace, run_operator,
                                        crd) -> None:  # noqa: F811
    # A long resync: the repair must come from watching the children, not the timer.
    run_operator(*operator_args(namespace, resync=300))
    apply(kubectl, namespace, manifest("d"))
    wait_phase(kubectl, namespace, "d")
    svc_uid = get(kubectl, namespace, "service", "d")["metadata"]["uid"]

    kubectl("delete", "-n", namespace, "service", "d")
    new = wait_for(lambda: (s := get(kubectl, namespace, "service", "d"))
                   and s["metadata"]["uid"] != svc_uid and s, 15, what="service recreated")
    assert new["spec"]["ports"][0]["port"] == 8080

    kubectl("patch", "-n", namespace, "deployment", "d", "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:1"},
    ]))
    wait_for(lambda: get(kubectl, namespace, "deployment", "d")["spec"]["template"]["spec"][
        "containers"][0]["image"].startswith("ghcr.io/modeldeploy/modelserver"), 15,
        what="image restored")

    kubectl("patch", "-n", namespace, "configmap", "d-clawdbot", "--type=merge", "-p",
            json.dumps({"data": {"clawdbot.json": "{}"}}))
    wait_for(lambda: "providers" in get(kubectl, namespace, "configmap", "d-clawdbot")[
        "data"]["clawdbot.json"], 15, what="configmap restored")

    kubectl("delete", "-n", namespace, "networkpolicy", "d")
    wait_for(lambda: get(kubectl, namespace, "networkpolicy", "d"), 15,
             what="networkpolicy recreated")


def test_update_rolls_pods_and_removal_prunes_children(kubectl, namespace, run_operator,
                                                       crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    full = {"network": {"ingress": {"host": "u.example"}},
            "autoscaling": {"maxReplicas": 2}}
    apply(kubectl, namespace, manifest("u", full))
    md = wait_phase(kubectl, namespace, "u")
    for kind, name in [("ingress", "u"), ("hpa", "u"), ("pdb", "u"), ("secret", "u-tls")]:
        assert get(kubectl, namespace, kind, name) is not None, kind
    first_pod = items(kubectl, namespace, "pods", "modeldeploy.io/name=u")[0]["metadata"]["name"]

    # change the spec: the pods roll, observedGeneration follows
    apply(kubectl, namespace, manifest("u", {**full, "defaults": {"temperature": 0.2}}))
    wait_for(lambda: [p for p in items(kubectl, namespace, "pods", "modeldeploy.io/name=u")
                      if p["metadata"]["name"] != first_pod
                      and "0.2" in p["spec"]["containers"][0]["args"]], 60,
             what="a new pod with the new temperature")
    md2 = wait_phase(kubectl, namespace, "u")
    assert md2["metadata"]["generation"] > md["metadata"]["generation"]

    # remove ingress, autoscaling and TLS: their children go away
    apply(kubectl, namespace, manifest("u", {"tls": {"mode": "disabled"}}))
    wait_for(lambda: all(get(kubectl, namespace, k, n) is None for k, n in [
        ("ingress", "u"), ("hpa", "u"), ("pdb", "u"), ("secret", "u-tls")]), 30,
        what="ingress, hpa, pdb and TLS secret pruned")
    md3 = wait_phase(kubectl, namespace, "u")
    assert md3["status"]["url"] == f"http://u.{namespace}.svc:8080/v1"
    assert "tlsSecret" not in md3["status"]
    dep = get(kubectl, namespace, "deployment", "u")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-tls" in args
    assert dep["spec"]["replicas"] == 1


def test_noop_resync_sends_zero_writes(kubectl, namespace, run_operator,
                                       crd) -> None:  # noqa: F811
    port = free_port()
    run_operator(*operator_args(namespace, "--metrics-port", str(port), resync=0.5))
    apply(kubectl, namespace, manifest("z", {"network": {"ingress": {"host": "z.example"}},
                                             "autoscaling": {"maxReplicas": 2}}))
    wait_phase(kubectl, namespace, "z")
    # The HPA controller reports (every 15 s) that it cannot read the per-pod metric in
    # this cluster (no metrics adapter); the status says so in the HPA's own words.
    scaler = wait_for(lambda: (c := condition(get(kubectl, namespace, "modeldeployment",
                                                  "z"), "AutoscalerReady"))
                      and c["status"] == "False" and c, 45, what="AutoscalerReady=False")
    assert scaler["reason"].startswith("Failed") and "modelserver_inflight_requests" in \
        scaler["message"]

    def writes(text: str) -> float:
        # Shared PriorityClasses are cleaned up cluster-wide (another test's leftovers
        # may go at any time); everything else written belongs to this resource.
        return (metric_sum(text, "modeldeploy_api_writes_total")
                - metric_sum(text, "modeldeploy_api_writes_total", kind="PriorityClass"))

    # settle: the status and child events of the rollout have been processed
    def settled() -> bool:
        first = writes(scrape(port))
        time.sleep(2)
        return first == writes(scrape(port))

    wait_for(settled, 40, what="the operator's writes to settle")

    def versions() -> dict[str, str]:
        """resourceVersion of the ModelDeployment and every child: any write bumps one."""
        objs = items(kubectl, namespace, "modeldeployments," + CHILD_KINDS)
        return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
                for o in objs}

    before = scrape(port)
    versions_before = versions()
    events_before = len(events_for(kubectl, namespace, "z"))
    time.sleep(5)  # ten resync periods
    after = scrape(port)
    reconciles = (metric_sum(after, "modeldeploy_reconciles_total", result="ok")
                  - metric_sum(before, "modeldeploy_reconciles_total", result="ok"))
    assert reconciles >= 5, "the resync did not run"
    # Every mutating request the operator sends is counted, no-op server-side applies
    # included (those would not bump a resourceVersion).
    assert writes(after) == writes(before), "operator sent writes on resync"
    assert versions() == versions_before
    assert len(versions_before) >= 10
    assert len(events_for(kubectl, namespace, "z")) == events_before


def test_unschedulable_message_in_condition_and_event(kubectl, namespace, run_operator,
                                                      crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("big", {"resources": {"gpus": 16}}))
    md = wait_phase(kubectl, namespace, "big", "Pending", timeout=60)
    sched = wait_for(lambda: (c := condition(get(kubectl, namespace, "modeldeployment",
                                                   "big"), "Scheduled"))
                     and c["status"] == "False" and c, 30, what="Scheduled=False")
    assert sched["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in sched["message"]
    assert "nodes are available" in sched["message"]
    assert "Insufficient nvidia.com/gpu" in condition(md, "Ready")["message"] or \
        condition(md, "Ready")["reason"] == "Pending"
    ev = wait_for(lambda: [e for e in events_for(kubectl, namespace, "big")
                           if e["reason"] == "Unschedulable"], 30, what="Unschedulable event")
    assert ev[0]["type"] == "Warning" and "Insufficient nvidia.com/gpu" in ev[0]["message"]
    described = kubectl("describe", "md", "-n", namespace, "big").stdout
    assert "Insufficient nvidia.com/gpu" in described


def test_crash_and_oom_are_surfaced(kubectl, namespace, run_operator,
                                    crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("c"))
    wait_phase(kubectl, namespace, "c")
    pod = items(kubectl, namespace, "pods", "modeldeploy.io/name=c")[0]
    # Pods run no process here: write the status a kubelet would after an OOM kill.
    cs = pod["status"]["containerStatuses"][0]
    cs.update({"ready": False, "restartCount": 3, "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                     "message": "model weights exceed the memory limit",
                                     "startedAt": "2026-01-01T00:00:00Z",
                                     "finishedAt": "2026-01-01T00:01:00Z"}}})
    kubectl("patch", "-n", namespace, "pod", pod["metadata"]["name"], "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": {"containerStatuses": [cs]}}))
    healthy = wait_for(lambda: (c := condition(get(kubectl, namespace, "modeldeployment", "c"),
                                               "Healthy")) and c["status"] == "False" and c,
                       30, what="Healthy=False")
    assert healthy["reason"] == "OOMKilled"
    assert "exit code 137" in healthy["message"]
    assert "model weights exceed the memory limit" in healthy["message"]
    ev = wait_for(lambda: [e for e in events_for(kubectl, namespace, "c")
                           if e["reason"] == "OOMKilled"], 30, what="OOMKilled event")
    assert ev[0]["type"] == "Warning"


def test_api_key_rotation_without_restart(kubectl, namespace, run_operator,
                                          crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    apply(kubectl, namespace, manifest("k"))
    wait_phase(kubectl, namespace, "k")
    old = b64(get(kubectl, namespace, "secret", "k-api-keys"), "keys")
    template = get(kubectl, namespace, "deployment", "k")["spec"]["template"]

    # a key edited by hand is kept (no revert), and pods are not restarted
    kubectl("patch", "-n", namespace, "secret", "k-api-keys", "--type=merge", "-p",
            json.dumps({"stringData": {"keys": "md-handmade\n"}}))
    time.sleep(3)  # > one resync
    assert b64(get(kubectl, namespace, "secret", "k-api-keys"), "keys") == "md-handmade\n"

    # bumping auth.apiKeys.rotation issues new keys
    apply(kubectl, namespace, manifest("k", {"auth": {"apiKeys": {"rotation": 1}}}))
    new = wait_for(lambda: (k := b64(get(kubectl, namespace, "secret", "k-api-keys"), "keys"))
                   not in (old, "md-handmade\n") and k, 30, what="rotated keys")
    assert new.startswith("md-")
    assert get(kubectl, namespace, "deployment", "k")["spec"]["template"] == template
    assert len(items(kubectl, namespace, "replicasets", "modeldeploy.io/name=k")) == 1


def test_priority_class_shared_and_cleaned_up(kubectl, namespace, run_operator,
                                              crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    kubectl("delete", "priorityclass", "modeldeploy-critical", "--ignore-not-found")
    apply(kubectl, namespace, manifest("p1", {"qos": {"priority": "critical"}}))
    apply(kubectl, namespace, manifest("p2", {"qos": {"priority": "critical"}}))
    wait_phase(kubectl, namespace, "p1")
    wait_phase(kubectl, namespace, "p2")
    pc = json.loads(kubectl("get", "priorityclass", "modeldeploy-critical", "-o",
                            "json").stdout)
    assert "ownerReferences" not in pc["metadata"]
    kubectl("delete", "-n", namespace, "md", "p1")
    time.sleep(2)
    assert kubectl("get", "priorityclass", "modeldeploy-critical", check=False).returncode == 0
    kubectl("delete", "-n", namespace, "md", "p2")
    wait_for(lambda: kubectl("get", "priorityclass", "modeldeploy-critical",
                             check=False).returncode != 0, 30,
             what="unused PriorityClass deleted")


def test_what_only_the_operator_can_judge_becomes_a_condition(
        kubectl, namespace, run_operator, crd) -> None:  # noqa: F811
    op = run_operator(*operator_args(namespace))
    # placement.affinity is passed through; the API server refuses it on the Deployment
    bad_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "Sometimes", "values": ["a"]}]}]}}}
    apply(kubectl, namespace, manifest("j", {"placement": {"affinity": bad_affinity}}))
    md = wait_phase(kubectl, namespace, "j", "Failed", timeout=30)
    rec = condition(md, "Reconciled")
    assert rec["status"] == "False" and rec["reason"] == "ApplyFailed"
    assert "Deployment j" in rec["message"] and "Sometimes" in rec["message"]
    # the rest is built, the operator keeps running, an Event says why
    assert get(kubectl, namespace, "service", "j") is not None
    assert [e for e in events_for(kubectl, namespace, "j") if e["reason"] == "ApplyFailed"]
    # fixing the spec recovers
    apply(kubectl, namespace, manifest("j"))
    wait_phase(kubectl, namespace, "j", timeout=30)
    assert op.proc is not None and op.proc.poll() is None


def test_a_model_too_large_for_its_gpu_memory_is_said_then_fixed(
        kubectl, namespace, run_operator, crd) -> None:  # noqa: F811
    """The guide's 80B model with its 48 GB claim: MemoryFits says it cannot fit, with
    both numbers and the field; given three GPUs' worth, it says it fits."""
    run_operator(*operator_args(namespace))
    too_small = {"model": {"source": "hf://Qwen/Qwen3-Next-80B-A3B-Instruct",
                           "parameters": "80B", "kvCacheBytesPerToken": 24576},
                 "engine": {"maxBatchSize": 8},
                 "resources": {"gpus": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3",
                               "gpuMemory": "48Gi", "memory": "8Gi"}}
    apply(kubectl, namespace, manifest("huge", too_small))
    fits = wait_for(lambda: (c := condition(get(kubectl, namespace, "modeldeployment",
                                                  "huge"), "MemoryFits"))
                    and c["status"] == "False" and c, 30, what="MemoryFits=False")
    assert fits["reason"] == "ModelTooLarge"
    # 160e9 B of bf16 weights + 8e9 (5%) + 1 GiB + 768 MiB of KV = 158.21 GiB → 159Gi
    assert "at least 159Gi of GPU memory" in fits["message"]
    assert "resources.gpuMemory is 48Gi" in fits["message"]
    md = get(kubectl, namespace, "modeldeployment", "huge")
    assert md["status"]["memory"]["parameters"] == "80B"
    assert md["status"]["memory"]["weights"] == "150Gi"
    assert md["status"]["memory"]["declared"] == "48Gi"
    ev = wait_for(lambda: [e for e in events_for(kubectl, namespace, "huge")
                           if e["reason"] == "ModelTooLarge"], 30, what="ModelTooLarge event")
    assert ev[0]["type"] == "Warning" and "159Gi" in ev[0]["message"]

    fixed = {**too_small, "resources": {**too_small["resources"], "gpus": 3,
                                        "gpuMemory": "168Gi"}}
    apply(kubectl, namespace, manifest("huge", fixed))
    ok = wait_for(lambda: (c := condition(get(kubectl, namespace, "modeldeployment",
                                                "huge"), "MemoryFits"))
                  and c["status"] == "True" and c, 30, what="MemoryFits=True")
    assert ok["reason"] == "Fits"
    # 3 GPUs: 160e9 + 8e9 + 3 GiB + 6 GiB of KV (8 × 768 MiB) = 165.46 GiB → 166Gi
    assert "resources.gpuMemory 168Gi holds the 166Gi" in ok["message"]
    md = wait_phase(kubectl, namespace, "huge")
    assert md["status"]["memory"]["perGpu"] == "56Gi"
