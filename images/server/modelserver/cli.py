"""`modelserver serve` and `modelserver fetch`."""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Sequence

from .config import ConfigError, Settings, settings_from_args

log = logging.getLogger("modelserver")

# The kubelet's default terminationMessagePath: what is written there becomes the
# container's termination message in the pod's status (`kubectl describe`).
TERMINATION_LOG = "/dev/termination-log"


def stop(code: int, message: str) -> int:
    """Say why the process stops: on stderr, and in the termination message when running
    in a container (the file exists only there: nothing is created on a host)."""
    print(message, file=sys.stderr)
    if os.path.exists(TERMINATION_LOG):
        try:
            with open(TERMINATION_LOG, "w") as f:
                f.write(message[-4000:])  # the kubelet keeps at most 4096 bytes
        except OSError:
            pass
    return code


def _setup_logging(level: str, redact: bool) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if redact:
        from .redact import install

        install()


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


def serve(settings: Settings) -> int:
    import uvicorn

    from .app import build_app

    asgi, app = build_app(settings)
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
    server = uvicorn.Server(config)
    failed: list[str] = []

    def fatal(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app.state.service.on_fatal = fatal
    server.run()
    if failed:
        return stop(1, f"modelserver: cannot serve: {failed[0]}")
    return 0


def fetch_cmd(settings: Settings) -> int:
    from .fetch import FetchError, fetch

    if not settings.model:
        return stop(2, "modelserver fetch: --model is required")
    try:
        model = fetch(settings.model, settings.revision, settings.model_cache_dir,
                      settings.checksum)
    except FetchError as exc:
        return stop(1, f"modelserver fetch: {exc}")
    print(f"model ready at {model.label}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command, settings = settings_from_args(argv)
    except ConfigError as exc:
        return stop(2, f"modelserver: {exc}")
    _setup_logging(settings.log_level, settings.redact_logs)
    if command == "fetch":
        return fetch_cmd(settings)
    try:
        settings.validate()
    except ConfigError as exc:
        return stop(2, f"modelserver: {exc}")
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
