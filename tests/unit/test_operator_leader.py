"""leader: lease expiry and the Lease body a replica writes."""

from __future__ import annotations

import datetime as dt

import pytest
from modeldeploy import leader
from modeldeploy.config import Config

pytestmark = pytest.mark.unit
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def lease(holder: str | None, renewed: dt.datetime | None, seconds: int = 15) -> dict:
    spec: dict = {"leaseDurationSeconds": seconds}
    if holder:
        spec["holderIdentity"] = holder
    if renewed:
        spec["renewTime"] = leader._fmt(renewed)
    return {"spec": spec}


def test_expiry() -> None:
    assert not leader.expired(lease("a", NOW - dt.timedelta(seconds=5)), NOW)
    assert leader.expired(lease("a", NOW - dt.timedelta(seconds=16)), NOW)
    assert leader.expired(lease(None, NOW), NOW)
    assert leader.expired(lease("a", None), NOW)


def test_body_names_this_replica() -> None:
    cfg = Config(operator_namespace="ops", lease_name="l", lease_seconds=9)
    body = leader.lease_body(cfg, NOW, transitions=2, resource_version="7")
    assert body["metadata"] == {"name": "l", "namespace": "ops", "resourceVersion": "7"}
    assert body["spec"]["holderIdentity"] == leader.IDENTITY
    assert body["spec"]["leaseDurationSeconds"] == 9
    assert body["spec"]["leaseTransitions"] == 2
    assert leader._parse(body["spec"]["renewTime"]) == NOW
