"""The deployment guide's extras of the bundled server: the Redis answer cache, overflow to
an upstream model, and redaction of personal data; their flags and the Secrets they read.

Like render/server_security.py, whichever container serves network.port (the builtin
server, or the gateway in front of vLLM and TGI) gets these flags and these mounts: the
flags are the same for `modelserver serve` and `modelserver gateway`. Secrets are mounted
as read-only files, never passed in an argument or an environment variable; one Secret
key per volume (`items`), so a Secret holding other data exposes nothing else. No subPath:
kubelet then refreshes a rotated key in place (the overflow key is re-read per request).
The NetworkPolicy's egress for them is render/networkpolicy.py's.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import ANSWER_CACHE_DIR, OVERFLOW_CA_DIR, OVERFLOW_KEY_DIR
from modeldeploy.spec import Spec

# The data key each Secret must hold (documented on the CRD's fields).
REDIS_PASSWORD_KEY = "password"
OVERFLOW_API_KEY_KEY = "apiKey"
OVERFLOW_CA_KEY = "ca.crt"
REDIS_PASSWORD_FILE = f"{ANSWER_CACHE_DIR}/{REDIS_PASSWORD_KEY}"
OVERFLOW_API_KEY_FILE = f"{OVERFLOW_KEY_DIR}/{OVERFLOW_API_KEY_KEY}"
OVERFLOW_CA_FILE = f"{OVERFLOW_CA_DIR}/{OVERFLOW_CA_KEY}"


def feature_args(spec: Spec) -> list[str]:
    args: list[str] = []
    if spec.logging.redact:
        args.append("--redact-logs")
    cache = spec.answer_cache
    if cache is not None:
        args += ["--cache-redis-url", cache.url, "--cache-ttl", str(cache.ttl_seconds)]
        if cache.password_secret_name:
            args += ["--cache-redis-password-file", REDIS_PASSWORD_FILE]
    overflow = spec.overflow
    if overflow is not None:
        args += ["--overflow-url", overflow.url]
        if overflow.api_key_secret_name:
            args += ["--overflow-api-key-file", OVERFLOW_API_KEY_FILE]
        if overflow.ca_secret_name:
            args += ["--overflow-ca-file", OVERFLOW_CA_FILE]
        if overflow.timeout_seconds is not None:
            args += ["--overflow-timeout", str(overflow.timeout_seconds)]
        if overflow.redact_requests:
            args.append("--redact-overflow-requests")
    return args


def _secret_file(volume: str, secret: str, key: str, directory: str,
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440,
                                        "items": [{"key": key, "path": key}]}},
            {"name": volume, "mountPath": directory, "readOnly": True})


def feature_volumes(spec: Spec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Secrets feature_args names, as volumes of the pod and mounts of the container
    that serves network.port."""
    files: list[tuple[dict[str, Any], dict[str, Any]]] = []
    cache, overflow = spec.answer_cache, spec.overflow
    if cache is not None and cache.password_secret_name:
        files.append(_secret_file("answer-cache-password", cache.password_secret_name,
                                  REDIS_PASSWORD_KEY, ANSWER_CACHE_DIR))
    if overflow is not None and overflow.api_key_secret_name:
        files.append(_secret_file("overflow-api-key", overflow.api_key_secret_name,
                                  OVERFLOW_API_KEY_KEY, OVERFLOW_KEY_DIR))
    if overflow is not None and overflow.ca_secret_name:
        files.append(_secret_file("overflow-ca", overflow.ca_secret_name, OVERFLOW_CA_KEY,
                                  OVERFLOW_CA_DIR))
    return [v for v, _ in files], [m for _, m in files]
