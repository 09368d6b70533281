"""The API key as an env var, for engines that take one key (vLLM, TGI)."""

from __future__ import annotations

from typing import Any

from modeldeploy.spec import Spec


def api_key_env(spec: Spec, var: str) -> list[dict[str, Any]]:
    """An env var holding the first API key, for engines that take one key."""
    if not spec.auth.enabled:
        return []
    return [{
        "name": var,
        "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret_name, "key": "primary"}},
    }]
