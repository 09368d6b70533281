"""Helpers for the inference-server tests: a test CA and real `modelserver serve` processes
on free ports. A uniquely named module (not `conftest`): tests import it by name, which
stays unambiguous when pytest collects several test folders with their own conftest.py."""

from __future__ import annotations

import datetime
import ipaddress
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
API_KEY = "sk-modelserver-test-0123456789"
FAIL_MARKER = "@@fail-generation@@"


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
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "tls.crt", directory / "tls.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
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
                 auth: bool = True, env: dict[str, str] | None = None) -> Server:
    """Start `modelserver serve` (not waiting for readiness: servers load in parallel)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [sys.executable, "-m", "modelserver", "serve", "--model", model,
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
