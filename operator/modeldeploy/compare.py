"""Does an observed object already hold everything we would apply?

The API server adds defaults and other managers add fields, so the test is "desired is
contained in observed": dicts by subset, lists element-wise with equal length, scalars
equal (quantities by value). Removals are caught by the applied-hash annotation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modeldeploy import quantity
from modeldeploy.constants import ANNOTATION_HASH


def contains(desired: Any, observed: Any) -> bool:
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return not desired and observed is None
        return all(contains(v, observed.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if observed is None:
            return not desired
        if not isinstance(observed, list) or len(desired) != len(observed):
            return False
        return all(contains(d, o) for d, o in zip(desired, observed, strict=True))
    if desired == observed:
        return True
    if isinstance(desired, (int, str)) and isinstance(observed, (int, str)):
        a, b = quantity.parse(desired), quantity.parse(observed)
        if a is not None and b is not None:
            return a == b
    return False


def digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Return `obj` with an annotation hashing its content (excluding the annotation)."""
    meta = obj.setdefault("metadata", {})
    annotations = meta.setdefault("annotations", {})
    annotations.pop(ANNOTATION_HASH, None)
    annotations[ANNOTATION_HASH] = digest(obj)
    return obj


def up_to_date(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    if observed is None:
        return False
    return contains(desired, observed)
