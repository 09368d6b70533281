"""Whether the API server answers, as every retry loop of the process sees it.

One state for the log, /healthz and /metrics. An outage is logged when it starts, once per
backoff step while it lasts, and when it ends: not once per failed request, though the
informers, the lease and the workers all fail together. Nothing gives up: the loops that
use it retry for as long as it takes, never more than BACKOFF_SECONDS[-1] apart, and the
process stays alive (the kubelet must not restart it into CrashLoopBackOff's delays).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import time
from collections.abc import Callable, Iterator

from modeldeploy import metrics
from modeldeploy.kube import status_code

log = logging.getLogger(__name__)
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0)  # then every 10 s, for as long as it takes


def backoff(attempt: int) -> float:
    """The pause after the attempt-th consecutive failure (0-based), capped."""
    return BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]


class EndlessBackoffs:
    """kopf's `error_backoffs`, endless during an outage: kopf asks for the next pause
    before each retry and escalates when there is none, so its own requests (API
    discovery, the ModelDeployment watch) keep retrying while the API server is down
    instead of stopping the operator. A refusal kopf also retries (403 where the operator
    may not list namespaces, 429) still ends after the four steps and escalates, which kopf
    handles. kopf's outage retries reach ApiHealth through KopfRetryFilter (below)."""

    def __init__(self, health: ApiHealth | None = None) -> None:
        self._health = health

    def __iter__(self) -> Iterator[float]:
        attempt = 0
        while attempt < len(BACKOFF_SECONDS) or (self._health or API).down_since is not None:
            yield backoff(attempt)
            attempt += 1


def _transport_errors() -> tuple[type[BaseException], ...]:
    """lightkube's HTTP client is httpx2 (httpx in older releases; the operator image
    may have only one of them): the transport errors of whichever is installed."""
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


def unreachable(exc: BaseException) -> bool:
    """A failure to reach the API server or of the server itself (5xx, 429), as opposed
    to an answer about the request (403, 404, 409, 422)."""
    if isinstance(exc, TRANSPORT_ERRORS):
        return True
    code = status_code(exc)
    return code is not None and (code >= 500 or code == 429)


class ApiHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reached = False  # answered at least once since the process started
        self.down_since: float | None = clock()  # waiting until the first answer
        self._steps_logged: set[float] = set()
        metrics.APISERVER_REACHABLE.set(0)

    def succeeded(self) -> None:
        if self.down_since is not None:
            if self.reached:
                log.info("API server reachable again after %.0fs of outage",
                         self._clock() - self.down_since)
            self.down_since = None
            self._steps_logged.clear()
        self.reached = True
        metrics.APISERVER_REACHABLE.set(1)

    def failed(self, exc: BaseException, attempt: int) -> float:
        """Record a failure; returns the pause before the next attempt. Logs only a new
        backoff step of an outage (the caller logs failures that are not an outage)."""
        delay = backoff(attempt)
        if unreachable(exc):
            self.outage(f"{type(exc).__name__}: {exc}", delay)
        return delay

    def outage(self, detail: str, delay: float) -> None:
        if self.down_since is None:
            self.down_since = self._clock()
        metrics.APISERVER_REACHABLE.set(0)
        if delay not in self._steps_logged:
            self._steps_logged.add(delay)
            log.warning("API server unreachable for %.0fs (%s); retrying every %.0fs",
                        self._clock() - self.down_since, detail, delay)

    def describe(self) -> str:
        """For /healthz: still alive either way, and says what it is waiting for."""
        if self.down_since is None:
            return "connected to the API server"
        return f"waiting for the API server ({self._clock() - self.down_since:.0f}s)"


API = ApiHealth()  # the process's one view


# kopf logs every failed attempt of each of its requests ("Request attempt #3 failed; will
# retry: GET … -> ClientConnectorError(…)"). Those that are an outage go to ApiHealth's
# one line per backoff step instead; any other failure (403, 429, …) is left as it is.
_KOPF_RETRY = re.compile(r"^Request attempt #(\d+)\S* failed; will retry: (\S+ \S+) -> (\w+)")
_KOPF_OUTAGE_ERRORS = ("ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError",
                       "ClientOSError", "TimeoutError", "ServerTimeoutError", "APIServerError")


class KopfRetryFilter(logging.Filter):
    """On the log handlers: folds kopf's per-request outage retries into ApiHealth."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = _KOPF_RETRY.match(record.getMessage())
        if not m or m.group(3) not in _KOPF_OUTAGE_ERRORS:
            return True
        API.outage(f"{m.group(3)} on {m.group(2)}", backoff(int(m.group(1)) - 1))
        return False
