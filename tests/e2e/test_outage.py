"""The operator rides out an API-server outage at any moment, including its own start.

Runs on a control plane of its own (hack/cluster.sh with another name, kwok nodes only),
because it kills -9 that cluster's kube-apiserver and etcd: the shared cluster, its real
node and the tests that use them are left alone. `cluster.sh start` starts the killed
processes again (kwokctl's binary runtime, as a kubelet restarts a static pod).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import operators
from modeldeploy.apihealth import BACKOFF_SECONDS
from modeldeploy.metrics import metric_sum
from operator_helpers import (
    ROOT,
    assert_children_complete,
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
CLUSTER_SH = ROOT / "hack" / "cluster.sh"
SPEC = {"autoscaling": {"maxReplicas": 2}}  # the children assert_children_complete expects


def kill(cluster_dir: Path, component: str) -> None:
    """kill -9 one process of the control plane, by the pid file kwokctl keeps."""
    proc = psutil.Process(int((cluster_dir / "pids" / f"{component}.pid").read_text()))
    assert any(str(cluster_dir) in arg for arg in proc.cmdline()), proc.cmdline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)


class Cluster:
    """A separate local control plane (kwok nodes, no real node) for outage tests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env = {**os.environ, "MODELDEPLOY_CLUSTER": name}
        self.kubeconfig = str(ROOT / ".cache" / f"cluster-{name}" / "kubeconfig")
        self.dir = ROOT / ".cache" / "kwok" / "clusters" / name

    def sh(self, cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(CLUSTER_SH), cmd], env=self.env,
                              capture_output=True, text=True, timeout=300)

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args],
                              input=input, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def answers(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0

    def explain(self, namespace: str, wait: Callable[[], Any]) -> Any:
        """Run a wait; when it times out, say what the cluster looks like."""
        try:
            return wait()
        except AssertionError as exc:
            state = self.kubectl("get", "modeldeployments,deployments,replicasets,pods,nodes",
                                 "-n", namespace, "-o", "wide", check=False).stdout
            alive = {p.name: psutil.pid_exists(int(p.read_text()))
                     for p in (self.dir / "pids").glob("*.pid")}
            raise AssertionError(f"{exc}\n{state}\ncontrol plane alive: {alive}") from None

    def namespace(self) -> str:
        name = f"o-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(f"outage{os.getpid()}")
    try:
        up = c.sh("up")
        assert up.returncode == 0, up.stdout + up.stderr
        c.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  "crd/modeldeployments.modeldeploy.io")
        yield c
    finally:
        down = c.sh("down")
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture
def run_operator(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest):
    """conftest's run_operator, against this module's cluster (not the shared one)."""
    yield from operators(cluster.kubeconfig, tmp_path, request)


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
        return json.loads(r.read() or b"{}")


def restore(cluster: Cluster) -> None:
    started = cluster.sh("start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert cluster.answers()


def all_observed(cluster: Cluster, namespace: str, names: list[str]) -> dict[str, str] | None:
    """name -> uid once every resource's status describes its generation, else None."""
    listing = json.loads(cluster.kubectl("get", "modeldeployments", "-n", namespace,
                                         "-o", "json").stdout)["items"]
    done = {md["metadata"]["name"]: md["metadata"]["uid"] for md in listing
            if (md.get("status") or {}).get("observedGeneration") ==
            md["metadata"]["generation"] and md["status"].get("phase")}
    return {name: done[name] for name in names} if set(names) <= set(done) else None


def test_operator_started_during_an_outage_waits_then_converges(cluster: Cluster,
                                                                run_operator) -> None:
    namespace = cluster.namespace()
    kill(cluster.dir, "kube-apiserver")
    stopped = time.monotonic()
    assert not cluster.answers()
    health, metrics = free_port(), free_port()
    op = run_operator(*operator_args(namespace, "--health-port", str(health),
                                     "--metrics-port", str(metrics)))
    # Alive and saying what it waits for: /healthz is 200 (the kubelet keeps it).
    wait_for(lambda: "waiting for the API server" in healthz(health).get("apiserver", ""),
             30, what="/healthz to say it waits for the API server")
    assert metric_sum(scrape(metrics), "modeldeploy_apiserver_reachable") == 0
    time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    assert op.proc is not None and op.proc.poll() is None, "the operator exited:\n" + op.log()

    restore(cluster)
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=yaml.safe_dump(manifest("late", SPEC)))
    md = cluster.explain(namespace, lambda: wait_phase(cluster.kubectl, namespace, "late",
                                                       timeout=120))
    assert_children_complete(cluster.kubectl, namespace, {"late": md["metadata"]["uid"]})
    assert op.proc.poll() is None, "the operator restarted"
    wait_for(lambda: metric_sum(scrape(metrics), "modeldeploy_apiserver_reachable") == 1, 30,
             what="the reachability gauge to recover")
    wait_for(lambda: healthz(health).get("apiserver") == "connected to the API server", 30,
             what="/healthz to say it is connected")
    log = op.log()
    assert "Resource observer has failed" not in log and "escalating" not in log, log
    # One line per backoff step of the outage, not one per failed request (dozens failed:
    # every informer lists every 10 s). Twice the steps allow one blip while the API
    # server finishes starting.
    steps = [line for line in log.splitlines() if "API server unreachable" in line]
    assert 1 <= len(steps) <= 2 * len(BACKOFF_SECONDS), steps


def leadership(log: str) -> tuple[list[tuple[float, float]], list[float]]:
    """From one replica's JSON log: the intervals it led, and when each write was logged."""
    intervals: list[tuple[float, float]] = []
    writes: list[float] = []
    began: float | None = None
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        t = dt.datetime.fromisoformat(record["timestamp"]).timestamp()
        message = record.get("message", "")
        if message.startswith("became leader"):
            began = t
        elif message.startswith("stopped leading") and began is not None:
            intervals.append((began, t))
            began = None
        elif message.startswith(("applied ", "pruned ", "reconciled ")):
            writes.append(t)
    if began is not None:
        intervals.append((began, float("inf")))
    return intervals, writes


def test_two_replicas_outage_longer_than_the_lease(cluster: Cluster, run_operator) -> None:
    namespace = cluster.namespace()
    lease = 6  # renew deadline 4 s: a leader cut off stops writing 2 s before expiry
    ports = [free_port(), free_port()]
    ops = [run_operator(*operator_args(namespace, "--leader-election", "--lease-seconds",
                                       str(lease), "--metrics-port", str(p),
                                       "--log-format", "json")) for p in ports]
    for p in ports:
        wait_for(lambda p=p: scrape(p), 30, what=f"metrics on port {p}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=yaml.safe_dump(manifest("before", SPEC)))
    wait_for(lambda: all_observed(cluster, namespace, ["before"]), 60,
             what="the leader to reconcile 'before'")

    kill(cluster.dir, "kube-apiserver")
    # Longer than the lease: every replica must have stepped down and be fenced.
    wait_for(lambda: sum(metric_sum(scrape(p), "modeldeploy_leader") for p in ports) == 0,
             lease * 2, what="the leader to step down while cut off")
    time.sleep(3 * lease)
    restore(cluster)

    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=yaml.safe_dump(manifest("after", SPEC)))
    wait_for(lambda: all_observed(cluster, namespace, ["after"]), 120,
             what="a leader to reconcile 'after' once the API server is back")
    assert all(op.proc is not None and op.proc.poll() is None for op in ops), \
        "a replica exited"
    holder = ((get(cluster.kubectl, namespace, "lease", "modeldeploy-operator") or {})
              .get("spec") or {}).get("holderIdentity")
    assert holder, "nobody holds the lease after the outage"

    led = [leadership(op.log()) for op in ops]
    spans = sorted((start, end, i) for i, (intervals, _) in enumerate(led)
                   for start, end in intervals)
    assert len(spans) >= 2, f"expected a step-down and a new term: {spans}"
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"replicas {a} and {b} led at once: {spans}"
    # Every write a replica logged falls inside one of its own terms (the log line follows
    # the request, so allow the margin the fence keeps before the lease can expire).
    margin = lease / 3
    for i, (intervals, writes) in enumerate(led):
        for t in writes:
            assert any(s <= t <= e + margin for s, e in intervals), \
                f"replica {i} wrote at {t} outside its terms {intervals}"
    assert sum(len(w) for _, w in led) > 0


def test_apiserver_and_etcd_killed_while_200_converge(cluster: Cluster, run_operator) -> None:
    namespace = cluster.namespace()
    names = [f"m{i:03d}" for i in range(200)]
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [manifest(name, SPEC) for name in names]}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(listing))
    op = run_operator(*operator_args(namespace, resync=30))
    wait_for(lambda: len(items(cluster.kubectl, namespace, "deployments")) >= 20, 120,
             interval=0.2, what="the first children")
    kill(cluster.dir, "kube-apiserver")
    kill(cluster.dir, "etcd")
    time.sleep(10)
    restore(cluster)
    built = len(items(cluster.kubectl, namespace, "deployments"))
    assert built < len(names), "every resource converged before the kill; kill earlier"

    uids = wait_for(lambda: all_observed(cluster, namespace, names), 420, interval=2,
                    what="all 200 to converge after the outage")
    assert op.proc is not None and op.proc.poll() is None, "the operator restarted"
    # The controller-manager, restarted too, creates the ReplicaSets and pods at its pace.
    wait_for(lambda: assert_children_complete(cluster.kubectl, namespace, uids) or True,
             300, interval=3, what="exactly one child of each kind per resource")
