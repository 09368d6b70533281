"""The operator's custom metrics API server (custom.metrics.k8s.io/v1beta2) over HTTPS.

The kube-apiserver's aggregator proxies the HPA's metric requests here (the APIService
v1beta2.custom.metrics.k8s.io, rendered by the chart with metricsApi.enabled). At start
the operator reads that APIService to learn its Service's name, issues itself a serving
certificate for it from its own CA (modeldeploy.pki, the CA in the modeldeploy-ca Secret,
so every replica's certificate chains to one CA) and writes that CA into the APIService's
caBundle: the chart cannot know a CA that is made at run time. An APIService whose
Service is in another namespace belongs to another adapter: left alone, nothing served.

Clients must present a certificate from the CA the API server's proxy client uses (from
kube-system/extension-apiserver-authentication: requestheader-client-ca-file, or
client-ca-file where the cluster publishes no request-header CA); others fail the TLS
handshake. The API server has already authenticated and authorized (RBAC) the user it
proxies for, so no TokenReview/SubjectAccessReview is repeated here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from typing import TYPE_CHECKING, Any

from aiohttp import web
from lightkube.resources.apiregistration_v1 import APIService
from lightkube.types import PatchType

from modeldeploy import custommetrics as cm
from modeldeploy import pki
from modeldeploy.constants import FIELD_MANAGER, LABEL_NAME
from modeldeploy.context import now_utc, rfc3339
from modeldeploy.inputs import ensure_ca
from modeldeploy.kube import kind_of
from modeldeploy.metricsapi_scrape import (
    Scraper,
    declared_metrics,
    secret_ca,
    spec_of,
    targets,
)
from modeldeploy.spec import Spec

if TYPE_CHECKING:
    from modeldeploy.controller import Controller

log = logging.getLogger(__name__)

AUTH_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
RETRY_SECONDS = 10.0
RENEW_CHECK_SECONDS = 3600.0


# --- TLS ---
def client_trust(auth_configmap: dict[str, Any] | None) -> tuple[str, list[str]]:
    """The CA bundle client certificates must chain to, and the common names allowed
    (empty: any): the request-header CA when the cluster publishes one (that is what
    signs the aggregator's proxy client), else the cluster's client CA."""
    data = (auth_configmap or {}).get("data") or {}
    if data.get("requestheader-client-ca-file"):
        names = json.loads(data.get("requestheader-allowed-names") or "[]")
        return data["requestheader-client-ca-file"], list(names)
    if data.get("client-ca-file"):
        return data["client-ca-file"], []
    raise ValueError(f"ConfigMap {'/'.join(AUTH_CONFIGMAP)} has no client CA")


def server_context(leaf: pki.KeyPair, client_ca_pem: str, workdir: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=client_ca_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate from that CA: no connection
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_leaf(ctx, leaf, workdir)
    return ctx


def load_leaf(ctx: ssl.SSLContext, leaf: pki.KeyPair, workdir: str) -> None:
    """(Re)load the serving certificate; new connections use it (ssl reads only files)."""
    cert, key = os.path.join(workdir, "tls.crt"), os.path.join(workdir, "tls.key")
    for path, pem in ((cert, leaf.cert_pem), (key, leaf.key_pem)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem)
    ctx.load_cert_chain(cert, key)


def peer_common_name(request: web.Request) -> str | None:
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport else None
    cert = sslobj.getpeercert() if sslobj else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


# --- the API ---
class MetricsApi:
    """Answers from the controller's view: its ModelDeployments and their pods."""

    def __init__(self, controller: Controller, scraper: Scraper,
                 allowed_names: list[str] | None = None) -> None:
        self.controller = controller
        self.scraper = scraper
        self.allowed_names = allowed_names or []

    def specs(self, namespace: str | None = None) -> list[Spec]:
        out = []
        for (ns, _), body in list(self.controller.bodies.items()):
            if namespace is None or ns == namespace:
                spec = spec_of(body)
                if spec is not None:
                    out.append(spec)
        return out

    async def values(self, req: cm.MetricRequest, selector: str | None) -> dict[str, Any]:
        if req.metric not in declared_metrics(self.specs()):
            raise cm.not_found(f"metric {req.metric} is not served: no ModelDeployment's "
                               "engine declares it")
        requirements = cm.parse_selector(selector)
        chosen = []
        for spec in self.specs(req.namespace):
            pods = [o for (_, kind, _), o in self.controller.ctx.children.of(
                spec.namespace, spec.name, {LABEL_NAME: spec.name}).items() if kind == "Pod"]
            for t in targets(spec, pods):
                if req.metric not in t.metrics:
                    continue
                if (req.pod is None and cm.selects(requirements, t.labels)) or \
                        req.pod == t.pod:
                    chosen.append(t)
        texts = await asyncio.gather(*(self.scraper.text(t) for t in chosen))
        stamp = rfc3339(now_utc())
        samples = []
        for t, text in zip(chosen, texts, strict=True):
            value = cm.gauge_value(text, req.metric) if text is not None else None
            if value is not None:
                samples.append(cm.PodSample(t.pod, value, stamp))
        if req.pod is not None and not samples:
            raise cm.not_found(f"metric {req.metric} of pod {req.namespace}/{req.pod} "
                               "is not available")
        return cm.value_list(req.namespace, req.metric, samples)

    # --- aiohttp handlers ---
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get(f"/apis/{cm.GROUP}", self._group)
        app.router.add_get(cm.PREFIX, self._resources)
        app.router.add_get(cm.PREFIX + "/{tail:.+}", self._metric)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.allowed_names and peer_common_name(request) not in self.allowed_names:
            err = cm.ApiError(403, "Forbidden", "client certificate's common name is not "
                              "in requestheader-allowed-names")
            return web.json_response(cm.status(err), status=err.code)
        try:
            return await handler(request)
        except cm.ApiError as err:
            return web.json_response(cm.status(err), status=err.code)
        except web.HTTPNotFound:
            err = cm.not_found(f"{request.path}: not served")
            return web.json_response(cm.status(err), status=404)

    async def _group(self, _: web.Request) -> web.Response:
        return web.json_response(cm.api_group())

    async def _resources(self, _: web.Request) -> web.Response:
        return web.json_response(cm.resource_list(declared_metrics(self.specs())))

    async def _metric(self, request: web.Request) -> web.Response:
        if request.query.get("metricLabelSelector"):
            # Our gauges carry no labels worth selecting by: refused, not ignored.
            raise cm.bad_request("metricLabelSelector: not supported by this adapter")
        req = cm.parse_path(request.match_info["tail"])
        return web.json_response(await self.values(req, request.query.get("labelSelector")))


# --- running it beside the controller ---
async def _ca_of(controller: Controller, spec: Spec) -> str | None:
    if spec.tls.mode == "operator":
        return (await ensure_ca(controller.ctx)).cert_pem
    secret = await controller.ctx.kube.get(kind_of("v1", "Secret"), spec.tls_secret_name,
                                           spec.namespace)
    return secret_ca(secret)


async def _retry(what: str, call: Any) -> Any:
    """Await call() until it succeeds: the API server may be down at start."""
    attempt = 0
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged once, then every 10th try
            if attempt % 10 == 0:
                log.warning("metrics API: %s failed (%s: %s); retrying", what,
                            type(exc).__name__, exc)
            attempt += 1
            await asyncio.sleep(RETRY_SECONDS)


async def _apiservice(controller: Controller) -> dict[str, Any]:
    obj = await controller.ctx.kube.client.get(APIService, cm.APISERVICE_NAME)
    return dict(obj.to_dict())


def serving_names(apiservice: dict[str, Any]) -> list[str]:
    svc = apiservice["spec"]["service"]
    return [f"{svc['name']}.{svc['namespace']}.svc",
            f"{svc['name']}.{svc['namespace']}.svc.cluster.local"]


async def serve(controller: Controller, port: int, bind_address: str) -> None:
    """Run until cancelled (controller.stop())."""
    ctx = controller.ctx
    apiservice = await _retry(f"reading APIService {cm.APISERVICE_NAME}",
                              lambda: _apiservice(controller))
    service = (apiservice.get("spec") or {}).get("service") or {}
    if service.get("namespace") != ctx.operator_namespace:
        log.error("metrics API not started: APIService %s routes to %s/%s, not to this "
                  "operator's namespace %s (another adapter owns it)", cm.APISERVICE_NAME,
                  service.get("namespace"), service.get("name"), ctx.operator_namespace)
        return
    ca = await _retry("reading the operator CA", lambda: ensure_ca(ctx))
    names = serving_names(apiservice)
    leaf = pki.issue(ca, names, now_utc())
    bundle = base64.b64encode(ca.cert_pem.encode()).decode()
    if (apiservice["spec"].get("caBundle") or "") != bundle:
        await _retry("writing the APIService caBundle", lambda: ctx.kube.client.patch(
            APIService, cm.APISERVICE_NAME, {"spec": {"caBundle": bundle}},
            patch_type=PatchType.MERGE, field_manager=FIELD_MANAGER))
    auth = await _retry("reading the client CA", lambda: ctx.kube.get(
        kind_of("v1", "ConfigMap"), AUTH_CONFIGMAP[1], AUTH_CONFIGMAP[0]))
    client_ca, allowed = client_trust(auth)

    scraper = Scraper(lambda spec: _ca_of(controller, spec))
    api = MetricsApi(controller, scraper, allowed)
    with tempfile.TemporaryDirectory(prefix="metrics-api-") as workdir:
        tls = server_context(leaf, client_ca, workdir)
        runner = web.AppRunner(api.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, bind_address, port, ssl_context=tls).start()
            log.info("metrics API (%s) serving on https://%s:%d for %s", cm.GROUP_VERSION,
                     bind_address, port, names[0])
            while True:
                await asyncio.sleep(RENEW_CHECK_SECONDS)
                if pki.needs_renewal(leaf.cert_pem, names, now_utc(), ca.cert_pem):
                    leaf = pki.issue(ca, names, now_utc())
                    load_leaf(tls, leaf, workdir)
        finally:
            await runner.cleanup()
            await scraper.close()
