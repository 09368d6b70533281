"""Progress under restarts: after an operator restart at N converged ModelDeployments,
how soon does it write, and how soon are the ones changed while it was down reconciled?

N resources are created and converged once. Then, for each round and each operator
variant (the baseline checkout and this one, alternating, in the same run on the same
cluster): the operator is stopped, K resources get a spec change (the last K by name,
where a FIFO queue fed in listing order serves them last), and the variant is started.
Measured from its start:

- first_write_seconds: its first mutating request (`modeldeploy_api_writes_total`);
- changed_converged_seconds: every changed resource's status describes its generation;
- from its JSON log, where the time before the first write goes: startup_seconds (the
  interpreter, imports and kopf until the startup handler), listed_seconds (every child
  kind listed: reconciles wait for it), first_write_logged_seconds.

Usage (`make bench-restart` starts the separate `bench` cluster and a baseline worktree):

    python benchmarks/restart_bench.py --n 1000 --changed 10 --rounds 2 \
        --baseline .cache/baseline-<commit> --kubeconfig .cache/cluster-bench/kubeconfig \
        --out benchmarks/results/restart.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from operator_bench import Operator, manifest, prepare


def kubectl(kubeconfig: str, *args: str, input: str | None = None) -> str:
    return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input,
                          capture_output=True, text=True, check=True).stdout


def converged(kubeconfig: str, namespace: str, names: list[str]) -> bool:
    """Whether each named resource's status describes its current generation."""
    out = kubectl(kubeconfig, "get", "modeldeployments", "-n", namespace, *names, "-o",
                  "jsonpath={range .items[*]}{.metadata.generation}={.status.observedGeneration}"
                  "{\"\\n\"}{end}")
    pairs = [line.split("=") for line in out.splitlines() if line]
    return len(pairs) == len(names) and all(a == b for a, b in pairs)


def change(kubeconfig: str, namespace: str, names: list[str], replicas: int) -> None:
    """A spec change (a new generation, and an HPA to re-apply) for each name."""
    patch = json.dumps({"spec": {"autoscaling": {"maxReplicas": replicas}}})

    def one(name: str) -> None:
        kubectl(kubeconfig, "patch", "modeldeployment", name, "-n", namespace,
                "--type=merge", "-p", patch)

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))


def milestones(log: Path, started_at: float) -> dict[str, float | None]:
    """Seconds from the process start to the log's milestones (JSON lines, wall clock):
    the operator's startup handler ran, every child kind was listed, the first write."""
    marks: dict[str, float | None] = {"startup_seconds": None, "listed_seconds": None,
                                      "first_write_logged_seconds": None}
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        t = dt.datetime.fromisoformat(record["timestamp"]).timestamp() - started_at
        message = record.get("message", "")
        key = ("startup_seconds" if message.startswith("modeldeploy operator started") else
               "listed_seconds" if "children listed in" in message else
               "first_write_logged_seconds" if message.startswith("applied ") else None)
        if key and marks[key] is None:
            marks[key] = round(t, 2)
    return marks


def restart_once(op_args: dict[str, Any], kubeconfig: str, namespace: str,
                 changed: list[str], timeout: float) -> dict[str, float | None]:
    op_args["log"].unlink(missing_ok=True)  # the Operator appends: start this run's log afresh
    t0, started_at = time.monotonic(), time.time()
    op = Operator(**op_args, extra=("--log-format", "json"))
    first_write = done = None
    try:
        while time.monotonic() < t0 + timeout and done is None:
            try:
                if first_write is None and op.writes() > 0:
                    first_write = time.monotonic() - t0
            except OSError:
                pass  # metrics not served yet
            if first_write is not None and converged(kubeconfig, namespace, changed):
                done = time.monotonic() - t0
            time.sleep(0.1)
    finally:
        op.stop()
    return {"first_write_seconds": None if first_write is None else round(first_write, 2),
            "changed_converged_seconds": None if done is None else round(done, 2),
            **milestones(op_args["log"], started_at)}


def summary(runs: list[dict[str, float | None]], key: str) -> dict[str, float | None]:
    xs = [r[key] for r in runs if r[key] is not None]
    if len(xs) < len(runs):
        return {"min": None, "median": None, "max": None}
    return {"min": min(xs), "median": round(statistics.median(xs), 2), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--changed", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline", default="", help="a checkout of the baseline commit")
    p.add_argument("--baseline-label", default="baseline")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--add-nodes", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", default="")
    p.add_argument("--logdir", default="")
    args = p.parse_args(argv)
    logdir = prepare(p, args)
    kc = args.kubeconfig
    ns = f"restart-n{args.n}-{uuid.uuid4().hex[:6]}"
    kubectl(kc, "create", "namespace", ns)
    names = [f"md-{i:04d}" for i in range(args.n)]
    changed = names[-args.changed:]
    variants: list[tuple[str, Path | None]] = [("current", None)]
    if args.baseline:
        variants.insert(0, (args.baseline_label, Path(args.baseline).resolve()))
    runs: dict[str, list[dict[str, float | None]]] = {label: [] for label, _ in variants}
    try:
        t0 = time.monotonic()
        kubectl(kc, "apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [manifest(n, ns) for n in names]}))
        op = Operator(ns, kc, 300.0, logdir / "restart-initial.log")
        while not converged(kc, ns, names) and time.monotonic() < t0 + args.timeout:
            time.sleep(2)
        op.stop()
        print(f">> {args.n} converged in {time.monotonic() - t0:.0f}s", flush=True)
        replicas = 2
        for r in range(args.rounds):
            for label, source in variants:
                replicas = 3 if replicas == 2 else 2
                change(kc, ns, changed, replicas)
                result = restart_once(
                    {"namespace": ns, "kubeconfig": kc, "resync": 300.0, "source": source,
                     "log": logdir / f"restart-{label}-{r}.log"}, kc, ns, changed, args.timeout)
                print(f">> round {r} {label}: {result}", flush=True)
                runs[label].append(result)
    finally:
        subprocess.run(["kubectl", "--kubeconfig", kc, "delete", "namespace", ns,
                        "--wait=false"], capture_output=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
           "n": args.n, "changed": args.changed, "rounds": args.rounds,
           "command": "python benchmarks/restart_bench.py " + " ".join(argv or sys.argv[1:]),
           "variants": {label: {"runs": rs,
                                "first_write_seconds": summary(rs, "first_write_seconds"),
                                "changed_converged_seconds":
                                    summary(rs, "changed_converged_seconds")}
                        for label, rs in runs.items()}}
    print(json.dumps(out["variants"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
