"""A real Clawdbot turn (npm `clawdbot`, Node 22) against the server over TLS + API key.

Clawdbot sends a ~23,000-character system prompt, 22 tools, `stream: true`,
`stream_options.include_usage` and `max_completion_tokens`, and refuses providers whose
context window is under 16000 — the tiny model here has a native 32768 window.
"""

from __future__ import annotations

import re
import time

import pytest
from agent_client import agent_home
from agent_client import run_turn as agent_turn
from serverutil import API_KEY

pytestmark = pytest.mark.server


def _config(server, model_id: str, window: int) -> dict:
    return {
        "agents": {"defaults": {"model": {"primary": f"modelserver/{model_id}"}}},
        "models": {"mode": "merge", "providers": {"modelserver": {
            "baseUrl": f"{server.base}/v1", "apiKey": "${MODELSERVER_API_KEY}",
            "api": "openai-completions",
            "models": [{"id": model_id, "name": f"modelserver {model_id}",
                        "contextWindow": window, "maxTokens": 48}]}}},
    }


def run_turn(server, home, model_id: str, window: int, message: str,
             session: str = "t1") -> dict:
    return agent_turn("clawdbot", _config(server, model_id, window), home, message,
                      session=session, ca=server.tls.ca,
                      env={"MODELSERVER_API_KEY": API_KEY})


def test_clawdbot_turn_over_tls_with_key(main_server):
    home = agent_home()
    with main_server.client() as c:
        before = c.get("/metrics").text
    t0 = time.monotonic()
    out = run_turn(main_server, home, "tiny", 32768, "Say hello in one short sentence.")
    took = time.monotonic() - t0
    payload = out["payloads"][0]
    assert isinstance(payload["text"], str) and payload["text"]
    usage = out["meta"]["agentMeta"]["usage"]
    assert usage["input"] > 3000, usage  # the long system prompt and tools went through
    assert 0 < usage["output"] <= 48
    assert out["meta"]["aborted"] is False
    with main_server.client() as c:
        after = c.get("/metrics").text

    def count(text: str) -> float:
        return float(re.search(r"^tgi_request_success (\S+)$", text, re.M).group(1))

    assert count(after) > count(before)
    print(f"clawdbot turn: {took:.1f}s, usage {usage}")

    # second turn, same session: the system prompt + tools prefix is reused, and the
    # server says so in usage.prompt_tokens_details.cached_tokens (Clawdbot: cacheRead)
    t0 = time.monotonic()
    out2 = run_turn(main_server, home, "tiny", 32768, "And once more, briefly.")
    usage2 = out2["meta"]["agentMeta"]["usage"]
    print(f"clawdbot second turn: {time.monotonic() - t0:.1f}s, usage {usage2}")
    assert out2["payloads"][0]["text"]
    assert usage2["cacheRead"] > 3000, usage2
