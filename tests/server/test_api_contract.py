"""Issue 15, an API that never ignores what it accepts: each parameter is implemented
(and shown to have its effect) or refused with a 422 naming it; one error path."""

from __future__ import annotations

import pytest
import torch
from serverutil import REQUEST_WAIT

pytestmark = pytest.mark.server

PROMPT = "hello world"


# ---- in the engine: token ids, so the effect is exact -------------------------------------
@pytest.fixture(scope="module")
def engine(tiny):
    from modelserver.engine.core import Engine

    model, tok = tiny
    # small prefill chunks: prompt scoring must carry over chunk boundaries
    eng = Engine(model, tok, max_batch_size=2, prefix_cache_entries=4, prefill_chunk=4)
    eng.start()
    yield eng
    eng.stop()


def _run(engine, ids: list[int], **params):
    from modelserver.engine import drive

    o = drive.submit(engine, ids, drive.greedy(24, **params)).wait(REQUEST_WAIT)
    assert o.ok, o.end
    return o.tokens, o.end


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_penalty_stops_greedy_repeats(engine, penalty):
    ids = engine.tokenizer(PROMPT)["input_ids"]
    plain, _ = _run(engine, ids)
    assert len(set(plain)) < len(plain), f"the greedy output repeats no token: {plain}"
    penalized, _ = _run(engine, ids, **{penalty: 2.0})
    assert len(set(penalized)) == len(penalized), penalized
    # the penalty acts only once a token has been generated: the first one is the same
    assert penalized[0] == plain[0]


def test_prompt_logprobs_equal_a_full_forward(engine):
    ids = engine.tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]
    _run(engine, ids)  # now in the prefix cache: scoring must not reuse it
    _, final = _run(engine, ids, prompt_logprobs=True)
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits, -1)
    want = [float(ref[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert final.prompt_logprobs[0] is None
    assert final.prompt_logprobs[1:] == pytest.approx(want, abs=1e-4)
    _, unscored = _run(engine, ids)
    assert unscored.prompt_logprobs == []


# ---- over HTTP, against the real server ---------------------------------------------------
@pytest.mark.parametrize("route,body", [
    ("/v1/completions", {"prompt": PROMPT}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
])
@pytest.mark.parametrize("param", ["presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [2.5, -2.01])
def test_penalty_out_of_range_is_422_naming_it(main_server, route, body, param, value):
    with main_server.client() as c:
        r = c.post(route, json={**body, "max_tokens": 2, param: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_frequency_penalty_changes_the_answer(main_server):
    client = main_server.openai()
    kw = {"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    plain = client.completions.create(**kw).choices[0].text
    assert client.completions.create(**kw, frequency_penalty=0).choices[0].text == plain
    assert client.completions.create(**kw, frequency_penalty=2).choices[0].text != plain
    chat = {"model": "tiny", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT}]}
    plain = client.chat.completions.create(**chat).choices[0].message.content
    assert client.chat.completions.create(
        **chat, presence_penalty=2).choices[0].message.content != plain


@pytest.mark.parametrize("param,value", [
    ("typical_p", 0.5), ("frequency_penalty", 0.5), ("watermark", True),
    ("top_n_tokens", 3), ("adapter_id", "lora"), ("grammar", {"type": "json", "value": {}}),
])
@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_tgi_unsupported_parameter_is_422_naming_it(main_server, route, param, value):
    with main_server.client() as c:
        r = c.post(route, json={"inputs": PROMPT, "parameters": {param: value}})
    assert r.status_code == 422, r.text
    assert r.json() == {"error": f"`{param}` is not supported by this server",
                        "error_type": "validation"}


def test_tgi_decoder_input_details_scores_the_prompt(main_server):
    with main_server.client() as c:
        ids = [t["id"] for t in c.post("/tokenize", json={"inputs": PROMPT}).json()]
        r = c.post("/generate", json={"inputs": PROMPT, "parameters": {
            "max_new_tokens": 2, "decoder_input_details": True}})
        assert r.status_code == 200, r.text
        prefill = r.json()["details"]["prefill"]
        assert [t["id"] for t in prefill] == ids
        assert prefill[0]["logprob"] is None
        assert all(isinstance(t["logprob"], float) and t["logprob"] < 0 for t in prefill[1:])
        # details alone: no prompt scoring, as TGI
        r = c.post("/generate", json={"inputs": PROMPT, "parameters": {
            "max_new_tokens": 2, "details": True}})
        assert r.json()["details"]["prefill"] == []
        r = c.post("/generate_stream", json={"inputs": PROMPT, "parameters": {
            "max_new_tokens": 2, "decoder_input_details": True}})
        assert r.status_code == 422 and "decoder_input_details" in r.json()["error"]


def test_model_tgi_is_an_alias_of_the_served_model(main_server):
    """TGI's clients send model="tgi"; any other unknown name stays a 404."""
    with main_server.client() as c:
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        r = c.post("/v1/chat/completions", json={**body, "model": "tgi"})
        assert r.status_code == 200 and r.json()["model"] == "tiny"
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "model": "tgi"})
        assert r.status_code == 200 and r.json()["model"] == "tiny"
        r = c.post("/v1/chat/completions", json={**body, "model": "tgi2"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_max_batch_size_has_its_own_metric(main_server):
    with main_server.client() as c:
        text = c.get("/metrics").text
    assert "\nmodelserver_batch_max_size 32.0\n" in text
    # TGI's max-tokens metric is a token budget: not exported under a wrong meaning
    assert "tgi_batch_current_max_tokens" not in text


# ---- the access middleware renders through the error types --------------------------------
@pytest.fixture()
def guarded():
    from fastapi import FastAPI
    from modelserver import errors
    from modelserver.security import AccessMiddleware

    app = FastAPI()
    errors.install(app)

    @app.post("/generate")
    @app.post("/v1/completions")
    async def echo(body: dict) -> dict:
        return body

    class Keys:
        def valid(self, key: str) -> bool:
            return key == "good"

    return AccessMiddleware(app, Keys(), ["10.0.0.0/8"], max_body_bytes=64)


def _call(asgi, path: str, client: str = "10.1.2.3", body: bytes = b"{}",
          headers: dict | None = None):
    import httpx

    transport = httpx.ASGITransport(app=asgi, client=(client, 1234))

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post(path, content=body, headers={
                "Authorization": "Bearer good", "content-type": "application/json",
                **(headers or {})})

    import asyncio

    return asyncio.run(go())


@pytest.mark.parametrize("kw,err", [
    ({"client": "192.168.0.1"}, "ForbiddenError"),
    ({"headers": {"Authorization": "Bearer bad"}}, "UnauthorizedError"),
    ({"body": b'{"a": "' + b"x" * 100 + b'"}'}, "PayloadTooLargeError"),
    ({"headers": {"content-length": "lots"}}, "BadRequestError"),
])
@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_middleware_rejections_are_the_error_types(guarded, kw, err, path):
    from modelserver import errors

    expected = {"ForbiddenError": lambda: errors.ForbiddenError(),
                "UnauthorizedError": lambda: errors.UnauthorizedError(),
                "PayloadTooLargeError": lambda: errors.PayloadTooLargeError(64),
                "BadRequestError": lambda: errors.BadRequestError("invalid Content-Length"),
                }[err]()
    r = _call(guarded, path, **kw)
    assert r.status_code == expected.status
    assert r.json() == errors.error_body(path, expected)
    for name, value in expected.headers.items():
        assert r.headers[name] == value
    assert _call(guarded, path).status_code == 200
