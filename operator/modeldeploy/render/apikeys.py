"""The API key Secret: `keys` (one per line) and `primary` (the first).

Every engine's pod reads `keys` alone, as a mounted file the bundled server or the gateway
in front of vLLM/TGI reloads when it changes, so a user-made Secret (auth.apiKeys.secretName)
needs nothing else and a rotation reaches every engine without a restart. `primary` is for
people and `modeldeploy clawdbot-config`; no pod refers to it.

Keys are chosen by reconcile (kept from the live Secret, so edits by hand survive, or
generated anew when `auth.apiKeys.rotation` changes); this module only shapes them.
Never log or surface the values.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from modeldeploy.constants import ANNOTATION_ROTATION
from modeldeploy.render.meta import metadata
from modeldeploy.spec import Spec

KEY_PREFIX = "md-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def decode_keys(secret: dict[str, Any] | None) -> list[str]:
    if not secret:
        return []
    raw = (secret.get("data") or {}).get("keys")
    if not raw:
        return []
    text = base64.b64decode(raw).decode(errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def choose_keys(spec: Spec, existing: dict[str, Any] | None, generate=new_key) -> list[str]:
    """Keep the live keys unless the rotation counter moved or there are none."""
    current = decode_keys(existing)
    annotations = ((existing or {}).get("metadata") or {}).get("annotations") or {}
    if current and annotations.get(ANNOTATION_ROTATION, "0") == str(spec.auth.rotation):
        return current
    return [generate() for _ in range(spec.auth.count)]


def render(spec: Spec, keys: list[str]) -> dict[str, Any] | None:
    if not (spec.auth.enabled and spec.auth.generate):
        return None
    text = "\n".join(keys) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(spec, spec.api_key_secret_name,
                             annotations={ANNOTATION_ROTATION: str(spec.auth.rotation)}),
        "data": {"keys": base64.b64encode(text.encode()).decode(),
                 "primary": base64.b64encode(keys[0].encode()).decode()},
    }
