"""Access control as one ASGI middleware: IP allow-list (403), API key (401), body size
limit (413). Keys are compared in constant time and reloaded when their file changes.

Behind a reverse proxy (an Ingress controller) the TCP peer is the proxy; the client's
address then comes from X-Forwarded-For, but only when the peer is a trusted proxy
(--trusted-proxy-cidr): from anyone else the header is a forgery and ignored."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from starlette.exceptions import HTTPException

from .errors import (
    APIError,
    BadRequestError,
    ForbiddenError,
    PayloadTooLargeError,
    UnauthorizedError,
    error_response,
)

log = logging.getLogger("modelserver.security")

# Kubelet probes and Prometheus scrapes carry no key; these routes reveal nothing private.
OPEN_PATHS = {"/health", "/metrics"}
# What the IP allow-list does not guard for a direct peer (and /health for anyone: the
# kubelet's probes). Prometheus scrapes the pod directly from its own namespace: the
# NetworkPolicy decides who reaches the port, and --allow-cidr lists API clients, not the
# scraper. Through a trusted proxy (the Ingress: from the LAN) /metrics stays held to the
# allow-list like the API, so nobody outside it sees more than before.
SCRAPE_PATHS = {"/metrics"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress:
    """An address as the allow-list compares it (IPv4-mapped IPv6 as IPv4); ValueError when
    `text` is not a bare address."""
    addr = ipaddress.ip_address(text.strip())
    if addr.version == 6 and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def client_address(peer: str, forwarded_for: str | None,
                   trusted: Sequence[IPNetwork]) -> IPAddress:
    """The client's address: the TCP peer's, unless the peer is a trusted proxy that sent
    X-Forwarded-For; then the right-most address of that header that is not a trusted
    proxy itself (each proxy appends the address it saw; what lies left of the last
    untrusted hop was written by the client and proves nothing). When every hop is a
    trusted proxy, the left-most one. ValueError: the peer is not an address, or a trusted
    proxy sent a header that is empty or holds something other than bare addresses."""
    addr = parse_ip(peer)
    if forwarded_for is None or not _within(addr, trusted):
        return addr
    hops = [parse_ip(h) for h in forwarded_for.split(",")]  # ValueError on garbage
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0]


def _within(addr: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(addr in net for net in networks)


class KeyFile:
    """API keys from a file (one per line, '#' comments), re-read when it changes."""

    def __init__(self, path: str, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._keys: list[bytes] = []
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load(force=True)

    def _load(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if force:
                raise RuntimeError(f"cannot read --api-keys-file {self.path}: {exc}") from exc
            log.error("API key file %s unreadable (%s): keeping the previous keys",
                      self.path, exc.strerror)
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp and not force:
            return
        with open(self.path, encoding="utf-8") as fh:
            keys = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        if not keys and force:
            raise RuntimeError(f"--api-keys-file {self.path} holds no keys")
        self._keys = [k.encode() for k in keys]
        if self._stamp is not None:
            log.info("API keys reloaded: %d key(s)", len(keys))  # never the keys themselves
        self._stamp = stamp

    def valid(self, presented: str) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            with self._lock:
                self._checked = now
                self._load()
        given = presented.encode()
        ok = False
        for key in self._keys:  # no early exit: timing does not reveal which key matched
            ok |= hmac.compare_digest(given, key)
        return ok


class AccessMiddleware:
    def __init__(self, app: Callable, keys: KeyFile | None, cidrs: list[str],
                 max_body_bytes: int, trusted_proxies: Sequence[str] = ()) -> None:
        self.app = app
        self.keys = keys
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self.trusted = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        err = self._rejection(scope, path)
        if err is not None:
            await error_response(path, err)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _rejection(self, scope: dict, path: str) -> APIError | None:
        proxied = self._from_trusted_proxy(scope)  # before the forwarded client replaces it
        if not self._resolve_client(scope) and path != "/health":
            return ForbiddenError("malformed X-Forwarded-For header from a trusted proxy")
        exempt = path == "/health" or (path in SCRAPE_PATHS and not proxied)
        if self.networks and not exempt and not self._allowed(scope):
            return ForbiddenError()
        if self.keys is not None and path not in OPEN_PATHS and not self._authorized(scope):
            return UnauthorizedError()
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return BadRequestError("invalid Content-Length")
            if too_big:
                return PayloadTooLargeError(self.max_body)
        return None

    def _limited(self, receive: Callable) -> Callable:
        seen = 0
        limit = self.max_body

        async def wrapped() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:  # chunked upload without Content-Length
                    raise BodyTooLarge(limit)
            return msg

        return wrapped

    def _resolve_client(self, scope: dict) -> bool:
        """Put the client address forwarded by a trusted proxy into scope["client"], where
        the allow-list, the access log and the app read it (port unknown: 0). False when a
        trusted proxy sent a malformed X-Forwarded-For."""
        client = scope.get("client")
        forwarded = _header_values(scope, b"x-forwarded-for")
        if not self.trusted or not client or forwarded is None:
            return True
        try:
            peer = parse_ip(client[0])
        except ValueError:
            return True  # not an IP peer (a unix socket): nothing to resolve
        try:
            addr = client_address(client[0], forwarded, self.trusted)
        except ValueError:
            return False
        if addr != peer:
            scope["client"] = (str(addr), 0)
        return True

    def _from_trusted_proxy(self, scope: dict) -> bool:
        client = scope.get("client")
        if not self.trusted or not client:
            return False
        try:
            return _within(parse_ip(client[0]), self.trusted)
        except ValueError:
            return False

    def _allowed(self, scope: dict) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            addr = parse_ip(client[0])
        except ValueError:
            return False
        return _within(addr, self.networks)

    def _authorized(self, scope: dict) -> bool:
        value = _header(scope, b"authorization")
        if not value:
            return False
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self.keys.valid(token.strip())


class BodyTooLarge(PayloadTooLargeError, HTTPException):
    """Raised from inside body reading. Also an HTTPException, which FastAPI's body
    parsing re-raises as is (anything else it turns into a 400); the APIError handler,
    first in this class's MRO, renders it."""

    def __init__(self, limit: int) -> None:
        PayloadTooLargeError.__init__(self, limit)
        HTTPException.__init__(self, self.status, self.message)


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _header_values(scope: dict, name: bytes) -> str | None:
    """Every line of a list-valued header, joined with commas in order (RFC 9110 5.3)."""
    values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name]
    return ",".join(values) if values else None
