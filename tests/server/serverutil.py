"""Helpers for the inference-server tests: a test CA and real `modelserver serve` processes
on free ports. A uniquely named module (not `conftest`): tests import it by name, which
stays unambiguous when pytest collects several test folders with their own conftest.py."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
SERVER_START_TIMEOUT = 480  # generous: CI machines are shared with a Go build
REQUEST_WAIT = 120  # seconds an in-process engine request of the tiny model may take
API_KEY = "sk-modelserver-test-0123456789"
FAIL_MARKER = "@@fail-generation@@"  # in a prompt: fails under FAULTY_LAUNCHER
STICKY_MARKER = "@@lose-the-device@@"  # in a prompt: breaks the device, ditto
FAULTY_LAUNCHER = Path(__file__).with_name("faulty_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- TLS: a CA and a server certificate for 127.0.0.1/localhost -------------------------
@dataclass
class TLSFiles:
    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls(directory: Path, cn: str = "modelserver-test") -> TLSFiles:
    """A CA of its own (named after `cn`) and a serving certificate for localhost and
    127.0.0.1, issued by the operator's own PKI code: the certificates the server meets
    in a pod."""
    from modeldeploy import pki

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = pki.create_ca(now, f"{cn} CA")
    leaf = pki.issue(ca, ["localhost", "127.0.0.1"], now)
    files = TLSFiles(directory / "ca.pem", directory / "tls.crt", directory / "tls.key")
    files.ca.write_text(ca.cert_pem)
    files.cert.write_text(leaf.cert_pem)
    files.key.write_text(leaf.key_pem)
    return files


# ---- server processes ------------------------------------------------------------------
@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    tls: TLSFiles | None
    key_file: Path | None
    args: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return API_KEY

    def verify(self) -> ssl.SSLContext | bool:
        return self.tls.context() if self.tls else True

    def client(self, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"} if self.key_file else {}
        headers.update(kw.pop("headers", {}))
        return httpx.Client(base_url=self.base, verify=self.verify(), headers=headers,
                            timeout=kw.pop("timeout", 120), **kw)

    def async_client(self, **kw) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {API_KEY}"} if self.key_file else {}
        return httpx.AsyncClient(base_url=self.base, verify=self.verify(), headers=headers,
                                 timeout=kw.pop("timeout", 120), **kw)

    def openai(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key=API_KEY,
                             http_client=httpx.Client(verify=self.verify()), **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=self.verify(), timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server {self.name} exited {self.proc.returncode}:\n"
                                       + self.log_text()[-4000:])
                try:
                    if c.get(self.base + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"server {self.name} not ready in {timeout}s:\n"
                           + self.log_text()[-4000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(workdir: Path, name: str, model: str, *extra: str, tls: TLSFiles | None,
                 auth: bool = True, env: dict[str, str] | None = None,
                 launcher: Path | None = None) -> Server:
    """Start `modelserver serve` (not waiting for readiness: servers load in parallel);
    `launcher`: a script that patches the server, then runs its real entry point."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    entry = [str(launcher)] if launcher else ["-m", "modelserver"]
    args = [sys.executable, *entry, "serve", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    if tls:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    else:
        args += ["--no-tls"]
    key_file = None
    if auth:
        key_file = workdir / f"{name}.keys"
        key_file.write_text(f"# test keys\n{API_KEY}\n")
        args += ["--api-keys-file", str(key_file)]
    else:
        args += ["--no-auth"]
    args += list(extra)
    log = workdir / f"{name}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    fh = open(log, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                            cwd=str(REPO))
    return Server(name, port, proc, log, tls, key_file, args)
