"""Every manifest in examples/ is accepted and reconciled; the GPU ones become Ready on
the fake GPU nodes they ask for."""

from __future__ import annotations

import json

import pytest
import yaml
from operator_helpers import (
    EXAMPLES,
    condition,
    crd,  # noqa: F401 - fixture
    get,
    items,
    operator_args,
    wait_phase,
)

pytestmark = pytest.mark.e2e

# example file → (name, node its pod must land on, or None for any)
EXPECTED = {
    "lan-80b.yaml": ("lan-80b", "gpu-a"),
    "lan-80b-long-context.yaml": ("lan-80b-long", "gpu-a"),
    "lan-80b-int8.yaml": ("lan-80b-int8", "gpu-a"),
    "mini-pc.yaml": ("mini-pc", "cpu-a"),
    "vllm-tool-calling.yaml": ("qwen-tools", "gpu-b"),
    "autoscaled-ingress.yaml": ("team-chat", "gpu-b"),
}


def test_all_examples_are_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


def test_examples_reach_ready(kubectl, namespace, run_operator, crd) -> None:  # noqa: F811
    run_operator(*operator_args(namespace))
    for file in EXPECTED:
        kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / file))
    for file, (name, node) in EXPECTED.items():
        md = wait_phase(kubectl, namespace, name, timeout=120)
        pods = items(kubectl, namespace, "pods", f"modeldeploy.io/name={name}")
        if node:
            assert [p["spec"]["nodeName"] for p in pods] == [node], file
        spec = yaml.safe_load((EXAMPLES / file).read_text())["spec"]
        args = pods[0]["spec"]["containers"][0]["args"]
        if spec.get("engine", {}).get("kind") == "vllm":
            assert "--enable-auto-tool-choice" in args
        else:
            assert args[args.index("--served-name") + 1] == spec["model"]["servedName"]
        assert md["status"]["gpuMemory" if spec["resources"].get("gpuMemory") else "phase"]
        # every example states its size, and its declared memory holds the estimate
        assert md["status"]["memory"]["parameters"] == spec["model"]["parameters"], file
        assert condition(md, "MemoryFits")["status"] == "True", file

    # the guide's case: its client settings end up in both client configs
    cm = get(kubectl, namespace, "configmap", "lan-80b-clawdbot")
    guide = json.loads(cm["data"]["clawbot.json"])
    assert guide["inference_params"] == {"max_tokens": 2048, "temperature": 0.7,
                                         "top_p": 0.9}
    assert guide["model_server"]["timeout"] == 30000
    # the guide's int8 claim (31 GB) cannot hold the weights: two H100s' worth
    assert get(kubectl, namespace, "modeldeployment", "lan-80b-int8")["status"][
        "gpuMemory"] == "92Gi"
    # the mini PC's 8k model is honestly reported as too small for Clawdbot
    mini = get(kubectl, namespace, "modeldeployment", "mini-pc")
    assert condition(mini, "ClawdbotCompatible")["status"] == "False"
    # the autoscaled one: HPA, Ingress and the LAN allow-list
    assert get(kubectl, namespace, "hpa", "team-chat")["spec"]["maxReplicas"] == 4
    np = get(kubectl, namespace, "networkpolicy", "team-chat")
    assert {"ipBlock": {"cidr": "192.168.1.0/24"}} in np["spec"]["ingress"][0]["from"]
