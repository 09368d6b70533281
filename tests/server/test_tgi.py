"""The Hugging Face `text-generation` client (0.7.0) and raw TGI routes."""

from __future__ import annotations

import json

import pytest
from serverutil import API_KEY, FAIL_MARKER
from text_generation import Client
from text_generation import errors as tgi_errors
from text_generation.types import Message

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def tgi(main_server, monkeypatch_module):
    # the client uses `requests`, which trusts the CA bundle named here
    monkeypatch_module.setenv("REQUESTS_CA_BUNDLE", str(main_server.tls.ca))
    return Client(main_server.base, headers={"Authorization": f"Bearer {API_KEY}"},
                  timeout=120)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_generate_details(tgi):
    r = tgi.generate("The quick brown", max_new_tokens=7, decoder_input_details=True)
    d = r.details
    assert d.generated_tokens == 7 or d.finish_reason.value == "eos_token"
    assert d.finish_reason.value in ("length", "eos_token", "stop_sequence")
    assert len(d.tokens) == d.generated_tokens
    assert "".join(t.text for t in d.tokens) == r.generated_text
    assert len(d.prefill) > 0 and d.prefill[0].logprob is None


def test_generate_stream_matches_generate(tgi):
    full = tgi.generate("hello world", max_new_tokens=9).generated_text
    events = list(tgi.generate_stream("hello world", max_new_tokens=9))
    assert events[-1].generated_text == full
    assert "".join(e.token.text for e in events) == full
    assert events[-1].details.finish_reason.value in ("length", "eos_token")
    assert all(e.details is None for e in events[:-1])


def test_stop_sequence_finish_reason(tgi):
    text = tgi.generate("hello world", max_new_tokens=12).generated_text
    stop = text[3:5]
    if not stop.strip():
        pytest.fail(f"greedy output too short to pick a stop sequence from: {text!r}")
    r = tgi.generate("hello world", max_new_tokens=12, stop_sequences=[stop])
    assert r.details.finish_reason.value == "stop_sequence"
    assert r.generated_text == text[: text.index(stop)]


def test_seeded_sampling_repeats(tgi):
    a = tgi.generate("hello", max_new_tokens=10, do_sample=True, seed=7, temperature=0.9)
    b = tgi.generate("hello", max_new_tokens=10, do_sample=True, seed=7, temperature=0.9)
    assert a.generated_text == b.generated_text
    assert a.details.seed == 7


def test_chat_non_streaming_via_tgi_client(tgi):
    r = tgi.chat([Message(role="user", content="hi")], max_tokens=5, temperature=0.0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage["completion_tokens"] <= 5


def test_validation_error_shape_on_tgi_route(main_server):
    """Raw request (the client would refuse it locally): 422, TGI error shape, names it."""
    with main_server.client() as c:
        r = c.post("/generate", json={"inputs": "hi", "parameters": {"temperature": -1.0}})
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    assert "temperature" in r.json()["error"]


def test_validation_too_many_tokens_names_both_numbers(tgi):
    with pytest.raises(tgi_errors.ValidationError) as e:
        tgi.generate("hi", max_new_tokens=40000)
    assert "40000" in str(e.value) and "32768" in str(e.value)


def test_generation_error_type(tgi):
    with pytest.raises(tgi_errors.GenerationError):
        tgi.generate(f"please {FAIL_MARKER}", max_new_tokens=2)


def test_overloaded_error_type(tight_server, monkeypatch):
    """tight allows one request at a time and its overflow upstream is dead → 429."""
    import threading

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tight_server.tls.ca))
    client = Client(tight_server.base, headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=120)
    started = threading.Event()
    results: list = []

    def long_one():
        with tight_server.client() as c, c.stream(
                "POST", "/generate_stream",
                json={"inputs": "hi", "parameters": {"max_new_tokens": 3000,
                                                   "ignore_eos": True}}) as r:
            for _ in r.iter_lines():
                started.set()
                if len(results) > 0:
                    break
    t = threading.Thread(target=long_one)
    t.start()
    try:
        assert started.wait(60)
        with pytest.raises(tgi_errors.OverloadedError):
            client.generate("hi", max_new_tokens=2)
        results.append("done")
    finally:
        results.append("done")
        t.join(60)


def test_explicit_nulls_and_compat_route_array(main_server):
    body = {"inputs": "hello", "parameters": {
        "best_of": None, "decoder_input_details": None, "details": True, "do_sample": None,
        "frequency_penalty": None, "grammar": None, "max_new_tokens": 4,
        "repetition_penalty": None, "return_full_text": None, "seed": None, "stop": [],
        "temperature": None, "top_k": None, "top_n_tokens": None, "top_p": None,
        "truncate": None, "typical_p": None, "watermark": None, "adapter_id": None},
        "stream": False}
    with main_server.client() as c:
        r = c.post("/", json=body)
        assert r.status_code == 200, r.text
        assert isinstance(r.json(), list) and len(r.json()) == 1
        assert r.json()[0]["details"]["generated_tokens"] <= 4
        g = c.post("/generate", json=body)
        assert g.status_code == 200 and isinstance(g.json(), dict)


def test_generate_stream_has_no_done_marker(main_server):
    with main_server.client() as c, c.stream(
            "POST", "/generate_stream",
            json={"inputs": "hi", "parameters": {"max_new_tokens": 3}}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data:") for ln in lines)
    assert "[DONE]" not in "".join(lines)
    last = json.loads(lines[-1][5:])
    assert last["details"]["finish_reason"] in ("length", "eos_token")


def test_info_and_tokenize(main_server):
    with main_server.client() as c:
        info = c.get("/info").json()
        for key in ("model_id", "model_sha", "model_pipeline_tag", "max_concurrent_requests",
                    "max_best_of", "max_stop_sequences", "max_input_tokens",
                    "max_total_tokens", "validation_workers", "max_client_batch_size",
                    "router", "version", "sha", "docker_label"):
            assert key in info, key
        assert info["model_id"] == "tiny" and info["max_total_tokens"] == 32768
        toks = c.post("/tokenize", json={"inputs": "hello world"}).json()
        assert toks and all({"id", "text", "start", "stop"} <= set(t) for t in toks)
        assert "".join(t["text"] for t in toks) == "hello world"
