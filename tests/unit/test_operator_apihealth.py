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


def test_kopf_backoffs_never_run_out_and_restart_per_request() -> None:
    backoffs = apihealth.EndlessBackoffs()
    first = list(itertools.islice(backoffs, 50))
    assert first[:4] == list(apihealth.BACKOFF_SECONDS)
    assert set(first[4:]) == {apihealth.BACKOFF_SECONDS[-1]}
    # kopf escalates after the last item of a sized sequence: this one has no length.
    assert not hasattr(backoffs, "__len__")
    assert next(iter(backoffs)) == apihealth.BACKOFF_SECONDS[0]  # a new request starts over


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
