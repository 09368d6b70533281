"""apihealth: endless capped backoff, what counts as an outage, one log line per step."""

from __future__ import annotations

import itertools
import logging

import httpx
import httpx2
import pytest
from lightkube import ApiError
from modeldeploy import apihealth, metrics

pytestmark = pytest.mark.unit


def api_error(code: int) -> ApiError:
    response = httpx.Response(code, json={"kind": "Status", "code": code, "message": "m"},
                              request=httpx.Request("GET", "http://x"))
    return ApiError(response=response)


def test_kopf_backoffs_never_run_out_during_an_outage_only() -> None:
    health = apihealth.ApiHealth(clock=lambda: 0.0)  # not reached yet: waiting for it
    backoffs = apihealth.EndlessBackoffs(health)
    first = list(itertools.islice(backoffs, 50))
    assert first[:4] == list(apihealth.BACKOFF_SECONDS)
    assert set(first[4:]) == {apihealth.BACKOFF_SECONDS[-1]}
    # kopf escalates after the last item of a sized sequence: this one has no length.
    assert not hasattr(backoffs, "__len__")
    assert next(iter(backoffs)) == apihealth.BACKOFF_SECONDS[0]  # a new request starts over
    # Reachable: a refusal kopf retries (403 listing namespaces) ends after the steps.
    health.succeeded()
    assert list(backoffs) == list(apihealth.BACKOFF_SECONDS)
    # An outage beginning mid-sequence keeps it going, and its end stops it.
    steps = iter(backoffs)
    assert [next(steps) for _ in range(4)] == list(apihealth.BACKOFF_SECONDS)
    health.failed(httpx2.ConnectError("refused"), 0)
    assert next(steps) == apihealth.BACKOFF_SECONDS[-1]
    health.succeeded()
    assert list(steps) == []


@pytest.mark.parametrize(("exc", "outage"), [
    (httpx2.ConnectError("refused"), True),  # what lightkube raises
    (httpx.ConnectError("refused"), True),
    (httpx.ReadTimeout("slow"), True),
    (TimeoutError(), True),
    (api_error(503), True),
    (api_error(429), True),
    (api_error(403), False),
    (api_error(409), False),
    (ValueError("bug"), False),
])
def test_what_counts_as_an_outage(exc: Exception, outage: bool) -> None:
    assert apihealth.unreachable(exc) is outage


def test_an_outage_is_logged_once_per_step_and_its_end_once(
        caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    health = apihealth.ApiHealth(clock=lambda: t[0])
    assert health.describe().startswith("waiting for the API server")  # not reached yet
    health.succeeded()
    assert health.describe() == "connected to the API server"
    caplog.set_level(logging.INFO, logger="modeldeploy.apihealth")
    delays = []
    for attempt in range(30):  # 30 failures from several loops at once
        t[0] += 1
        delays.append(health.failed(httpx2.ConnectError("refused"), attempt))
    assert delays[-1] == apihealth.BACKOFF_SECONDS[-1]
    assert health.describe() == "waiting for the API server (29s)"  # since the first failure
    assert metrics.APISERVER_REACHABLE._value.get() == 0
    health.succeeded()
    assert metrics.APISERVER_REACHABLE._value.get() == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(apihealth.BACKOFF_SECONDS) + 1, lines
    assert lines[-1] == "API server reachable again after 29s of outage"


def test_a_refusal_is_not_an_outage() -> None:
    health = apihealth.ApiHealth(clock=lambda: 0.0)
    health.succeeded()
    health.failed(api_error(403), 0)
    assert health.describe() == "connected to the API server"


def test_kopf_retries_of_an_outage_fold_into_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    t = [0.0]
    health = apihealth.ApiHealth(clock=lambda: t[0])
    health.succeeded()
    monkeypatch.setattr(apihealth, "API", health)
    folded = apihealth.KopfRetryFilter()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf._cogs.clients.watching", logging.ERROR, __file__, 1,
                                 message, None, None)

    outage = ("Request attempt #{n} failed; will retry: GET https://127.0.0.1:6443/apis -> "
              "ClientConnectorError(ConnectionKey(host='127.0.0.1', port=6443), "
              "ConnectionRefusedError(111, 'Connect call failed'))")
    assert not folded.filter(record(outage.format(n=1)))  # dropped: ApiHealth speaks for it
    assert health.describe().startswith("waiting for the API server")
    # Not an outage (a refusal kopf retries too): left in the log as kopf wrote it.
    forbidden = ("Request attempt #2/9 failed; will retry: GET https://x/apis -> "
                 "APIForbiddenError('forbidden')")
    assert folded.filter(record(forbidden))
    assert folded.filter(record("Watching for resources in namespace"))
