"""The watched index of children: newest version wins, a re-listing drops what vanished."""

from __future__ import annotations

from typing import Any

import pytest
from modeldeploy.children import Children
from modeldeploy.constants import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY

pytestmark = pytest.mark.unit
MINE = {LABEL_MANAGED_BY: MANAGED_BY}


def obj(kind: str, name: str, owner: str, rv: int, ns: str = "ns",
        api_version: str = "v1", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv),
                         "labels": {**MINE, LABEL_NAME: owner},
                         "managedFields": [{"manager": "x"}]}, **extra}


def test_grouped_by_owner_and_filtered_by_labels() -> None:
    c = Children()
    assert c.put(obj("Service", "a", "a", 1)) == ("ns", "a")
    c.put(obj("Secret", "a-keys", "a", 2))
    c.put(obj("Service", "b", "b", 3))
    c.put(obj("Service", "a", "a", 4, ns="other"))
    unlabelled = obj("Service", "x", "a", 5)
    del unlabelled["metadata"]["labels"][LABEL_NAME]
    assert c.put(unlabelled) is None
    got = c.of("ns", "a", MINE)
    assert set(got) == {("v1", "Service", "a"), ("v1", "Secret", "a-keys")}
    assert "managedFields" not in got[("v1", "Service", "a")]["metadata"]
    assert c.of("ns", "a", {"other": "label"}) == {}
    assert len(c) == 4


def test_an_older_version_never_replaces_a_newer_one() -> None:
    c = Children()
    c.put(obj("Service", "a", "a", 10, spec={"v": "applied"}))  # an apply's answer
    c.put(obj("Service", "a", "a", 9, spec={"v": "late event"}))  # the watch catching up
    assert c.of("ns", "a", MINE)[("v1", "Service", "a")]["spec"] == {"v": "applied"}
    c.put(obj("Service", "a", "a", 11, spec={"v": "drift"}))
    assert c.of("ns", "a", MINE)[("v1", "Service", "a")]["spec"] == {"v": "drift"}


def test_remove_and_forget() -> None:
    c = Children()
    c.put(obj("Service", "a", "a", 1))
    c.put(obj("Secret", "s", "a", 2))
    assert c.remove(obj("Service", "a", "a", 3)) == ("ns", "a")
    c.forget(("ns", "a"), ("v1", "Secret", "s"))
    assert c.of("ns", "a", MINE) == {} and len(c) == 0


def test_a_relisting_drops_what_vanished_in_its_scope_only() -> None:
    c = Children()
    c.put(obj("Service", "a", "a", 1))
    c.put(obj("Service", "b", "b", 2))
    c.put(obj("Secret", "a-keys", "a", 3))
    c.put(obj("Service", "z", "z", 4, ns="elsewhere"))
    # the watch was down while b's Service was deleted and a's changed
    touched = c.replace("v1", "Service", "ns", [obj("Service", "a", "a", 7, spec={"n": 2})])
    assert touched == {("ns", "a"), ("ns", "b")}
    assert c.of("ns", "b", MINE) == {}
    assert c.of("ns", "a", MINE)[("v1", "Service", "a")]["spec"] == {"n": 2}
    assert ("v1", "Secret", "a-keys") in c.of("ns", "a", MINE)  # other kinds kept
    assert c.of("elsewhere", "z", MINE)  # other namespaces kept
    # an unchanged relisting touches nobody
    assert c.replace("v1", "Service", "ns", [obj("Service", "a", "a", 7, spec={"n": 2})]) \
        == set()
    # a cluster-wide relisting covers every namespace
    assert c.replace("v1", "Service", None, []) == {("ns", "a"), ("elsewhere", "z")}
    assert len(c) == 1
