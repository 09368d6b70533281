"""Killing the operator mid-reconcile of many resources and starting it again converges
every one, with no duplicate and no orphan children."""

from __future__ import annotations

from collections import Counter

import pytest
from operator_helpers import (
    CHILD_KINDS,
    apply,
    crd,  # noqa: F401 - fixture
    items,
    manifest,
    operator_args,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.e2e
N = 12


def test_kill_mid_reconcile_then_converge(kubectl, namespace, run_operator,
                                          crd) -> None:  # noqa: F811
    names = [f"r{i}" for i in range(N)]
    for name in names:
        apply(kubectl, namespace, manifest(name, {"autoscaling": {"maxReplicas": 2}}))
    first = run_operator(*operator_args(namespace, "--workers", "2"))
    # kill it as soon as it has started writing children, before it has finished
    wait_for(lambda: items(kubectl, namespace, "deployments"), 60, interval=0.05,
             what="the first child")
    first.stop(kill=True)
    built = len(items(kubectl, namespace, "deployments"))
    assert built < N, f"operator finished all {N} before it was killed; kill earlier"

    run_operator(*operator_args(namespace))
    uids = {}
    for name in names:
        md = wait_phase(kubectl, namespace, name, timeout=90)
        uids[name] = md["metadata"]["uid"]

    children = items(kubectl, namespace, CHILD_KINDS,
                     "app.kubernetes.io/managed-by=modeldeploy,modeldeploy.io/name")
    per_kind = Counter((c["kind"], c["metadata"]["labels"]["modeldeploy.io/name"])
                       for c in children)
    for name in names:
        for kind, count in [("Deployment", 1), ("Service", 1), ("NetworkPolicy", 1),
                            ("HorizontalPodAutoscaler", 1), ("PodDisruptionBudget", 1),
                            ("ConfigMap", 1), ("Secret", 2)]:
            assert per_kind[(kind, name)] == count, (kind, name, per_kind[(kind, name)])
    for c in children:
        owner = c["metadata"]["labels"]["modeldeploy.io/name"]
        refs = c["metadata"].get("ownerReferences") or []
        assert [r["uid"] for r in refs] == [uids[owner]], c["metadata"]["name"]
    # one ReplicaSet and one pod per resource: nothing duplicated by the restart
    rs = Counter(r["metadata"]["labels"]["modeldeploy.io/name"]
                 for r in items(kubectl, namespace, "replicasets"))
    assert set(rs.values()) == {1}
    pods = Counter(p["metadata"]["labels"]["modeldeploy.io/name"]
                   for p in items(kubectl, namespace, "pods"))
    assert pods == Counter(dict.fromkeys(names, 1))
