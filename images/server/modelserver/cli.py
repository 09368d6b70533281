"""`modelserver serve`, `modelserver gateway` and `modelserver fetch`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .config import ConfigError, GatewaySettings, Settings, settings_from_args

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


def serve(settings: Settings) -> int:
    from .app import build_app
    from .listener import uvicorn_server

    asgi, app = build_app(settings)
    server = uvicorn_server(asgi, settings)
    failed: list[str] = []

    def fatal(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app.state.service.on_fatal = fatal
    server.run()
    if failed:
        return stop(1, f"modelserver: cannot serve: {failed[0]}")
    return 0


def gateway(settings: GatewaySettings) -> int:
    from .gateway import build_gateway_app
    from .listener import uvicorn_server

    uvicorn_server(build_gateway_app(settings), settings).run()
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
        settings.check_files()
    except ConfigError as exc:
        return stop(2, f"modelserver: {exc}")
    if command == "gateway":
        return gateway(settings)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
