"""Labels, selectors, owner references and metadata shared by every child."""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import (
    API_VERSION,
    COMPONENT,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
)
from modeldeploy.spec import Spec


def common_labels(spec: Spec) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: spec.name,
        LABEL_INSTANCE: spec.name,
    }


def selector_labels(spec: Spec) -> dict[str, str]:
    """Labels that pick this deployment's pods (immutable once a Deployment exists)."""
    return {LABEL_NAME: spec.name, LABEL_COMPONENT: COMPONENT}


def pod_labels(spec: Spec) -> dict[str, str]:
    return {**common_labels(spec), **selector_labels(spec)}


def owner_reference(spec: Spec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(spec: Spec, name: str, *, owned: bool = True,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": spec.namespace,
                            "labels": common_labels(spec)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owned:
        meta["ownerReferences"] = [owner_reference(spec)]
    return meta
