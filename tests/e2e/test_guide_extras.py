"""The deployment guide's extras turned on through the operator, in real pods on the real
node (issue 13): the answer cache against a real Redis, overflow to a second
ModelDeployment, and the 429 when that upstream is gone. The operator runs from its chart
(test_last_mile's `lm` fixture: its pod, this module's namespace); the NetworkPolicy is
enforced by kube-router, so each feature working proves its egress rule too.

Redis runs on this machine, bound to the host end of the test bed's link (LINK_HOST_IP),
the one address outside the pod network the pods may reach (hack/testbed.sh), with a
password the pod reads from a Secret.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from node_helpers import wait
from test_last_mile import (  # noqa: F401 - lm is a fixture
    LastMile,
    apply_md,
    ca_file,
    host_lan,
    lm,
    md,
    pods_of,
    secret_value,
    service_ip,
    via_service,
    wait_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.node]

REDIS_PASSWORD = "e2e-redis-password-7f3a"
UPSTREAM_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def redis_url(lm: LastMile) -> Iterator[str]:  # noqa: F811
    """redis-server on the link's host address (and loopback, for the test's own reads)."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed: run `make server-deps`"
    host, port = lm.env["LINK_HOST_IP"], free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", f"{host} 127.0.0.1",
                             "--protected-mode", "no", "--requirepass", REDIS_PASSWORD,
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True

    wait(listening, 20, "redis-server")
    yield f"redis://{host}:{port}/0"
    proc.terminate()
    proc.wait(10)


def key_of(kubectl, lm: LastMile, name: str) -> str:  # noqa: F811
    return secret_value(kubectl, lm.ns, f"{name}-api-keys", "primary")


def chat(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}],
            "max_tokens": 8, "temperature": 0, **kw}


@pytest.fixture(scope="module")
def upstream(kubectl, lm: LastMile) -> str:  # noqa: F811
    """The overflow upstream: a second ModelDeployment of the tiny model, TLS from the
    operator's CA, reached by the front's pod (same namespace) and by this machine."""
    apply_md(kubectl, lm.ns, md("upstream", "tiny", model={"servedName": "tiny"},
                                network={"allowFrom": {"namespaces": [lm.ns],
                                                       "ipBlocks": [host_lan()]}}))
    wait_ready(kubectl, lm.ns, "upstream")
    return "upstream"


@pytest.fixture(scope="module")
def front(kubectl, lm: LastMile, upstream: str, redis_url: str) -> str:  # noqa: F811
    """One request at a time; the answer cache in the host's Redis; overflow to the
    upstream with its key and its CA (the operator's TLS Secret of `upstream` holds
    ca.crt); logs redacted."""
    secrets = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "front-redis"},
         "stringData": {"password": REDIS_PASSWORD}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "upstream-key"},
         "stringData": {"apiKey": key_of(kubectl, lm, upstream)}},
    ]
    kubectl("apply", "-n", lm.ns, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": secrets}))
    apply_md(kubectl, lm.ns, md(
        "front", "tiny", model={"servedName": "tiny"},
        engine={"maxBatchSize": 1, "maxConcurrentRequests": 1},
        network={"allowFrom": {"ipBlocks": [host_lan()]}},
        answerCache={"redisUrl": redis_url, "passwordSecretName": "front-redis",
                     "ttlSeconds": 300},
        overflow={"url": f"https://{upstream}.{lm.ns}.svc:8080/v1",
                  "apiKeySecretName": "upstream-key", "caSecretName": f"{upstream}-tls",
                  "timeoutSeconds": UPSTREAM_TIMEOUT_SECONDS, "redactRequests": True},
        logging={"redact": True}))
    wait_ready(kubectl, lm.ns, "front")
    return "front"


class Holder:
    """Holds front's single admission slot with a long stream until release()."""

    def __init__(self, kubectl, lm: LastMile, key: str) -> None:  # noqa: F811
        self.started, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(kubectl, lm, key),
                                        daemon=True)
        self._thread.start()

    def _hold(self, kubectl, lm: LastMile, key: str) -> None:  # noqa: F811
        ctx = ssl.create_default_context(cafile=str(ca_file(kubectl, lm, "front")))
        url = f"https://{service_ip(kubectl, lm.ns, 'front')}:8080/generate_stream"
        with httpx.Client(verify=ctx, timeout=300) as c, c.stream(
                "POST", url, headers={"Authorization": f"Bearer {key}"},
                extensions={"sni_hostname": f"front.{lm.ns}.svc"},
                json={"inputs": "hi", "parameters": {"max_new_tokens": 3000,
                                                     "ignore_eos": True}}) as r:
            for _ in r.iter_lines():
                self.started.set()
                if self._stop.is_set():
                    break

    def release(self) -> None:
        self._stop.set()
        self._thread.join(300)


def front_logs(kubectl, lm: LastMile) -> str:  # noqa: F811
    """The front pod's last log lines: why an overflow failed, for a failing assertion."""
    pod = pods_of(kubectl, lm.ns, "front")[0]["metadata"]["name"]
    lines = kubectl("logs", "-n", lm.ns, pod, "--tail=400", check=False).stdout.splitlines()
    return "\n".join(line for line in lines if "overflow" in line.lower()
                     or "error" in line.lower())[-6000:]


def front_metrics(kubectl, lm: LastMile, key: str) -> str:  # noqa: F811
    r = via_service(kubectl, lm, "front", "/metrics", key)
    assert r.status_code == 200, r.text
    return r.text


def test_the_networkpolicy_opens_exactly_redis_and_the_upstream(
        kubectl, lm: LastMile, front: str, redis_url: str) -> None:  # noqa: F811
    np = json.loads(kubectl("get", "networkpolicy", front, "-n", lm.ns, "-o",
                            "json").stdout)
    egress = np["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": f"{lm.env['LINK_HOST_IP']}/32"}}],
            "ports": [{"protocol": "TCP", "port": redis_port(redis_url)}]} in egress
    assert {"to": [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [lm.ns]}]}}],
        "ports": [{"protocol": "TCP", "port": 8080}]} in egress
    assert len(egress) == 4  # and DNS's two rules: the weights come from a volume, no 443
    pod = pods_of(kubectl, lm.ns, front)[0]
    env = json.dumps(pod["spec"]["containers"][0].get("env", []))
    assert REDIS_PASSWORD not in json.dumps(pod["spec"]) and "secretKeyRef" not in env


def test_a_repeated_deterministic_request_is_a_cache_hit(
        kubectl, lm: LastMile, front: str, redis_url: str) -> None:  # noqa: F811
    key = key_of(kubectl, lm, front)
    before = front_metrics(kubectl, lm, key)
    first = via_service(kubectl, lm, front, "/v1/chat/completions", key,
                        chat("what is the capital of France?"))
    second = via_service(kubectl, lm, front, "/v1/chat/completions", key,
                         chat("what is the capital of France?"))
    after = front_metrics(kubectl, lm, key)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json()["choices"] == first.json()["choices"]
    hits = "modelserver_response_cache_hits_total"
    assert metric(after, hits) - metric(before, hits) == 1, after
    # the answer sits in the host's Redis, which the pod reached with the Secret's password
    host_side = redis.Redis(host="127.0.0.1", port=redis_port(redis_url),
                            password=REDIS_PASSWORD)
    assert host_side.keys("modelserver:resp:*")


def test_a_full_front_overflows_to_the_upstream(kubectl, lm: LastMile, front: str,  # noqa: F811
                                                upstream: str) -> None:
    key = key_of(kubectl, lm, front)
    up_key = key_of(kubectl, lm, upstream)
    up_before = via_service(kubectl, lm, upstream, "/metrics", up_key).text
    before = front_metrics(kubectl, lm, key)
    holder = Holder(kubectl, lm, key)
    try:
        assert holder.started.wait(120), "the holding stream never started"
        r = via_service(kubectl, lm, front, "/v1/chat/completions", key,
                        chat("overflow me, reach me at jane@example.com", temperature=0.7))
    finally:
        holder.release()
    assert r.status_code == 200, (r.text, front_logs(kubectl, lm))
    assert r.headers["x-modelserver-overflow"] == "1"
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    after = front_metrics(kubectl, lm, key)
    ok = ("modelserver_overflow_total", '{result="ok"}')
    assert metric(after, *ok) - metric(before, *ok) == 1, after
    up_after = via_service(kubectl, lm, upstream, "/metrics", up_key).text
    assert metric(up_after, "tgi_request_count") > metric(up_before, "tgi_request_count")


def test_with_the_upstream_gone_a_full_front_answers_429(kubectl, lm: LastMile,  # noqa: F811
                                                         front: str, upstream: str) -> None:
    kubectl("delete", "md", upstream, "-n", lm.ns, "--wait=true", "--timeout=120s")
    wait(lambda: not pods_of(kubectl, lm.ns, upstream), 120, "the upstream's pods to go")
    key = key_of(kubectl, lm, front)
    before = front_metrics(kubectl, lm, key)
    holder = Holder(kubectl, lm, key)
    try:
        assert holder.started.wait(120), "the holding stream never started"
        t0 = time.monotonic()
        r = via_service(kubectl, lm, front, "/v1/chat/completions", key,
                        chat("nobody upstream", temperature=0.7),
                        timeout=UPSTREAM_TIMEOUT_SECONDS * 3)
        waited = time.monotonic() - t0
    finally:
        holder.release()
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert waited < UPSTREAM_TIMEOUT_SECONDS + 10  # never a hang
    after = front_metrics(kubectl, lm, key)
    failed = ("modelserver_overflow_total", '{result="failed"}')
    assert metric(after, *failed) - metric(before, *failed) == 1, after
    wait_ready(kubectl, lm.ns, front, timeout=30)  # the front itself is fine
