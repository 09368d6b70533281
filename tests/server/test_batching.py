"""Continuous batching under real concurrency: correctness, disconnects, overload, limits."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.server

WORDS = ["hello", "world", "fox", "Paris"]
PROMPTS = [f"request {i}: " + " ".join(WORDS[: i % 4 + 1]) * (i % 3 + 1) for i in range(32)]


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def _body(prompt: str, stream: bool, n: int = 24) -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0,
            "ignore_eos": True, "stream": stream}


async def _stream_text(client: httpx.AsyncClient, prompt: str) -> tuple[str, str]:
    text, finish = [], None
    async with client.stream("POST", "/v1/completions", json=_body(prompt, True)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev["choices"]:
                text.append(ev["choices"][0]["text"])
                finish = ev["choices"][0]["finish_reason"] or finish
    return "".join(text), finish


def test_32_concurrent_streams_equal_their_solo_output(main_server):
    """Greedy fp32: each of 32 concurrent requests returns exactly what it returns alone."""
    with main_server.client() as c:
        solo = []
        for p in PROMPTS:
            r = c.post("/v1/completions", json=_body(p, False))
            assert r.status_code == 200, r.text
            solo.append(r.json()["choices"][0]["text"])
        before = c.get("/metrics").text

    async def run_all():
        async with main_server.async_client(timeout=300) as client:
            return await asyncio.gather(*(_stream_text(client, p) for p in PROMPTS))

    results = asyncio.run(run_all())
    for i, (text, finish) in enumerate(results):
        assert finish == "length", i
        assert text == solo[i], f"request {i} differs when batched"
    with main_server.client() as c:
        after = c.get("/metrics").text
    steps = metric(after, "modelserver_decode_steps_total") - metric(
        before, "modelserver_decode_steps_total")
    rows = metric(after, "modelserver_decode_rows_total") - metric(
        before, "modelserver_decode_rows_total")
    assert rows / steps > 4, f"mean batch {rows / steps:.1f}: requests were not batched"


def test_disconnect_frees_the_slot(main_server):
    with main_server.client() as c:
        m = c.get("/metrics").text
        cancelled_before = metric(m, "tgi_request_failure", '{err="cancelled"}') \
            if 'err="cancelled"' in m else 0.0
        body = {**_body("hello", True, 30000), "max_tokens": 30000}
        with c.stream("POST", "/v1/completions", json=body) as r:
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    got += 1
                if got >= 3:
                    break  # leaving the block closes the connection
        deadline = time.monotonic() + 20
        while True:
            m = c.get("/metrics").text
            if (metric(m, "modelserver_inflight_requests") == 0
                    and metric(m, "tgi_batch_current_size") == 0):
                break
            assert time.monotonic() < deadline, "slot not freed after the client left"
            time.sleep(0.2)
        assert metric(m, "tgi_request_failure", '{err="cancelled"}') >= cancelled_before + 1


def test_overload_gives_429_with_retry_after_and_server_stays_healthy(tight_server):
    """tight: one concurrent request, overflow upstream dead → 429s, never a hang."""
    hold = threading.Event()
    started = threading.Event()

    def long_one():
        with tight_server.client() as c, c.stream(
                "POST", "/generate_stream",
                json={"inputs": "hi", "parameters": {"max_new_tokens": 3500,
                                                     "ignore_eos": True}}) as r:
            for _ in r.iter_lines():
                started.set()
                if hold.is_set():
                    break

    t = threading.Thread(target=long_one)
    t.start()
    try:
        assert started.wait(60)
        with tight_server.client(timeout=30) as c:
            t0 = time.monotonic()
            for _ in range(5):
                r = c.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
                assert r.status_code == 429 and r.headers["Retry-After"]
                assert r.json()["error_type"] == "overloaded"
                r = c.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
                assert r.status_code == 429 and r.headers["Retry-After"]
                assert r.json()["error"]["type"] == "rate_limit_error"
            assert time.monotonic() - t0 < 20
            m = c.get("/metrics").text
            assert metric(m, "modelserver_rejected_total") >= 10
            assert metric(m, "modelserver_overflow_total", '{result="failed"}') >= 5
    finally:
        hold.set()
        t.join(60)
    with tight_server.client() as c:
        assert c.get("/health").status_code == 200
        deadline = time.monotonic() + 20
        while metric(c.get("/metrics").text, "modelserver_inflight_requests") != 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        r = c.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 200


def test_total_tokens_limit_422_names_both_numbers(tight_server):
    with tight_server.client() as c:
        r = c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 5000})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["param"] == "max_tokens" and "5000" in err["message"] \
            and "4096" in err["message"]
        r = c.post("/generate", json={"inputs": "hello " * 5000})
        assert r.status_code == 422 and "4095" in r.json()["error"]


def test_metrics_names(main_server):
    with main_server.client() as c:
        c.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
        text = c.get("/metrics").text
    for name in ("tgi_request_count", "tgi_request_success", "tgi_queue_size",
                 "tgi_batch_current_size", "tgi_request_duration_bucket",
                 "tgi_request_queue_duration_bucket", "tgi_request_generated_tokens_bucket",
                 "tgi_request_input_length_bucket", "modelserver_inflight_requests",
                 "modelserver_queue_depth"):
        assert re.search(rf"^{name}[ {{]", text, re.M), name


def test_health_is_503_until_warm_and_request_timeout(workdir, tiny_model):
    """A fresh server answers 503 while loading, 200 only after the warm-up generation;
    then a request running past --request-timeout is cut off."""
    from serverutil import start_server

    srv = start_server(workdir, "cold", str(tiny_model), "--request-timeout", "1.5",
                       tls=None, auth=False)
    try:
        codes = []
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:
                try:
                    codes.append(c.get(srv.base + "/health").status_code)
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if codes[-1] == 200:
                    break
                time.sleep(0.05)
        assert codes and codes[-1] == 200
        assert 503 in codes, "never saw the not-ready state"
        assert codes.index(200) > codes.index(503)
        assert "ready:" in srv.log_text()
        # --request-timeout: a generation still running after 1.5 s is cut off with 504
        with httpx.Client(base_url=srv.base, timeout=30) as c:
            t0 = time.monotonic()
            r = c.post("/generate", json={"inputs": "x", "parameters": {
                "max_new_tokens": 30000, "ignore_eos": True}})
            assert r.status_code == 504 and r.json()["error_type"] == "timeout"
            assert time.monotonic() - t0 < 10
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 30000,
                                                "ignore_eos": True})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    finally:
        srv.stop()


def test_queue_depth_and_batch_size_gauges_under_load(main_server):
    """40 concurrent requests on a 32-slot batch: 8 wait, and the gauges show it."""
    seen = {"modelserver_queue_depth": 0.0, "tgi_batch_current_size": 0.0,
            "modelserver_inflight_requests": 0.0}
    done = threading.Event()

    def watch():
        with main_server.client() as c:
            while not done.is_set():
                m = c.get("/metrics").text
                for k in seen:
                    seen[k] = max(seen[k], metric(m, k))
                time.sleep(0.05)

    async def run_all():
        async with main_server.async_client(timeout=300) as client:
            bodies = [{**_body(f"load {i}", False, 200), "model": "tiny"} for i in range(40)]
            return await asyncio.gather(*(client.post("/v1/completions", json=b)
                                          for b in bodies))

    t = threading.Thread(target=watch)
    t.start()
    try:
        responses = asyncio.run(run_all())
    finally:
        done.set()
        t.join(30)
    assert all(r.status_code == 200 for r in responses)
    assert seen["tgi_batch_current_size"] == 32
    assert seen["modelserver_queue_depth"] >= 1
    assert seen["modelserver_inflight_requests"] >= 33
