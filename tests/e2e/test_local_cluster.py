"""The local control plane itself (hack/cluster.sh), on a second cluster of its own so the
shared one used by the other e2e tests is left alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import yaml
from pins import KUBE_VERSION

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "hack" / "cluster.sh"

pytestmark = pytest.mark.e2e


def _sh(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], env=env, capture_output=True,
                          text=True, timeout=180)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def _listening(port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in psutil.net_connections(kind="tcp"))


def test_second_cluster_up_twice_then_down_leaves_nothing(kubeconfig: str) -> None:
    name = f"lc{os.getpid()}"
    env = {**os.environ, "MODELDEPLOY_CLUSTER": name}
    own_kubeconfig = ROOT / ".cache" / f"cluster-{name}" / "kubeconfig"
    try:
        started = time.monotonic()
        first = _sh("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert time.monotonic() - started < 60, "cluster-up with cached binaries took over 60 s"

        again = _sh("up", env)
        assert again.returncode == 0 and "already running" in again.stdout

        kctl = ["kubectl", "--kubeconfig", str(own_kubeconfig)]
        version = json.loads(subprocess.run([*kctl, "version", "-o", "json"],
                                            capture_output=True, text=True).stdout)
        assert version["serverVersion"]["gitVersion"] == KUBE_VERSION

        nodes = json.loads(subprocess.run([*kctl, "get", "nodes", "-o", "json"],
                                          capture_output=True, text=True, check=True).stdout)
        gpus = {n["metadata"]["name"]: n["status"]["allocatable"].get("nvidia.com/gpu")
                for n in nodes["items"]}
        assert gpus == {"gpu-a": "8", "gpu-b": "2", "cpu-a": None}
        products = {n["metadata"]["labels"].get("nvidia.com/gpu.product") for n in nodes["items"]}
        assert len(products - {None}) == 2, "the two GPU nodes must carry different products"
        for n in nodes["items"]:
            taints = n["spec"].get("taints") or []
            has_gpu_taint = any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
                                for t in taints)
            assert has_gpu_taint == (n["metadata"]["name"] != "cpu-a")

        server = urlparse(yaml.safe_load(own_kubeconfig.read_text())["clusters"][0]["cluster"]
                          ["server"])
        assert _port_open(server.hostname, server.port) and _listening(server.port)
    finally:
        down = _sh("down", env)
    assert down.returncode == 0
    leftovers = subprocess.run(["pgrep", "-f", f"clusters/{name}/"], capture_output=True,
                               text=True).stdout
    assert leftovers == "", f"processes left behind: {leftovers}"
    # Not connect(): the port is in the ephemeral range, where a busy machine's connect
    # to a port nobody listens on can occasionally self-connect and "succeed".
    assert not _listening(server.port), "the API server port is still bound"
    assert not own_kubeconfig.exists()


def test_user_kube_dir_is_never_touched(kubeconfig: str) -> None:
    # The kubeconfig in use is the project's own, under the ignored cache folder.
    assert Path(kubeconfig).is_relative_to(ROOT / ".cache")
    home_config = Path.home() / ".kube" / "config"
    if home_config.exists():
        assert "kwok-modeldeploy" not in home_config.read_text()
