"""The operator's custom metrics API as a real HTTPS server on loopback: a client with a
certificate from the (test) cluster's client CA gets discovery and the pods' values,
scraped from a real HTTP /metrics endpoint; a client without a certificate, or with one
from another CA, never gets an answer. The controller is the one thing stood in for (its
ModelDeployment bodies and the informers' view of their pods)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from modeldeploy import pki
from modeldeploy.children import Children
from modeldeploy.metricsapi_scrape import Scraper
from modeldeploy.metricsapi_server import MetricsApi, client_trust, server_context

pytestmark = pytest.mark.unit

NOW = dt.datetime.now(dt.UTC)
PREFIX = "/apis/custom.metrics.k8s.io/v1beta2"


def client_cert(ca: pki.KeyPair, common_name: str) -> tuple[str, str]:
    """A client certificate (clientAuth), like the aggregator's proxy client's."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def md_body(name: str, port: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
            "spec": {"model": {"source": "hf://org/model", "contextWindow": 4096},
                     "network": {"port": port}, "tls": {"mode": "disabled"},
                     "autoscaling": {"maxReplicas": 2, "target": 1}}}


def pod(name: str, owner: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": uid,
                         "resourceVersion": "1",
                         "labels": {"modeldeploy.io/name": owner,
                                    "app.kubernetes.io/component": "model-server"}},
            "status": {"phase": "Running", "podIP": "127.0.0.1"}}


async def _site(app: web.Application, ssl_context: ssl.SSLContext | None = None) \
        -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    scrapes: list[str] = []

    async def metrics(request: web.Request) -> web.Response:
        scrapes.append(request.path)
        return web.Response(text="# TYPE modelserver_inflight_requests gauge\n"
                                 "modelserver_inflight_requests 3\n"
                                 "modelserver_queue_depth 1.5\n")

    pods_app = web.Application()
    pods_app.router.add_get("/metrics", metrics)
    pods_runner, pods_port = await _site(pods_app)

    children = Children()
    # "up" answers /metrics; "down" points at a port where nothing listens.
    controller = SimpleNamespace(
        bodies={("ns", "up"): md_body("up", pods_port), ("ns", "down"): md_body("down", 1)},
        ctx=SimpleNamespace(children=children))
    children.put(pod("up-1", "up", "u1"))
    children.put(pod("down-1", "down", "d1"))

    cluster_ca = pki.create_ca(NOW, "cluster client CA")
    serving_ca = pki.create_ca(NOW, "modeldeploy CA")
    leaf = pki.issue(serving_ca, ["md-metrics-api.mdsys.svc"], NOW)
    client_ca, allowed = client_trust({"data": {"client-ca-file": cluster_ca.cert_pem}})

    async def no_ca(_: Any) -> None:
        return None

    api = MetricsApi(controller, Scraper(no_ca, timeout=1.0), allowed)  # type: ignore[arg-type]
    runner, port = await _site(api.app(), server_context(leaf, client_ca, str(tmp_path)))
    try:
        yield SimpleNamespace(port=port, serving_ca=serving_ca, cluster_ca=cluster_ca,
                              scrapes=scrapes, tmp=tmp_path)
    finally:
        await api.scraper.close()
        await runner.cleanup()
        await pods_runner.cleanup()


def client(s: SimpleNamespace, ca: pki.KeyPair | None) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cadata=s.serving_ca.cert_pem)
    if ca is not None:
        cert, key = client_cert(ca, "front-proxy-client")
        (s.tmp / "c.crt").write_text(cert)
        (s.tmp / "c.key").write_text(key)
        ctx.load_cert_chain(s.tmp / "c.crt", s.tmp / "c.key")
    return httpx.AsyncClient(verify=ctx, timeout=5)


async def get(s: SimpleNamespace, ca: pki.KeyPair | None, path: str) -> httpx.Response:
    async with client(s, ca) as c:
        return await c.get(f"https://127.0.0.1:{s.port}{path}",
                           extensions={"sni_hostname": "md-metrics-api.mdsys.svc"})


def test_proxy_client_gets_discovery_and_values(tmp_path: Path) -> None:
    asyncio.run(_proxy_client_gets_discovery_and_values(tmp_path))


async def _proxy_client_gets_discovery_and_values(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        disco = (await get(served, served.cluster_ca, PREFIX)).json()
        assert sorted(r["name"] for r in disco["resources"]) == [
            "pods/modelserver_inflight_requests", "pods/modelserver_queue_depth"]

        sel = "modeldeploy.io/name%3Dup"
        r = await get(served, served.cluster_ca,
                      f"{PREFIX}/namespaces/ns/pods/*/modelserver_inflight_requests")
        assert r.status_code == 200, r.text
        # The pod that cannot be scraped is left out, not reported as 0.
        assert [(i["describedObject"]["name"], i["value"]) for i in r.json()["items"]] == \
            [("up-1", "3")]
        r = await get(served, served.cluster_ca,
                      f"{PREFIX}/namespaces/ns/pods/*/modelserver_queue_depth?labelSelector={sel}")
        assert [i["value"] for i in r.json()["items"]] == ["1500m"]
        # Both asks within the cache window: the pod was read once.
        assert served.scrapes == ["/metrics"]

        r = await get(served, served.cluster_ca,
                      f"{PREFIX}/namespaces/ns/pods/*/modelserver_queue_depth"
                      "?labelSelector=modeldeploy.io/name%3Dnone")
        assert r.json()["items"] == []


def test_unknown_metric_pod_and_selector_are_refused(tmp_path: Path) -> None:
    asyncio.run(_unknown_metric_pod_and_selector_are_refused(tmp_path))


async def _unknown_metric_pod_and_selector_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        ca = served.cluster_ca
        r = await get(served, ca, f"{PREFIX}/namespaces/ns/pods/*/node_cpu_seconds_total")
        assert r.status_code == 404 and r.json()["kind"] == "Status"
        r = await get(served, ca, f"{PREFIX}/namespaces/ns/pods/down-1/modelserver_queue_depth")
        assert r.status_code == 404 and "down-1" in r.json()["message"]
        r = await get(served, ca, f"{PREFIX}/namespaces/ns/pods/*/modelserver_queue_depth"
                                  "?metricLabelSelector=a%3Db")
        assert r.status_code == 400 and "metricLabelSelector" in r.json()["message"]


def test_clients_without_the_proxy_certificate_are_refused(tmp_path: Path) -> None:
    asyncio.run(_clients_without_the_proxy_certificate_are_refused(tmp_path))


async def _clients_without_the_proxy_certificate_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        other = pki.create_ca(NOW, "some other CA")
        for ca in (None, other):
            with pytest.raises((httpx.ConnectError, httpx.ReadError,
                                httpx.RemoteProtocolError)):
                await get(served, ca, PREFIX)
        # The server is still serving the right client afterwards.
        assert (await get(served, served.cluster_ca, PREFIX)).status_code == 200


def test_client_trust_prefers_the_request_header_ca() -> None:
    ca = pki.create_ca(NOW, "front proxy CA")
    trust, names = client_trust({"data": {
        "client-ca-file": "unused", "requestheader-client-ca-file": ca.cert_pem,
        "requestheader-allowed-names": '["front-proxy-client"]'}})
    assert (trust, names) == (ca.cert_pem, ["front-proxy-client"])
    with pytest.raises(ValueError, match="no client CA"):
        client_trust({"data": {}})
