"""The server's client address behind a reverse proxy (--trusted-proxy-cidr): pure
resolution, the flag's parsing and validation, and the middleware's scope rewrite (the
real server is tested in tests/server/test_trusted_proxies.py)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from modelserver.config import ConfigError, settings_from_args
from modelserver.errors import ForbiddenError
from modelserver.security import AccessMiddleware, client_address

pytestmark = pytest.mark.unit

TRUSTED = [ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00::/8")]
IP = ipaddress.ip_address


@pytest.mark.parametrize(("peer", "xff", "client"), [
    ("10.244.1.5", "192.168.1.7", "192.168.1.7"),  # the controller forwards a LAN client
    ("10.244.1.5", None, "10.244.1.5"),  # no header: the peer itself
    ("192.168.1.7", None, "192.168.1.7"),  # a direct client
    ("203.0.113.9", "192.168.1.7", "203.0.113.9"),  # untrusted peer: the header is ignored
    ("203.0.113.9", "garbage", "203.0.113.9"),  # ... even when it is garbage
    # what the client wrote itself is left of the hops the proxies added: ignored
    ("10.244.1.5", "192.168.1.7, 203.0.113.9", "203.0.113.9"),
    ("10.244.1.5", "203.0.113.9, 192.168.1.7", "192.168.1.7"),
    # trusted hops on the right are skipped (a chain of proxies)
    ("10.244.1.5", "192.168.1.7,10.244.2.2, 10.244.3.3", "192.168.1.7"),
    ("10.244.1.5", "10.244.2.2, 10.244.3.3", "10.244.2.2"),  # all trusted: the left-most
    ("::ffff:10.244.1.5", "::ffff:192.168.1.7", "192.168.1.7"),  # IPv4-mapped
    ("fd00::5", "2001:db8::1", "2001:db8::1"),
])
def test_client_address(peer: str, xff: str | None, client: str) -> None:
    assert client_address(peer, xff, TRUSTED) == IP(client)


@pytest.mark.parametrize("xff", ["", " ", "garbage", "192.168.1.7:51234",
                                 "192.168.1.7,,10.244.2.2", "unknown, 192.168.1.7",
                                 "192.168.1.0/24"])
def test_malformed_header_from_a_trusted_proxy(xff: str) -> None:
    with pytest.raises(ValueError):
        client_address("10.244.1.5", xff, TRUSTED)


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("127.0.0.1", "192.168.1.7", []) == IP("127.0.0.1")


# ---- the flag --------------------------------------------------------------------------
def serve(*args: str) -> list[str]:
    return ["serve", "--model", "m", "--no-tls", "--no-auth", *args]


def test_flag_repeats_and_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    _, s = settings_from_args(serve("--trusted-proxy-cidr", "10.244.0.0/16",
                                    "--trusted-proxy-cidr", "fd00::/8"))
    assert s.trusted_proxy_cidr == ["10.244.0.0/16", "fd00::/8"]
    monkeypatch.setenv("MODELSERVER_TRUSTED_PROXY_CIDR", "10.0.0.0/8, 172.16.0.0/12")
    _, s = settings_from_args(serve())
    assert s.trusted_proxy_cidr == ["10.0.0.0/8", "172.16.0.0/12"]
    _, s = settings_from_args(serve("--trusted-proxy-cidr", "10.1.0.0/16"))  # flag wins
    assert s.trusted_proxy_cidr == ["10.1.0.0/16"]


@pytest.mark.parametrize("flag", ["--trusted-proxy-cidr", "--allow-cidr"])
def test_bad_cidr_refused_at_start_naming_the_flag(flag: str) -> None:
    _, s = settings_from_args(serve(flag, "10.244.0.0/33"))
    with pytest.raises(ConfigError, match=f"^{flag} '10.244.0.0/33'"):
        s.validate()


# ---- the middleware ----------------------------------------------------------------------
def call(middleware: AccessMiddleware, client: tuple[str, int], xff: list[bytes],
         path: str = "/v1/models") -> tuple[int, dict]:
    seen: dict = {}

    async def app(scope, receive, send) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": path, "client": client,
             "headers": [(b"x-forwarded-for", v) for v in xff]}
    middleware.app = app
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], seen


def test_middleware_puts_the_forwarded_client_where_the_log_reads_it() -> None:
    m = AccessMiddleware(None, None, ["192.168.1.0/24"], 1024, ["10.244.0.0/16"])
    status, scope = call(m, ("10.244.1.5", 40000), [b"192.168.1.7"])
    assert status == 200 and scope["client"] == ("192.168.1.7", 0)
    # two header lines are one list, in order
    status, scope = call(m, ("10.244.1.5", 40000), [b"203.0.113.9", b"192.168.1.8"])
    assert status == 200 and scope["client"] == ("192.168.1.8", 0)
    assert call(m, ("10.244.1.5", 40000), [b"203.0.113.9"])[0] == ForbiddenError.status
    assert call(m, ("10.244.1.5", 40000), [b"nonsense"])[0] == ForbiddenError.status
    assert call(m, ("10.244.1.5", 40000), [b"nonsense"], path="/health")[0] == 200
    # from an untrusted peer the header changes nothing
    status, scope = call(m, ("192.168.1.9", 40000), [b"203.0.113.9"])
    assert status == 200 and scope["client"] == ("192.168.1.9", 40000)


def test_without_trusted_proxies_nothing_changes() -> None:
    m = AccessMiddleware(None, None, ["127.0.0.1/32"], 1024)
    status, scope = call(m, ("127.0.0.1", 5), [b"192.168.1.7"])
    assert status == 200 and scope["client"] == ("127.0.0.1", 5)
