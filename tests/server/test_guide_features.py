"""Features from the deployment guide, each against real parts: the Redis answer cache
(a real redis-server) and overflow to an upstream OpenAI-compatible server (a second
real modelserver)."""

from __future__ import annotations

import re
import threading

import pytest
import redis

pytestmark = pytest.mark.server


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_redis_cache_serves_repeated_deterministic_requests(aux_server, redis_url):
    client = aux_server.openai()
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "cache me please"}],
          "max_tokens": 10, "temperature": 0}
    first = client.chat.completions.create(**kw)
    with aux_server.client() as c:
        m1 = c.get("/metrics").text
    second = client.chat.completions.create(**kw)
    streamed = list(client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    with aux_server.client() as c:
        m2 = c.get("/metrics").text
    assert second.choices[0].message.content == first.choices[0].message.content
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert text == first.choices[0].message.content
    assert streamed[-1].usage.completion_tokens == first.usage.completion_tokens
    hits = _metric(m2, "modelserver_response_cache_hits_total") - _metric(
        m1, "modelserver_response_cache_hits_total")
    assert hits == 2
    # nothing new was generated for the hits
    assert _metric(m2, "tgi_request_count") == _metric(m1, "tgi_request_count")
    keys = redis.Redis.from_url(redis_url).keys("modelserver:resp:*")
    assert keys and 0 < redis.Redis.from_url(redis_url).ttl(keys[0]) <= 60


def test_sampled_requests_are_not_cached(aux_server):
    client = aux_server.openai()
    with aux_server.client() as c:
        before = _metric(c.get("/metrics").text, "modelserver_response_cache_hits_total")
    for _ in range(2):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "random please"}],
            max_tokens=5, temperature=0.8)
    with aux_server.client() as c:
        after = _metric(c.get("/metrics").text, "modelserver_response_cache_hits_total")
    assert after == before


def test_overflow_forwards_when_full(aux_server, main_server):
    """aux holds 1 request; while it is busy, the next goes to `main` (its upstream)."""
    started, stop = threading.Event(), threading.Event()

    def long_one():
        with aux_server.client() as c, c.stream(
                "POST", "/generate_stream",
                json={"inputs": "hi", "parameters": {"max_new_tokens": 3000,
                                                     "ignore_eos": True}}) as r:
            for _ in r.iter_lines():
                started.set()
                if stop.is_set():
                    break

    t = threading.Thread(target=long_one)
    t.start()
    try:
        assert started.wait(60)
        with main_server.client() as c:
            upstream_before = _metric(c.get("/metrics").text, "tgi_request_count")
        client = aux_server.openai()
        r = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "overflow me"}],
            max_tokens=4, temperature=0)
        assert r.headers.get("x-modelserver-overflow") == "1"
        assert r.parse().choices[0].finish_reason in ("stop", "length")
        chunks = list(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "overflow me"}],
            max_tokens=4, temperature=0, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        with main_server.client() as c:
            upstream_after = _metric(c.get("/metrics").text, "tgi_request_count")
        assert upstream_after >= upstream_before + 2
        with aux_server.client() as c:
            m = c.get("/metrics").text
        assert _metric(m, "modelserver_overflow_total", '{result="ok"}') >= 2
    finally:
        stop.set()
        t.join(60)
