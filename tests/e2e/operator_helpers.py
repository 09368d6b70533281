"""Helpers and fixtures for the operator's e2e tests (import into test modules).

`crd` installs crds/ once per session (server-side apply, idempotent; CRDs are shared by
every test and never deleted). The rest wrap kubectl for ModelDeployments.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# Small CPU-only pods: many fit on the fake nodes at once.
SMALL: dict[str, Any] = {
    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "contextWindow": 32768},
    "resources": {"gpus": 0, "cpu": "100m", "memory": "128Mi", "sharedMemory": "64Mi"},
}
CHILD_KINDS = ("deployments,services,secrets,configmaps,networkpolicies,ingresses,"
               "horizontalpodautoscalers,poddisruptionbudgets,persistentvolumeclaims")


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    # Right after a fresh start the API server may still refuse a CRD for a moment (once
    # seen on the first test of a run); a few tries, then the last error.
    for attempt in range(3):
        try:
            kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
            kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modeldeployments.modeldeploy.io")
            return
        except AssertionError:
            if attempt == 2:
                raise
            time.sleep(3)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def manifest(name: str, spec: dict[str, Any] | None = None,
             base: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": deep_merge(SMALL if base is None else base, spec or {})}


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any] | str,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
    return kubectl("apply", "-n", namespace, "-f", "-", input=text, check=check)


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = kubectl("get", "-n", namespace, kind, name, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def items(kubectl: Kubectl, namespace: str, kinds: str, selector: str = "") -> list[dict]:
    args = ["get", "-n", namespace, kinds, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(kubectl(*args).stdout)["items"]


def condition(md: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((md or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (AssertionError, OSError) as exc:  # OSError: an endpoint not up yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def wait_phase(kubectl: Kubectl, namespace: str, name: str, phase: str = "Ready",
               timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get(kubectl, namespace, "modeldeployment", name)
        status = (md or {}).get("status") or {}
        ok = status.get("phase") == phase and status.get("observedGeneration") == \
            md["metadata"]["generation"]
        return md if ok else None

    return wait_for(check, timeout, what=f"{namespace}/{name} phase {phase}")


def operator_args(namespace: str, *extra: str, resync: float = 2) -> list[str]:
    return ["--namespace", namespace, "--operator-namespace", namespace,
            "--resync-seconds", str(resync), *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def b64(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def events_for(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    return json.loads(kubectl(
        "get", "events", "-n", namespace, "-o", "json", "--field-selector",
        f"involvedObject.kind=ModelDeployment,involvedObject.name={name}").stdout)["items"]


# What one resource with autoscaling owns (the restart and outage tests' manifests).
CHILDREN_PER_RESOURCE = {"Deployment": 1, "Service": 1, "NetworkPolicy": 1,
                         "HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1,
                         "ConfigMap": 1, "Secret": 2}


def assert_children_complete(kubectl: Kubectl, namespace: str, uids: dict[str, str]) -> None:
    """Each resource (name -> uid) owns exactly its children, each owned by it alone; no
    orphan; one ReplicaSet and one pod each (nothing rolled or duplicated)."""
    children = items(kubectl, namespace, CHILD_KINDS,
                     "app.kubernetes.io/managed-by=modeldeploy,modeldeploy.io/name")
    per_kind = Counter((c["kind"], c["metadata"]["labels"]["modeldeploy.io/name"])
                       for c in children)
    for name in uids:
        for kind, count in CHILDREN_PER_RESOURCE.items():
            assert per_kind[(kind, name)] == count, (kind, name, per_kind[(kind, name)])
    for c in children:
        owner = c["metadata"]["labels"]["modeldeploy.io/name"]
        refs = c["metadata"].get("ownerReferences") or []
        assert owner in uids, f"orphan: {c['kind']} {c['metadata']['name']}"
        assert [r["uid"] for r in refs] == [uids[owner]], c["metadata"]["name"]
    rs = Counter(r["metadata"]["labels"]["modeldeploy.io/name"]
                 for r in items(kubectl, namespace, "replicasets"))
    assert rs == Counter(dict.fromkeys(uids, 1)), rs
    pods = Counter(p["metadata"]["labels"]["modeldeploy.io/name"]
                   for p in items(kubectl, namespace, "pods"))
    assert pods == Counter(dict.fromkeys(uids, 1)), pods
