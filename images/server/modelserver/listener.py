"""The HTTP(S) listener both `serve` and `gateway` run: uvicorn with the listener's
settings (TLS minimum version, certificate reload, log redaction)."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from .config import ListenerSettings

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("modelserver")


class CertReloader:
    """Reload cert/key into the live SSLContext when either file changes: new handshakes
    get the new certificate without a restart (cert-manager rotates the Secret in place)."""

    def __init__(self, ctx: ssl.SSLContext, cert: str, key: str, interval: float = 5.0) -> None:
        self.ctx, self.cert, self.key, self.interval = ctx, cert, key, interval
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[float, float]:
        return os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime

    def start(self) -> None:
        threading.Thread(target=self._run, name="cert-reloader", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                stamp = self._read_stamp()
                if stamp != self._stamp:
                    self.ctx.load_cert_chain(self.cert, self.key)
                    self._stamp = stamp
                    log.info("TLS certificate reloaded from %s", self.cert)
            except (OSError, ssl.SSLError) as exc:  # half-written files: try again later
                log.warning("TLS certificate reload failed (%s); keeping the old one", exc)


def uvicorn_server(asgi: Any, settings: ListenerSettings) -> uvicorn.Server:
    """A uvicorn server for `asgi`, configured from the listener's settings; run() it."""
    import uvicorn

    kw = {}
    if not settings.no_tls:
        kw = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    # proxy_headers off: uvicorn's own X-Forwarded-For handling trusts 127.0.0.1 whatever
    # the flags say; AccessMiddleware resolves the header, from --trusted-proxy-cidr only,
    # and puts the result where the access log reads it.
    config = uvicorn.Config(
        asgi, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5, access_log=True, proxy_headers=False, **kw,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = (ssl.TLSVersion.TLSv1_3 if settings.tls_min_version == "1.3"
                                      else ssl.TLSVersion.TLSv1_2)
        CertReloader(config.ssl, settings.tls_cert, settings.tls_key, interval=2.0).start()
    if settings.redact_logs:
        from .redact import install

        install()  # uvicorn configured its own handlers in load(): filter those too
    return uvicorn.Server(config)
