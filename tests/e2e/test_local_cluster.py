"""The local cluster itself (hack/cluster.sh), on a second cluster of its own, with a real
node of its own, so the shared one used by the other e2e tests is left alone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import yaml
from node_helpers import cluster_env
from pins import KUBE_VERSION

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "hack" / "cluster.sh"

pytestmark = pytest.mark.e2e


def _sh(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], env=env, capture_output=True,
                          text=True, timeout=300)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def _listening(port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in psutil.net_connections(kind="tcp"))


# A second cluster with a real node of its own: other ranges, another namespace, link,
# table and cgroup root, so the main cluster's node is left alone.
SECOND_CLUSTER_NET = {"MODELDEPLOY_REAL_NODE": "1", "MODELDEPLOY_POD_NET": "10.245.0.0/16",
                      "MODELDEPLOY_SERVICE_NET": "10.97.0.0/16"}


def _leftovers(bed: dict[str, str], kwok_dir: str) -> dict[str, list[str]]:
    """Everything of one cluster that must exist while it is up and not after `down`."""
    run_dir, node_dir = bed["RUN_DIR"], bed["NODE_DIR"]
    processes = [p.strip() for pattern in (f"{kwok_dir}/", f"{run_dir}/")
                 for p in subprocess.run(["pgrep", "-af", pattern], capture_output=True,
                                         text=True).stdout.splitlines()]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if node_dir in line.split()[4]]
    netns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True).stdout.split() if n == bed["NETNS"]]
    links = [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                             text=True).stdout.splitlines()
             if f" {bed['HOST_IF']}@" in line or f" {bed['HOST_IF']}:" in line]
    tables = [t for t in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                        text=True).stdout.splitlines() if bed["NFT_TABLE"] in t]
    routes = [r for r in subprocess.run(["ip", "route"], capture_output=True,
                                        text=True).stdout.splitlines()
              if any(x in r for x in (bed["POD_NET"], bed["SERVICE_NET"], bed["HOST_IF"],
                                      bed["NODE_POD_CIDR"]))]
    cgroups = [str(d) for d in Path("/sys/fs/cgroup").glob(f"*/{bed['CGROUP_ROOT'].lstrip('/')}")]
    log_links = [str(p) for p in Path("/var/log/containers").glob("*.log")
                 if p.is_symlink() and str(p.readlink()).startswith(run_dir)]
    return {"processes": processes, "mounts": mounts, "network namespaces": netns,
            "links": links, "nftables tables": tables, "routes": routes, "cgroups": cgroups,
            "container log links": log_links}


def test_second_cluster_with_a_real_node_up_twice_then_down_leaves_nothing(
        kubeconfig: str) -> None:
    name = f"lc{os.getpid()}"
    env = {**os.environ, "MODELDEPLOY_CLUSTER": name, **SECOND_CLUSTER_NET}
    bed = cluster_env(env)
    own_kubeconfig = ROOT / ".cache" / f"cluster-{name}" / "kubeconfig"
    kwok_dir = str(ROOT / ".cache" / "kwok" / "clusters" / name)
    try:
        started = time.monotonic()
        first = _sh("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert time.monotonic() - started < 180, "cluster-up with cached binaries took over 3 min"

        again = _sh("up", env)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout

        kctl = ["kubectl", "--kubeconfig", str(own_kubeconfig)]
        version = json.loads(subprocess.run([*kctl, "version", "-o", "json"],
                                            capture_output=True, text=True).stdout)
        assert version["serverVersion"]["gitVersion"] == KUBE_VERSION

        nodes = json.loads(subprocess.run([*kctl, "get", "nodes", "-o", "json"],
                                          capture_output=True, text=True, check=True).stdout)
        gpus = {n["metadata"]["name"]: n["status"]["allocatable"].get("nvidia.com/gpu")
                for n in nodes["items"]}
        assert gpus == {"gpu-a": "8", "gpu-b": "2", "cpu-a": None,
                        bed["NODE_NAME"]: bed["SIMULATED_GPUS"]}
        products = {n["metadata"]["labels"].get("nvidia.com/gpu.product") for n in nodes["items"]}
        assert len(products - {None}) == 3, "each GPU node kind carries its own product"
        for n in nodes["items"]:
            taints = n["spec"].get("taints") or []
            has_gpu_taint = any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
                                for t in taints)
            assert has_gpu_taint == (n["metadata"]["name"] != "cpu-a")
        # The real node runs the cluster DNS: a real pod with mounts, cgroups, a veth.
        dns = subprocess.run([*kctl, "get", "pods", "-n", "kube-system", "-l",
                              "k8s-app=kube-dns", "-o", "jsonpath={.items[0].status.phase}"],
                             capture_output=True, text=True).stdout
        assert dns == "Running"

        server = urlparse(yaml.safe_load(own_kubeconfig.read_text())["clusters"][0]["cluster"]
                          ["server"])
        assert _port_open(server.hostname, server.port) and _listening(server.port)
        present = _leftovers(bed, kwok_dir)
        missing = [kind for kind, found in present.items() if not found]
        assert not missing, f"expected while up (else the check below proves nothing): {missing}"
    finally:
        down = _sh("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    left = {kind: found for kind, found in _leftovers(bed, kwok_dir).items() if found}
    assert not left, f"left behind by cluster-down: {left}"
    # Not connect(): the port is in the ephemeral range, where a busy machine's connect
    # to a port nobody listens on can occasionally self-connect and "succeed".
    assert not _listening(server.port), "the API server port is still bound"
    assert not own_kubeconfig.exists()
    # The node's image store is kept by design (cluster-down keeps imported images);
    # this throwaway cluster's goes too.
    shutil.rmtree(bed["NODE_DIR"], ignore_errors=True)


def test_user_kube_dir_is_never_touched(kubeconfig: str) -> None:
    # The kubeconfig in use is the project's own, under the ignored cache folder.
    assert Path(kubeconfig).is_relative_to(ROOT / ".cache")
    home_config = Path.home() / ".kube" / "config"
    if home_config.exists():
        assert "kwok-modeldeploy" not in home_config.read_text()
