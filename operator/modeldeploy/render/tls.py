"""TLS children: the operator-issued Secret, or a cert-manager Certificate.

`secret` mode uses the user's Secret as is and `disabled` renders nothing.
"""

from __future__ import annotations

import base64
from typing import Any

from modeldeploy.constants import ANNOTATION_TLS_NOT_AFTER
from modeldeploy.pki import KeyPair
from modeldeploy.render.meta import metadata
from modeldeploy.spec import Spec


def dns_names(spec: Spec) -> list[str]:
    names = list(spec.service_dns_names)
    if spec.network.ingress:
        names.append(spec.network.ingress.host)
    return names


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def render_secret(spec: Spec, leaf: KeyPair, ca_cert_pem: str, not_after: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": metadata(spec, spec.tls_secret_name,
                             annotations={ANNOTATION_TLS_NOT_AFTER: not_after}),
        "data": {"tls.crt": _b64(leaf.cert_pem), "tls.key": _b64(leaf.key_pem),
                 "ca.crt": _b64(ca_cert_pem)},
    }


def render_certificate(spec: Spec) -> dict[str, Any]:
    issuer = dict(spec.tls.issuer_ref or {})
    issuer.setdefault("kind", "Issuer")
    issuer.setdefault("group", "cert-manager.io")
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": metadata(spec, spec.name),
        "spec": {
            "secretName": spec.tls_secret_name,
            "dnsNames": dns_names(spec),
            "issuerRef": issuer,
            "duration": "2160h",
            "renewBefore": "720h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature", "key encipherment"],
        },
    }
