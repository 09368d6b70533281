"""A parameter the server does not know is refused with a 422 naming it (OpenAI's API does
the same), never accepted and ignored; and the few accepted ones that change nothing by
nature say why, or are honoured."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(("route", "body", "param"), [
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}},
     "response_format"),
    ("/v1/chat/completions", {**CHAT, "metadata": {"a": "b"}}, "metadata"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "logprobs": 1}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "best_of": 2}, "best_of"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "suffix": "x"}, "suffix"),
])
def test_unknown_openai_parameter_is_422_naming_it(main_server, route, body, param):
    with main_server.client() as c:
        r = c.post(route, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert f"unknown parameter `{param}`" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"inputs": "hi", "parameters": {"max_new_tokens": 2, "no_repeat_ngram_size": 3}},
     "parameters.no_repeat_ngram_size"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 2}, "options": {}}, "options"),
])
@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/"])
def test_unknown_tgi_parameter_is_422_naming_it(main_server, route, body, param):
    with main_server.client() as c:
        r = c.post(route, json=body)
    assert r.status_code == 422, r.text
    assert r.json() == {"error": f"unknown parameter `{param}`: this server does not "
                                 "support it", "error_type": "validation"}


@pytest.mark.parametrize(("body", "param"), [
    ({**CHAT, "logit_bias": {"1": 5}}, "logit_bias"),
    ({**CHAT, "logprobs": True}, "logprobs"),
    ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
])
def test_known_but_unimplemented_openai_parameter_is_422_when_set(main_server, body, param):
    """TGI's client sends these as null on every chat: null passes, a value is refused."""
    with main_server.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, param: None}).status_code == 200
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["message"] == f"`{param}` is not supported by this server"


def test_a_seed_beyond_64_bits_is_422_naming_it(main_server):
    with main_server.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "seed": 2**64})
        assert r.status_code == 422 and r.json()["error"]["param"] == "seed", r.text
        r = c.post("/generate", json={"inputs": "hi",
                                      "parameters": {"max_new_tokens": 2, "seed": 2**64}})
        assert r.status_code == 422 and "parameters.seed" in r.json()["error"], r.text


def test_repetition_penalty_changes_a_chat_answer(main_server):
    """TGI's extension on chat (its client sends it): honoured, not ignored."""
    body = {**CHAT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    with main_server.client() as c:
        plain = c.post("/v1/chat/completions", json=body).json()
        penalized = c.post("/v1/chat/completions",
                           json={**body, "repetition_penalty": 3.0}).json()
    text = [r["choices"][0]["message"]["content"] for r in (plain, penalized)]
    assert text[0] != text[1], text


def test_store_false_is_served_and_store_true_refused(main_server):
    """Clawdbot and OpenClaw send store=false; true would ask for storage that never
    happens."""
    with main_server.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "store": False}).status_code == 200
        r = c.post("/v1/chat/completions", json={**CHAT, "store": True})
    assert r.status_code == 422 and r.json()["error"]["param"] == "store", r.text


def test_parallel_tool_calls_false_keeps_one_call():
    """Two calls in the model's output: both by default, the first only when
    parallel_tool_calls is false (non-streamed and streamed answers alike)."""
    from modelserver.api.openai_protocol import Plan
    from modelserver.api.openai_responses import ChatResponses
    from modelserver.engine.core import FinalEvent
    from modelserver.engine.sampling import SamplingParams

    text = ('<tool_call>{"name": "a", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>')
    final = FinalEvent("eos_token", text, 5, 9, 0, [], None)

    def plan(max_calls: int | None) -> Plan:
        return Plan(route="chat/completions", model="m", kind="chat.completion", ids=[1],
                    params=SamplingParams(max_new_tokens=9), stream=False,
                    include_usage=False, body={}, parser="hermes", tool_names={"a", "b"},
                    max_tool_calls=max_calls)

    def names(result) -> list[str]:
        return [c["function"]["name"] for c in result["tool_calls"]]

    assert names(ChatResponses(plan(None)).result(text, final)) == ["a", "b"]
    assert names(ChatResponses(plan(1)).result(text, final)) == ["a"]
    streamed = ChatResponses(plan(1))
    assert streamed.on_token(type("Tok", (), {"text": text})()) == []
    _, result = streamed.on_final(final)
    assert names(result) == ["a"] and result["finish_reason"] == "tool_calls"
