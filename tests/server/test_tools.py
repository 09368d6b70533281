"""Tool calls: the parsers on model-style text, the JSON grammar, and real round trips
with the OpenAI client where the server constrains the model to a call."""

from __future__ import annotations

import json

import pytest
from modelserver.engine.constrain import JSONObjectMachine, ToolCallGrammar
from modelserver.toolcalls import StreamSplitter, parse

pytestmark = pytest.mark.server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}


def test_hermes_parser_extracts_calls_and_content():
    text = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '\n</tool_call><tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}'
            '</tool_call>')
    content, calls = parse(text, "hermes", {"get_weather", "get_time"})
    assert content == "Let me check."
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id != calls[1].id


def test_parser_leaves_unknown_or_broken_calls_as_text():
    broken = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    assert parse(broken, "hermes", {"get_weather"}) == (broken, [])
    unknown = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert parse(unknown, "hermes", {"get_weather"}) == (unknown, [])
    assert parse("plain answer", "hermes", {"get_weather"}) == ("plain answer", [])


def test_json_parser_bare_object():
    content, calls = parse('{"name": "get_time", "arguments": {"tz": "UTC"}}', "json",
                           {"get_time"})
    assert content == "" and calls[0].name == "get_time"


def test_stream_splitter_holds_back_only_the_call():
    sp = StreamSplitter("hermes")
    out = "".join(sp.feed(d) for d in ["Sure", ", one", " moment <tool", "_call>{\"name\": ",
                                        "\"get_time\", \"arguments\": {}}", "</tool_call>"])
    assert out == "Sure, one moment "
    rest, calls = sp.finish({"get_time"})
    assert rest == "" and calls[0].name == "get_time"
    sp = StreamSplitter("hermes")
    assert "".join(sp.feed(d) for d in ["a <", "b"]) + sp.finish(set())[0] == "a <b"


def test_json_machine_accepts_valid_and_completes_any_prefix():
    for doc in ['{}', '{"a":1}', '{"a":[1,2.5e3,-0.1,true,null,"x\\u00e9\\n"],"b":{"c":{}}}']:
        m = JSONObjectMachine()
        assert all(m.feed(ch) for ch in doc) and m.done, doc
        for cut in range(len(doc)):
            m = JSONObjectMachine()
            assert all(m.feed(ch) for ch in doc[:cut])
            json.loads(doc[:cut] + m.completion())  # always completes to valid JSON
    m = JSONObjectMachine()
    assert not all(m.feed(ch) for ch in '{"a":01}')


def test_grammar_restricts_names():
    g = ToolCallGrammar(["get_weather", "get_time"])
    assert g.accepts('{"name": "get_')
    assert not g.accepts('{"name": "rm')
    g.advance('{"name": "get_t')
    assert json.loads('{"name": "get_t' + g.completion())["name"] == "get_time"


def test_required_tool_choice_streams_a_valid_call_from_a_random_model(main_server):
    client = main_server.openai()
    msgs = [{"role": "user", "content": "what time is it in Paris?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER, TIME],
                                       tool_choice="required", max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    # streamed: a call with id and name, then argument fragments joining to valid JSON
    chunks = list(client.chat.completions.create(
        model="tiny", messages=msgs, tools=[WEATHER, TIME], tool_choice="required",
        max_tokens=40, temperature=0, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == call.function.name
    args = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(args) == json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_named_tool_round_trip_with_a_real_model(smol_server):
    """SmolLM2 is made to call get_weather; the result goes back; it answers in text."""
    client = smol_server.openai()
    msgs = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    r = client.chat.completions.create(
        model="smollm2", messages=msgs, tools=[WEATHER], max_tokens=32, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(args, dict)
    msgs += [r.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees."}]
    # tool_choice "none": answer in words from the tool result (the history — the call,
    # written into the content for this template, and the result — is rendered)
    final = client.chat.completions.create(model="smollm2", messages=msgs, tools=[WEATHER],
                                           tool_choice="none", max_tokens=12, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content
    plain = client.chat.completions.create(model="smollm2", messages=msgs[:1], max_tokens=1)
    # the history (call + result) went into the prompt
    assert final.usage.prompt_tokens > plain.usage.prompt_tokens + 10


def test_grammar_budget_check():
    g = ToolCallGrammar(["f"])
    g.advance('{"name": "f", "arguments": {"a":')
    assert g.accepts("1", budget=2)          # 1 then "}}" closes: 2 more tokens
    assert not g.accepts("[[", budget=3)     # would need "0]]}}": 5 more
