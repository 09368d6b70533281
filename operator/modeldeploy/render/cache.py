"""The model cache PersistentVolumeClaim: the model is downloaded once per volume.

Retained by default: it carries the common labels but no owner reference, so neither
the garbage collector (CR deleted) nor pruning (cache removed from the spec) deletes a
model that took hours to download; `model.cache.retain: false` makes it an owned child.
"""

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
        "metadata": metadata(spec, spec.cache_claim_name, owned=not c.retain),
        "spec": pvc,
    }
