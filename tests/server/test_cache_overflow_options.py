"""The answer cache's and overflow's options a ModelDeployment renders (issue 13), for
`serve` and `gateway` alike: a Redis password from a file (a real redis-server with
requirepass), an https upstream signed by a private CA (--overflow-ca-file, no
SSL_CERT_FILE), a bounded upstream wait (--overflow-timeout: 429 with Retry-After, never a
hang) and requests redacted on their way upstream (--redact-overflow-requests).

The overflow upstream here is a small recording OpenAI-compatible server (real HTTP over
real TLS, in this process): it is the only place that can say what was sent upstream.
A real modelserver as the upstream is test_guide_features.py's."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from serverutil import Server, TLSFiles, free_port, make_tls, start_server
from test_gateway import start_gateway

pytestmark = pytest.mark.server

REDIS_PASSWORD = "s3cret-redis-password"
UPSTREAM_KEY = "sk-upstream-key-0123456789"
SLOW_MARKER = "@@slow-upstream@@"  # in a message: the upstream waits SLOW_SECONDS
SLOW_SECONDS = 20
OVERFLOW_TIMEOUT = 2
PII = "write to jane.doe@example.com or call +1 415 555 0134"


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# ---- a recording OpenAI-compatible upstream ---------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["path"].endswith("/chat/completions"):
            request = json.loads(body)
            self.requests.append({"path": scope["path"], "body": request,
                                  "authorization": headers.get("authorization")})
            if SLOW_MARKER in json.dumps(request):
                await asyncio.sleep(SLOW_SECONDS)
            answer = json.dumps({
                "id": "chatcmpl-upstream", "object": "chat.completion", "created": 0,
                "model": "upstream",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "from upstream"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }).encode()
            status, ctype = 200, b"application/json"
        else:  # /health, /metrics of an engine behind a gateway
            answer, status, ctype = b"", 200, b"text/plain"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": answer})


def serve_in_thread(app: Recorder, tls: TLSFiles | None) -> tuple[Any, int]:
    import uvicorn

    port = free_port()
    kw = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", **kw))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "recording upstream did not start"
        time.sleep(0.05)
    return server, port


@pytest.fixture(scope="module")
def upstream_tls(workdir) -> TLSFiles:
    """A CA of its own: the front must trust it through --overflow-ca-file alone."""
    return make_tls(workdir / "upstream-tls", cn="private-upstream")


@pytest.fixture(scope="module")
def upstream(upstream_tls) -> Iterator[tuple[Recorder, str, str]]:
    """(recorder, https base URL, plain http base URL) of one recording upstream."""
    recorder = Recorder()
    tls_server, tls_port = serve_in_thread(recorder, upstream_tls)
    plain_server, plain_port = serve_in_thread(recorder, None)
    yield recorder, f"https://127.0.0.1:{tls_port}/v1", f"http://127.0.0.1:{plain_port}"
    tls_server.should_exit = plain_server.should_exit = True


@pytest.fixture(scope="module")
def redis_with_password(workdir) -> Iterator[str]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed: run `make server-deps`"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def option_files(workdir: Path, upstream_tls: TLSFiles) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    password = workdir / "redis.password"
    password.write_text(REDIS_PASSWORD + "\n")
    key = workdir / "upstream.key"
    key.write_text(UPSTREAM_KEY + "\n")
    return ["--cache-redis-password-file", str(password), "--cache-ttl", "60",
            "--overflow-api-key-file", str(key), "--overflow-ca-file", str(upstream_tls.ca),
            "--overflow-timeout", str(OVERFLOW_TIMEOUT), "--redact-overflow-requests"]


@pytest.fixture(scope="module")
def front(workdir, tiny_model, tls_files, upstream, upstream_tls,
          redis_with_password) -> Iterator[Server]:
    """`modelserver serve`: one request at a time, every option."""
    _, upstream_url, _ = upstream
    server = start_server(
        workdir, "options-front", str(tiny_model), "--served-name", "tiny",
        "--max-concurrent-requests", "1", "--max-batch-size", "1",
        "--cache-redis-url", redis_with_password, "--overflow-url", upstream_url,
        *option_files(workdir / "front-files", upstream_tls), tls=tls_files)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(workdir, upstream, upstream_tls, redis_with_password) -> Iterator[Server]:
    """`modelserver gateway` with the same options; its engine is the recorder's plain
    port, its overflow the recorder's TLS port (what it sends is all this test reads)."""
    _, upstream_url, engine_url = upstream
    server = start_gateway(
        workdir, "options-gateway", engine_url, "--max-concurrent-requests", "1",
        "--cache-redis-url", redis_with_password, "--overflow-url", upstream_url,
        *option_files(workdir / "gateway-files", upstream_tls), tls=None, keys=None)
    yield server
    server.stop()


class Holder:
    """Holds the single admission slot with one long request until release()."""

    def __init__(self, server: Server, body: dict[str, Any] | None = None) -> None:
        self.started, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(server, body), daemon=True)
        self._thread.start()

    def _hold(self, server: Server, body: dict[str, Any] | None) -> None:
        with server.client(timeout=120) as c:
            if body is None:  # the builtin engine: a long stream, until released
                with c.stream("POST", "/generate_stream", json={
                        "inputs": "hi", "parameters": {"max_new_tokens": 3000,
                                                       "ignore_eos": True}}) as r:
                    for _ in r.iter_lines():
                        self.started.set()
                        if self._stop.is_set():
                            break
            else:  # the gateway: a slow upstream answer
                self.started.set()
                c.post("/v1/chat/completions", json=body)

    def release(self, timeout: float = 120) -> None:
        self._stop.set()
        self._thread.join(timeout)


def chat(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}],
            "max_tokens": 4, "temperature": 0, **kw}


# ---- serve -------------------------------------------------------------------------------
def test_serve_caches_with_the_redis_password_from_the_file(front, redis_with_password):
    with front.client() as c:
        before = c.get("/metrics").text
        first = c.post("/v1/chat/completions", json=chat("cache behind a password"))
        second = c.post("/v1/chat/completions", json=chat("cache behind a password"))
        after = c.get("/metrics").text
    assert first.status_code == second.status_code == 200
    assert second.json()["choices"] == first.json()["choices"]
    hits = "modelserver_response_cache_hits_total"
    assert metric(after, hits) - metric(before, hits) == 1
    # the answer is in the Redis that refuses clients without the password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_with_password).keys("modelserver:resp:*")
    authed = redis.Redis.from_url(redis_with_password, password=REDIS_PASSWORD)
    assert authed.keys("modelserver:resp:*")


def test_serve_overflows_redacted_to_a_private_ca_upstream(front, upstream):
    recorder, _, _ = upstream
    recorder.requests.clear()
    holder = Holder(front)
    assert holder.started.wait(60)
    with front.client() as c:
        r = c.post("/v1/chat/completions", json=chat(PII, temperature=0.5))
    assert r.status_code == 200, r.text
    assert r.headers["x-modelserver-overflow"] == "1"
    assert r.json()["choices"][0]["message"]["content"] == "from upstream"
    (sent,) = recorder.requests
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    content = sent["body"]["messages"][0]["content"]
    assert "jane.doe@example.com" not in content and "555 0134" not in content
    assert "[EMAIL]" in content and "[PHONE]" in content
    assert sent["body"]["messages"][0]["role"] == "user"  # only the user's text is masked
    holder.release()


def test_serve_gives_429_when_the_upstream_takes_too_long(front):
    holder = Holder(front)
    assert holder.started.wait(60)
    t0 = time.monotonic()
    with front.client() as c:
        r = c.post("/v1/chat/completions", json=chat(f"{SLOW_MARKER} please", temperature=0.5))
    waited = time.monotonic() - t0
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert OVERFLOW_TIMEOUT - 0.5 < waited < SLOW_SECONDS / 2  # bounded by --overflow-timeout
    with front.client() as c:
        m = c.get("/metrics").text
    assert metric(m, "modelserver_overflow_total", '{result="failed"}') >= 1
    holder.release()


# ---- gateway -----------------------------------------------------------------------------
def test_gateway_caches_with_the_redis_password_from_the_file(gateway):
    with gateway.client() as c:
        before = c.get("/metrics").text
        first = c.post("/v1/chat/completions", json=chat("gateway cache, password"))
        second = c.post("/v1/chat/completions", json=chat("gateway cache, password"))
        after = c.get("/metrics").text
    assert first.status_code == second.status_code == 200
    hits = "modelserver_gateway_response_cache_hits_total"
    assert metric(after, hits) - metric(before, hits) == 1


def test_gateway_overflows_redacted_and_bounds_the_wait(gateway, upstream):
    recorder, _, _ = upstream
    recorder.requests.clear()
    holder = Holder(gateway, chat(f"{SLOW_MARKER} hold the slot", temperature=0.5))
    assert holder.started.wait(10)
    deadline = time.monotonic() + 10
    while not any("hold the slot" in str(r["body"]) for r in recorder.requests):
        assert time.monotonic() < deadline, "the holding request never reached the engine"
        time.sleep(0.05)
    recorder.requests.clear()
    with gateway.client() as c:
        answered = c.post("/v1/chat/completions", json=chat(PII, temperature=0.5))
        t0 = time.monotonic()
        slow = c.post("/v1/chat/completions", json=chat(f"{SLOW_MARKER} again",
                                                        temperature=0.5))
        waited = time.monotonic() - t0
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-modelserver-overflow"] == "1"
    (sent, _slow) = recorder.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "jane.doe@example.com" not in str(sent["body"]) and "[EMAIL]" in str(sent["body"])
    assert slow.status_code == 429 and int(slow.headers["retry-after"]) >= 1
    assert OVERFLOW_TIMEOUT - 0.5 < waited < SLOW_SECONDS / 2
    holder.release(SLOW_SECONDS + 10)


# ---- the flags' own checks ---------------------------------------------------------------
def test_a_missing_password_file_stops_the_server_naming_the_flag(workdir, tiny_model):
    proc = subprocess.run(
        [sys.executable, "-m", "modelserver", "serve", "--model", str(tiny_model),
         "--no-tls", "--no-auth", "--cache-redis-url", "redis://127.0.0.1:1/0",
         "--cache-redis-password-file", str(workdir / "no-such-file")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--cache-redis-password-file" in proc.stderr


def test_an_unverifiable_upstream_is_a_429_not_a_hang(workdir, tiny_model, tls_files,
                                                      upstream):
    """Without --overflow-ca-file the private CA is not trusted: the TLS handshake fails,
    and the request gets 429 (the CA flag is what made the other tests pass)."""
    _, upstream_url, _ = upstream
    server = start_server(workdir, "options-no-ca", str(tiny_model), "--served-name", "tiny",
                          "--max-concurrent-requests", "1", "--max-batch-size", "1",
                          "--overflow-url", upstream_url, tls=tls_files)
    try:
        server.wait_ready()
        holder = Holder(server)
        assert holder.started.wait(60)
        with server.client() as c:
            r = c.post("/v1/chat/completions", json=chat("hello", temperature=0.5))
        assert r.status_code == 429 and "retry-after" in r.headers
        assert "ConnectError" in server.log_text()  # the handshake, not the upstream's answer
        holder.release()
    finally:
        server.stop()


def test_settings_refuse_inconsistent_options(tmp_path):
    from modelserver.config import ConfigError, settings_from_args

    base = ["serve", "--model", "m", "--no-tls", "--no-auth"]
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    for extra, flag in [
        (["--cache-redis-password-file", str(ca)], "--cache-redis-password-file"),
        (["--cache-redis-url", "http://10.0.0.5"], "--cache-redis-url"),
        (["--cache-redis-url", "redis://10.0.0.5", "--cache-ttl", "0"], "--cache-ttl"),
        (["--overflow-timeout", "5"], "--overflow-timeout"),
        (["--redact-overflow-requests"], "--redact-overflow-requests"),
        (["--overflow-ca-file", str(ca)], "--overflow-ca-file"),
        (["--overflow-url", "ftp://10.0.0.9/v1"], "--overflow-url"),
        (["--overflow-url", "http://10.0.0.9/v1", "--overflow-ca-file", str(ca)],
         "--overflow-ca-file"),
        (["--overflow-url", "https://10.0.0.9/v1", "--overflow-timeout", "0"],
         "--overflow-timeout"),
    ]:
        for command in (base, ["gateway", "--upstream", "http://127.0.0.1:8001",
                               "--no-tls", "--no-auth"]):
            _, settings = settings_from_args([*command, *extra])
            with pytest.raises(ConfigError, match=re.escape(flag)):
                settings.validate()
    _, ok = settings_from_args([*base, "--overflow-url", "https://10.0.0.9/v1",
                                "--overflow-ca-file", str(ca), "--overflow-timeout", "5",
                                "--redact-overflow-requests"])
    ok.validate()
    ok.check_files()
    assert ok.overflow_timeout_seconds == 5.0
    _, missing = settings_from_args([*base, "--overflow-url", "https://10.0.0.9/v1",
                                     "--overflow-ca-file", str(tmp_path / "missing")])
    missing.validate()  # the flags agree; the file is checked at start
    with pytest.raises(ConfigError, match="--overflow-ca-file"):
        missing.check_files()
    _, default = settings_from_args([*base, "--overflow-url", "https://10.0.0.9/v1"])
    assert default.overflow_timeout_seconds == default.request_timeout
