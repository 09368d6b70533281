"""Helpers for the tests on the real node (hack/node.sh): the test bed's settings, read
from hack/cluster-env.sh where they are defined once; the images; a host directory
published as a PersistentVolume the way a LAN user pre-fills one; HTTPS from the host to
a pod; and the nftables counters that prove the network rules."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# Variables of hack/versions.sh + hack/cluster-env.sh the tests read.
_ENV_VARS = ("NAME", "NODE_NAME", "NETNS", "HOST_IF", "NODE_IF", "BRIDGE", "NFT_TABLE",
             "POD_NET", "SERVICE_NET", "NODE_POD_CIDR", "LINK_HOST_IP", "LINK_NODE_IP",
             "BRIDGE_IP", "DNS_SERVICE_IP", "KUBERNETES_SERVICE_IP", "CGROUP_ROOT",
             "NODE_DIR", "RUN_DIR", "CONTAINERD_SOCK", "GPU_PRODUCT", "SIMULATED_GPUS",
             "SERVER_IMAGE", "OPERATOR_IMAGE", "BASE_IMAGE", "KUBECONFIG_FILE")


def cluster_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The settings of a cluster (the main one unless MODELDEPLOY_CLUSTER says otherwise)."""
    script = (f"source {HACK}/versions.sh; source {HACK}/cluster-env.sh; "
              + "; ".join(f'printf "%s\\0%s\\0" {v} "${v}"' for v in _ENV_VARS))
    env = None if extra_env is None else {**os.environ, **extra_env}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                         env=env).stdout.split("\0")
    return dict(zip(out[0::2], out[1::2], strict=False))


@cache
def node_env() -> dict[str, str]:
    return cluster_env()


def import_images(*names: str) -> None:
    """Build (when their inputs changed) and import images into the real node."""
    proc = subprocess.run(["bash", str(HACK / "images.sh"), "import", *names],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"images.sh import {names} failed:\n{proc.stdout}\n{proc.stderr}"


def real_node_placement() -> dict[str, Any]:
    """What a pod needs to run on the real node (it carries a taint of its own)."""
    return {"nodeSelector": {"kubernetes.io/hostname": node_env()["NODE_NAME"]},
            "tolerations": [{"key": "modeldeploy.io/real-node", "operator": "Exists",
                             "effect": "NoSchedule"},
                            {"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}]}


def host_volume(kubectl: Kubectl, namespace: str, name: str, path: Path) -> str:
    """Publish a host directory of the real node as a PersistentVolume bound to a claim
    `name` in `namespace` (read-only to pods); returns the claim name. The PV is named
    after the namespace, so deleting it is the caller's (see delete_host_volume)."""
    node = node_env()["NODE_NAME"]
    pv = f"{namespace}-{name}"
    manifest = [
        {"apiVersion": "v1", "kind": "PersistentVolume",
         "metadata": {"name": pv, "labels": {"modeldeploy.io/test": namespace}},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "hostPath": {"path": str(path), "type": "Directory"},
                  "claimRef": {"namespace": namespace, "name": name},
                  "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "kubernetes.io/hostname", "operator": "In",
                       "values": [node]}]}]}}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}},
    ]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": manifest}))
    wait(lambda: kubectl("get", "pvc", name, "-n", namespace, "-o",
                         "jsonpath={.status.phase}").stdout == "Bound",
         60, f"claim {name} to bind")
    return name


def delete_host_volumes(kubectl: Kubectl, namespace: str) -> None:
    kubectl("delete", "pv", "-l", f"modeldeploy.io/test={namespace}", "--wait=false",
            check=False)


def readable_copy(src: Path, dst: Path) -> Path:
    """Copy a model (a folder or one file) into a directory the pods' user can read."""
    if dst.exists():
        shutil.rmtree(dst)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.mkdir(parents=True)
        shutil.copy2(src, dst / src.name)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def tiny_model(directory: Path) -> Path:
    """The tests' tiny random Llama (tests/server/tinymodel.py), built once per session."""
    sys.path.insert(0, str(ROOT / "tests" / "server"))
    from tinymodel import build

    if not (directory / "config.json").exists():
        build(directory, max_positions=4096)
    return directory


def wait(predicate: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def pod_json(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)


def pod_ready(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    pod = pod_json(kubectl, namespace, name)
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod if conds.get("Ready") == "True" else None


def describe(kubectl: Kubectl, namespace: str, *what: str) -> str:
    """kubectl describe output, for assertion messages."""
    return kubectl("describe", *what, "-n", namespace, check=False).stdout[-4000:]


def make_test_ca(directory: Path, names: list[str]) -> tuple[Path, str, str]:
    """A CA file and a serving certificate/key (PEM) for `names`, made with the
    operator's own PKI code."""
    from modeldeploy import pki

    now = dt.datetime.now(dt.UTC)
    ca = pki.create_ca(now, "real-node test CA")
    leaf = pki.issue(ca, names, now)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.crt"
    ca_file.write_text(ca.cert_pem)
    return ca_file, leaf.cert_pem, leaf.key_pem


def https(method: str, ip: str, port: int, path: str, ca: Path, server_name: str,
          key: str | None = None, body: dict[str, Any] | None = None,
          timeout: float = 120) -> httpx.Response:
    """A request from the host to ip:port, verifying the certificate for server_name."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)),
                      timeout=timeout) as client:
        return client.request(method, f"https://{ip}:{port}{path}", json=body,
                              headers=headers, extensions={"sni_hostname": server_name})


def nft_counters(ruleset: str) -> dict[str, int]:
    """Packets counted by each commented rule of an `nft list` output."""
    found = {}
    for m in re.finditer(r'counter packets (\d+) bytes \d+ (?:accept|drop) comment "([^"]+)"',
                         ruleset):
        found[m.group(2)] = int(m.group(1))
    return found


def host_ruleset() -> str:
    return subprocess.run(["nft", "list", "table", "inet", node_env()["NFT_TABLE"]],
                          capture_output=True, text=True, check=True).stdout


def node_ruleset(*args: str) -> str:
    """`nft list ...` inside the node's network namespace (default: our table)."""
    args = args or ("table", "inet", "modeldeploy")
    return subprocess.run(["ip", "netns", "exec", node_env()["NETNS"], "nft", "list", *args],
                          capture_output=True, text=True, check=True).stdout


def route_get(address: str, netns: str | None = None) -> str:
    """The kernel's routing decision for an address (a lookup: no packet is sent)."""
    cmd = ["ip", "route", "get", address]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return (proc.stdout + proc.stderr).strip()
