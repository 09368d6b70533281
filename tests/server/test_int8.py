"""Weight-only int8: the real model still answers correctly with under half the weight
memory of fp32 (the numbers are in /info)."""

from __future__ import annotations

import pytest
from serverutil import start_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def int8_server(workdir, smollm_gguf, tls_files):
    srv = start_server(workdir, "int8", str(smollm_gguf), "--served-name", "smollm2",
                       "--quantization", "int8", "--dtype", "float32", tls=tls_files)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_int8_answers_and_uses_less_weight_memory(int8_server, smol_server):
    client = int8_server.openai()
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert "Paris" in r.choices[0].message.content
    with int8_server.client() as c:
        q = c.get("/info").json()
    with smol_server.client() as c:
        full = c.get("/info").json()
    assert q["quantization"] == "int8" and full["quantization"] == "none"
    assert q["weight_bytes"] < 0.5 * full["weight_bytes"], (q["weight_bytes"],
                                                            full["weight_bytes"])
