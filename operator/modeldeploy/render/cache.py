"""The model cache PersistentVolumeClaim: the model is downloaded once per volume."""

from __future__ import annotations

from typing import Any

from modeldeploy.render.meta import metadata
from modeldeploy.spec import Spec


def render(spec: Spec) -> dict[str, Any] | None:
    c = spec.model.cache
    if c is None:
        return None
    pvc: dict[str, Any] = {
        "accessModes": [c.access_mode],
        "resources": {"requests": {"storage": c.size}},
    }
    if c.storage_class_name:
        pvc["storageClassName"] = c.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(spec, spec.cache_claim_name),
        "spec": pvc,
    }
