"""compare: desired ⊆ observed, quantities by value, hash stamps; quantity parsing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from modeldeploy import quantity
from modeldeploy.compare import contains, stamp, up_to_date
from modeldeploy.constants import ANNOTATION_HASH

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "expected"), [
    ("1Gi", Decimal(2 ** 30)), ("500m", Decimal("0.5")), ("0.5", Decimal("0.5")),
    (4, Decimal(4)), ("1k", Decimal(1000)), ("1e3", Decimal(1000)), ("abc", None),
    (True, None), ("api", None), ("8e123456789012", None), ("1e99999999", None),
])
def test_quantity(value: object, expected: Decimal | None) -> None:
    assert quantity.parse(value) == expected


def test_contains_tolerates_server_defaults_and_normalisation() -> None:
    desired = {"spec": {"cpu": "0.5", "mem": "1024Mi", "ports": [{"port": 80}]}}
    observed = {"spec": {"cpu": "500m", "mem": "1Gi", "extra": 1,
                         "ports": [{"port": 80, "protocol": "TCP"}]}}
    assert contains(desired, observed)


def test_contains_detects_drift() -> None:
    assert not contains({"a": {"b": 1}}, {"a": {"b": 2}})
    assert not contains({"l": [1, 2]}, {"l": [1]})
    assert not contains({"a": "x"}, {})
    assert not contains({"name": "api"}, {"name": "apj"})
    assert contains({"l": []}, {}) and contains({"d": {}}, {})


def test_stamp_changes_with_content_and_catches_removals() -> None:
    a = stamp({"metadata": {"name": "x"}, "spec": {"tolerations": [1, 2]}})
    b = stamp({"metadata": {"name": "x"}, "spec": {"tolerations": [1]}})
    assert a["metadata"]["annotations"][ANNOTATION_HASH] != \
        b["metadata"]["annotations"][ANNOTATION_HASH]
    # b is a subset of a, but the hash tells them apart
    assert not up_to_date(b, a)
    assert up_to_date(a, a) and not up_to_date(a, None)
    assert stamp(dict(a)) == a  # idempotent
