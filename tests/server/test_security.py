"""TLS 1.3, API keys (reload), IP allow-list, body limit, error shapes, start-up refusals."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from serverutil import API_KEY, REPO, start_server

pytestmark = pytest.mark.server


def test_refuses_to_start_without_tls_or_opt_out(tiny_model):
    r = subprocess.run([sys.executable, "-m", "modelserver", "serve", "--model", str(tiny_model),
                        "--no-auth"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "--tls-cert" in r.stderr and "--no-tls" in r.stderr


def test_refuses_to_start_without_keys_or_opt_out(tiny_model):
    r = subprocess.run([sys.executable, "-m", "modelserver", "serve", "--model", str(tiny_model),
                        "--no-tls"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "--api-keys-file" in r.stderr and "--no-auth" in r.stderr


def test_flags_also_read_from_env(tiny_model):
    env = {"MODELSERVER_MODEL": str(tiny_model), "MODELSERVER_NO_TLS": "true",
           "MODELSERVER_QUANTIZATION": "int4", "MODELSERVER_NO_AUTH": "1", "PATH": ""}
    r = subprocess.run([sys.executable, "-m", "modelserver", "serve"], capture_output=True,
                       text=True, cwd=REPO, timeout=60, env=env)
    assert r.returncode == 2 and "--quantization 'int4'" in r.stderr


def test_tls13_only(main_server):
    ctx = main_server.tls.context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", main_server.port)) as raw, \
            pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    ok = main_server.tls.context()
    with socket.create_connection(("127.0.0.1", main_server.port)) as raw, \
            ok.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.version() == "TLSv1.3"


def test_untrusted_client_sees_certificate_error(main_server):
    with pytest.raises(httpx.ConnectError):
        httpx.get(main_server.base + "/health")  # the system store does not know our CA


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"},
                                     {"Authorization": f"Basic {API_KEY}"}])
def test_missing_or_bad_key_is_401_in_each_shape(main_server, headers):
    with httpx.Client(base_url=main_server.base, verify=main_server.verify(),
                      headers=headers) as c:
        r = c.post("/v1/chat/completions", json={"messages": []})
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        r = c.post("/generate", json={"inputs": "x"})
        assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
        assert c.get("/health").status_code == 200  # probes carry no key


def test_malformed_json_is_4xx_in_both_shapes(main_server):
    with main_server.client(headers={"content-type": "application/json"}) as c:
        r = c.post("/v1/chat/completions", content=b'{"messages": [')
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/generate", content=b"\xff\xfe not json")  # not even UTF-8
        assert r.status_code in (400, 422) and r.json()["error_type"] == "validation"
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": "many"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "max_tokens"


def test_body_limit_413(main_server):
    big = {"inputs": "x" * (5 * 1024 * 1024)}
    with main_server.client() as c:
        r = c.post("/generate", json=big)
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"

        def chunks():  # no Content-Length: the streaming guard must catch it
            for _ in range(6):
                yield b"x" * (1024 * 1024)
        r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


@pytest.fixture(scope="module")
def guard_server(workdir, tiny_model, tls_files):
    """Own TLS files and keys (rotated by the tests); only 127.0.0.1 may connect."""
    from serverutil import make_tls

    tls = make_tls(workdir / "tls-guard")
    srv = start_server(workdir, "guard", str(tiny_model), "--no-warmup", "--allow-cidr",
                       "127.0.0.1/32", "--allow-cidr", "10.0.0.0/8", tls=tls)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_allow_cidr_403(guard_server):
    # the same loopback interface, another source address: 127.0.0.2 is not allowed
    other = httpx.HTTPTransport(local_address="127.0.0.2", verify=guard_server.verify())
    with guard_server.client(transport=other) as c:
        r = c.get("/v1/models")
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        r = c.post("/generate", json={"inputs": "x"})
        assert r.status_code == 403 and r.json()["error_type"] == "forbidden"
        assert c.get("/health").status_code == 200  # the kubelet's probes still work
    with guard_server.client() as c:
        assert c.get("/v1/models").status_code == 200


def test_key_file_and_certificate_reload(guard_server, workdir):
    from serverutil import make_tls

    srv = guard_server
    with srv.client() as c:
        assert c.get("/v1/models").status_code == 200
    time.sleep(1.1)  # mtime granularity
    srv.key_file.write_text("sk-rotated-key-000000000001\n")
    deadline = time.monotonic() + 10
    with srv.client(headers={"Authorization": "Bearer sk-rotated-key-000000000001"}) as c:
        while c.get("/v1/models").status_code != 200:
            assert time.monotonic() < deadline, "new key never accepted"
            time.sleep(0.3)
    with srv.client() as c:
        assert c.get("/v1/models").status_code == 401  # the old key is gone
    assert API_KEY not in srv.log_text() and "rotated-key" not in srv.log_text()

    # rotate the certificate in place (as cert-manager does with the Secret): new
    # handshakes must present the new one, signed by a new CA
    new = make_tls(workdir / "tls-rotated", cn="rotated")
    srv.tls.cert.write_bytes(new.cert.read_bytes())  # the paths the server watches
    srv.tls.key.write_bytes(new.key.read_bytes())
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(srv.base + "/health", verify=new.context()).raise_for_status()
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "rotated certificate never served"
            time.sleep(0.5)


def test_keys_and_prompts_not_logged_with_redaction(main_server):
    secret_prompt = "my e-mail is jane.doe@example.com and card 4111 1111 1111 1111"
    with main_server.client() as c:
        assert c.post("/generate", json={"inputs": secret_prompt,
                                         "parameters": {"max_new_tokens": 2}}).status_code == 200
        c.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": "lots"}})
    log = main_server.log_text()
    assert API_KEY not in log
    assert "jane.doe@example.com" not in log and "4111 1111" not in log
    # Redaction keeps the lines: the access log (whose formatter unpacks its arguments)
    # still says who asked for what, and nothing failed to log.
    assert '"POST /generate HTTP/1.1" 200' in log
    assert "Logging error" not in log


def test_redaction_keeps_the_arguments_a_formatter_unpacks():
    import logging

    from modelserver.redact import RedactingFilter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', ("10.0.0.1:5", "GET",
                               "/v1/x?mail=jane.doe@example.com", "1.1", 200), None)
    assert RedactingFilter().filter(record)
    client, method, path, version, status = record.args
    assert status == 200 and "jane.doe" not in path and "[EMAIL]" in path
    assert record.getMessage() == '10.0.0.1:5 - "GET /v1/x?mail=[EMAIL] HTTP/1.1" 200'


def test_redaction_patterns():
    from modelserver.redact import redact

    text = ("mail jane.doe@example.com, call +1 415-555-0132 or 13812345678, "
            "ID 11010519491231002X, card 4111-1111-1111-1111, ssn 123-45-6789, "
            "key sk-abcdefghijklmnop1234 and Authorization: Bearer abc.def.ghi")
    out = redact(text)
    for leaked in ("jane.doe", "555-0132", "13812345678", "11010519491231002X",
                   "4111-1111", "123-45-6789", "sk-abcdefghijklmnop1234", "abc.def.ghi"):
        assert leaked not in out, (leaked, out)
    assert "[EMAIL]" in out and "[CARD]" in out and "[KEY]" in out
