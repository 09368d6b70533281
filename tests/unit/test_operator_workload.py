"""render.workload: the Deployment, by value."""

from __future__ import annotations

import pytest
from helpers_operator import arg_value, container, make_spec
from modeldeploy.render import workload

pytestmark = pytest.mark.unit


def test_gpu_pod_requests_tolerates_and_prefers_product() -> None:
    d = workload.render(make_spec({"resources": {
        "gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "cpu": "4", "memory": "32Gi"}}))
    pod = d["spec"]["template"]["spec"]
    res = container(d)["resources"]
    assert res["requests"]["nvidia.com/gpu"] == "2" == res["limits"]["nvidia.com/gpu"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "4"  # Guaranteed QoS
    assert res["requests"]["memory"] == res["limits"]["memory"] == "32Gi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": ["NVIDIA-H100-80GB-HBM3"]}]
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_cpu_pod_has_no_gpu_bits_and_surges() -> None:
    d = workload.render(make_spec())
    pod = d["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "affinity" not in pod
    assert "nvidia.com/gpu" not in container(d)["resources"]["limits"]
    assert d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1


def test_burstable_when_not_guaranteed() -> None:
    res = container(workload.render(make_spec({"qos": {"guaranteed": False}})))["resources"]
    assert "cpu" not in res["limits"] and res["requests"]["cpu"] == "2"


def test_user_affinity_is_merged_with_product() -> None:
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    d = workload.render(make_spec({"resources": {"gpus": 1, "gpuProduct": "NVIDIA-L4"},
                                   "placement": {"affinity": user}}))
    exprs = d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"]
    assert [e["key"] for e in exprs] == ["zone", "nvidia.com/gpu.product"]
    # the spec's own dict is not mutated
    assert len(user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]) == 1


def test_pod_security_and_mounts() -> None:
    d = workload.render(make_spec())
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["shm"] == "/dev/shm" and mounts["tls"] == "/etc/modelserver/tls"
    assert mounts["api-keys"] == "/etc/modelserver/auth"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert vols["tls"]["secret"]["secretName"] == "m-tls"
    assert vols["api-keys"]["secret"]["secretName"] == "m-api-keys"
    assert pod["priorityClassName"] == "modeldeploy-normal"


@pytest.mark.parametrize("engine", ["builtin", "vllm", "tgi"])
def test_every_engine_runs_as_the_image_user_with_a_writable_home(engine: str) -> None:
    """The pod runs as the user both images create (one number, IMAGE_UID), $HOME is an
    emptyDir under the read-only root, and a crash leaves a termination message."""
    from modeldeploy.constants import HOME_DIR, IMAGE_UID

    spec = {"engine": {"kind": engine}, "model": {"cache": {"size": "10Gi"}}}
    d = workload.render(make_spec(spec))
    pod = d["spec"]["template"]["spec"]
    assert {pod["securityContext"][k] for k in ("runAsUser", "runAsGroup", "fsGroup")} == \
        {IMAGE_UID}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["home"] == {"name": "home", "emptyDir": {}}
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert {"name": "HOME", "value": HOME_DIR} in c["env"], c["name"]
        assert {"name": "home", "mountPath": HOME_DIR} in c["volumeMounts"], c["name"]
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError", c["name"]


def test_tgi_runs_as_root_with_everything_else_locked_down() -> None:
    """TGI's image keeps Python under /root: its container alone runs as uid 0; the pod, the
    fetch step and every other engine stay on the image user."""
    from modeldeploy.constants import IMAGE_UID

    d = workload.render(make_spec({"engine": {"kind": "tgi"},
                                   "model": {"cache": {"size": "10Gi"}}}))
    pod = d["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container(d)["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "runAsUser" not in pod["initContainers"][0]["securityContext"]
    for kind in ("builtin", "vllm"):
        c = container(workload.render(make_spec({"engine": {"kind": kind}})))
        assert c["securityContext"] == workload.container_security(), kind


def test_probes_use_https_and_a_generous_startup() -> None:
    c = container(workload.render(make_spec({"engine": {"startupTimeoutSeconds": 3600}})))
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "api",
                                              "scheme": "HTTPS"}
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 3600
    plain = container(workload.render(make_spec({"tls": {"mode": "disabled"}})))
    assert plain["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert "tls" not in {m["name"] for m in plain["volumeMounts"]}


def test_model_cache_adds_pvc_and_fetch_init_container() -> None:
    d = workload.render(make_spec({"model": {
        "source": "hf://org/model", "revision": "v1",
        "checksums": {"model.safetensors": "sha256:" + "a" * 64},
        "cache": {"size": "50Gi"}}}))
    pod = d["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model-cache"]["persistentVolumeClaim"]["claimName"] == "m-model-cache"
    init = pod["initContainers"][0]
    assert init["args"][:3] == ["fetch", "--model", "hf://org/model"]
    assert arg_value(init["args"], "--revision") == "v1"
    assert arg_value(init["args"], "--cache-dir") == "/var/cache/modelserver"
    assert arg_value(init["args"], "--checksum") == "model.safetensors=sha256:" + "a" * 64


def test_pvc_source_is_mounted_read_only() -> None:
    d = workload.render(make_spec({"model": {"source": "pvc://weights/llama"}}))
    c = container(d)
    assert arg_value(c["args"], "--model") == "/models/weights/llama"
    vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    assert vols["model-source"]["persistentVolumeClaim"] == {"claimName": "weights",
                                                             "readOnly": True}


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    assert "replicas" not in workload.render(make_spec({"autoscaling": {"maxReplicas": 3}}))[
        "spec"]
    assert workload.render(make_spec({"replicas": 3}))["spec"]["replicas"] == 3
