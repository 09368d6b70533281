"""The few facts renderers need from the cluster: API keys to keep, the operator CA and
the serving certificate (kept until renewal is due). Problems become conditions."""

from __future__ import annotations

import base64
import datetime as dt
import logging

from lightkube import ApiError

from modeldeploy import pki
from modeldeploy.apply import Observed
from modeldeploy.constants import CA_SECRET_NAME, LABEL_MANAGED_BY, MANAGED_BY
from modeldeploy.context import Context, now_utc, rfc3339
from modeldeploy.kube import error_message, is_status, kind_of
from modeldeploy.render import apikeys, podmonitor, tls
from modeldeploy.render.facts import Inputs
from modeldeploy.spec import Spec
from modeldeploy.status import Cond

log = logging.getLogger(__name__)
SECRET = kind_of("v1", "Secret")


def _b64(data: dict[str, str] | None, key: str) -> str | None:
    raw = (data or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


async def ensure_ca(ctx: Context) -> pki.KeyPair:
    """The operator's CA: read from its Secret, created there once if missing."""
    if ctx.ca is not None:
        return ctx.ca
    async with ctx.ca_lock:  # the first reconciles run together: one of them reads it
        if ctx.ca is None:
            ctx.ca = await _read_or_create_ca(ctx)
    return ctx.ca


async def _read_or_create_ca(ctx: Context) -> pki.KeyPair:
    secret = await ctx.kube.get(SECRET, CA_SECRET_NAME, ctx.operator_namespace)
    if secret is None:
        ca = pki.create_ca(now_utc())
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": CA_SECRET_NAME, "namespace": ctx.operator_namespace,
                         "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
            "data": {"tls.crt": base64.b64encode(ca.cert_pem.encode()).decode(),
                     "tls.key": base64.b64encode(ca.key_pem.encode()).decode()},
        }
        try:
            await ctx.kube.create(body)
            log.info("created CA Secret %s/%s", ctx.operator_namespace, CA_SECRET_NAME)
        except ApiError as exc:
            if not is_status(exc, 409):  # another replica made it first: use theirs
                raise
            secret = await ctx.kube.get(SECRET, CA_SECRET_NAME, ctx.operator_namespace)
        else:
            return ca
    assert secret is not None
    data = secret.get("data") or {}
    return pki.KeyPair(_b64(data, "tls.crt") or "", _b64(data, "tls.key") or "")


async def _own_secret(ctx: Context, observed: Observed, name: str, ns: str) -> dict | None:
    """A Secret this resource generates (API keys, operator TLS): from the watched set,
    read from the API server only while it is not there (keys are never regenerated
    because a watch had not delivered them yet)."""
    return observed.get(("v1", "Secret", name)) or await ctx.kube.get(SECRET, name, ns)


async def gather(ctx: Context, spec: Spec, now: dt.datetime, problems: list[Cond],
                 observed: Observed) -> Inputs:
    kube, ns = ctx.kube, spec.namespace
    keys: list[str] = []
    if spec.auth.enabled and spec.auth.generate:
        keys = apikeys.choose_keys(spec, await _own_secret(ctx, observed,
                                                         spec.api_key_secret_name, ns))
    elif spec.auth.enabled and await kube.get(SECRET, spec.api_key_secret_name, ns) is None:
        problems.append(Cond("Reconciled", "False", "ApiKeySecretMissing",
                             f"auth.apiKeys.secretName {spec.api_key_secret_name!r} does not "
                             f"exist in namespace {ns}"))
    leaf, ca_pem, not_after = None, None, ""
    if spec.tls.mode == "operator":
        try:
            ca = await ensure_ca(ctx)
        except ApiError as exc:
            problems.append(Cond("TLSReady", "False", "CAUnavailable",
                                 f"cannot read or create the operator CA in namespace "
                                 f"{ctx.operator_namespace}: {error_message(exc)}"))
        else:
            data = (await _own_secret(ctx, observed, spec.tls_secret_name, ns) or {}).get("data")
            cert, key = _b64(data, "tls.crt"), _b64(data, "tls.key")
            if pki.needs_renewal(cert, tls.dns_names(spec), now, ca.cert_pem) or not key:
                leaf = pki.issue(ca, tls.dns_names(spec), now)
                log.info("issued a TLS certificate for %s/%s", ns, spec.name)
            else:
                leaf = pki.KeyPair(cert or "", key)
            not_after = rfc3339(pki.not_after(leaf.cert_pem))
            ca_pem = ca.cert_pem
    elif spec.tls.mode == "secret" and await kube.get(SECRET, spec.tls_secret_name, ns) is None:
        problems.append(Cond("TLSReady", "False", "SecretMissing",
                             f"tls.secretName {spec.tls_secret_name!r} does not exist in "
                             f"namespace {ns}"))
    return Inputs(operator_namespace=ctx.operator_namespace, api_keys=keys, tls_leaf=leaf,
                  tls_not_after=not_after, ca_cert_pem=ca_pem,
                  scraper_namespaces=ctx.scraper_namespaces,
                  # Absent until the PodMonitor informer has listed them (context.py).
                  pod_monitors=podmonitor.KIND not in ctx.missing_kinds,
                  pod_monitor_labels=ctx.pod_monitor_labels)
