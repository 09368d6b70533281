"""Killing the operator mid-reconcile of many resources and starting it again converges
every one, with no duplicate and no orphan children."""

from __future__ import annotations

import pytest
from operator_helpers import (
    apply,
    assert_children_complete,
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

    assert_children_complete(kubectl, namespace, uids)
