"""reconcile() against an in-memory store: converges, then a resync writes nothing.

The e2e tests prove the same against the real API server; this one pins the logic
(compare, prune, status, events) fast and without a cluster.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from helpers_operator import BASE
from modeldeploy.context import Context
from modeldeploy.kube import Kind
from modeldeploy.reconcile import reconcile

pytestmark = pytest.mark.unit


class FakeKube:
    """Stores objects by (kind, namespace, name); counts writes by verb."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.rv = 0

    def _key(self, kind: str, name: str, ns: str | None) -> tuple[str, str | None, str]:
        return (kind, ns, name)

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        self.objects[self._key(obj["kind"], meta["name"], meta.get("namespace"))] = obj
        return copy.deepcopy(obj)

    async def get(self, k: Kind, name: str, namespace: str | None = None) -> dict | None:
        obj = self.objects.get(self._key(k.kind, name, namespace))
        return copy.deepcopy(obj) if obj else None

    async def list(self, k: Kind, namespace: str | None,
                   labels: dict[str, str] | None = None) -> list[dict]:
        out = []
        for (kind, ns, _), obj in self.objects.items():
            if kind != k.kind or (namespace not in (None, "*") and ns != namespace):
                continue
            have = obj["metadata"].get("labels") or {}
            if all(have.get(a) == b for a, b in (labels or {}).items()):
                out.append(copy.deepcopy(obj))
        return out

    async def apply(self, obj: dict[str, Any]) -> dict:
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        observed = copy.deepcopy(obj)
        # what an API server adds: defaults and status
        observed["metadata"]["uid"] = "child-uid"
        if obj["kind"] == "Deployment":
            observed["spec"].setdefault("progressDeadlineSeconds", 600)
            observed["status"] = {"readyReplicas": 1, "updatedReplicas": 1,
                                  "observedGeneration": 1}
            observed["metadata"]["generation"] = 1
        return self._store(observed)

    async def create(self, obj: dict[str, Any]) -> dict:
        self.writes.append(("create", obj["kind"], obj["metadata"].get("name", "")))
        if obj["kind"] == "Event":
            return obj
        return self._store(obj)

    async def replace(self, obj: dict[str, Any]) -> dict:
        self.writes.append(("replace", obj["kind"], obj["metadata"]["name"]))
        return self._store(obj)

    async def delete(self, k: Kind, name: str, namespace: str | None = None) -> None:
        self.writes.append(("delete", k.kind, name))
        self.objects.pop(self._key(k.kind, name, namespace), None)

    async def patch_status(self, k: Kind, name: str, namespace: str,
                           status: dict[str, Any]) -> None:
        self.writes.append(("status", k.kind, name))


def body(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns", "uid": "uid-1",
                         "generation": generation},
            "spec": spec}


def run(kube: FakeKube, b: dict[str, Any]) -> None:
    ctx = Context(kube=kube, operator_namespace="ops")  # type: ignore[arg-type]
    for obj in kube.objects.values():  # what the informers would have delivered
        ctx.children.put(copy.deepcopy(obj))
    asyncio.run(reconcile(ctx, b))


def test_converges_then_resync_writes_nothing() -> None:
    kube = FakeKube()
    spec = {**BASE, "network": {"ingress": {"host": "x.example"}},
            "autoscaling": {"maxReplicas": 2}}
    b = body(spec)
    run(kube, b)
    kinds = sorted(k for v, k, _ in kube.writes if v == "apply")
    assert kinds == sorted(["Secret", "Secret", "Deployment", "Service", "Ingress",
                            "NetworkPolicy", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ConfigMap"])
    assert ("create", "Secret", "modeldeploy-ca") in kube.writes
    assert ("create", "PriorityClass", "modeldeploy-normal") in kube.writes
    assert ("status", "ModelDeployment", "m") in kube.writes

    kube.writes.clear()
    run(kube, b)  # b["status"] now holds what was written
    assert kube.writes == []


def test_drift_and_removal() -> None:
    kube = FakeKube()
    spec = {**BASE, "network": {"ingress": {"host": "x.example"}}}
    b = body(spec)
    run(kube, b)
    # drift: someone edits the Service
    kube.objects[("Service", "ns", "m")]["spec"]["ports"][0]["port"] = 1
    kube.writes.clear()
    run(kube, b)
    assert [w for w in kube.writes if w[0] == "apply"] == [("apply", "Service", "m")]
    # removal: no ingress, no TLS → both pruned, the API key secret stays
    b2 = body({**BASE, "tls": {"mode": "disabled"}}, generation=2)
    b2["status"] = b.get("status")
    kube.writes.clear()
    run(kube, b2)
    deleted = sorted((k, n) for v, k, n in kube.writes if v == "delete")
    assert deleted == [("Ingress", "m"), ("Secret", "m-tls")]
    assert ("Secret", "ns", "m-api-keys") in kube.objects


def test_keys_and_certificate_are_stable_across_resyncs() -> None:
    kube = FakeKube()
    b = body(dict(BASE))
    run(kube, b)
    keys = kube.objects[("Secret", "ns", "m-api-keys")]["data"]["keys"]
    cert = kube.objects[("Secret", "ns", "m-tls")]["data"]["tls.crt"]
    run(kube, b)
    assert kube.objects[("Secret", "ns", "m-api-keys")]["data"]["keys"] == keys
    assert kube.objects[("Secret", "ns", "m-tls")]["data"]["tls.crt"] == cert


def test_concurrent_first_reconciles_create_the_ca_once() -> None:
    from modeldeploy.inputs import ensure_ca

    class SlowKube(FakeKube):  # a real GET yields to the other reconciles
        async def get(self, k: Kind, name: str, namespace: str | None = None) -> dict | None:
            await asyncio.sleep(0.01)
            return await super().get(k, name, namespace)

    kube = SlowKube()
    ctx = Context(kube=kube, operator_namespace="ops")  # type: ignore[arg-type]

    async def main() -> list[Any]:
        return await asyncio.gather(*(ensure_ca(ctx) for _ in range(4)))
    cas = asyncio.run(main())
    assert [w for w in kube.writes if w[1] == "Secret"] == [("create", "Secret",
                                                              "modeldeploy-ca")]
    assert all(ca is cas[0] for ca in cas)
