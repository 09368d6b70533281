"""A real small instruct model (SmolLM2-135M-Instruct, GGUF) where text must make sense."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server


def test_capital_of_france(smol_server):
    client = smol_server.openai()
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_answer_equals_non_streamed(smol_server):
    client = smol_server.openai()
    msgs = [{"role": "user", "content": "Name one primary colour."}]
    full = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16,
                                          temperature=0).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", messages=msgs, max_tokens=16, temperature=0, stream=True)
        if c.choices]
    assert "".join(parts) == full


def test_context_extension_reported_honestly(smol_server):
    with smol_server.client() as c:
        model = c.get("/v1/models").json()["data"][0]
        info = c.get("/info").json()
    assert model["native_context_window"] == 8192
    assert model["context_window"] == 32768
    assert model["rope_scaling"]["factor"] == 4.0
    assert model["rope_scaling"]["original_max_position_embeddings"] == 8192
    assert info["max_total_tokens"] == 32768 and info["native_context_window"] == 8192


def test_prefix_reuse_reports_cached_tokens(smol_server):
    """The second turn with the same long system prompt must not recompute it."""
    client = smol_server.openai()
    system = "You are a helpful assistant. " + " ".join(
        f"Rule {i}: answer briefly and politely." for i in range(60))
    first = client.chat.completions.create(
        model="smollm2", max_tokens=4, temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}])
    second = client.chat.completions.create(
        model="smollm2", max_tokens=4, temperature=0,
        messages=[{"role": "system", "content": system},
                  {"role": "user", "content": "What is 2+2?"}])
    assert first.usage.prompt_tokens > 400
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 12, (cached, first.usage.prompt_tokens)
