"""PNG plots of the operator benchmark (the server sweeps plot with `server_bench.py plot`).

    python benchmarks/plots.py operator results/operator.json [more.json ...] \
        results/operator.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def operator_plot(inputs: list[str], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cpus = [], set()
    for path in inputs:
        data = json.loads(Path(path).read_text())
        rows += data["results"]
        cpus.add(data.get("cpus"))
    rows.sort(key=lambda r: r["n"])
    conv = [r for r in rows if r.get("converged")]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    ns = [r["n"] for r in conv]
    a1.plot(ns, [r["total_seconds"] for r in conv], "o-", label="all converged (total)")
    a1.plot(ns, [r["p95_seconds"] for r in conv], "s--", label="per CR p95")
    a1.plot(ns, [r["p50_seconds"] for r in conv], "^--", label="per CR p50")
    for r in rows:
        if not r.get("converged"):
            a1.annotate(f"N={r['n']}: {r['converged_count']} done\nafter the "
                        f"{r.get('timeout_seconds', '?')} s limit", (r["n"], 0),
                        textcoords="offset points", xytext=(-60, 30), fontsize=8)
    a1.set_title("time to converge (s)")
    a2.plot([r["n"] for r in rows], [r["peak_rss_mib"] for r in rows], "o-")
    a2.set_title("operator peak RSS (MiB)")
    a3.plot(ns, [r["operator_writes_per_cr"] for r in conv], "o-", label="operator writes / CR")
    a3.plot(ns, [r["apiserver_requests_per_cr"] for r in conv], "s-",
            label="API server requests / CR (all clients)")
    a3.set_title("API cost per CR")
    for ax in (a1, a2, a3):
        ax.set_xscale("log")
        ax.set_xlabel("N ModelDeployments applied at once")
        ax.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a3.legend(fontsize=8)
    cpu_text = "/".join(map(str, cpus))
    fig.suptitle(f"modeldeploy operator, local control plane + kwok, {cpu_text} CPUs")
    fig.tight_layout()
    fig.savefig(output, dpi=100)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "operator":
        print(__doc__)
        return 2
    operator_plot(argv[1:-1], argv[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
