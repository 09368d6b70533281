"""The IP allow-list behind a reverse proxy, on real `modelserver serve` processes: the
client address comes from X-Forwarded-For only when the TCP peer is a trusted proxy
(--trusted-proxy-cidr), and a forged header from anyone else changes nothing.

All traffic stays on loopback: 127.0.0.1 plays the proxy (or the forger), 127.0.0.2 a
direct client; the forwarded addresses are only header text."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from serverutil import REPO, Server, start_server

pytestmark = pytest.mark.server

LAN_CLIENT = "192.168.1.7"  # allowed by the proxied server's list
STRANGER = "203.0.113.9"  # allowed by no list


@pytest.fixture(scope="module")
def trio(workdir, tiny_model):
    """proxied — behind a proxy at 127.0.0.1: allows the LAN and 127.0.0.2 (a direct
                 client), not 127.0.0.1 itself
    forger_ok  — trusts 10.0.0.0/8 only, allows 127.0.0.1: a forged header cannot refuse
    forger_no  — trusts 10.0.0.0/8 (from the environment), allows the LAN only: a forged
                 header cannot admit"""
    model = str(tiny_model)
    common = ("--no-warmup", "--served-name", "tiny")
    servers = {
        "proxied": start_server(
            workdir, "proxied", model, *common, "--trusted-proxy-cidr", "127.0.0.1/32",
            "--allow-cidr", "192.168.1.0/24", "--allow-cidr", "127.0.0.2/32",
            tls=None, auth=False),
        "forger_ok": start_server(
            workdir, "forger-ok", model, *common, "--trusted-proxy-cidr", "10.0.0.0/8",
            "--allow-cidr", "127.0.0.1/32", tls=None, auth=False),
        "forger_no": start_server(
            workdir, "forger-no", model, *common, "--allow-cidr", "192.168.1.0/24",
            tls=None, auth=False,
            env={"MODELSERVER_TRUSTED_PROXY_CIDR": "10.0.0.0/8,172.16.0.0/12"}),
    }
    try:
        for s in servers.values():
            s.wait_ready()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def get(srv: Server, xff: str | None = None, source: str = "127.0.0.1",
        path: str = "/v1/models") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    headers = {"X-Forwarded-For": xff} if xff is not None else {}
    with srv.client(transport=transport, headers=headers) as c:
        return c.get(path)


def assert_forbidden(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"  # the existing 403 error type


def test_trusted_proxy_forwards_the_client_address(trio):
    srv = trio["proxied"]
    assert get(srv, LAN_CLIENT).status_code == 200
    assert_forbidden(get(srv, STRANGER))
    # the right-most untrusted hop counts: what the client prepended itself does not
    assert get(srv, f"{STRANGER}, {LAN_CLIENT}").status_code == 200
    assert_forbidden(get(srv, f"{LAN_CLIENT}, {STRANGER}"))
    assert get(srv, f"{LAN_CLIENT}, 127.0.0.1").status_code == 200  # a trusted hop skipped
    # a malformed header from the trusted proxy is refused, /health stays open for probes
    assert_forbidden(get(srv, "not-an-address"))
    assert get(srv, "not-an-address", path="/health").status_code == 200


def test_access_log_shows_the_forwarded_client(trio):
    srv = trio["proxied"]
    r = httpx.get(srv.base + "/v1/models?probe=log", headers={"X-Forwarded-For": LAN_CLIENT})
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while f'{LAN_CLIENT}:0 - "GET /v1/models?probe=log' not in srv.log_text():
        assert time.monotonic() < deadline, srv.log_text()[-2000:]
        time.sleep(0.2)


def test_direct_peer_without_header_behaves_as_before(trio):
    srv = trio["proxied"]
    assert get(srv, source="127.0.0.2").status_code == 200  # allowed, not a proxy
    assert_forbidden(get(srv))  # the proxy itself is not a client the list allows
    # a header from a peer that is not a trusted proxy is ignored
    assert get(srv, STRANGER, source="127.0.0.2").status_code == 200


def test_spoofed_header_from_an_untrusted_peer_is_ignored(trio):
    # the peer 127.0.0.1 is allowed and not a trusted proxy: a forged disallowed address
    # does not refuse it (uvicorn's own X-Forwarded-For handling, which trusts 127.0.0.1,
    # is off)
    assert get(trio["forger_ok"], STRANGER).status_code == 200
    assert get(trio["forger_ok"], "garbage").status_code == 200
    # the peer is not allowed: a forged allowed address does not admit it
    assert_forbidden(get(trio["forger_no"], LAN_CLIENT))
    assert_forbidden(get(trio["forger_no"]))


def test_bad_trusted_proxy_cidr_refused_at_start():
    r = subprocess.run([sys.executable, "-m", "modelserver", "serve", "--model", "unused",
                        "--no-tls", "--no-auth", "--trusted-proxy-cidr", "10.0.0.0/33"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "--trusted-proxy-cidr '10.0.0.0/33'" in r.stderr


def test_metrics_open_to_a_direct_scraper_but_not_through_the_proxy(trio):
    srv = trio["proxied"]
    # Prometheus connects to the pod itself, from an address the allow-list does not name
    # (127.0.0.3: neither allowed nor a proxy): /metrics answers, the API does not
    scraper = get(srv, source="127.0.0.3", path="/metrics")
    assert scraper.status_code == 200 and "modelserver_inflight_requests" in scraper.text
    assert_forbidden(get(srv, source="127.0.0.3"))
    # through the trusted proxy (the Ingress: the LAN) the allow-list still holds
    assert get(srv, STRANGER, path="/metrics").status_code == 403
    assert get(srv, LAN_CLIENT, path="/metrics").status_code == 200
    # and a proxy that forwards no client address is held to the list by its own address
    assert get(srv, path="/metrics").status_code == 403
