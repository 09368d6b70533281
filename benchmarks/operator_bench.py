"""Operator at scale: apply N ModelDeployments at once against a real control plane.

For each N it runs the operator as a real subprocess (`python -m modeldeploy run`) in a
fresh namespace and measures:

- convergence: time until every CR has all of its children (seen on watches) and its
  status written for its generation; total, and per CR p50/p95 from its own creation;
- the operator's peak RSS (psutil, sampled every 0.2 s);
- API requests: the API server's `apiserver_request_total` delta per resource and verb,
  and the operator's own counter of mutating requests (`modeldeploy_api_writes_total`);
- writes during a no-op resync (target zero): the operator's counter over one resync
  period plus a margin, after the writes settled;
- an operator restart: time until the new process has reconciled all N again, with the
  writes it sent doing so.

Usage (the cluster must be up; `make bench` starts a separate one named `bench`):

    python benchmarks/operator_bench.py --sizes 10 100 1000 \
        --kubeconfig .cache/cluster-bench/kubeconfig --out benchmarks/results/operator.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
from modeldeploy.metrics import metric_sum
from procs import stop_process

ROOT = Path(__file__).resolve().parents[1]

# Every child a fully featured CR gets (checked against `modeldeploy render` at start).
SPEC: dict[str, Any] = {
    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "contextWindow": 32768},
    "resources": {"gpus": 0, "cpu": "100m", "memory": "128Mi", "sharedMemory": "64Mi"},
    "tls": {"mode": "operator"},
    "auth": {"apiKeys": {"count": 2}},
    "network": {"ingress": {"host": "bench.example"}},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    "clawdbot": {"enabled": True},
}
# (watched resource, kind as `modeldeploy render` prints it)
WATCHED = [("Deployment", "apps"), ("Service", ""), ("Secret", ""), ("ConfigMap", ""),
           ("NetworkPolicy", "networking.k8s.io"), ("Ingress", "networking.k8s.io"),
           ("HorizontalPodAutoscaler", "autoscaling"), ("PodDisruptionBudget", "policy")]


def manifest(name: str, namespace: str) -> dict[str, Any]:
    spec = json.loads(json.dumps(SPEC))
    spec["network"]["ingress"]["host"] = f"{name}.bench.example"
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def expected_children(name: str = "x") -> set[tuple[str, str]]:
    """(kind, name) of the namespaced children the operator renders for one CR."""
    import yaml

    out = subprocess.run([sys.executable, "-m", "modeldeploy", "render", "-f", "-"],
                         input=yaml.safe_dump(manifest(name, "default")), text=True,
                         capture_output=True, check=True, cwd=ROOT).stdout
    kids = set()
    for doc in yaml.safe_load_all(out):
        if doc and doc["metadata"].get("namespace", "default") and doc["kind"] != "PriorityClass":
            kids.add((doc["kind"], doc["metadata"]["name"].replace(name, "{}", 1)))
    return kids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def by_labels(text: str, name: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for line in text.splitlines():
        m = re.match(r"^([^{ ]+)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        k = tuple(got.get(x, "") for x in keys)
        out[k] = out.get(k, 0.0) + float(m.group(4))
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


class Operator:
    """`python -m modeldeploy run` as a subprocess, with an RSS sampler."""

    def __init__(self, namespace: str, kubeconfig: str, resync: float, log: Path,
                 workers: int = 0, source: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1"}
        if source is not None:  # another checkout's operator package (a baseline)
            env["PYTHONPATH"] = str(source / "operator")
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy", "run", "--namespace", namespace,
             "--operator-namespace", namespace, "--resync-seconds", str(resync),
             "--metrics-port", str(self.port),
             *(["--workers", str(workers)] if workers else []), *extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._ps = psutil.Process(self.proc.pid)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self._ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    def scrape(self) -> str:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                            timeout=5) as r:
                    return r.read().decode()
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def writes(self) -> float:
        return metric_sum(self.scrape(), "modeldeploy_api_writes_total")

    def reconciles(self) -> float:
        return metric_sum(self.scrape(), "modeldeploy_reconciles_total", result="ok")

    def stop(self) -> None:
        self._stop.set()
        stop_process(self.proc, 20)
        self.log.close()


class Watcher:
    """First-seen times of children and of the CR status, from one watch per kind."""

    def __init__(self, client: Any, namespace: str, md_res: Any) -> None:
        from lightkube.resources.apps_v1 import Deployment
        from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
        from lightkube.resources.core_v1 import ConfigMap, Secret, Service
        from lightkube.resources.networking_v1 import Ingress, NetworkPolicy
        from lightkube.resources.policy_v1 import PodDisruptionBudget

        self.seen: dict[tuple[str, str], float] = {}
        self.status: dict[str, float] = {}
        self.lock = threading.Lock()
        self.client, self.namespace = client, namespace
        kinds = [Deployment, Service, Secret, ConfigMap, NetworkPolicy, Ingress,
                 HorizontalPodAutoscaler, PodDisruptionBudget]
        self.threads = [threading.Thread(target=self._watch, args=(k,), daemon=True)
                        for k in kinds]
        self.threads.append(threading.Thread(target=self._watch_md, args=(md_res,),
                                             daemon=True))
        for t in self.threads:
            t.start()

    def _watch(self, res: Any) -> None:
        kind = res.__name__
        while True:
            try:
                for _typ, obj in self.client.watch(res, namespace=self.namespace):
                    key = (kind, obj.metadata.name)
                    with self.lock:
                        self.seen.setdefault(key, time.monotonic())
            except Exception:  # noqa: BLE001 - a watch that ends is restarted
                time.sleep(0.2)

    def _watch_md(self, res: Any) -> None:
        while True:
            try:
                for _typ, obj in self.client.watch(res, namespace=self.namespace):
                    st = obj.get("status") or {}
                    gen = obj.metadata.generation
                    if st.get("observedGeneration") == gen and st.get("phase"):
                        with self.lock:
                            self.status.setdefault(obj.metadata.name, time.monotonic())
            except Exception:  # noqa: BLE001
                time.sleep(0.2)

    def done_at(self, name: str, kids: set[tuple[str, str]]) -> float | None:
        with self.lock:
            ts = [self.seen.get((k, n.format(name))) for k, n in kids]
            ts.append(self.status.get(name))
        if any(t is None for t in ts):
            return None
        return max(ts)  # type: ignore[type-var]


def apiserver_metrics(kubeconfig: str) -> str:
    return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "--raw", "/metrics"],
                          capture_output=True, text=True, check=True).stdout


def autoscaler_reported(kubeconfig: str, namespace: str) -> int:
    """How many CRs carry an AutoscalerReady condition fed by the HPA controller (not the
    operator's own placeholder "Pending: the autoscaler has not reported yet")."""
    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "-n", namespace,
                          "modeldeployments", "-o", "json"], capture_output=True, text=True,
                         check=True).stdout
    return sum(1 for md in json.loads(out)["items"]
               if any(c.get("type") == "AutoscalerReady" and c.get("reason") != "Pending"
                      for c in (md.get("status") or {}).get("conditions") or []))


def wait_settled(op: Operator, quiet: float = 3.0, timeout: float = 300) -> float:
    """Wait until the operator's write counter has not moved for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = op.writes(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = op.writes()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    return last


def run_one(n: int, kubeconfig: str, resync: float, timeout: float, logdir: Path,
            keep: bool = False, workers: int = 0) -> dict[str, Any]:
    from lightkube import Client, KubeConfig
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace

    kids = expected_children()
    client = Client(KubeConfig.from_file(kubeconfig), field_manager="bench")
    md_res = create_namespaced_resource("modeldeploy.io", "v1alpha1", "ModelDeployment",
                                        "modeldeployments")
    ns = f"bench-n{n}-{uuid.uuid4().hex[:6]}"
    client.create(Namespace(metadata=ObjectMeta(name=ns)))
    result: dict[str, Any] = {"n": n, "namespace": ns, "children_per_cr": len(kids),
                              "workers": workers or "default",
                              "resync_seconds": resync, "timeout_seconds": timeout}
    op = Operator(ns, kubeconfig, resync, logdir / f"operator-{n}.log", workers)
    try:
        op.scrape()  # up and serving metrics
        time.sleep(1.0)  # its watches are open
        watcher = Watcher(client, ns, md_res)
        time.sleep(0.5)
        api_before = apiserver_metrics(kubeconfig)
        writes_before = op.writes()

        names = [f"md-{i:04d}" for i in range(n)]
        created: dict[str, float] = {}

        def create(name: str) -> None:
            client.create(md_res.from_dict(manifest(name, ns)))
            created[name] = time.monotonic()

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        t_created = time.monotonic()
        done: dict[str, float] = {}
        deadline = t0 + timeout
        while len(done) < n and time.monotonic() < deadline:
            for name in names:
                if name not in done and (t := watcher.done_at(name, kids)) is not None:
                    done[name] = t
            time.sleep(0.2)
        converged = len(done) == n
        lat = [done[k] - created[k] for k in done]
        result.update({
            "create_seconds": round(t_created - t0, 2),
            "converged": converged, "converged_count": len(done),
            "total_seconds": round(max(done.values()) - t0, 2) if done else None,
            "p50_seconds": round(pct(lat, 50), 3), "p95_seconds": round(pct(lat, 95), 3),
            "max_seconds": round(max(lat), 3) if lat else None,
        })
        settled = wait_settled(op, timeout=300 if converged else 5)
        api_after = apiserver_metrics(kubeconfig)
        result["operator_writes"] = settled - writes_before
        result["operator_writes_per_cr"] = round((settled - writes_before) / n, 2)
        result["operator_writes_by_kind"] = {
            k[0] + "/" + k[1]: v for k, v in by_labels(op.scrape(), "modeldeploy_api_writes_total",
                                                       ("kind", "verb")).items()}
        before = by_labels(api_before, "apiserver_request_total", ("resource", "verb"))
        after = by_labels(api_after, "apiserver_request_total", ("resource", "verb"))
        delta = {f"{r}/{v}": after[(r, v)] - before.get((r, v), 0) for r, v in after
                 if after[(r, v)] - before.get((r, v), 0) > 0}
        total = sum(delta.values())
        # The bench itself sent n POSTs of modeldeployments (and a few watches).
        result["apiserver_requests"] = total
        result["apiserver_requests_per_cr"] = round((total - n) / n, 1)
        result["apiserver_requests_by_resource_verb"] = dict(
            sorted(delta.items(), key=lambda kv: -kv[1]))
        result["peak_rss_mib"] = round(op.peak_rss / 2**20, 1)

        if not converged:  # what follows needs a converged set; say so, do not guess
            result["skipped"] = "not converged within --timeout: no-op resync and restart " \
                                "not measured"
            return result
        # no-op resync: one full resync period (plus margin) with nothing changed. First
        # let the slow observers finish: the HPA controller reports its (failing) metric
        # every 15 s, which the operator rightly copies into an AutoscalerReady condition.
        t_hpa = time.monotonic()
        while time.monotonic() < t_hpa + 90 and autoscaler_reported(kubeconfig, ns) < n:
            time.sleep(1)
        result["autoscaler_reported"] = autoscaler_reported(kubeconfig, ns)
        wait_settled(op)
        w0, r0 = op.writes(), op.reconciles()
        by0 = by_labels(op.scrape(), "modeldeploy_api_writes_total", ("kind", "verb"))
        time.sleep(resync + 5)
        w1, r1 = op.writes(), op.reconciles()
        by1 = by_labels(op.scrape(), "modeldeploy_api_writes_total", ("kind", "verb"))
        result["noop_writes_by_kind"] = {f"{k[0]}/{k[1]}": v - by0.get(k, 0)
                                         for k, v in by1.items() if v - by0.get(k, 0)}
        result["noop_window_seconds"] = resync + 5
        result["noop_reconciles"] = r1 - r0
        result["noop_writes"] = w1 - w0
        result["peak_rss_mib"] = round(op.peak_rss / 2**20, 1)

        # restart: a new process must reconcile all n again
        op.stop()
        t_restart = time.monotonic()
        op = Operator(ns, kubeconfig, max(resync, 300.0), logdir / f"operator-{n}-restart.log",
                      workers)
        op.scrape()
        while op.reconciles() < n and time.monotonic() < t_restart + timeout:
            time.sleep(0.2)
        t_reconciled = time.monotonic()
        result["restart_reconcile_seconds"] = round(t_reconciled - t_restart, 2)
        result["restart_all_reconciled"] = op.reconciles() >= n
        result["restart_writes"] = wait_settled(op)
        result["restart_writes_by_kind"] = {
            k[0] + "/" + k[1]: v for k, v in by_labels(op.scrape(), "modeldeploy_api_writes_total",
                                                       ("kind", "verb")).items()}
        result["restart_peak_rss_mib"] = round(op.peak_rss / 2**20, 1)
    finally:
        op.stop()
        if not keep:
            # Wait for the garbage collector: deleting N CRs' children and pods is heavy
            # work for the control plane, and the next N must not be measured beside it.
            t_del = time.monotonic()
            subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "delete", "namespace", ns,
                            "--timeout=600s"], capture_output=True)
            result["cleanup_seconds"] = round(time.monotonic() - t_del, 1)
    return result


def add_nodes(kubeconfig: str, count: int) -> None:
    """Extra kwok fake nodes (64 CPU, 250 pods each) so N=1000 pods can be scheduled."""
    docs = []
    for i in range(count):
        cap = {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "200Gi"}
        docs.append({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": f"bench-cpu-{i}", "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": f"bench-cpu-{i}"}},
            "status": {"allocatable": cap, "capacity": cap}})
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "apply", "-f", "-"],
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
                   text=True, check=True, capture_output=True)


def prepare(p: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """What every operator benchmark does first (its --kubeconfig, --logdir and --add-nodes):
    returns the log directory."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: blocks
    if not args.kubeconfig:
        p.error("--kubeconfig or $KUBECONFIG is required")
    logdir = Path(args.logdir or (ROOT / ".cache" / "bench-logs"))
    logdir.mkdir(parents=True, exist_ok=True)
    if args.add_nodes:
        add_nodes(args.kubeconfig, args.add_nodes)
    return logdir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--resync-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=600.0, help="per N, for convergence")
    p.add_argument("--add-nodes", type=int, default=0,
                   help="add this many 250-pod fake nodes first (bench cluster only)")
    p.add_argument("--workers", type=int, default=0,
                   help="the operator's --workers (default: its own default)")
    p.add_argument("--out", default="")
    p.add_argument("--logdir", default="")
    args = p.parse_args(argv)
    logdir = prepare(p, args)
    results = []
    for n in args.sizes:
        r = run_one(n, args.kubeconfig, args.resync_seconds, args.timeout, logdir,
                    workers=args.workers)
        print(json.dumps({k: v for k, v in r.items()
                          if not isinstance(v, dict)}), flush=True)
        results.append(r)
        if args.out:  # written after each N so a cut-short run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(
                {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "cpus": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
