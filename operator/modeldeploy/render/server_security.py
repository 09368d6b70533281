"""The bundled server's security flags and the files they name, defined once.

`modelserver serve` (the builtin engine) and `modelserver gateway` (in front of vLLM and
TGI) take the same flags with the same meaning: TLS from the mounted certificate (reloaded
when kubelet swaps in a renewed Secret), API keys from the mounted `keys` file (reloaded,
so rotation needs no restart), the IP allow-list and the trusted proxies behind an Ingress.
Whichever container serves network.port gets these flags and these mounts.
"""

from __future__ import annotations

from typing import Any

from modeldeploy.constants import AUTH_DIR, TLS_DIR
from modeldeploy.spec import Spec

TLS_CERT = f"{TLS_DIR}/tls.crt"
TLS_KEY = f"{TLS_DIR}/tls.key"
# The only data key of the API key Secret any pod reads: a user-made Secret needs no other.
API_KEYS_FILE = f"{AUTH_DIR}/keys"


def security_args(spec: Spec) -> list[str]:
    args: list[str] = []
    if spec.tls.enabled:
        args += ["--tls-cert", TLS_CERT, "--tls-key", TLS_KEY,
                 "--tls-min-version", spec.tls.min_version]
    else:
        args.append("--no-tls")
    if spec.auth.enabled:
        args += ["--api-keys-file", API_KEYS_FILE]
    else:
        args.append("--no-auth")
    for cidr in spec.network.allow_from.server_cidrs:
        args += ["--allow-cidr", cidr]
    for cidr in spec.network.ingress.trusted_proxies if spec.network.ingress else ():
        args += ["--trusted-proxy-cidr", cidr]
    return args


def security_volumes(spec: Spec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The TLS and API key Secrets, as volumes of the pod and mounts of the container that
    serves network.port."""
    vols: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.tls.enabled:
        # No subPath: kubelet then refreshes renewed certificates in place.
        vols.append({"name": "tls", "secret": {"secretName": spec.tls_secret_name,
                                               "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if spec.auth.enabled:
        vols.append({"name": "api-keys", "secret": {"secretName": spec.api_key_secret_name,
                                                    "defaultMode": 0o440}})
        mounts.append({"name": "api-keys", "mountPath": AUTH_DIR, "readOnly": True})
    return vols, mounts
