"""The OpenAI Python client against the real server over TLS with an API key."""

from __future__ import annotations

import json

import openai
import pytest

pytestmark = pytest.mark.server


def test_models_lists_served_name_and_window(main_server):
    client = main_server.openai()
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    raw = models.data[0].model_dump()
    assert raw["context_window"] == 32768
    assert raw["rope_scaling"] is None  # native window: no extension claimed


def test_chat_non_streaming_with_usage(main_server):
    client = main_server.openai()
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8,
        temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    assert r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_parts_content_and_include_usage(main_server):
    client = main_server.openai()
    stream = client.chat.completions.create(
        model="tiny", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        max_completion_tokens=12, temperature=0, store=False)
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].usage.completion_tokens <= 12
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the same request without streaming gives the same greedy text
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Hello there"}],
        max_completion_tokens=12, temperature=0)
    assert r.choices[0].message.content == text


def test_completions_and_stop_sequence(main_server):
    client = main_server.openai()
    full = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=16,
                                     temperature=0)
    text = full.choices[0].text
    assert full.usage.completion_tokens == 16 or full.choices[0].finish_reason == "stop"
    # pick a stop string from inside the greedy output: the answer must end right before it
    stop = text[4:6] if len(text) >= 6 else None
    if stop and stop.strip():
        r = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=16,
                                      temperature=0, stop=[stop])
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].text == text[: text.index(stop)]


def test_seed_gives_same_text(main_server):
    client = main_server.openai()
    kw = {"model": "tiny", "prompt": "hello", "max_tokens": 12, "temperature": 1.0,
          "seed": 1234}
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    c = client.completions.create(**{**kw, "seed": 99}).choices[0].text
    assert a == b
    assert a != c


def test_n_other_than_one_is_422_naming_n(main_server):
    client = main_server.openai()
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="tiny", n=2, max_tokens=2,
                                       messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 422
    assert e.value.body["param"] == "n"


def test_unknown_model_is_404(main_server):
    with pytest.raises(openai.NotFoundError):
        main_server.openai().chat.completions.create(
            model="gpt-4", max_tokens=2, messages=[{"role": "user", "content": "x"}])


def test_tool_conversation_history_round_trip(main_server):
    """A second turn carrying an assistant tool call and the tool's result is accepted
    (content null, arguments as a JSON string) and answered."""
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    client = main_server.openai()
    r = client.chat.completions.create(model="tiny", messages=messages, tools=tools,
                                       max_tokens=6, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, tools=tools, max_tokens=6, temperature=0,
        stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
