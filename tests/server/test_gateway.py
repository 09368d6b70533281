"""`modelserver gateway` in front of a real engine: the builtin server (`modelserver serve
--no-tls --no-auth` on loopback) stands in for vLLM or TGI. Everything the gateway adds
(TLS with reload, several keys with reload, the allow-list behind a trusted proxy, the
answer cache, admission and overflow, its own metrics) is checked with real clients
(openai, httpx, Clawdbot) over real sockets, all on loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from agent_client import agent_home
from agent_client import run_turn as agent_turn
from serverutil import (
    API_KEY,
    REPO,
    Server,
    TLSFiles,
    free_port,
    make_tls,
    start_server,
)

pytestmark = pytest.mark.server

SECOND_KEY = "sk-gateway-second-key-9876543210"
GATEWAY_START_TIMEOUT = 60
LAN_CLIENT = "192.168.1.7"  # allowed through the trusted proxy
STRANGER = "203.0.113.9"  # allowed by no list
PROXY = "127.0.0.2"  # the trusted proxy (an Ingress controller)
OUTSIDER = "127.0.0.3"  # neither allowed nor trusted


def start_gateway(workdir: Path, name: str, upstream: str, *extra: str,
                  tls: TLSFiles | None, keys: list[str] | None) -> Server:
    """`modelserver gateway` on a free loopback port, ready (its /health may be 503 when
    the upstream is down: readiness here is the port answering)."""
    port = free_port()
    args = [sys.executable, "-m", "modelserver", "gateway", "--upstream", upstream,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)] if tls else ["--no-tls"]
    key_file = None
    if keys:
        key_file = workdir / f"{name}.keys"
        key_file.write_text("# gateway keys\n" + "".join(k + "\n" for k in keys))
        args += ["--api-keys-file", str(key_file)]
    else:
        args += ["--no-auth"]
    args += list(extra)
    log = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fh = open(log, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    server = Server(name, port, proc, log, tls, key_file, args)
    deadline = time.monotonic() + GATEWAY_START_TIMEOUT
    with httpx.Client(verify=server.verify(), timeout=5) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway {name} exited {proc.returncode}:\n"
                                   + server.log_text()[-4000:])
            try:
                c.get(server.base + "/metrics")
                return server
            except httpx.HTTPError:
                time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"gateway {name} not listening in {GATEWAY_START_TIMEOUT}s:\n"
                       + server.log_text()[-4000:])


@pytest.fixture(scope="module")
def engine(workdir, tiny_model):
    """The upstream: the builtin server, plain HTTP, no key, on loopback, as vLLM or TGI
    run in a gateway pod. The last test of this module stops it."""
    server = start_server(workdir, "gw-engine", str(tiny_model), "--served-name", "tiny",
                          "--dtype", "float32", "--max-batch-size", "8",
                          "--max-concurrent-requests", "16", "--request-timeout", "120",
                          tls=None, auth=False)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway_tls(workdir) -> TLSFiles:
    return make_tls(workdir / "gw-tls", cn="gateway")


@pytest.fixture(scope="module")
def gateway(workdir, engine, gateway_tls, redis_url):
    """TLS, two keys, an allow-list with a trusted proxy, the answer cache."""
    server = start_gateway(
        workdir, "gateway", engine.base, "--allow-cidr", "127.0.0.1/32",
        "--allow-cidr", "192.168.1.0/24", "--trusted-proxy-cidr", f"{PROXY}/32",
        "--cache-redis-url", redis_url, "--cache-ttl", "60", "--request-timeout", "60",
        "--redact-logs", tls=gateway_tls, keys=[API_KEY, SECOND_KEY])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rotating(workdir, engine):
    """A gateway whose certificate and key file the tests replace."""
    tls = make_tls(workdir / "gw-rotating-tls", cn="before-rotation")
    server = start_gateway(workdir, "gw-rotating", engine.base, tls=tls,
                           keys=[API_KEY, SECOND_KEY])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tight(workdir, engine):
    """One request in flight at a time; overflow to the engine itself (any
    OpenAI-compatible server would do)."""
    server = start_gateway(workdir, "gw-tight", engine.base, "--max-concurrent-requests", "1",
                           "--overflow-url", f"{engine.base}/v1", tls=None, keys=None)
    yield server
    server.stop()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$" if labels else \
        rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"
    found = re.findall(pattern, text, re.M)
    return sum(float(v) for v in found)


def long_stream_body(tokens: int) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Count slowly."}],
            "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}


# ---- OpenAI and TGI through the gateway ---------------------------------------------------
def test_openai_chat_non_streaming(gateway):
    client = gateway.openai(max_retries=0)
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
        temperature=0.7)
    assert out.object == "chat.completion" and out.model == "tiny"
    assert out.usage.completion_tokens > 0
    assert isinstance(out.choices[0].message.content, str)


def test_openai_chat_streaming_is_unbuffered(gateway):
    """Chunks arrive as the engine makes them: the first long before the last. A gateway
    that buffered the answer would deliver them all at once, at the end."""
    client = gateway.openai(max_retries=0)
    started = time.monotonic()
    arrivals: list[float] = []
    text = []
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Count slowly."}],
        max_tokens=200, temperature=0, stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            arrivals.append(time.monotonic())
            text.append(chunk.choices[0].delta.content)
    total = arrivals[-1] - started
    spread = arrivals[-1] - arrivals[0]
    print(f"{len(arrivals)} chunks; first after {arrivals[0] - started:.2f}s, "
          f"last after {total:.2f}s")
    assert len(arrivals) >= 100
    assert spread > 0.5 * total, (spread, total)
    assert "".join(text)


def test_tgi_routes(gateway):
    with gateway.client() as c:
        info = c.get("/info")
        assert info.status_code == 200 and info.json()["model_id"]
        out = c.post("/generate", json={"inputs": "Hello",
                                        "parameters": {"max_new_tokens": 5, "details": True}})
        assert out.status_code == 200, out.text
        assert out.json()["details"]["generated_tokens"] == 5
        with c.stream("POST", "/generate_stream",
                      json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [ln for ln in r.iter_lines() if ln.startswith("data:")]
        assert len(events) == 4
        # the engine's own typed errors come through as they are
        bad = c.post("/generate", json={"inputs": "Hello",
                                        "parameters": {"max_new_tokens": 0}})
        assert bad.status_code == 422 and bad.json()["error_type"] == "validation"


def test_closing_the_client_closes_the_upstream_request(gateway):
    """A client that goes away mid-stream frees the engine's batch row, not at the end of
    a generation nobody reads (3000 tokens: about half a minute here)."""
    rows = "tgi_batch_current_size"  # the engine's, read through the gateway

    def wait_for(c: httpx.Client, name: str, value: float) -> float:
        deadline = time.monotonic() + 15
        while (seen := metric(c.get("/metrics").text, name)) != value and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        return seen

    with gateway.client() as c:
        started = time.monotonic()
        with c.stream("POST", "/v1/chat/completions", json=long_stream_body(3000)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: dropping the iterator closes the connection
            for _ in range(6):
                next(lines)
            assert wait_for(c, rows, 1) == 1
            assert wait_for(c, "modelserver_gateway_inflight_requests", 1) == 1
        assert wait_for(c, rows, 0) == 0
        assert wait_for(c, "modelserver_gateway_inflight_requests", 0) == 0
        assert time.monotonic() - started < 20


def test_answer_cache_serves_deterministic_chat(gateway):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "cache me"}],
            "max_tokens": 6, "temperature": 0}
    with gateway.client() as c:
        before = c.get("/metrics").text
        first = c.post("/v1/chat/completions", json=body)
        second = c.post("/v1/chat/completions", json=body)
        sampled = c.post("/v1/chat/completions", json={**body, "temperature": 0.9})
        after = c.get("/metrics").text
    assert first.status_code == second.status_code == sampled.status_code == 200
    assert second.json()["choices"] == first.json()["choices"]
    hits = "modelserver_gateway_response_cache_hits_total"
    misses = "modelserver_gateway_response_cache_misses_total"
    assert metric(after, hits) - metric(before, hits) == 1
    assert metric(after, misses) - metric(before, misses) == 1  # sampled: not looked up
    # the engine answered twice (the miss and the sampled one), not three times
    done = "tgi_request_success"
    assert metric(after, done) - metric(before, done) == 2


def test_tls13_by_default(gateway):
    """The listener is serve's: TLS 1.3 unless --tls-min-version 1.2."""
    old_client = gateway.tls.context()
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gateway.port)) as raw, \
            pytest.raises(ssl.SSLError):
        old_client.wrap_socket(raw, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", gateway.port)) as raw, \
            gateway.tls.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"


# ---- keys -----------------------------------------------------------------------------------
def test_keys(gateway):
    with httpx.Client(base_url=gateway.base, verify=gateway.verify(), timeout=30) as c:
        assert c.get("/health").status_code == 200  # probes carry no key
        assert c.get("/metrics").status_code == 200
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-key-000000"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models").status_code == 401
        for key in (API_KEY, SECOND_KEY):
            r = c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
    assert API_KEY not in gateway.log_text() and SECOND_KEY not in gateway.log_text()


def test_key_file_rewritten_takes_effect_without_restart(rotating):
    new_key = "sk-gateway-rotated-key-5555555555"
    rotating.key_file.write_text(f"{SECOND_KEY}\n{new_key}\n")

    def status(key: str) -> int:
        with httpx.Client(verify=rotating.verify(), timeout=30) as c:
            return c.get(rotating.base + "/v1/models",
                         headers={"Authorization": f"Bearer {key}"}).status_code

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and status(new_key) != 200:
        time.sleep(0.3)
    assert status(new_key) == 200
    assert status(API_KEY) == 401
    assert status(SECOND_KEY) == 200
    assert rotating.proc.poll() is None


def test_certificate_replaced_new_handshakes_see_it(rotating, workdir):
    old = rotating.tls
    fresh = make_tls(workdir / "gw-rotated-tls", cn="after-rotation")

    def handshake(ca: Path) -> bool:
        try:
            with httpx.Client(verify=TLSFiles(ca, old.cert, old.key).context(),
                              timeout=10) as c:
                return c.get(rotating.base + "/health").status_code in (200, 503)
        except httpx.ConnectError:
            return False

    assert handshake(old.ca) and not handshake(fresh.ca)
    shutil.copy(fresh.key, old.key)
    shutil.copy(fresh.cert, old.cert)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not handshake(fresh.ca):
        time.sleep(0.3)
    assert handshake(fresh.ca)
    assert not handshake(old.ca)


# ---- allow-list behind a trusted proxy --------------------------------------------------------
def _from(gateway: Server, source: str, xff: str | None = None) -> int:
    headers = {"X-Forwarded-For": xff} if xff else {}
    with gateway.client(transport=httpx.HTTPTransport(local_address=source,
                                                      verify=gateway.verify()),
                        headers=headers) as c:
        return c.get("/v1/models").status_code


def test_allow_list(gateway):
    assert _from(gateway, "127.0.0.1") == 200
    assert _from(gateway, OUTSIDER) == 403
    # a trusted proxy's X-Forwarded-For is the client
    assert _from(gateway, PROXY, LAN_CLIENT) == 200
    assert _from(gateway, PROXY, STRANGER) == 403
    assert _from(gateway, PROXY) == 403  # the proxy itself is not allowed
    # from an untrusted peer the header is a forgery: it neither admits nor refuses
    assert _from(gateway, OUTSIDER, LAN_CLIENT) == 403
    assert _from(gateway, "127.0.0.1", STRANGER) == 200


# ---- admission, overflow, metrics -----------------------------------------------------------
def test_full_gateway_overflows_or_answers_429(tight):
    """While one stream holds the only slot: a chat goes to the overflow upstream, a TGI
    request (no overflow for TGI routes) gets 429 with Retry-After."""
    opened = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with tight.client() as c, c.stream("POST", "/v1/chat/completions",
                                           json=long_stream_body(3000)) as r:
            assert r.status_code == 200
            for n, _ in enumerate(r.iter_lines()):
                if n == 2:
                    opened.set()
                if release.is_set():
                    break

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert opened.wait(60)
        with tight.client() as c:
            tgi = c.post("/generate", json={"inputs": "Hi",
                                            "parameters": {"max_new_tokens": 2}})
            assert tgi.status_code == 429 and tgi.headers["Retry-After"]
            assert tgi.json()["error_type"] == "overloaded"
            chat = c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 3})
            assert chat.status_code == 200, chat.text
            assert chat.headers["X-Modelserver-Overflow"] == "1"
            text = c.get("/metrics").text
        assert metric(text, "modelserver_gateway_overflow_total", '{result="ok"}') == 1
        assert metric(text, "modelserver_gateway_rejected_total") == 1
    finally:
        release.set()
        holder.join(60)


def test_metrics_hold_the_gateways_and_the_engines(gateway):
    with gateway.client() as c:
        c.get("/v1/models")
        text = httpx.get(gateway.base + "/metrics", verify=gateway.verify()).text
    assert metric(text, "modelserver_gateway_requests_total",
                  '{route="/v1/models",status="200"}') >= 1
    assert "modelserver_gateway_inflight_requests" in text
    assert "modelserver_gateway_upstream_errors_total" in text
    # the engine's own text, appended verbatim
    assert re.search(r"^modelserver_ready 1\.0$", text, re.M)
    assert re.search(r"^tgi_request_success \S+$", text, re.M)


# ---- a real agent -----------------------------------------------------------------------------
def test_clawdbot_turn_through_the_gateway(gateway):
    config = {
        "agents": {"defaults": {"model": {"primary": "gateway/tiny"}}},
        "models": {"mode": "merge", "providers": {"gateway": {
            "baseUrl": f"{gateway.base}/v1", "apiKey": "${MODELSERVER_API_KEY}",
            "api": "openai-completions",
            "models": [{"id": "tiny", "name": "tiny via gateway", "contextWindow": 32768,
                        "maxTokens": 48}]}}},
    }
    out = agent_turn("clawdbot", config, agent_home(), "Say hello in one short sentence.",
                     ca=gateway.tls.ca, env={"MODELSERVER_API_KEY": SECOND_KEY})
    assert out["payloads"][0]["text"]
    usage = out["meta"]["agentMeta"]["usage"]
    assert usage["input"] > 3000, usage  # the long system prompt and tools went through
    assert 0 < usage["output"] <= 48
    assert out["meta"]["aborted"] is False


# ---- flags --------------------------------------------------------------------------------
@pytest.mark.parametrize("args, named", [
    (["--upstream", "https://x"], "--upstream"),
    ([], "--upstream"),
    (["--upstream", "http://127.0.0.1:1", "--allow-cidr", "10.0.0.0/33"], "--allow-cidr"),
])
def test_bad_flags_exit_2_naming_the_flag(args, named):
    r = subprocess.run([sys.executable, "-m", "modelserver", "gateway", *args, "--no-tls",
                        "--no-auth"], capture_output=True, text=True, cwd=str(REPO),
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert named in r.stderr


# ---- last: the engine goes away ---------------------------------------------------------------
def test_upstream_stopped_health_503_and_typed_error_fast(gateway, engine):
    engine.stop()
    with httpx.Client(base_url=gateway.base, verify=gateway.verify(), timeout=30) as c:
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["error_type"] == "unavailable"
        assert "upstream" in health.json()["error"]
        assert c.get("/metrics").status_code == 200  # the gateway's own, still
    client = gateway.openai(max_retries=0, timeout=30)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert time.monotonic() - started < 10
    assert caught.value.status_code in (502, 503)
    assert caught.value.body["type"] == "server_error"
    assert "upstream" in caught.value.body["message"]
