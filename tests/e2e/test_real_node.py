"""The real node (hack/node.sh): kubelet + containerd + runc + the CNI bridge, joined to
the local control plane, running pods from the images built here (hack/images.sh).

Only the GPUs are simulated (an extended resource on a CPU machine); the pods, their
processes, the network and the node's identity are real.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from node_helpers import (
    ROOT,
    delete_host_volumes,
    describe,
    host_ruleset,
    host_volume,
    https,
    import_images,
    make_test_ca,
    nft_counters,
    node_env,
    node_ruleset,
    pod_json,
    pod_ready,
    readable_copy,
    real_node_placement,
    route_get,
    tiny_model,
    wait,
)
from pins import KUBE_VERSION
from test_chart_install import Release

pytestmark = [pytest.mark.e2e, pytest.mark.node]

API_KEY = "sk-real-node-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def real_node(kubectl) -> dict[str, str]:
    """The main cluster's real node, Ready, with the project's images imported."""
    env = node_env()
    node = json.loads(kubectl("get", "node", env["NODE_NAME"], "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True", f"node {env['NODE_NAME']} is not Ready"
    import_images("pause", "coredns", "operator", "server")
    return env


@pytest.fixture(scope="session")
def model_volume_root() -> Path:
    """Host directories published as PersistentVolumes live here (ignored by git)."""
    root = Path(node_env()["NODE_DIR"]) / "volumes"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    return root


def node_kubeconfig(env: dict[str, str]) -> str:
    return str(Path(env["RUN_DIR"]) / "conf" / "kubelet.kubeconfig")


def test_node_joined_with_its_own_identity_and_simulated_gpus(real_node, kubectl) -> None:
    name = real_node["NODE_NAME"]
    node = json.loads(kubectl("get", "node", name, "-o", "json").stdout)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == KUBE_VERSION
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == real_node["SIMULATED_GPUS"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == real_node["GPU_PRODUCT"]
    taints = {(t["key"], t["effect"]) for t in node["spec"]["taints"]}
    assert ("nvidia.com/gpu", "NoSchedule") in taints
    assert ("modeldeploy.io/real-node", "NoSchedule") in taints
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node["LINK_NODE_IP"]
    # The kubelet holds a node identity (Node authorizer + NodeRestriction), not admin.
    as_node = ["kubectl", "--kubeconfig", node_kubeconfig(real_node)]
    who = json.loads(subprocess.run([*as_node, "auth", "whoami", "-o", "json"],
                                    capture_output=True, text=True, check=True).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:node:{name}"
    assert "system:nodes" in who["status"]["userInfo"]["groups"]
    can = subprocess.run([*as_node, "auth", "can-i", "list", "secrets", "-A"],
                         capture_output=True, text=True)
    assert can.stdout.startswith("no"), "a node may not list Secrets"
    other = subprocess.run([*as_node, "label", "node", "gpu-a", "touched=yes"],
                           capture_output=True, text=True)
    assert other.returncode != 0 and "only its own Node object" in other.stderr


def test_server_image_pod_serves_health_and_chat(real_node, kubectl, namespace,
                                                 model_volume_root, tmp_path) -> None:
    """The bundled server image, run by the kubelet with the operator's pod security
    (non-root, read-only root filesystem, no capabilities), loads a tiny model from a
    PersistentVolume and answers over TLS with an API key, at its pod IP."""
    from modeldeploy.constants import AUTH_DIR, HOME_DIR, IMAGE_UID, TLS_DIR

    model = readable_copy(tiny_model(tmp_path / "tiny-build"),
                          model_volume_root / namespace / "tiny")
    claim = host_volume(kubectl, namespace, "models", model.parent)
    server_name = "tiny.real-node.test"
    ca, cert, key = make_test_ca(tmp_path / "tls", [server_name])
    secrets = [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "tiny-tls"},
         "data": {"tls.crt": base64.b64encode(cert.encode()).decode(),
                  "tls.key": base64.b64encode(key.encode()).decode()}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tiny-keys"},
         "stringData": {"keys": API_KEY + "\n"}},
    ]
    probe = {"httpGet": {"path": "/health", "port": 8080, "scheme": "HTTPS"},
             "periodSeconds": 2}
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tiny"},
        "spec": {
            **real_node_placement(),
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID,
                                "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "server", "image": real_node["SERVER_IMAGE"],
                "imagePullPolicy": "Never",
                "args": ["serve", "--model", "/models/tiny", "--served-name", "tiny",
                         "--dtype", "float32", "--port", "8080",
                         "--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key",
                         "--api-keys-file", f"{AUTH_DIR}/keys"],
                "env": [{"name": "HOME", "value": HOME_DIR}],
                "ports": [{"containerPort": 8080}],
                "startupProbe": {**probe, "failureThreshold": 150},
                "readinessProbe": probe,
                "resources": {"requests": {"cpu": "100m", "memory": "1Gi"},
                              "limits": {"memory": "2Gi"}},
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "models", "mountPath": "/models", "readOnly": True},
                    {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                    {"name": "keys", "mountPath": AUTH_DIR, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "home", "mountPath": HOME_DIR}],
            }],
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": claim,
                                                             "readOnly": True}},
                {"name": "tls", "secret": {"secretName": "tiny-tls"}},
                {"name": "keys", "secret": {"secretName": "tiny-keys"}},
                {"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}],
        },
    }
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [*secrets, pod]}))
        ready = wait(lambda: pod_ready(kubectl, namespace, "tiny"), 420,
                     "the server pod to pass its readiness probe") or {}
        assert ready, describe(kubectl, namespace, "pod", "tiny")
        status = ready["status"]
        assert ready["spec"]["nodeName"] == real_node["NODE_NAME"]
        assert status["containerStatuses"][0]["imageID"], "no image ID: nothing really ran"
        ip = status["podIP"]
        assert ip.startswith(real_node["NODE_POD_CIDR"].rsplit(".", 1)[0] + ".")

        health = https("GET", ip, 8080, "/health", ca, server_name)
        assert health.status_code == 200, health.text
        chat = https("POST", ip, 8080, "/v1/chat/completions", ca, server_name, key=API_KEY,
                     body={"model": "tiny", "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": "hello"}]})
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        assert answer["usage"]["completion_tokens"] > 0
        refused = https("POST", ip, 8080, "/v1/chat/completions", ca, server_name,
                        key="wrong", body={"model": "tiny", "messages": []})
        assert refused.status_code == 401
        # The container's log went through the kubelet to `kubectl logs`.
        logs = kubectl("logs", "-n", namespace, "tiny").stdout
        assert "POST /v1/chat/completions" in logs
    finally:
        kubectl("delete", "pod", "tiny", "-n", namespace, "--wait=false", check=False)
        delete_host_volumes(kubectl, namespace)


def test_operator_image_pod_reconciles_under_the_chart_service_account(
        real_node, kubectl, kubeconfig, namespace) -> None:
    """`helm install` with the operator image: its pod runs `modeldeploy run` on the real
    node with nothing but the chart's ServiceAccount token (kopf finds the API server as
    kubernetes.default.svc through cluster DNS), and reconciles a ModelDeployment."""
    suffix = uuid.uuid4().hex[:6]
    release = Release(f"op-{suffix}", f"op-{suffix}", kubeconfig)
    values = {
        "watch.allNamespaces": "false", "watch.namespaces": f"{{{namespace}}}",
        "image.pullPolicy": "Never",
        "nodeSelector.kubernetes\\.io/hostname": real_node["NODE_NAME"],
    }
    for i, toleration in enumerate(real_node_placement()["tolerations"]):
        values |= {f"tolerations[{i}].{k}": v for k, v in toleration.items()}
    try:
        release.install(values)
        pods = json.loads(kubectl("get", "pods", "-n", release.namespace, "-o",
                                  "json").stdout)["items"]
        assert len(pods) == 1
        pod = pods[0]
        assert pod["spec"]["nodeName"] == real_node["NODE_NAME"]
        assert pod["spec"]["serviceAccountName"] == release.fullname
        assert pod["spec"]["containers"][0]["image"] == real_node["OPERATOR_IMAGE"]
        assert pod_ready(kubectl, release.namespace, pod["metadata"]["name"]), \
            "the operator's probes (/healthz) must pass"
        md = yaml.safe_dump({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "from-pod"},
            "spec": {"model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                     # A kwok GPU node: this test is about the operator, not the model.
                     "resources": {"gpus": 1, "gpuProduct": "NVIDIA-L4"}}})
        kubectl("apply", "-n", namespace, "-f", "-", input=md)
        wait(lambda: kubectl("get", "md", "from-pod", "-n", namespace, "-o",
                             "jsonpath={.status.phase}").stdout == "Ready", 120,
             "the ModelDeployment to be reconciled to Ready by the operator pod")
        for kind in ("deployment", "service", "networkpolicy", "secret/from-pod-api-keys",
                     "secret/from-pod-tls", "configmap/from-pod-clawdbot"):
            name = [] if "/" in kind else ["from-pod"]
            kubectl("get", kind, *name, "-n", namespace)
        log = kubectl("logs", "-n", release.namespace, pod["metadata"]["name"]).stdout
        assert f"reconciled {namespace}/from-pod" in log
        assert "Forbidden" not in log and "forbidden" not in log
    finally:
        kubectl("delete", "md", "from-pod", "-n", namespace, "--ignore-not-found",
                check=False)
        release.uninstall()
        kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def test_testbed_keeps_every_packet_on_this_machine(real_node, kubectl, namespace) -> None:
    """The network rules, proved from the kernel's routing decisions (lookups: no packet
    is sent) and the rules' own counters."""
    env = real_node
    host_if, netns = env["HOST_IF"], env["NETNS"]
    pod_prefix = env["NODE_POD_CIDR"].rsplit(".", 1)[0]
    # Host: the node's pods and the Services go over the link; the rest of both ranges
    # is blackholed, so it can never follow the default route.
    assert f"dev {host_if}" in route_get(f"{pod_prefix}.77")
    assert f"dev {host_if}" in route_get(env["KUBERNETES_SERVICE_IP"])
    blackholes = subprocess.run(["ip", "route", "show", "type", "blackhole"],
                                capture_output=True, text=True, check=True).stdout
    assert env["POD_NET"] in blackholes and env["SERVICE_NET"] in blackholes
    unused_pod_address = ipaddress.ip_network(env["POD_NET"])[200 * 256 + 9]
    assert "Invalid argument" in route_get(str(unused_pod_address))  # the blackhole
    # The node's namespace has no default route: nothing there can reach outside.
    routes = subprocess.run(["ip", "netns", "exec", netns, "ip", "route"],
                            capture_output=True, text=True, check=True).stdout
    assert "default" not in routes, routes
    assert "unreachable" in route_get("198.51.100.7", netns).lower()
    # The CNI bridge does no masquerading, and nothing else in the node masquerades pods.
    conflist = json.loads((Path(env["RUN_DIR"]) / "conf" / "cni" /
                           "10-modeldeploy.conflist").read_text())
    assert conflist["plugins"][0]["ipMasq"] is False
    nat = node_ruleset("ruleset")
    assert "CNI-" not in nat, "a CNI masquerade chain exists"
    # Counters: a pod that looks up and connects to the API server through DNS and the
    # kubernetes Service, and the host reaching a pod, are counted as accepted; nothing on
    # the host tried to send a test-bed address out another interface.
    host_before = nft_counters(host_ruleset())
    assert set(host_before) == {"testbed-addresses-leave-only-by-the-link",
                                "host-forwards-nothing-from-the-testbed",
                                "host-forwards-nothing-into-the-testbed",
                                "api-server-only-from-loopback-and-the-link"}, host_before
    node_before = nft_counters(node_ruleset())
    client = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "net-probe"},
              "spec": {**real_node_placement(), "restartPolicy": "Never",
                       "containers": [{"name": "probe", "image": env["OPERATOR_IMAGE"],
                                       "imagePullPolicy": "Never", "command": [
                           "python", "-c",
                           "import socket; socket.create_connection("
                           "('kubernetes.default.svc', 443), timeout=10).close()"]}]}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(client))
    done = wait(lambda: pod_json(kubectl, namespace, "net-probe")["status"].get("phase")
                in ("Succeeded", "Failed") and pod_json(kubectl, namespace, "net-probe"),
                120, "the probe pod to finish")
    assert done["status"]["phase"] == "Succeeded", describe(kubectl, namespace, "pod",
                                                            "net-probe")
    dns = json.loads(kubectl("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns",
                             "-o", "json").stdout)["items"][0]["status"]["podIP"]
    with httpx.Client(timeout=10) as c:  # CoreDNS' readiness endpoint, from the host
        assert c.get(f"http://{dns}:8181/ready").status_code == 200
    host = nft_counters(host_ruleset())
    node = nft_counters(node_ruleset())
    assert host["testbed-addresses-leave-only-by-the-link"] == 0
    assert node["pods-to-services-and-the-host-link"] > \
        node_before["pods-to-services-and-the-host-link"], (node_before, node)
    assert node["host-to-pods-and-services"] > node_before["host-to-pods-and-services"]
    for rule in ("pods-reach-nothing-else", "nothing-else-enters-from-the-host"):
        assert node[rule] == node_before[rule], f"{rule} dropped something: {node}"
    # The API server answers on the link for the pods (the kubernetes Service points
    # there), and its certificate names that address.
    endpoints = json.loads(kubectl("get", "endpointslices", "-n", "default", "-l",
                                   "kubernetes.io/service-name=kubernetes", "-o",
                                   "json").stdout)["items"][0]["endpoints"]
    assert endpoints[0]["addresses"] == [env["LINK_HOST_IP"]]
    pki = ROOT / ".cache" / "kwok" / "clusters" / env["NAME"] / "pki" / "admin.crt"
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                           str(pki)], capture_output=True, text=True, check=True).stdout
    assert f"IP Address:{env['LINK_HOST_IP']}" in sans
    assert f"IP Address:{env['KUBERNETES_SERVICE_IP']}" in sans


def test_rendered_gateway_pod_fronts_an_engine_on_loopback(real_node, kubectl, namespace,
                                                           model_volume_root,
                                                           tmp_path) -> None:
    """The pod the operator renders for vLLM, run for real: its gateway container (as
    rendered: flags, mounts, probes, security context) in front of an engine on
    127.0.0.1:8001. vLLM cannot run here (no GPU, no image), so the engine container runs
    the builtin server with the same loopback address and the engine's rendered exec
    probes; everything else is the operator's rendering."""
    from modeldeploy.constants import ENGINE_LOOPBACK_PORT, HOME_DIR
    from modeldeploy.render import workload
    from modeldeploy.spec import parse

    name = "gw"
    spec = parse(name, namespace, "uid-gw", {
        "model": {"source": "hf://org/model", "contextWindow": 2048},
        "engine": {"kind": "vllm"},
        "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi"},
        "qos": {"priority": "normal"}})
    template = workload.render(spec)["spec"]["template"]
    pod_spec = template["spec"]
    engine, front = pod_spec["containers"]
    assert front["name"] == "gateway" and "ports" not in engine

    model = readable_copy(tiny_model(tmp_path / "tiny-build"),
                          model_volume_root / namespace / "tiny")
    claim = host_volume(kubectl, namespace, "models", model.parent)
    # The stand-in engine: the builtin server where vLLM would listen, plain and keyless
    # as the rendered vLLM is. The rendered exec probes stay.
    engine.update(image=real_node["SERVER_IMAGE"], imagePullPolicy="Never",
                  command=["modelserver"],
                  args=["serve", "--model", "/models/tiny", "--served-name", "tiny",
                        "--dtype", "float32", "--host", "127.0.0.1",
                        "--port", str(ENGINE_LOOPBACK_PORT), "--no-tls", "--no-auth"],
                  env=[{"name": "HOME", "value": HOME_DIR}],
                  volumeMounts=[*[m for m in engine["volumeMounts"]
                                  if m["name"] in ("tmp", "home")],
                                {"name": "models", "mountPath": "/models", "readOnly": True}])
    front.update(image=real_node["SERVER_IMAGE"], imagePullPolicy="Never")
    keep = {m["name"] for c in (engine, front) for m in c["volumeMounts"]}
    volumes = [v for v in pod_spec["volumes"] if v["name"] in keep]
    volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim,
                                                                "readOnly": True}})
    placement = real_node_placement()
    pod_spec.update(volumes=volumes, nodeSelector=placement["nodeSelector"],
                    tolerations=placement["tolerations"])
    pod_spec.pop("affinity", None)
    pod_spec.pop("priorityClassName", None)

    server_name = f"{name}.{namespace}.svc"
    ca, cert, key = make_test_ca(tmp_path / "tls", [server_name])
    tls_secret = next(v["secret"]["secretName"] for v in volumes if v["name"] == "tls")
    keys_secret = next(v["secret"]["secretName"] for v in volumes if v["name"] == "api-keys")
    other_key = "sk-second-" + uuid.uuid4().hex
    secrets = [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": tls_secret},
         "data": {"tls.crt": base64.b64encode(cert.encode()).decode(),
                  "tls.key": base64.b64encode(key.encode()).decode()}},
        # A user-made Secret with only `keys`, two of them: no pod needs more.
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": keys_secret},
         "stringData": {"keys": f"{API_KEY}\n{other_key}\n"}},
    ]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": template["metadata"]["labels"]},
           "spec": pod_spec}
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [*secrets, pod]}))
        ready = wait(lambda: pod_ready(kubectl, namespace, name), 420,
                     "the gateway pod to pass its readiness probe") or {}
        assert ready, describe(kubectl, namespace, "pod", name)
        statuses = {c["name"]: c for c in ready["status"]["containerStatuses"]}
        assert statuses["server"]["started"] and statuses["gateway"]["ready"]
        assert statuses["server"]["restartCount"] == 0, "the engine's exec probe failed"
        ip = ready["status"]["podIP"]
        port = spec.network.port

        assert https("GET", ip, port, "/health", ca, server_name).status_code == 200
        for k in (API_KEY, other_key):
            chat = https("POST", ip, port, "/v1/chat/completions", ca, server_name, key=k,
                         body={"model": "tiny", "max_tokens": 4, "temperature": 0,
                               "messages": [{"role": "user", "content": "hello"}]})
            assert chat.status_code == 200, chat.text
            assert chat.json()["usage"]["completion_tokens"] > 0
        refused = https("POST", ip, port, "/v1/chat/completions", ca, server_name,
                        key="wrong", body={"model": "tiny", "messages": []})
        assert refused.status_code == 401
        metrics = https("GET", ip, port, "/metrics", ca, server_name).text
        assert "modelserver_gateway_requests_total" in metrics
        assert "modelserver_inflight_requests" in metrics  # the engine's, through the gateway
        # The engine is on the pod's loopback only: nothing answers at the pod IP.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{ip}:{ENGINE_LOOPBACK_PORT}/health", timeout=3)
    finally:
        kubectl("delete", "pod", name, "-n", namespace, "--wait=false", check=False)
        delete_host_volumes(kubectl, namespace)
